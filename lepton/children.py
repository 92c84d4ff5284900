"""The processes `lepton up` starts: each in its own session with its log under
`<data_dir>/logs`, stopped in order; what to say when one exits, and starting again those
spawned with a restart note (the private redis-server)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lepton.logtail import last_error
from shared.lifecycle import parent_death

RESTART_MIN_S = 10.0  # one that exits sooner after its start is not restarted


@dataclass
class Child:
    """A process `lepton up` started and must stop."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    args: list[str]
    metrics_port: int | None = None
    restart_note: str | None = None  # when set: started again when it exits, saying this
    started: float = field(default_factory=time.monotonic)


@dataclass
class Platform:
    """Everything `lepton up` runs, stopped in reverse order."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], *, metrics_port: int | None = None,
              restart_note: str | None = None) -> Child:
        """Start `args` in its own session, output in `<data_dir>/logs/<name>.log`; it gets
        SIGTERM when this process dies, however it dies (with `restart_note`, `restart_exited`
        starts it again)."""
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        env = dict(self.env)
        if metrics_port is not None:
            env["LEPTON_METRICS_PORT"] = str(metrics_port)
        with log.open("ab") as handle:
            # own session: a terminal's Ctrl-C reaches only `lepton up`, which stops children
            # in order; PR_SET_PDEATHSIG: a SIGKILLed `lepton up` still takes them with it
            proc = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=parent_death())
        child = Child(name, proc, log, args, metrics_port, restart_note)
        self.children.append(child)
        return child

    def stop(self, timeout: float = 9.0) -> None:
        """SIGTERM the services (and producer) together, then the broker and Redis they need
        to finish; whatever is still running after `timeout` loses its whole process group."""
        infra = {"broker", "redis"}
        apps = [c for c in self.children if c.name not in infra]
        for phase in (apps, [c for c in self.children if c.name in infra]):
            for child in phase:
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while any(c.proc.poll() is None for c in phase) and time.monotonic() < deadline:
                time.sleep(0.05)
            for child in phase:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()


def exit_line(child: Child, what: str | None = None) -> str:
    """`<what or name> exited with <code>` (or `was killed by <signal>`), `: <reason from its
    log>; see <log>`, for an exited child."""
    code = child.proc.returncode
    if code < 0:  # a signal gave the process no chance to say why
        return f"{what or child.name} was killed by {signal.Signals(-code).name}; see {child.log}"
    reason = last_error(child.log)
    return (f"{what or child.name} exited with {code}" + (f": {reason}" if reason else "")
            + f"; see {child.log}")


def newly_exited(platform: Platform, reported: set[str]) -> list[str]:
    """exit_line of each child that exited since the names in `reported` (which it extends)."""
    lines = []
    for child in platform.children:
        if child.name not in reported and child.proc.poll() is not None:
            reported.add(child.name)
            lines.append(exit_line(child))
    return lines


def restart_exited(platform: Platform, reported: set[str]) -> list[str]:
    """Start again, with the same command, each exited child that has a restart note; its
    note for each. One that exited within RESTART_MIN_S of its start is not restarted:
    RuntimeError with its reason."""
    notes = []
    for child in list(platform.children):
        if child.restart_note is None or child.proc.poll() is None:
            continue
        if time.monotonic() - child.started < RESTART_MIN_S:
            raise RuntimeError(f"{exit_line(child)} (within {RESTART_MIN_S:.0f}s of its start, "
                               "so not restarted again)")
        platform.children.remove(child)
        platform.spawn(child.name, child.args, metrics_port=child.metrics_port,
                       restart_note=child.restart_note)
        reported.discard(child.name)
        notes.append(child.restart_note)
    return notes
