"""A week in the life under pressure: the real autoscaler on a simulated box whose physics is a
script, run once with today's reboot-counting policy and once pressure-aware, on the same trace.

The box (tests/support/autoscaler_box.py: fake clock, fake boot-id file, real SQLite) gets a
telemetry reading every minute (``Autoscaler.observe``, as the supervisor does after each sample)
and a stability check every 5 minutes. A trace says, for the time of day and the level running
now, what the kernel and the GPU report and whether the box falls over (a thermal trip, the OOM
killer taking the box down): then it is down for ``DOWNTIME`` and reboots (``Box.reboot``).

Learning time lost, in trainer-hours: each reboot costs every slot the downtime, the work since
the last checkpoint (half of checkpoint_every = 90 s) and a restart; each level change (promote,
shed, fall back, recover) costs every slot a graceful stop, checkpoint and restart.

``python -m tests.support.pressure_week`` prints the table in docs/autoscaler.md.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.autoscaler import Decision
from daemon.autoscaler.shedding import GpuReading, LevelSize, Reading
from daemon.config import PressurePolicy
from tests.support.autoscaler_box import MIN, SLOTS, Box, policy

DOWNTIME = 5 * MIN
SINCE_CHECKPOINT = 45.0  # on average, half of checkpoint_every=90s
RESTART = 1 * MIN  # a trainer's stop, checkpoint and resume
STEP = 1 * MIN  # telemetry interval of the simulation
CHECK_EVERY = 5 * MIN  # checks.stability
DAY = 86400.0
START_HOUR = 8.0  # the week starts at 08:00

# Today's policy: no signal can cross its threshold and the guard is off.
REBOOT_COUNTING = PressurePolicy(
    memory_psi_full_pct=100.0, mem_available_min_pct=0.0, gpu_memory_max_pct=100.0,
    gpu_power_limit_pct=100.0, gpu_throttle=False, guard=False,
)  # fmt: skip
PRESSURE_AWARE = PressurePolicy()
SIZES = {"light": LevelSize(SLOTS, 3000.0), "medium": LevelSize(SLOTS, 6000.0)}


@dataclass
class Physics:
    """What the box reports and does: ``reading(hour, level, at_level_s, now)`` and
    ``falls_over(hour, level, at_level_s, now)`` (asked first); ``at_level_s`` is the time since
    the current level's trainers started (a leak starts over with them)."""

    name: str
    reading: Callable[[float, str, float, float], Reading]
    falls_over: Callable[[float, str, float, float], bool]


def _calm(now: float, avail_pct: float = 60.0, psi: float = 0.0, temp: float = 70.0) -> Reading:
    return Reading(
        at=now, mem_psi_full=psi, available_mb=avail_pct * 320.0, total_mb=32_000.0,
        gpus=(GpuReading(0, 20_000, 80_000, temperature_c=temp, slowdown_c=87.0),),
        trainers_rss_mb=(3000.0,) * SLOTS,
    )  # fmt: skip


def _afternoon(hour: float) -> bool:
    return 13.0 <= hour < 17.0


def overheating() -> Physics:
    """Every afternoon (13:00-17:00) medium heats the GPU to its slowdown temperature; after 12
    minutes there the box trips and reboots (with the downtime, one reboot every 17 minutes, the
    customer's "every 15-20 minutes"). Light stays cool."""
    state: dict[str, float | None] = {"hot_since": None}

    def hot(hour: float, level: str) -> bool:
        return _afternoon(hour) and level == "medium"

    def reading(hour: float, level: str, at_level: float, now: float) -> Reading:
        if not hot(hour, level):
            state["hot_since"] = None
            return _calm(now)
        if state["hot_since"] is None:
            state["hot_since"] = now
        return _calm(now, temp=88.0)

    def falls_over(hour: float, level: str, at_level: float, now: float) -> bool:
        since = state["hot_since"]
        if since is not None and hot(hour, level) and now - since >= 12 * MIN:
            state["hot_since"] = None
            return True
        return False

    return Physics("overheats every afternoon", reading, falls_over)


def leaking() -> Physics:
    """Medium leaks memory: MemAvailable falls from 40% by 8 points an hour, memory PSI climbs as
    it nears zero, and at zero the box goes down (the trainers restart after it, so the leak
    starts over). Light does not leak."""

    def avail(level: str, at_level: float) -> float:
        return 60.0 if level != "medium" else max(0.0, 40.0 - 8.0 * at_level / 3600.0)

    def reading(hour: float, level: str, at_level: float, now: float) -> Reading:
        a = avail(level, at_level)
        return _calm(now, avail_pct=a, psi=max(0.0, (8.0 - a) * 6.0))

    def falls_over(hour: float, level: str, at_level: float, now: float) -> bool:
        return avail(level, at_level) <= 0.0

    return Physics("medium slowly leaks memory", reading, falls_over)


