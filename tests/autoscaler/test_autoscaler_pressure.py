"""Pressure-aware autoscaling: the pure guards of autoscaler/shedding.py with plain numbers, and
the shed edge, the bottom-rung pause and the shed cooldown through the real supervisor, fed by
the real ``PressureProbe`` reading a fixture /proc tree (the kernel's files are the boundary;
tests/daemon/test_pressure.py reads this machine's real ones)."""

from __future__ import annotations

import dataclasses
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.autoscaler import Autoscaler
from daemon.autoscaler.shedding import (
    GpuReading,
    LevelSize,
    Reading,
    project,
    signals_over,
    sustained,
)
from daemon.clock import FakeClock
from daemon.config import PressurePolicy
from daemon.pressure import PressureProbe
from daemon.process import ProcessManager, State
from daemon.store import Store
from daemon.supervisor import Check, Supervisor
from tests.support.fake_os import FakeOs
from tests.support.profiles import MANAGER_PROFILE

P = PressurePolicy()  # the defaults: 10% PSI full, 5% available, 95% GPU memory, 2 min


# -- pure guards ---------------------------------------------------------------------------------


def test_each_signal_names_its_value_and_threshold() -> None:
    hot = GpuReading(0, 79_000, 80_000, temperature_c=88, slowdown_c=87)
    r = Reading(at=0, mem_psi_full=23.5, available_mb=200, total_mb=8000, gpus=(hot,))
    over = signals_over(r, P)
    assert over["memory_psi"] == "memory PSI full avg10 23.5% > memory_psi_full_pct=10%"
    assert over["mem_available"] == "MemAvailable 2.5% of 8000 MiB < mem_available_min_pct=5%"
    assert over["gpu_memory"] == "GPU0 memory 98.8% > gpu_memory_max_pct=95%"
    assert over["gpu_limit"] == "GPU0 at 88C >= its slowdown temperature 87C (gpu_throttle=true)"
    calm = Reading(at=0, mem_psi_full=9.9, available_mb=500, total_mb=8000,
                   gpus=(GpuReading(0, 1000, 80_000, power_w=250, power_limit_w=300,
                                    throttle=("gpu_idle",)),))  # fmt: skip
    assert signals_over(calm, P) == {}
    capped = GpuReading(1, 1000, 80_000, power_w=299, power_limit_w=300)
    assert "GPU1 power 299/300 W >= gpu_power_limit_pct=98%" in signals_over(
        Reading(at=0, gpus=(capped,)), P)["gpu_limit"]  # fmt: skip
    throttled = GpuReading(0, 1000, 80_000, throttle=("hw_thermal",))
    assert signals_over(Reading(at=0, gpus=(throttled,)), P)["gpu_limit"].startswith(
        "GPU0 throttled (hw_thermal")
    off = dataclasses.replace(P, gpu_throttle=False)
    assert signals_over(Reading(at=0, gpus=(throttled,)), off) == {}


def _psi(at: float, v: float) -> Reading:
    return Reading(at=at, mem_psi_full=v, available_mb=4000, total_mb=8000)


def test_pressure_must_last_shed_after_in_every_reading() -> None:
    rs = [_psi(t, 30.0) for t in range(0, 121, 30)]
    found = sustained(rs, P, now=120, since=0, need_s=120)
    assert found is not None and found.signal == "memory_psi" and found.lasted_s == 120
    assert found.reason(P).endswith("for 2 min >= shed_after=2 min")
    assert sustained(rs[:-1], P, now=90, since=0, need_s=120) is None  # 90 s is not enough
    dip = [*rs[:2], _psi(60, 5.0), *rs[3:]]
    assert sustained(dip, P, now=120, since=0, need_s=120) is None  # one calm reading resets
    # Only the level's own readings count, and stale telemetry never sheds.
    assert sustained(rs, P, now=120, since=30, need_s=120) is None
    assert sustained(rs, P, now=120 + P.shed_after + 1, since=0, need_s=120) is None


