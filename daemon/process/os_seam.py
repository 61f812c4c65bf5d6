"""The one narrow seam between the process manager and the operating system.

``RealOs`` spawns trainers in their own session/process group (so a signal to the group reaches
the trainer and any helpers, and a ``kill -9`` of the daemon leaves them alive to be found), with
systemd's ``NOTIFY_SOCKET`` removed, stdout/stderr appended to the game's log file. Tests of the
decision logic use a fake with the same four methods; the real one is exercised by the
integration tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from daemon.sdnotify import child_environment


@dataclass
class Proc:
    pid: int
    # Seconds after boot at which the kernel started the process (see _create_time).
    create_time: float | None
    popen: subprocess.Popen[bytes] | None = None  # None for a process we did not spawn


class OsSeam(Protocol):
    def spawn(
        self, argv: list[str], cwd: Path, log_path: Path, env: Mapping[str, str] | None = None
    ) -> Proc:
        """``env``: variables set for this child only (CUDA_VISIBLE_DEVICES on a multi-GPU box)."""
        ...

    def poll(self, proc: Proc) -> int | None:
        """None while alive; else the Popen-style return code (negative = killed by signal)."""
        ...

    def signal_group(self, proc: Proc, sig: signal.Signals) -> None: ...

    def wait(self, proc: Proc, timeout: float) -> int | None: ...


class RealOs:
    def spawn(
        self, argv: list[str], cwd: Path, log_path: Path, env: Mapping[str, str] | None = None
    ) -> Proc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        # O_APPEND: the daemon can rotate by copy+truncate while the child keeps writing.
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**child_environment(), **(env or {})},
                start_new_session=True,
                close_fds=True,
            )
        return Proc(popen.pid, _create_time(popen.pid), popen)

    def poll(self, proc: Proc) -> int | None:
        if proc.popen is not None:
            return proc.popen.poll()
        # Not our child (a leftover of a previous daemon): it is reaped by init, we only watch.
        return None if is_same_process(proc.pid, proc.create_time) else 0

    def signal_group(self, proc: Proc, sig: signal.Signals) -> None:
        # The trainer leads its own session, so its pgid is its pid. Signal the group only
        # while the leader is verifiably the process we started (pid reuse guard).
        if proc.popen is not None and proc.popen.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # helpers left in the group after the leader died
            return
        if proc.popen is None and not is_same_process(proc.pid, proc.create_time):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def wait(self, proc: Proc, timeout: float) -> int | None:
        if proc.popen is not None:
            try:
                return proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        # Not our child: poll. A zombie counts as exited, since its parent (init or a
        # container's PID 1) may be slow to reap it, or never do so.
        deadline = time.monotonic() + timeout
        while is_same_process(proc.pid, proc.create_time):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
        return 0


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _create_time(pid: int) -> float | None:
    """The process's start time in seconds after boot, from the kernel's exact start ticks.

    Not psutil's ``create_time()``: that adds /proc/stat's btime, which is derived from the wall
    clock and shifts by a second (rounding) or more (NTP steps) between two reads, so an
    identity check on it could take a running leftover trainer for a gone one and start a
    second trainer on its run dir.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and ')': the fields resume after the last ')'.
    # starttime is field 22; the first field after comm is field 3, hence index 19.
    return int(stat[stat.rindex(")") + 2 :].split()[19]) / _CLK_TCK


def is_same_process(pid: int, create_time: float | None) -> bool:
    """True when ``pid`` is alive and is the process that had ``create_time`` (not a reuse)."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is None:
            return True
        started = _create_time(pid)
        # Same tick, same process: a reused pid starts at a later tick.
        return started is not None and round(started * _CLK_TCK) == round(create_time * _CLK_TCK)
    except psutil.Error:
        return False


def rotate_log(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy-truncate rotation (the child holds the file open with O_APPEND); True if rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups == 0:
        os.truncate(path, 0)
        return True
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def find_leftover(pid: int, create_time: float | None, run_dir: Path) -> Proc | None:
    """A live trainer of ``run_dir`` at ``pid`` left by a previous daemon, or None.

    The pid must be alive, match the recorded start time when known, and its command line must
    be a trainer on this run dir: a reused pid of an unrelated process is never signalled.
    """
    if pid == os.getpid() or not is_same_process(pid, create_time):
        return None
    try:
        p = psutil.Process(pid)
        cmd = p.cmdline()
    except psutil.Error:
        return None
    ctime = _create_time(pid)
    if "trainer" not in cmd or str(run_dir) not in cmd:
        return None
    return Proc(pid, ctime)
