"""Logging for every process: JSON lines (python-json-logger) carrying the current trace_id and
span_id, or readable text when stderr is a terminal. `LEPTON_LOG_FORMAT` (json|text|auto)
overrides the choice; the level comes from `LEPTON_LOG_LEVEL`."""

from __future__ import annotations

import logging
import os
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


class TraceContextFilter(logging.Filter):
    """Adds `trace_id`, `span_id` and `service` of the current span to every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record; never drops it."""
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        record.service = self.service
        return True


def use_json(choice: str | None = None) -> bool:
    """JSON unless stderr is a terminal, or as `choice` (json|text|auto) says."""
    choice = (choice or os.environ.get("LEPTON_LOG_FORMAT") or "auto").lower()
    if choice in ("json", "text"):
        return choice == "json"
    return not sys.stderr.isatty()


def setup_logging(service: str, level: str | int = "INFO", fmt: str | None = None) -> None:
    """Configure the root logger once per process (a second call replaces the handler)."""
    if isinstance(level, str):
        level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_lepton", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._lepton = True  # type: ignore[attr-defined]
    if use_json(fmt):
        handler.setFormatter(JsonFormatter(
            JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level",
                                        "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(TraceContextFilter(service))
    root.addHandler(handler)
    root.setLevel(level)