def fine() -> Physics:
    return Physics("a fine box", lambda h, lv, a, now: _calm(now), lambda h, lv, a, now: False)


@dataclass
class Outcome:
    reboots: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    hours: Counter[str] = field(default_factory=Counter)  # state -> hours (down: rebooting)
    lost_trainer_h: float = 0.0
    story: list[str] = field(default_factory=list)


def run_week(box: Box, physics: Physics, days: float = 7.0) -> Outcome:
    out = Outcome()
    t0 = box.clock.now()
    level_since = t0
    scaler = box.scaler
    scaler.watch.sizes = dict(SIZES)

    def record(d: Decision | None) -> None:
        nonlocal level_since
        if d is None:
            return
        trigger = d.reason.split(":", 1)[0]
        out.decisions[trigger] += 1
        hour = ((box.clock.now() - t0) / 3600.0 + START_HOUR)
        out.story.append(f"day {int(hour // 24) + 1} {hour % 24:05.2f}h {d.reason}")
        if d.level_changed:
            level_since = box.clock.now()
            out.lost_trainer_h += SLOTS * RESTART / 3600.0

    def apply(d: Decision | None) -> None:
        if d is not None and d.trigger != "check":
            box.decisions.append(d)
            if d.level_changed and hasattr(box, "fill"):
                box.fill()  # the trainers restart at the new level (runs in the store)
        record(d)

    since_check = 0.0
    while box.clock.now() - t0 < days * DAY:
        box.clock.advance(STEP)
        since_check += STEP
        now = box.clock.now()
        hour = ((now - t0) / 3600.0 + START_HOUR) % 24
        level = box.scaler.current_level()
        out.hours[box.scaler.state] += STEP / 3600.0
        if physics.falls_over(hour, level, now - level_since, now):
            out.reboots += 1
            out.lost_trainer_h += SLOTS * (DOWNTIME + SINCE_CHECKPOINT + RESTART) / 3600.0
            box.clock.advance(DOWNTIME)
            out.hours["down"] += DOWNTIME / 3600.0
            out.story.append(f"day {int(((now - t0) / 3600 + START_HOUR) // 24) + 1} "
                             f"{hour:05.2f}h reboot at {level}")  # fmt: skip
            d = box.reboot()  # record the boot, restore, check
            box.scaler.watch.sizes = dict(SIZES)
            level_since = box.clock.now()
            record(d)
            continue
        apply(box.scaler.observe(now, physics.reading(hour, level, now - level_since, now)))
        if since_check >= CHECK_EVERY:
            since_check = 0.0
            d = box.scaler.check()
            if d is not None:
                box.decisions.append(d)
                if d.level_changed and hasattr(box, "fill"):
                    box.fill()
            record(d)
    return out


def compare(tmp: Path, physics: Callable[[], Physics], days: float = 7.0) -> dict[str, Outcome]:
    out = {}
    for name, pressure in (("reboot counting", REBOOT_COUNTING),
                           ("pressure-aware", PRESSURE_AWARE)):  # fmt: skip
        pol = dataclasses.replace(policy(), pressure=pressure)
        box = Box(tmp / f"{physics.__name__}-{name.replace(' ', '-')}", pol)
        try:
            out[name] = run_week(box, physics(), days)
        finally:
            box.store.close()
    return out


def table(results: dict[str, dict[str, Outcome]]) -> str:
    rows = ["| box | policy | reboots | decisions | h at medium / light / fallback / down "
            "| learning lost (trainer-h) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for box, by_policy in results.items():
        for pol, o in by_policy.items():
            decisions = ", ".join(f"{k} {v}" for k, v in sorted(o.decisions.items())) or "-"
            h = o.hours
            rows.append(
                f"| {box} | {pol} | {o.reboots} | {decisions} | {h['medium']:.1f} / "
                f"{h['light']:.1f} / {h['fallback']:.1f} / {h['down']:.1f} | "
                f"{o.lost_trainer_h:.1f} |"
            )
    return "\n".join(rows)


def main() -> int:
    days = float(sys.argv[1]) if len(sys.argv) > 1 else 7.0
    with tempfile.TemporaryDirectory() as tmp:
        results = {p().name: compare(Path(tmp), p, days) for p in (overheating, leaking, fine)}
    print(table(results))
    if "-v" in sys.argv:
        for box, by_policy in results.items():
            for pol, o in by_policy.items():
                print(f"\n## {box}, {pol}")
                print("\n".join(o.story))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
