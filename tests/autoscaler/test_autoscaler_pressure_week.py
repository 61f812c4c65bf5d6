"""Week-in-the-life traces under pressure (tests/support/pressure_week.py), shortened to keep CI
fast: the same trace played by today's reboot-counting policy and the pressure-aware one. The
full week's table in docs/autoscaler.md comes from ``python -m tests.support.pressure_week``."""

from __future__ import annotations

from pathlib import Path

from tests.support.pressure_week import compare, fine, leaking, overheating


def test_a_box_that_overheats_every_afternoon_sheds_instead_of_rebooting(tmp_path: Path) -> None:
    r = compare(tmp_path, overheating, days=2)
    today, aware = r["reboot counting"], r["pressure-aware"]
    # Today: four thermal trips an hour before the fallback, every afternoon.
    assert today.reboots == 8 and today.decisions["fallback"] == 2
    assert aware.reboots == 0 and aware.decisions["shed"] >= 2
    assert all("GPU0 at 88C >= its slowdown temperature 87C" in line
               for line in aware.story if " shed: " in line)  # fmt: skip
    # Each shed doubles the cooldown: the second day's promotion comes later than the first's.
    promotes = [line for line in aware.story if " promote: " in line]
    assert len(promotes) >= 3
    assert aware.lost_trainer_h < today.lost_trainer_h / 4


def test_a_medium_that_leaks_memory_settles_at_light(tmp_path: Path) -> None:
    r = compare(tmp_path, leaking, days=1.5)
    today, aware = r["reboot counting"], r["pressure-aware"]
    # One OOM reboot every ~5 h is never a reboot storm: today's policy stays at medium.
    assert today.reboots >= 6 and today.decisions.get("fallback", 0) == 0
    assert aware.reboots == 0 and aware.hours["light"] > aware.hours["medium"]
    assert "memory PSI full avg10 12.0% > memory_psi_full_pct=10%" in next(
        line for line in aware.story if " shed: " in line)  # fmt: skip


def test_a_fine_box_is_treated_the_same_by_both(tmp_path: Path) -> None:
    r = compare(tmp_path, fine, days=1)
    today, aware = r["reboot counting"], r["pressure-aware"]
    assert today.decisions == aware.decisions == {"promote": 1}
    assert today.hours == aware.hours and today.lost_trainer_h == aware.lost_trainer_h
