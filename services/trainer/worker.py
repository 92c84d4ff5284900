"""Process shape of the trainer: one rank in this process, or a launcher that starts
`--workers` rank processes (`python -m services.trainer --rank R ...`) rendezvousing on a free
local port, forwards SIGINT/SIGTERM to them, and stops them all when one fails."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time

from services.trainer.config import TrainerSettings
from shared.lifecycle import parent_death

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host`."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_rank(settings: TrainerSettings, rank: int, world: int, port: int,
             stop: threading.Event) -> int:
    """Join the group, run the loop until stopped; 0 on a clean stop."""
    from services.trainer.comm import Comm
    from services.trainer.devices import describe_device, pick_device
    from services.trainer.loop import TrainerLoop

    device = pick_device(settings.trainer_device, rank)
    log.info("trainer rank %d/%d on %s", rank, world, describe_device(device))
    comm = Comm.init(rank, world, settings.trainer_master_addr, port, device,
                     settings.trainer_dist_timeout_s)
    try:
        released = TrainerLoop(settings, comm, stop).run()
        log.info("rank %d stopped; released versions %s", rank, released)
    finally:
        comm.close()
    return 0


def launch(settings: TrainerSettings, stop: threading.Event) -> int:
    """Start `trainer_workers` rank processes and supervise them; returns the worst exit code."""
    world = settings.trainer_workers
    port = settings.trainer_master_port or free_port(settings.trainer_master_addr)
    procs = [subprocess.Popen([sys.executable, "-m", "services.trainer", "--rank", str(rank),
                               "--world-size", str(world), "--master-port", str(port)],
                              preexec_fn=parent_death(signal.SIGKILL))
             for rank in range(world)]
    log.info("started %d trainer workers (pids %s), rendezvous %s:%d", world,
             [p.pid for p in procs], settings.trainer_master_addr, port)
    deadline: float | None = None
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.returncode not in (None, 0) for p in procs)
            if (stop.is_set() or failed) and deadline is None:
                for proc in procs:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + (30 if stop.is_set() and not failed else 10)
            if deadline is not None and time.monotonic() > deadline:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c != 0), 0)