def test_projection_scales_what_trainers_use_to_the_next_level() -> None:
    sizes = {"light": LevelSize(2, 1000.0), "medium": LevelSize(3, 1500.0)}
    r = Reading(at=0, available_mb=2000, total_mb=10_000, trainers_rss_mb=(800.0, 1200.0))
    proj = project(r, "light", "medium", sizes, reserve_pct=10)
    assert proj is not None
    # 1000 MiB measured per trainer x 1.5 (medium's per-game estimate / light's) x 3 games
    assert proj.projected_mb == 4500 and proj.per_trainer_mb == 1500
    # room: 2000 available + 2000 the trainers give back - 10% of 10000
    assert proj.room_mb == 3000 and proj.headroom_mb == -1500 and not proj.fits
    assert "projected footprint of medium 4.39 GiB (3 trainers x 1.46 GiB, measured" in proj.text()
    assert "headroom -1.46 GiB" in proj.text()
    roomy = dataclasses.replace(r, available_mb=8000)
    assert project(roomy, "light", "medium", sizes, 10).fits  # type: ignore[union-attr]
    # No trainer measured yet: the profile's estimate.
    est = project(dataclasses.replace(r, trainers_rss_mb=()), "light", "medium", sizes, 10)
    assert est is not None and est.projected_mb == 4500 and "profile estimate" in est.basis
    # GPU memory counts the same way.
    g = dataclasses.replace(roomy, gpus=(GpuReading(0, 70_000, 80_000),),
                            trainers_gpu_mb=(20_000.0, 20_000.0))  # fmt: skip
    gp = project(g, "light", "medium", sizes, 10)
    assert gp is not None and gp.gpu_projected_mb == 90_000 and gp.gpu_room_mb == 42_000
    assert not gp.fits


# -- through the supervisor ----------------------------------------------------------------------


