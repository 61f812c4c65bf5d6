"""The autoscaler inside the real daemon: real trainer, real SQLite, a boot-id file we rewrite.

Story: the daemon starts at light, proves stable for ``promote_after`` and moves the trainer to
medium. Then the box "reboots" four times (new boot id, daemon restarted; the first stop is clean,
the other three are power cuts: daemon and trainer SIGKILLed). On the fourth start the autoscaler
falls back, the trainer restarts at light's settings with its episode counter intact, and the
decisions table tells the story.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from harness import TRAINER_ARGS, Daemon

pytestmark = pytest.mark.slow

GAME = "CartPole-v1"


def write_profile(tmp: Path, boot_file: Path) -> Path:
    path = tmp / "autoscaler-test.yaml"
    path.write_text(
        f"""\
games: {{{GAME}: 1000000}}
levels:
  light: {{games: 1, num_envs: 2, batch_size: 32, buffer_gb: 0.05}}
  medium: {{games: 1, num_envs: 4, batch_size: 64, buffer_gb: 0.05}}
start_level: light
autoscaler:
  ladder: [light, medium]
  promote_after: 5s
  max_reboots: 3
  window: 10m
  cooldown: 1h
checks: {{health: 1s, stability: 2s, telemetry: 30s, report: 1h}}
startsecs: 1s
stop_grace: 60s
frozen_after: 10m
checkpoint_every: 600s
device: cpu
trainer_args: {TRAINER_ARGS}
paths: {{boot_id_file: {boot_file}}}
"""
    )
    return path


@pytest.fixture
def box(tmp_path: Path) -> Iterator[dict[str, Any]]:
    boot_file = tmp_path / "boot_id"
    boot_file.write_text(f"{uuid.uuid4()}\n")
    profile = write_profile(tmp_path, boot_file)
    daemons: list[Daemon] = []
    yield {"tmp": tmp_path, "boot_file": boot_file, "profile": profile, "daemons": daemons}
    for d in daemons:
        d.cleanup()


def open_run(d: Daemon, after_id: int, level: str) -> Any:
    rows = d.query(
        "SELECT * FROM runs WHERE id > ? AND level = ? AND ended_at IS NULL ORDER BY id",
        after_id,
        level,
    )
    return rows[-1] if rows else None


def trainer_up(d: Daemon, pid: int) -> dict[str, Any] | None:
    p = d.progress(GAME)
    return p if p.get("pid") == pid and p.get("status") == "running" else None


def power_cut(d: Daemon, trainer_pid: int) -> None:
    """The box loses power: nobody gets to clean up."""
    assert d.proc is not None
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(trainer_pid, signal.SIGKILL)


def test_four_reboots_fall_back_and_trainers_restart_at_light(box: dict[str, Any]) -> None:
    tmp, boot_file, profile = box["tmp"], box["boot_file"], box["profile"]

    def start(name: str) -> Daemon:
        d = Daemon(tmp, profile, name).start()
        box["daemons"].append(d)
        return d

    first = start("daemon0")
    medium = first.wait_for("promotion to medium", lambda: open_run(first, 0, "medium"), 120)
    # An episode at medium before the stop: the counter must then survive the reboots (on a
    # loaded box the first progress file can come before the first episode).
    progress = first.wait_for(
        "an episode at medium",
        lambda: (p := trainer_up(first, medium["pid"])) and p["episodes"] > 0 and p,
        120,
    )
    assert progress["num_envs"] == 4
    assert first.stop() == 0
    episodes_before = first.progress(GAME)["episodes"]
    last_run = medium["id"]

    for reboot in range(1, 5):
        boot_file.write_text(f"{uuid.uuid4()}\n")
        d = start(f"daemon{reboot}")
        if reboot < 4:
            run = d.wait_for(f"medium after reboot {reboot}",
                             lambda d=d, after=last_run: open_run(d, after, "medium"),
                             120)  # fmt: skip
            last_run = run["id"]
            power_cut(d, run["pid"])

    light = d.wait_for("restart at light", lambda: open_run(d, last_run, "light"), 120)
    progress = d.wait_for("trainer at light", lambda: trainer_up(d, light["pid"]), 120)
    assert (light["num_envs"], light["batch_size"]) == (2, 32)
    assert progress["num_envs"] == 2
    assert progress["episodes"] >= episodes_before > 0  # resumed, counter intact
    assert d.stop() == 0

    story = [
        (r["from_state"], r["to_state"], r["reason"].split(":")[0])
        for r in d.query("SELECT * FROM decisions WHERE kind = 'level' ORDER BY id")
    ]
    # The machine's moves, in order (restore rows may sit between them).
    expected = iter([(None, "light", "start"), ("light", "medium", "promote"),
                     ("medium", "fallback", "fallback")])  # fmt: skip
    want = next(expected)
    for move in story:
        if move == want:
            want = next(expected, None)
    assert want is None, f"missing {want} in {story}"
    reasons = [r["reason"] for r in d.query("SELECT reason FROM decisions WHERE kind = 'level'")]
    assert [r for r in reasons if r.startswith("fallback:")] == [
        next(r for r in reasons if r.startswith("fallback: 4 reboots in 10 min > max_reboots=3"))
    ]
    # The supervisor tells the restart of the games once, naming the trigger, not the reason.
    # (The fallback needs no restart row: it is decided at start, before any game runs.)
    restarts = d.query("SELECT * FROM decisions WHERE kind = 'process' AND game IS NULL")
    assert [(r["from_state"], r["to_state"]) for r in restarts] == [("light", "medium")]
    assert restarts[0]["reason"].startswith("level change light -> medium (autoscaler promote): ")
    boots = d.query("SELECT * FROM boots ORDER BY id")
    assert [b["previous_clean_shutdown"] for b in boots] == [None, 1, 0, 0, 0]
    assert all(b["downtime_s"] is not None for b in boots[1:])
    state = d.query("SELECT * FROM level_state")[0]
    assert (state["state"], state["failed_promotions"]) == ("fallback", 1)
    levels = [r["level"] for r in d.query("SELECT level FROM runs ORDER BY id")]
    assert levels[-1] == "light" and "medium" in levels
