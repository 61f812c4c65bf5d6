"""Side jobs: the daemon's own short programs (an eval, a report), never its trainers.

The main loop starts one with ``start`` and calls ``poll`` on every pass; nothing here blocks:
output goes to unnamed temp files, ``poll`` only asks the kernel whether the child exited, and a
job past its timeout gets SIGKILL to its process group. Each job is its own session and process
group (a trainer's stop signals never reach it, nor its signals a trainer), with its thread
count bounded through the environment and no ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import structlog

from daemon.clock import Clock

log = structlog.get_logger("daemon.side_jobs")

Done = Callable[[int, str, str], None]  # (exit code, stdout, last stderr line)


@dataclass
class Job:
    kind: str
    what: str
    proc: Any
    deadline: float
    out: IO[bytes]
    err: IO[bytes]
    on_done: Done


class SideJobs:
    def __init__(self, clock: Clock, spawn: Callable[..., Any] = subprocess.Popen) -> None:
        self.clock = clock
        self.spawn = spawn
        self.jobs: dict[str, Job] = {}

    def running(self, kind: str) -> bool:
        return kind in self.jobs

    def start(
        self,
        kind: str,
        what: str,
        module_argv: list[str],
        *,
        timeout: float,
        threads: int,
        on_done: Done,
    ) -> bool:
        """``python -m <module_argv>`` with this interpreter; False when one of ``kind`` runs
        or it could not start (logged)."""
        if kind in self.jobs:
            return False
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the job)
        try:
            proc = self.spawn(
                [sys.executable, "-m", *module_argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            out.close()
            err.close()
            log.error("side job could not start", kind=kind, what=what, error=str(e))
            return False
        self.jobs[kind] = Job(kind, what, proc, self.clock.monotonic() + timeout, out, err, on_done)
        log.info("side job started", kind=kind, what=what, pid=proc.pid)
        return True

    def poll(self) -> None:
        for kind, job in list(self.jobs.items()):
            rc = job.proc.poll()
            if rc is None and self.clock.monotonic() > job.deadline:
                log.warning("side job past its timeout; killed", kind=kind, what=job.what)
                self._kill(job)
                rc = job.proc.wait()
            if rc is None:
                continue
            del self.jobs[kind]
            out, err = self._read(job.out), self._read(job.err)
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            try:
                job.on_done(rc, out, lines[-1] if lines else "")
            except Exception:
                log.exception("side job result handling failed", kind=kind, what=job.what)

    @staticmethod
    def _read(fh: IO[bytes]) -> str:
        try:
            fh.seek(0)
            return fh.read(4 * 1024 * 1024).decode(errors="replace")
        finally:
            fh.close()

    @staticmethod
    def _kill(job: Job) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """At shutdown: a side job holds no state worth a grace period (an eval restarts on
        its next turn, a report is written whole or not at all)."""
        for job in list(self.jobs.values()):
            self._kill(job)
            job.proc.wait()
            job.out.close()
            job.err.close()
        self.jobs.clear()