class ProcTree:
    """A fixture /proc for the real PressureProbe: the test sets memory PSI and MemAvailable."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        (self.proc / "self").mkdir(parents=True)
        (self.proc / "pressure").mkdir()
        (self.proc / "self" / "cgroup").write_text("0::/\n")
        (self.proc / "vmstat").write_text("pswpin 0\npswpout 0\noom_kill 0\n")
        self.set(psi_full=0.0, available_kb=6_000_000)

    def set(self, *, psi_full: float, available_kb: int = 6_000_000) -> None:
        line = f"some avg10={psi_full:.2f} avg60=0 avg300=0 total=0\n"
        (self.proc / "pressure" / "memory").write_text(
            line + f"full avg10={psi_full:.2f} avg60=0 avg300=0 total=0\n")
        (self.proc / "pressure" / "io").write_text(line + line.replace("some", "full"))
        (self.proc / "pressure" / "cpu").write_text(line)
        (self.proc / "meminfo").write_text(
            f"MemTotal: 8000000 kB\nMemAvailable: {available_kb} kB\n")


PRESSURE = {"shed_after": "60s", "pause_after": "90s", "memory_psi_full_pct": 10}


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Supervisor, Autoscaler, FakeOs, FakeClock, ProcTree]]:
    spec = MANAGER_PROFILE.but(start_level="medium").section(
        "autoscaler", ladder=["light", "medium"], pressure=PRESSURE, promote_after="10m")
    profile = spec.load(tmp_path / "p.yaml")
    clock, fake, tree = FakeClock(), FakeOs(), ProcTree(tmp_path)
    store = Store.open(tmp_path / "atari.db")
    boot = tmp_path / "boot_id"
    boot.write_text(str(uuid.uuid4()))
    scaler = Autoscaler(profile.autoscaler, store, clock, start_level="medium", boot_id_path=boot)
    scaler.set_levels(profile)
    scaler.record_boot()
    scaler.restore()
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs",
                         scaler.current_level())  # fmt: skip
    mgr.restore()
    probe = PressureProbe(tree.proc, tmp_path / "no-cgroup", under_systemd=False)
    s = Supervisor(profile, store, clock, mgr, scaler, pressure=probe)
    s.loop_once()
    clock.advance(profile.startsecs)
    s.loop_once()
    yield s, scaler, fake, clock, tree
    store.close()


def tick(s: Supervisor, clock: FakeClock, seconds: float = 30.0) -> None:
    clock.advance(seconds)
    s.post(Check("telemetry"))
    s.loop_once(timeout=0.01)


def exit_stopping(s: Supervisor, fake: FakeOs) -> list[str]:
    """The SIGTERMed trainers checkpoint and exit 0."""
    names = []
    for g in s.manager.games.values():
        if g.state is State.STOPPING:
            assert signal.SIGTERM in fake.sent(g.proc.pid)
            fake.exits[g.proc.pid] = 0
            names.append(g.name)
    s.loop_once(timeout=0.01)
    return names


def level_rows(s: Supervisor) -> list[dict[str, Any]]:
    return [d for d in s.store.decisions() if d["kind"] == "level"]


def test_sustained_memory_pressure_sheds_one_rung_and_the_cooldown_grows(box) -> None:
    s, scaler, fake, clock, tree = box
    assert s.manager.level == "medium" and len(s.manager.games) == 3
    tree.set(psi_full=35.0)
    tick(s, clock)
    tick(s, clock)  # 30 s over: not yet
    assert scaler.state == "medium"
    tick(s, clock)  # 60 s over: shed_after reached
    assert scaler.state == "light" and s.manager.level == "light"
    shed = level_rows(s)[-1]
    assert shed["reason"].startswith(
        "shed: memory PSI full avg10 35.0% > memory_psi_full_pct=10% for 1 min >= shed_after="
        "1 min; medium -> light; counts as a failed promotion: no promotion for 2 h (failed "
        "promotions: 1)"
    ), shed["reason"]
    # The trainers stop with SIGTERM (they checkpoint) and come back at light's settings.
    assert sorted(exit_stopping(s, fake)) == ["Breakout", "CartPole-v1", "Pong"]
    assert sum(g.state is State.STARTING for g in s.manager.games.values()) == 2
    level = scaler.status()
    assert level["failed_promotions"] == 1
    assert level["pressure"]["shed_cooldown_until"] == pytest.approx(clock.now() + 7200)
    assert level["pressure"]["thresholds"]["memory_psi_full_pct"] == 10.0


def test_pressure_at_the_bottom_rung_pauses_the_newest_game(box) -> None:
    s, scaler, fake, clock, tree = box
    tree.set(psi_full=35.0)
    for _ in range(3):
        tick(s, clock)
    exit_stopping(s, fake)
    assert scaler.state == "light"
    newest = max((g for g in s.manager.games.values() if g.proc is not None),
                 key=lambda g: (g.started_mono, g.index))  # fmt: skip
    for _ in range(3):  # 90 s at light: pause_after reached
        tick(s, clock)
    assert newest.state is State.STOPPING
    assert newest.reason.startswith("paused under pressure (pause: memory PSI full avg10 35.0%")
    assert exit_stopping(s, fake) == [newest.name]
    # Requeued, and its slot stays taken while the pressure lasts: one trainer runs.
    assert newest.state is State.QUEUED
    assert sum(g.proc is not None for g in s.manager.games.values()) == 1
    assert level_rows(s)[-1]["reason"].startswith("pause: memory PSI full avg10 35.0%")
    # `atarictl status` says why it waits.
    from daemon.atarictl.formatting import format_status

    shown = format_status(s.cmd_status({}))
    assert f"{newest.name} paused under pressure (pause: memory PSI full avg10 35.0%" in shown
    # Pressure gone: nothing more is paused; after pause_after of calm the slot comes back and
    # the paused game resumes from its checkpoint.
    tree.set(psi_full=0.0)
    for _ in range(2):
        tick(s, clock)
    assert sum(g.proc is not None for g in s.manager.games.values()) == 1
    tick(s, clock)
    assert level_rows(s)[-1]["reason"].startswith(
        "resume: no pressure signal over its threshold for 1.5 min (pause_after) at light")
    assert newest.state is State.STARTING
    assert sum(g.proc is not None for g in s.manager.games.values()) == 2


def test_low_memory_available_sheds_and_a_calm_box_does_not(box) -> None:
    s, scaler, _fake, clock, tree = box
    for _ in range(6):
        tick(s, clock)
    assert scaler.state == "medium"  # calm: 75% available, no PSI
    tree.set(psi_full=0.0, available_kb=200_000)
    for _ in range(3):
        tick(s, clock)
    assert scaler.state == "light"
    assert "MemAvailable 2.5% of 7812 MiB < mem_available_min_pct=5%" in level_rows(s)[-1]["reason"]


def test_pressure_thresholds_are_validated(tmp_path: Path) -> None:
    from daemon.config import ProfileError

    bad = MANAGER_PROFILE.section("autoscaler", ladder=["light", "medium"],
                                  pressure={"memory_psi_full_pct": 150})  # fmt: skip
    with pytest.raises(ProfileError, match=r"p.yaml:\d+: autoscaler.pressure.memory_psi_full_pct: "
                                           r"must be <= 100, got 150"):  # fmt: skip
        bad.load(tmp_path / "p.yaml")
    from daemon.config import load_profile

    inf = tmp_path / "q.yaml"
    inf.write_text(bad.text().replace("memory_psi_full_pct: 150", "guard_reserve_pct: .inf"))
    with pytest.raises(ProfileError, match="guard_reserve_pct: must be a finite number"):
        load_profile(inf)


def test_the_guard_refuses_a_promotion_that_does_not_fit(tmp_path: Path) -> None:
    spec = MANAGER_PROFILE.section(
        "autoscaler", ladder=["light", "medium"], pressure=PRESSURE, promote_after="10m")
    profile = spec.load(tmp_path / "p.yaml")
    clock, fake, tree = FakeClock(), FakeOs(), ProcTree(tmp_path)
    # 37% available is no pressure, but medium's three trainers (the profile's estimate: no
    # trainer of the fake seam has an RSS) do not fit in it less the 10% reserve.
    tree.set(psi_full=0.0, available_kb=3_000_000)
    store = Store.open(tmp_path / "atari.db")
    boot = tmp_path / "boot_id"
    boot.write_text(str(uuid.uuid4()))
    scaler = Autoscaler(profile.autoscaler, store, clock, boot_id_path=boot)
    scaler.set_levels(profile)
    scaler.record_boot()
    scaler.restore()
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs",
                         scaler.current_level())  # fmt: skip
    mgr.restore()
    s = Supervisor(profile, store, clock, mgr, scaler,
                   pressure=PressureProbe(tree.proc, tmp_path / "no-cgroup", under_systemd=False))
    s.loop_once()
    for _ in range(25):  # 12.5 min at light, two trainers running: promotion is due
        tick(s, clock)
    s.post(Check("stability"))
    s.loop_once(timeout=0.01)
    assert scaler.state == "light"
    refused = level_rows(s)[-1]["reason"]
    assert refused.startswith("promote refused: projected footprint of medium 4.83 GiB (3 trainers"
                              " x 1.61 GiB, profile estimate"), refused  # fmt: skip
    assert "room 2.10 GiB, headroom -2.73 GiB" in refused and "guard_reserve_pct=10%" in refused
    shown = scaler.status()["pressure"]["projection"]
    assert shown["fits"] is False and shown["level"] == "medium"
    # What `atarictl level` prints: every threshold, and the guard's projection.
    from daemon.atarictl.cli import _describe_level

    text = _describe_level(scaler.status()).splitlines()
    assert text[1].startswith("pressure thresholds: shed_after=1m00s memory_psi_full_pct=10.0")
    assert "guard_reserve_pct=10.0" in text[1] and text[2] == "pressure now: none over threshold"
    assert text[3].startswith("promotion guard: projected footprint of medium 4.83 GiB")
    assert text[3].endswith("(does NOT fit: promotion refused)")
    # The guard off: the same box promotes.
    scaler.watch.policy = dataclasses.replace(scaler.watch.policy, guard=False)
    s.post(Check("stability"))
    s.loop_once(timeout=0.01)
    assert scaler.state == "medium"
    store.close()
