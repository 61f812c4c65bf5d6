"""The fake OS seam of the decision-logic tests, and a process manager wired to it.

The real seam (``daemon.process.os_seam.RealOs``) has its own tests (tests/daemon/test_os_seam.py)
and runs under every real-daemon test. The fake spawns nothing: a test says when a "process"
exits by setting ``exits[pid]``, and reads what was signalled and how long was waited.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from daemon.clock import FakeClock
from daemon.config import Profile
from daemon.process import Proc, ProcessManager
from daemon.store import Store


class FakeOs:
    def __init__(self) -> None:
        self.next_pid = 1000
        # pid -> None while "alive", else its Popen-style return code. A pid the fake did not
        # spawn (a leftover of a previous daemon) is alive until a test sets its exit.
        self.exits: dict[int, int | None] = {}
        self.signals: list[tuple[int, signal.Signals]] = []
        self.argv: dict[int, list[str]] = {}
        self.env: dict[int, dict[str, str]] = {}  # what the child got beyond the daemon's own
        self.waits: list[tuple[int, float]] = []

    def spawn(
        self, argv: list[str], cwd: Path, log_path: Path, env: Mapping[str, str] | None = None
    ) -> Proc:
        self.next_pid += 1
        self.exits[self.next_pid] = None
        self.argv[self.next_pid] = argv
        self.env[self.next_pid] = dict(env or {})
        return Proc(self.next_pid, None)

    def poll(self, proc: Proc) -> int | None:
        return self.exits.get(proc.pid)

    def signal_group(self, proc: Proc, sig: signal.Signals) -> None:
        # Nothing happens by itself, not even after SIGKILL: the test sets ``exits``.
        self.signals.append((proc.pid, sig))

    def wait(self, proc: Proc, timeout: float) -> int | None:
        self.waits.append((proc.pid, timeout))
        return self.exits.get(proc.pid)

    def sent(self, pid: int) -> list[signal.Signals]:
        """The signals sent to ``pid``'s group, in order."""
        return [s for p, s in self.signals if p == pid]


class ManagerParts(NamedTuple):
    mgr: ProcessManager
    fake: FakeOs
    clock: FakeClock
    store: Store


def build_manager(tmp_path: Path, profile: Profile, level: str = "light") -> ManagerParts:
    """A restored ``ProcessManager`` on a real SQLite file in ``tmp_path``, the fake seam and
    a fake clock; nothing has been started yet (the first ``tick()`` starts the queue)."""
    clock, fake = FakeClock(), FakeOs()
    store = Store.open(tmp_path / "atari.db")
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs", level)
    mgr.restore()
    return ManagerParts(mgr, fake, clock, store)


def states(mgr: ProcessManager) -> dict[str, str]:
    return {n: g.state.value for n, g in mgr.games.items()}


def pid(mgr: ProcessManager, game: str) -> int:
    proc = mgr.games[game].proc
    assert proc is not None, f"{game} has no process ({mgr.games[game].state.value})"
    return proc.pid


def write_progress(mgr: ProcessManager, game: str, **fields: Any) -> None:
    """What the trainer's heartbeat file would say."""
    d = mgr.run_dir(game)
    d.mkdir(parents=True, exist_ok=True)
    (d / "progress.json").write_text(json.dumps(fields))
