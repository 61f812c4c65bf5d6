"""The autoscaler on a real SQLite store, driven by a fake clock and a fake boot-id file."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daemon.autoscaler import Autoscaler, PinError
from daemon.autoscaler.repository import AutoscalerRepository
from daemon.config import CrashStorm
from daemon.store.schema import Outcome
from tests.support.autoscaler_box import HOUR, MIN, Box, policy

MakeBox = Callable[..., Box]


def climb_to_medium(box: Box) -> None:
    box.elapse(HOUR)
    assert box.state == "medium"


def test_sixty_stable_minutes_promote_light_to_medium(make_box: MakeBox) -> None:
    box = make_box()
    assert box.state == "light"
    assert box.elapse(59 * MIN, every=MIN) == []
    assert box.state == "light"
    box.clock.advance(MIN)
    decision = box.check()
    assert decision is not None
    assert (decision.from_state, decision.to_state, decision.trigger) == (
        "light",
        "medium",
        "promote",
    )
    assert decision.level_changed and not decision.demotion
    assert decision.reason.startswith(
        "promote: stable and loaded 60 min at light (2 trainers running, of 60 min stable) "
        ">= promote_after=60 min"
    )
    assert box.scaler.current_level() == "medium"


def test_four_reboots_within_an_hour_fall_back_and_three_do_not(make_box: MakeBox) -> None:
    box = make_box()
    climb_to_medium(box)
    for _ in range(3):
        box.clock.advance(10 * MIN)
        assert box.reboot() is None
    assert box.state == "medium"
    box.clock.advance(10 * MIN)
    decision = box.reboot()
    assert decision is not None
    assert (decision.from_state, decision.to_state) == ("medium", "fallback")
    assert decision.demotion and decision.level_changed
    assert decision.reason.startswith("fallback: 4 reboots in 60 min > max_reboots=3")
    assert box.scaler.current_level() == "light"


def test_three_reboots_per_hour_for_hours_keep_medium(make_box: MakeBox) -> None:
    box = make_box()
    climb_to_medium(box)
    for _ in range(12):  # one every 20 minutes: never more than three in a window
        box.clock.advance(20 * MIN)
        box.reboot()
    assert box.state == "medium"


def test_cooldown_moves_fallback_to_light_and_promotion_needs_a_new_window(
    make_box: MakeBox,
) -> None:
    box = make_box()
    climb_to_medium(box)
    for _ in range(4):
        box.clock.advance(MIN)
        box.reboot()
    assert box.state == "fallback"
    assert box.elapse(2 * HOUR - 5 * MIN) == []
    assert box.state == "fallback"
    [recover] = box.elapse(5 * MIN)
    assert (recover.trigger, recover.from_state, recover.to_state) == (
        "recover",
        "fallback",
        "light",
    )
    assert not recover.level_changed  # fallback already ran light's settings
    assert "cooldown=2 h" in recover.reason
    assert box.elapse(HOUR - 5 * MIN) == []
    assert box.state == "light"
    [promote] = box.elapse(5 * MIN)
    assert promote.to_state == "medium"


def test_a_reboot_in_fallback_restarts_the_cooldown(make_box: MakeBox) -> None:
    box = make_box()
    climb_to_medium(box)
    for _ in range(4):
        box.clock.advance(MIN)
        box.reboot()
    box.elapse(HOUR)
    box.reboot()
    assert box.elapse(2 * HOUR - 5 * MIN) == []
    assert box.state == "fallback"
    box.elapse(5 * MIN)
    assert box.state == "light"


def fall_back_from_medium(box: Box) -> float:
    """Climb to medium, reboot four times, return the cooldown the fallback got."""
    box.elapse(HOUR)
    assert box.state == "medium"
    for _ in range(4):
        box.clock.advance(MIN)
        box.reboot()
    assert box.state == "fallback"
    cooldown = box.scaler.status()["cooldown_s"]
    box.elapse(cooldown)
    assert box.state == "light"
    return float(cooldown)


def test_each_failed_promotion_doubles_the_cooldown_up_to_the_cap(make_box: MakeBox) -> None:
    box = make_box(cooldown_max=10 * HOUR)
    cooldowns = [fall_back_from_medium(box) / HOUR for _ in range(5)]
    assert cooldowns == [2, 4, 8, 10, 10]
    assert box.scaler.status()["failed_promotions"] == 5


def test_a_long_stable_run_resets_the_cooldown(make_box: MakeBox) -> None:
    box = make_box(stable_reset_after=24 * HOUR)
    fall_back_from_medium(box)
    fall_back_from_medium(box)
    box.elapse(HOUR)
    assert box.state == "medium"
    assert box.scaler.status()["failed_promotions"] == 2
    box.elapse(24 * HOUR - 5 * MIN)  # medium was entered at the end of that hour
    assert box.scaler.status()["failed_promotions"] == 2
    box.elapse(5 * MIN)
    status = box.scaler.status()
    assert (status["failed_promotions"], status["cooldown_s"]) == (0, 2 * HOUR)
    reasons = [d.reason for d in AutoscalerRepository(box.store).decisions(("level",))]
    assert any(r.startswith("cooldown reset: stable 24 h at medium") for r in reasons)
    assert fall_back_from_medium(box) == 2 * HOUR


def test_pin_stops_automatic_moves_and_unpin_resumes_them(make_box: MakeBox) -> None:
    box = make_box()
    decision = box.scaler.pin("light")
    assert decision.kind == "operator" and not decision.level_changed
    assert box.elapse(3 * HOUR) == []
    for _ in range(5):
        box.clock.advance(MIN)
        assert box.reboot() is None
    assert box.state == "light" and box.scaler.status()["pinned"] == "light"
    box.scaler.unpin()
    assert box.scaler.status()["pinned"] is None
    box.clock.advance(MIN)
    # The first check after unpin moves: five reboots in the last hour count once unpinned.
    decision = box.check()
    assert decision is not None, "unpinned, the reboots during the pin must count"
    assert (decision.from_state, decision.to_state) == ("light", "fallback")
    assert "reboot" in decision.reason, decision.reason
    assert box.state == "fallback"


def test_pin_moves_to_the_pinned_level_and_survives_a_restart(make_box: MakeBox) -> None:
    box = make_box()
    decision = box.scaler.pin("medium")
    assert (decision.from_level, decision.to_level, decision.level_changed) == (
        "light",
        "medium",
        True,
    )
    assert box.scaler.current_level() == "medium"
    box.restart_daemon()
    assert (box.state, box.scaler.status()["pinned"]) == ("medium", "medium")
    with pytest.raises(
        PinError,
        match=r"^pin: unknown level 'huge'; choose one of light, "
        r"medium, fallback$",
    ):
        box.scaler.pin("huge")
    down = box.scaler.pin("fallback")
    assert down.demotion and box.scaler.current_level() == "light"


def test_profile_pin_is_applied_at_start(make_box: MakeBox) -> None:
    box = make_box(pinned="medium")
    assert (box.state, box.scaler.status()["pinned"]) == ("medium", "medium")
    assert box.elapse(2 * HOUR) == []


def test_profile_pin_off_the_ladder_is_refused_not_fatal(make_box: MakeBox) -> None:
    box = make_box(pinned="heavy")  # a profile level, but not on this ladder
    assert (box.state, box.scaler.status()["pinned"]) == ("light", None)
    box.elapse(HOUR)
    assert box.state == "medium"


def test_one_change_per_check(make_box: MakeBox) -> None:
    box = make_box(ladder=("light", "medium", "heavy"))
    box.clock.advance(5 * HOUR)  # long enough for two promotions, but only one per check
    first = box.check()
    assert first is not None and first.to_state == "medium"
    assert box.check() is None  # medium's own window starts at its entry
    box.clock.advance(HOUR)
    assert box.check() is not None and box.state == "heavy"


def test_fall_back_wins_over_promotion_in_the_same_check(make_box: MakeBox) -> None:
    box = make_box()
    box.clock.advance(2 * HOUR)
    for _ in range(4):
        box.boot_file.write_text(f"reboot-{box.clock.now()}\n")
        box.clock.advance(1)
        box.scaler = Autoscaler(box.policy, box.store, box.clock, boot_id_path=box.boot_file)
        box.scaler.record_boot()
        box.scaler.restore()
    decision = box.check()
    assert decision is not None and decision.to_state == "fallback"
    assert box.check() is None


def test_a_crash_storm_falls_back(make_box: MakeBox) -> None:
    box = make_box(crash_storm=CrashStorm(crashes=3, window=10 * MIN))
    climb_to_medium(box)
    box.crash()
    box.clock.advance(MIN)
    box.crash()
    assert box.check() is None
    box.clock.advance(MIN)
    box.crash()
    decision = box.check()
    assert decision is not None and decision.to_state == "fallback"
    assert decision.reason.startswith("fallback: 3 trainer crashes in 10 min")


def test_stops_that_end_in_sigkill_are_not_crashes(make_box: MakeBox) -> None:
    box = make_box(crash_storm=CrashStorm(crashes=2, window=10 * MIN))
    climb_to_medium(box)
    for _ in range(3):
        box.clock.advance(MIN)
        box.crash(reason="level change: killed by SIGKILL after stop_grace=30s", code=None,
                  sig="SIGKILL", outcome=Outcome.STOPPED)  # fmt: skip
        box.crash(reason="operator stop: exit 0", code=0, outcome=Outcome.STOPPED)
        box.crash(reason="ended while the daemon was down", code=None, outcome=Outcome.UNKNOWN)
    assert box.check() is None and box.state == "medium"
    # The outcome decides, not the wording of the reason.
    box.crash(reason="failed start: exit 1", code=1)
    box.crash(reason="any wording at all", code=None, sig="SIGSEGV")
    decision = box.check()
    assert decision is not None and decision.to_state == "fallback"


@pytest.mark.parametrize("where", ["light", "medium", "fallback", "pinned", "doubled"])
def test_state_survives_a_daemon_restart_in_every_state(make_box: MakeBox, where: str) -> None:
    box = make_box()
    if where in ("medium", "fallback", "doubled"):
        climb_to_medium(box)
    if where in ("fallback", "doubled"):
        for _ in range(4):
            box.clock.advance(MIN)
            box.reboot()
    if where == "doubled":
        box.elapse(2 * HOUR)
        climb_to_medium(box)
        for _ in range(4):
            box.clock.advance(MIN)
            box.reboot()
    if where == "pinned":
        box.scaler.pin("medium")
    box.clock.advance(MIN)
    before = box.scaler.status()
    box.restart_daemon()
    after = box.scaler.status()
    for key in ("state", "level", "entered_at", "pinned", "cooldown_s", "failed_promotions"):
        assert after[key] == before[key], key
    # The entry side effect was re-armed: the level the daemon runs matches the restored state.
    assert box.scaler.current_level() == {
        "fallback": "light",
        "doubled": "light",
        "light": "light",
    }.get(where, "medium")
    if where == "doubled":
        assert after["cooldown_s"] == 4 * HOUR


def test_current_level_before_restore_is_an_error(make_box: MakeBox) -> None:
    box = make_box()
    fresh = Autoscaler(box.policy, box.store, box.clock, boot_id_path=box.boot_file)
    with pytest.raises(RuntimeError, match="restore"):
        fresh.current_level()


def test_a_stored_state_missing_from_the_ladder_restarts_at_the_bottom(
    make_box: MakeBox,
) -> None:
    box = make_box(ladder=("light", "medium", "heavy"))
    box.scaler.pin("heavy")
    box.scaler.unpin()
    box.policy = box.policy.__class__(ladder=("light", "medium"))
    box.restart_daemon()
    assert box.state == "light"
    last = AutoscalerRepository(box.store).decisions(("level",))[-1]
    assert last.reason.startswith("restore: stored state 'heavy' is not in autoscaler.ladder")


def test_reload_adopts_a_new_ladder_and_windows(make_box: MakeBox) -> None:
    box = make_box()
    climb_to_medium(box)
    box.scaler.reload(policy(ladder=("light", "medium", "heavy"), promote_after=10 * MIN))
    assert box.state == "medium"
    box.clock.advance(10 * MIN)
    decision = box.check()
    assert decision is not None and decision.to_state == "heavy"
    assert "promote_after=10 min" in decision.reason
    box.scaler.reload(policy(ladder=("light", "medium")))
    assert (box.state, box.scaler.current_level()) == ("light", "light")
    last = AutoscalerRepository(box.store).decisions(("level",))[-1]
    assert last.reason == "reload: autoscaler policy updated; state heavy -> light"
    box.restart_daemon()  # the reloaded profile is the one the daemon starts with next time
    assert box.state == "light"


def test_three_rung_ladder_climbs_and_falls_back_without_code_changes(make_box: MakeBox) -> None:
    box = make_box(ladder=("light", "medium", "heavy"))
    moves = box.elapse(2 * HOUR)
    assert [(d.from_state, d.to_state) for d in moves] == [("light", "medium"), ("medium", "heavy")]
    assert box.scaler.current_level() == "heavy"
    assert box.elapse(5 * HOUR) == []  # top rung: nothing to climb to
    for _ in range(4):
        box.clock.advance(MIN)
        box.reboot()
    assert box.state == "fallback" and box.scaler.current_level() == "light"
    box.elapse(2 * HOUR)
    assert box.state == "light"


def test_every_decision_is_stored_with_its_reason(make_box: MakeBox) -> None:
    box = make_box()
    climb_to_medium(box)
    for _ in range(4):
        box.clock.advance(MIN)
        box.reboot()
    rows = AutoscalerRepository(box.store).decisions()
    story = [(r.kind, r.from_state, r.to_state) for r in rows if r.kind != "boot"]
    assert story == [
        ("level", None, "light"),
        ("level", "light", "medium"),
        ("level", "medium", "fallback"),
    ]
    assert sum(1 for r in rows if r.kind == "boot") == 5  # first boot + four reboots
    assert all(r.reason for r in rows)
