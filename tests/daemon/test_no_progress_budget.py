"""The progress-aware restart budget with the real daemon and the real trainer: a Pong trainer
killed twice before it finishes an episode (a crash loop far slower than anything the storm
window counts here) puts the game in FATAL naming ``backoff.max_no_progress_restarts``. The
decision logic itself is tested with the fake clock in test_process_manager.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.support.profiles import daemon_profile


def test_a_real_trainer_killed_twice_without_an_episode_goes_fatal(daemons, tmp_path: Path) -> None:
    spec = daemon_profile({"Pong": 1000}, slots=1).section(
        "backoff", max_no_progress_restarts=2, storm_crashes=50)  # fmt: skip
    d = daemons.start(spec.write(tmp_path / "p.yaml"))
    for round_ in range(2):
        pid = d.wait_for("a Pong trainer", lambda: d.game("Pong")["pid"])
        beat = d.wait_heartbeat("Pong", pid)
        assert beat["episodes"] == 0  # a Pong episode takes far longer than this
        os.kill(pid, signal.SIGKILL)
        if round_ == 0:
            d.wait_for("the restart", lambda p=pid: d.game("Pong")["pid"] not in (None, p))
    fatal = d.wait_for("FATAL", lambda: d.game("Pong") if d.game("Pong")["state"] == "FATAL"
                       else None)  # fmt: skip
    assert "2 restarts in a row without a new episode (still at episode 0; " in fatal["reason"]
    assert "backoff.max_no_progress_restarts=2)" in fatal["reason"]
    assert "killed by SIGKILL" in fatal["reason"]
