"""What sealing one dead letter costs: under a subject's data key (AES-256-GCM, ingest; the
baseline) against the DLQ public key (HPKE X25519/HKDF-SHA256/AES-256-GCM, every service without
a subject or a keyring), for a typical 400-byte rejected record and a 64 KiB one; opening with the
DLQ private key too. No broker or Redis: the crypto alone. Prints a markdown table."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services.ingest.ciphers import DataKey
from shared.config import LeptonSettings
from shared.dlq import LABEL, DeadLetterOpener, DeadLetterSealer

N = 2_000


def _best(work: Callable[[], object], rounds: int = 3) -> float:
    """µs per call, the best of `rounds` rounds of N calls."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(N):
            work()
        best = min(best, (time.perf_counter() - started) / N * 1e6)
    return best


def main() -> None:
    """Print the table."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = LeptonSettings(data_dir=Path(tmp), kafka_bootstrap="unused:1")
        sealer = DeadLetterSealer.load(settings)

        def refuse(label: str, value: bytes) -> bytes:
            raise AssertionError(label)

        opener = DeadLetterOpener.load(settings, refuse)
        key = DataKey.from_raw("0" * 24, "mk0", os.urandom(32))
        print("| record | subject data key, µs (baseline) | DLQ public key, µs | ratio | "
              "open with DLQ private key, µs |")
        print("|---|---|---|---|---|")
        for size in (400, 64 * 1024):
            raw = os.urandom(size)
            sealed, _ = sealer.seal(raw)
            base = _best(lambda raw=raw: key.seal(LABEL, raw))
            public = _best(lambda raw=raw: sealer.seal(raw))
            opened = _best(lambda sealed=sealed: opener.open(sealed))
            print(f"| {size} B | {base:.1f} | {public:.1f} | {public / base:.1f} | "
                  f"{opened:.1f} |")


if __name__ == "__main__":
    main()
