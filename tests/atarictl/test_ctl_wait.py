"""`atarictl start|stop|restart --wait` against a real daemon, and `start` on a DONE game.

One module daemon: CartPole-v1 with a target it reaches in seconds (then DONE) and Acrobot-v1
with one it never reaches (it keeps training), both on the real trainer at tiny settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.atarictl.wait import WaitTimeout, attach_wait_value, done_hint, wait_steady
from daemon.config import DEFAULT_PROFILE
from tests.atarictl.ctl_daemon import Daemon
from tests.support.profiles import daemon_profile

pytestmark = pytest.mark.slow

SPEC = daemon_profile({"CartPole-v1": 30, "Acrobot-v1": 1_000_000}, slots=2)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("wait")
    d = Daemon(root / "state", SPEC.write(root / "profile.yaml")).start()
    try:
        d.wait_running("Acrobot-v1", checkpoint=False)
        yield d
    finally:
        d.stop()


def test_stop_start_restart_wait_for_the_next_steady_state(daemon: Daemon) -> None:
    # --wait right before the game: the game is not taken for SECONDS.
    out = daemon.ctl("stop", "--wait", "acrobot-v1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Acrobot-v1: STOPPED (after "), out.stdout
    assert daemon.game("Acrobot-v1")["state"] == "STOPPED"

    out = daemon.ctl("start", "Acrobot-v1", "--wait", "120")
    assert out.returncode == 0, out.stderr
    pid = daemon.game("Acrobot-v1")["pid"]
    assert daemon.game("Acrobot-v1")["state"] == "RUNNING"
    assert out.stdout.strip().endswith(f", pid {pid})"), out.stdout

    out = daemon.ctl("restart", "Acrobot-v1", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["games"] == {"Acrobot-v1": "STOPPING"}  # what the command itself answered
    (waited,) = data["waited"]
    assert data["ok"] is True and waited["state"] == "RUNNING"
    assert waited["pid"] not in (None, pid)  # a new trainer, resumed from its checkpoint
    assert daemon.game("Acrobot-v1")["pid"] == waited["pid"]


def test_wait_timeout_is_one_line_with_its_own_exit_code(daemon: Daemon) -> None:
    daemon.wait_running("Acrobot-v1", checkpoint=False)
    # A graceful stop checkpoints and exits: it cannot be over within 10 ms.
    out = daemon.ctl("restart", "Acrobot-v1", "--wait", "0.01")
    assert out.returncode == WaitTimeout.exit_code == 8, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("atarictl: --wait 0.01s ran out: Acrobot-v1 still STOPPING")
    out = daemon.ctl("start", "Acrobot-v1", "--wait")  # the daemon went on with the restart
    assert out.returncode == 0, out.stderr
    assert "Acrobot-v1: RUNNING" in out.stdout


def test_start_on_a_done_game_says_why_and_how_to_continue(daemon: Daemon) -> None:
    daemon.wait_for("CartPole-v1 DONE", lambda: daemon.game("CartPole-v1")["state"] == "DONE")
    for extra in ((), ("--wait",)):
        out = daemon.ctl("start", "cartpole-v1", *extra)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == (
            "CartPole-v1: DONE, nothing to start: its target is reached (30/30 episodes). To "
            f"train on, raise its target in the profile ({daemon.profile}) and run "
            "`atarictl reload`"
        )
    # The advice works: a raised target and a reload put it back to training.
    SPEC.target("CartPole-v1", 1_000_000).write(daemon.profile)
    assert daemon.ctl("reload").returncode == 0
    assert daemon.game("CartPole-v1")["state"] in ("QUEUED", "STARTING", "RUNNING")


def test_stop_of_a_stopped_game_is_already_steady(daemon: Daemon) -> None:
    assert daemon.ctl("stop", "Acrobot-v1", "--wait").returncode == 0
    out = daemon.ctl("stop", "Acrobot-v1", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Acrobot-v1: STOPPED (after 0.0s)")
    out = daemon.ctl("start", "Acrobot-v1", "--wait")
    assert out.returncode == 0 and "RUNNING" in out.stdout, out


def test_start_that_ends_fatal_prints_the_reason_and_exits_1(tmp_path: Path) -> None:
    # A trainer argument the trainer refuses (exit 2, bad arguments): FATAL at once, no retry.
    spec = daemon_profile({"CartPole-v1": 1_000_000}, slots=1).but(
        trainer_args=["--stop-avg100", "nan"]
    )
    d = Daemon(tmp_path / "state", spec.write(tmp_path / "profile.yaml")).start()
    try:
        d.wait_for("CartPole-v1 FATAL", lambda: d.game("CartPole-v1")["state"] == "FATAL")
        out = d.ctl("start", "CartPole-v1", "--wait")  # start clears FATAL; it fails again
        assert out.returncode == 1, (out.stdout, out.stderr)
        line = out.stdout.strip()
        assert line.startswith("CartPole-v1: FATAL (after "), line
        assert "trainer exit code 2 (" in line, line
        assert json.loads(d.ctl("start", "CartPole-v1", "--wait", "--json").stdout)["ok"] is False
    finally:
        d.stop()


# ------------------------------------------------------------------ the loop, on a fake clock


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_wait_steady_passes_transient_states_and_times_out_naming_the_game() -> None:
    clock = _Clock()
    script = iter(["STOPPING", "STOPPING", "STARTING", "RUNNING"])
    reached = wait_steady(
        ["Pong"], lambda: {"games": [{"game": "Pong", "state": next(script), "pid": 7}]}, 10,
        monotonic=clock.monotonic, sleep=clock.sleep,
    )  # fmt: skip
    assert [(r.game, r.state) for r in reached] == [("Pong", "RUNNING")]
    assert reached[0].after_s == pytest.approx(0.75)

    with pytest.raises(WaitTimeout, match=r"--wait 2s ran out: Pong still STARTING"):
        wait_steady(["Pong"], lambda: {"games": [{"game": "Pong", "state": "STARTING"}]}, 2,
                    monotonic=clock.monotonic, sleep=clock.sleep)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["stop", "--wait", "Pong"], ["stop", "--wait=120", "Pong"]),
        (["stop", "--wait", "30", "Pong"], ["stop", "--wait", "30", "Pong"]),
        (["stop", "--wait", "2m", "Pong"], ["stop", "--wait", "2m", "Pong"]),
        (["stop", "Pong", "--wait"], ["stop", "Pong", "--wait"]),
        (["stop", "--wait", "--json", "Pong"], ["stop", "--wait", "--json", "Pong"]),
    ],
)
def test_wait_without_seconds_before_a_game(argv: list[str], want: list[str]) -> None:
    assert attach_wait_value(argv) == want


@pytest.mark.parametrize(
    "profile",
    [str(DEFAULT_PROFILE), "/v/lib/python3.11/site-packages/daemon/shipped/profiles/a.yaml"],
)
def test_done_hint_on_the_packaged_default_says_copy_it(profile: str) -> None:
    # Editing the packaged default would be lost on the next install; reload re-reads it.
    hint = done_hint({"game": "Pong", "episodes": 10, "target": 10}, profile)
    assert hint == (
        "Pong: DONE, nothing to start: its target is reached (10/10 episodes). To train on, "
        f"copy the default profile ({profile}), raise its target in the copy and restart "
        "atari-supervisord with --profile COPY"
    )
