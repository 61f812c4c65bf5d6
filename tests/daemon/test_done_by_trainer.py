"""A game whose trainer reported it done before its episode target (``--stop-avg100``: the
cpu-tiny profile's CartPole) stays DONE across a daemon restart and an operator ``start``; a
raised target brings it back. Real daemon, real trainer at tiny settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import RealDaemon
from tests.support.profiles import TINY_TRAINER_ARGS, daemon_profile

pytestmark = pytest.mark.slow

# avg100 >= 0 holds for CartPole once 100 episodes are in: the trainer is done in seconds.
SPEC = daemon_profile({"CartPole-v1": 1_000_000}, slots=1).but(
    trainer_args=[*TINY_TRAINER_ARGS, "--stop-avg100", "0"]
)


def runs(d: RealDaemon) -> int:
    return len(d.query("SELECT id FROM runs WHERE game = 'CartPole-v1'"))


def test_done_by_the_trainer_stays_done_across_a_restart_and_a_start(tmp_path: Path) -> None:
    profile = SPEC.write(tmp_path / "profile.yaml")
    d = RealDaemon(tmp_path / "state", profile).start()
    try:
        d.wait_for("CartPole-v1 DONE", lambda: d.game("CartPole-v1")["state"] == "DONE")
        episodes = d.game("CartPole-v1")["episodes"]
        assert d.game("CartPole-v1")["reason"].startswith(f"trainer reported done ({episodes}/")
        assert 100 <= episodes < 1_000_000
        assert d.stop() == 0
        d.start()
        d.wait_for("status", lambda: d.game("CartPole-v1"))
        row = d.game("CartPole-v1")
        assert row["state"] == "DONE", row  # was QUEUED, then a trainer started for nothing
        out = d.ctl("start", "CartPole-v1")
        assert out.returncode == 0, out
        assert out.stdout.startswith(
            f"CartPole-v1: DONE, nothing to start: its trainer reported it done at "
            f"{episodes}/1000000 episodes (--stop-avg100). To train on, drop --stop-avg100 "
            "from trainer_args and raise its target in the profile"
        ), out.stdout
        assert d.game("CartPole-v1")["state"] == "DONE"
        assert runs(d) == 1
        # A raised target resumes it: its trainer decides again (and, still told to stop at
        # avg100 >= 0, reports done again at once).
        SPEC.target("CartPole-v1", 2_000_000).write(profile)
        assert d.ctl("reload").returncode == 0
        d.wait_for("a second run", lambda: runs(d) == 2)
        d.wait_for("DONE again", lambda: d.game("CartPole-v1")["state"] == "DONE")
    finally:
        d.cleanup()
