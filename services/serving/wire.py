"""Small helpers for Kafka messages consumed by serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confluent_kafka import Message


def message_headers(message: Message) -> list[tuple[str, bytes | str | None]]:
    """A consumed message's headers as a list of (name, value) pairs."""
    raw = message.headers()
    if isinstance(raw, dict):
        return list(raw.items())
    return list(raw or ())
