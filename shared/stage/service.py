"""`run_service`: the one entry every service's `__main__` calls. It loads the service's frozen
settings (a bad variable exits 78 naming it), sets up logging, the stop signals and telemetry,
runs the service, and exits with its status."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, TypeVar

from shared.config import EXIT_CONFIG, ConfigError, LeptonSettings, load_settings
from shared.logs import setup_logging
from shared.service_record import ServiceRecord
from shared.signals import stop_event
from shared.tracing import setup_telemetry, shutdown_telemetry

S = TypeVar("S", bound=LeptonSettings)
EXIT_FAILED = 1

log = logging.getLogger(__name__)


def run_service(name: str, settings_class: type[S], run: Callable[[S, threading.Event], int],
                *, fatal: tuple[type[Exception], ...] = (),
                metrics_port: Callable[[S], int | None] | None = None) -> NoReturn:
    """Run service `name` until stopped and exit with the status `run` returns. Errors in
    `fatal` (and configuration errors) print one line, not a traceback. The process keeps
    its service record (energy, work, consumer) in Redis while it runs."""
    settings = load_settings(settings_class)
    setup_logging(name, settings.log_level, settings.log_format)
    stop = stop_event()
    port = metrics_port(settings) if metrics_port is not None else settings.metrics_port
    setup_telemetry(name, metrics_port=port, metrics_host=settings.metrics_host)
    record: ServiceRecord | None = None
    try:
        settings.bootstrap_servers()
        record = ServiceRecord(name, settings).start()
        code = run(settings, stop)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        code = EXIT_CONFIG
    except fatal as error:
        print(f"{name}: {error}", file=sys.stderr)
        code = EXIT_FAILED
    except Exception:
        log.exception("%s failed", name)
        code = EXIT_FAILED
    finally:
        if record is not None:
            record.close()
        shutdown_telemetry()
    sys.exit(code)
