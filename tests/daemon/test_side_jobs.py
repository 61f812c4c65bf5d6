"""Side jobs (daemon/side_jobs.py) on real child processes, with an injected clock for the
timeout: one job per kind, output handed to the callback, a job past its timeout killed with
its whole process group, every job killed at shutdown, no NOTIFY_SOCKET and bounded threads."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from daemon.clock import FakeClock
from daemon.side_jobs import SideJobs

SLEEPER = ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(120)"]


def _wait_done(jobs: SideJobs, kind: str) -> None:
    deadline = time.monotonic() + 60  # a failure bound, not a measurement
    while jobs.running(kind) and time.monotonic() < deadline:
        jobs.poll()
        time.sleep(0.05)
    assert not jobs.running(kind)


def test_output_reaches_the_callback_one_job_per_kind(tmp_path: Path) -> None:
    probe = tmp_path / "env.json"
    probe.write_text(json.dumps({"x": 1}))
    got: list[tuple[int, str, str]] = []
    jobs = SideJobs(FakeClock())
    # json.tool echoes the file: stdout comes back whole.
    assert jobs.start("report", "probe", ["json.tool", str(probe)], timeout=60, threads=3,
                      on_done=lambda rc, out, err: got.append((rc, out, err)))  # fmt: skip
    assert not jobs.start("report", "second", ["json.tool", str(probe)], timeout=60, threads=1,
                          on_done=lambda *a: None)  # fmt: skip
    _wait_done(jobs, "report")
    assert got and got[0][0] == 0 and json.loads(got[0][1]) == {"x": 1}
    # A failing job: its last stderr line is what the daemon logs.
    jobs.start("eval", "bad", ["json.tool", str(tmp_path / "missing")], timeout=60, threads=1,
               on_done=lambda rc, out, err: got.append((rc, out, err)))  # fmt: skip
    _wait_done(jobs, "eval")
    assert got[1][0] != 0 and "missing" in got[1][2] and "\n" not in got[1][2]


def test_environment_of_a_side_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    jobs = SideJobs(FakeClock())
    jobs.start("eval", "sleeper", SLEEPER, timeout=60, threads=2, on_done=lambda *a: None)
    proc = psutil.Process(jobs.jobs["eval"].proc.pid)
    env = proc.environ()
    assert "NOTIFY_SOCKET" not in env and env["OMP_NUM_THREADS"] == "2"
    assert os.getpgid(proc.pid) == proc.pid  # its own group: a trainer's stop never hits it
    jobs.stop_all()
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert jobs.jobs == {}


def test_a_job_past_its_timeout_is_killed() -> None:
    clock = FakeClock()
    got: list[int] = []
    jobs = SideJobs(clock)
    jobs.start("eval", "sleeper", SLEEPER, timeout=30, threads=1,
               on_done=lambda rc, out, err: got.append(rc))  # fmt: skip
    jobs.poll()
    assert jobs.running("eval") and got == []  # within its time: left alone
    clock.advance(31)
    jobs.poll()
    assert not jobs.running("eval") and got == [-signal.SIGKILL]
