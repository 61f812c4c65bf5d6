"""The periodic checks (APScheduler 3.x ``BackgroundScheduler``).

Jobs never act: each one posts a ``Check`` event and the supervisor's main loop does the work.
``coalesce=True`` and ``max_instances=1`` keep a slow loop from piling up runs; a generous
``misfire_grace_time`` keeps a late run (a busy box) from being dropped. A job that raises is
logged by the listener and the scheduler goes on.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from daemon.config import Checks as CheckIntervals
from daemon.supervisor import Check, Shutdown

log = structlog.get_logger("daemon.checks")

JOBS = ("health", "stability", "telemetry", "report")
EXIT_UNHEALTHY = 1  # non-zero: systemd's Restart=on-failure restarts the daemon
# Test-only switch (used by the systemd tests): while this file exists the health job blocks, so
# no WATCHDOG=1 is sent and systemd's watchdog must fire.
STALL_ENV = "ATARI_SUPERVISOR_TEST_STALL_FILE"


def _stall_while_file_exists() -> None:
    path = os.environ.get(STALL_ENV)
    if not path:
        return
    warned = False
    while Path(path).exists():
        if not warned:
            log.warning("health job stalled by the test switch", file=path)
            warned = True
        time.sleep(0.5)


class Checks:
    def __init__(
        self,
        intervals: CheckIntervals,
        post: Callable[[object], None],
        probes: dict[str, Callable[[], bool]] | None = None,
        eval_every: float | None = None,
    ) -> None:
        self.post = post
        # Parts that run on their own threads (the control socket): the health check fails
        # when one has died, since the main loop would go on feeding the watchdog without it.
        self.probes = dict(probes or {})
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            timezone="UTC",
        )
        self.scheduler.add_listener(self._on_error, EVENT_JOB_ERROR)
        self.intervals = intervals
        for kind in JOBS:
            self.scheduler.add_job(self._job, "interval", args=[kind], id=kind, name=kind,
                                   seconds=getattr(intervals, kind))  # fmt: skip
        self.eval_every: float | None = None
        self.set_eval_every(eval_every)

    def set_eval_every(self, seconds: float | None) -> None:
        """The profile's ``eval.every``: the eval job exists only while it is set."""
        if seconds == self.eval_every:
            return
        if self.scheduler.get_job("eval") is not None:
            self.scheduler.remove_job("eval")
        if seconds is not None:
            self.scheduler.add_job(self._job, "interval", args=["eval"], id="eval", name="eval",
                                   seconds=seconds)  # fmt: skip
        self.eval_every = seconds

    def _job(self, kind: str) -> None:
        if kind == "health":
            _stall_while_file_exists()
            dead = [name for name, alive in self.probes.items() if not alive()]
            if dead:
                # No health pass (no WATCHDOG=1) and a failing exit after the graceful stop:
                # systemd's Restart=on-failure brings the daemon back whole.
                reason = f"health check failed: {', '.join(dead)} thread died; restarting"
                log.error(reason)
                self.post(Shutdown(reason, exit_code=EXIT_UNHEALTHY))
                return
        self.post(Check(kind))

    @staticmethod
    def _on_error(event: JobExecutionEvent) -> None:
        log.error("check job failed; the scheduler goes on", job=event.job_id,
                  error=repr(event.exception))  # fmt: skip

    def start(self) -> None:
        self.scheduler.start()

    def reschedule(self, intervals: CheckIntervals) -> None:
        self.prepare_reschedule(intervals)()

    def prepare_reschedule(self, intervals: CheckIntervals) -> Callable[[], None]:
        """Check new intervals and return the commit that reschedules the jobs (a reload
        moves every part or none). Raises ``ValueError`` for an interval the scheduler could
        not run: not a finite positive number, or a next run time past the calendar."""
        changed = {}
        for kind in JOBS:
            seconds = getattr(intervals, kind)
            if seconds == getattr(self.intervals, kind):
                continue
            try:
                ok = math.isfinite(seconds) and seconds > 0
                ok = ok and datetime.now(UTC) + timedelta(seconds=seconds) is not None
            except (OverflowError, TypeError):
                ok = False
            if not ok:
                raise ValueError(f"checks.{kind}: {seconds!r} is not an interval the scheduler "
                                 "can run; use a duration such as 30s or 1h")  # fmt: skip
            changed[kind] = seconds

        def commit() -> None:
            for kind, seconds in changed.items():
                self.scheduler.reschedule_job(kind, trigger="interval", seconds=seconds)
            self.intervals = intervals

        return commit

    def next_run(self, kind: str) -> float | None:
        job = self.scheduler.get_job(kind)
        # A job added before the scheduler starts is pending and has no next_run_time attribute
        # at all: the first loop pass (and the first metrics snapshot) comes before that start.
        at = getattr(job, "next_run_time", None)
        return None if at is None else at.timestamp()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
