"""The real daemon (``python -m daemon``) on a test profile in a temp dir.

A test watches it three ways, all read-only: its SQLite file (``query``/``games``), the run
dirs' ``progress.json`` (``progress``) and the control socket (``status``/``game``, ``ctl``).
Every wait has a timeout, a generous failure bound (never a measurement), and fails with the
tail of the daemon's log. ``cleanup()`` SIGKILLs every process group of ours that is left: the
daemon's, each trainer's (trainers lead their own), and anything else whose command line names
this state dir (an ``atarictl tail -f``); ``DaemonPool`` calls it for every daemon it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from daemon.atarictl.client import Client, CtlError

T = TypeVar("T")

WAIT_S = 240.0  # a failure bound for a loaded 2-core box, not an expectation


class RealDaemon:
    def __init__(
        self,
        state: Path,
        profile: Path,
        *,
        name: str = "daemon",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.state, self.profile, self.name = state, profile, name
        self.args, self.env = list(args), env
        self.log = state.parent / f"{name}.log"
        self.socket = state / "run" / "atarictl.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()  # every trainer pid the store ever showed

    # ------------------------------------------------------------------ the process

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "daemon", "--profile", str(self.profile),
                "--state-dir", str(self.state), *self.args]  # fmt: skip

    def start(self) -> RealDaemon:
        self.state.mkdir(parents=True, exist_ok=True)
        env = None if self.env is None else {**os.environ, **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 120.0) -> int:
        """Signal the daemon (SIGTERM: graceful) and return its exit status."""
        self.send(sig)
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"daemon still running {timeout:g}s after {sig.name}:\n{self.tail()}"
            ) from None

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    # ------------------------------------------------------------------ what it shows

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        """Rows from its database, read-only; [] until the file and its tables exist."""
        db = self.state / "atari.db"
        if not db.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        except sqlite3.OperationalError:
            return []
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []  # tables not created yet
        finally:
            conn.close()

    def games(self) -> dict[str, sqlite3.Row]:
        rows = {r["name"]: r for r in self.query("SELECT * FROM games")}
        self.seen_pids |= {r["pid"] for r in rows.values() if r["pid"]}
        return rows

    def decisions(self, game: str) -> list[tuple[int, str | None, str | None, str]]:
        rows = self.query("SELECT id, from_state, to_state, reason FROM decisions "
                          "WHERE game = ? ORDER BY id", game)  # fmt: skip
        return [(r["id"], r["from_state"], r["to_state"], r["reason"]) for r in rows]

    def progress(self, game: str) -> dict[str, Any]:
        """The game's progress.json; {} while absent or unreadable."""
        try:
            data = json.loads((self.state / "runs" / game / "progress.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def client(self) -> Client:
        return Client(self.socket, timeout=15)

    def status(self) -> dict[str, Any]:
        return self.client.call("status")

    def game(self, name: str) -> dict[str, Any]:
        """The game's row of a live ``status`` reply."""
        return next(g for g in self.status()["games"] if g["game"] == name)

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The ``atarictl`` process on this daemon's state dir."""
        return subprocess.run(
            [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(self.state), *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    # ------------------------------------------------------------------ waiting

    def wait_for(self, what: str, cond: Callable[[], T], timeout: float = WAIT_S) -> T:
        """``cond()``'s first truthy value. A socket error counts as "not yet" (the daemon may
        still be starting); the daemon exiting fails at once."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = cond()
            except CtlError as e:
                last = e
            else:
                if last:
                    return last
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) while waiting for "
                                     f"{what}; last: {last!r}\n{self.tail()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                     f"last: {last!r}\n{self.tail()}")  # fmt: skip
            time.sleep(0.3)

    def wait_states(self, want: Mapping[str, str], timeout: float = WAIT_S) -> dict[str, Any]:
        """The games table once every game in ``want`` is in its state."""

        def ok() -> dict[str, Any] | None:
            games = self.games()
            good = all(g in games and games[g]["state"] == s for g, s in want.items())
            return games if good else None

        return self.wait_for(f"states {dict(want)}", ok, timeout)

    def wait_running(self, game: str = "CartPole-v1", *, checkpoint: bool = True) -> None:
        """RUNNING in a live status reply (with a checkpoint on disk, unless told not to)."""

        def ok() -> bool:
            g = self.game(game)
            return g["state"] == "RUNNING" and (not checkpoint or g["checkpoint_age_s"] is not None)

        self.wait_for(f"{game} RUNNING", ok)

    def wait_heartbeat(self, game: str, pid: int, timeout: float = WAIT_S) -> dict[str, Any]:
        """progress.json once the trainer ``pid`` itself has written it as running: only then
        does it say anything about this run (before, it is the previous run's file)."""

        def mine() -> dict[str, Any] | None:
            p = self.progress(game)
            return p if p.get("pid") == pid and p.get("status") == "running" else None

        return self.wait_for(f"{game} trainer pid {pid} writing progress.json", mine, timeout)

    # ------------------------------------------------------------------ teardown

    def trainer_pids(self) -> set[int]:
        """Every trainer process (any daemon's) running on this state dir's run dirs."""
        runs = str(self.state / "runs")
        out = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if "trainer" in cmd and any(a.startswith(runs) for a in cmd):
                out.add(p.info["pid"])
        return out

    def cleanup(self) -> None:
        """SIGKILL every process group of ours that is left, then reap or wait for each."""
        own = os.getpgid(0)
        marker = str(self.state)
        # By command line only: a pid the store once showed may belong to someone else now.
        pids = self.trainer_pids()
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or []):
                pids.add(p.pid)
        groups = {self.proc.pid} if self.proc is not None else set()
        for pid in pids:
            pgid = _pgid(pid)
            if pgid == own:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)  # inside the runner's group: this one only
            elif pgid is not None:
                groups.add(pgid)
        for pgid in sorted(groups - {own}):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(30)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def alive_in_groups(pgids: set[int]) -> list[int]:
    """Processes still alive (not zombies) in any of these process groups."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.info["pid"]) in pgids:
                out.append(p.info["pid"])
        except (ProcessLookupError, PermissionError):
            continue
    return out


class DaemonPool:
    """The daemons one fixture started; ``close()`` cleans up every one of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[RealDaemon] = []

    def start(
        self, profile: Path, *, state: Path | None = None, name: str | None = None, **kw: Any
    ) -> RealDaemon:
        """A started daemon. Two daemons of one test share ``root/state`` unless told
        otherwise (a restart on the same state), each with its own log."""
        name = name or ("daemon" if not self.daemons else f"daemon{len(self.daemons) + 1}")
        return self.add(RealDaemon(state or self.root / "state", profile, name=name, **kw)).start()

    def add(self, daemon: T) -> T:
        """Track a daemon built elsewhere (a subclass); the caller starts it."""
        assert isinstance(daemon, RealDaemon)
        self.daemons.append(daemon)
        return daemon

    def close(self) -> None:
        for d in reversed(self.daemons):
            d.cleanup()

    def logs(self) -> Iterator[tuple[str, str]]:
        for d in self.daemons:
            yield f"{d.name} log ({d.log})", d.tail(6000)
