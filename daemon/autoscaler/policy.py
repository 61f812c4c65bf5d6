"""The autoscaler's guards: pure functions of (facts, policy, now), tested with plain numbers.

Nothing here reads a clock, a file or the database. The machine asks these functions whether a
transition may fire; ``reason_*`` functions word the decision so that it names the setting.

Instability means a reboot or a trainer crash storm. A single reboot restarts the stability clock;
only more than ``max_reboots`` reboots within ``window`` (or a crash storm) force a fall back. Only
events since the machine entered its current state count: a level is judged on its own record.

Stability also means the box carried the level's load: promotion counts only the time during
which at least ``demand`` trainers of the level ran (its slots, or as many games as remain
unfinished), from the runs the process manager stores. An idle box proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.autoscaler.states import FALLBACK
from daemon.config import AutoscalerPolicy


@dataclass(frozen=True)
class Facts:
    """What the guards may know; loaded from the store before every check."""

    state: str
    entered_at: float
    reboots: tuple[float, ...] = ()  # unix times of detected reboots, oldest first
    crashes: tuple[float, ...] = ()  # unix times of trainer crashes, oldest first
    cooldown_s: float = 0.0  # length of the current (or latest) fallback
    failed_promotions: int = 0  # fallbacks since the last long stable run
    pinned: str | None = None
    # The load: trainers the level runs when its slots are filled (min(slots, games that want
    # one)); None while unknown (the check at daemon start), and then nothing is promoted.
    demand: int | None = None
    runs: tuple[tuple[float, float | None], ...] = ()  # (start, end or None) of its trainers
    idle: str = ""  # why no game wants a slot, for the status line ("2 DONE")


def fmt_duration(seconds: float) -> str:
    """Short human duration used in reasons: 90 -> '1.5 min', 3600 -> '60 min', 7200 -> '2 h'."""
    if seconds >= 7200 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60:
        minutes = seconds / 60
        return f"{minutes:.0f} min" if minutes == int(minutes) else f"{minutes:.1f} min"
    return f"{seconds:g} s"


def _since_entry(times: tuple[float, ...], facts: Facts, now: float) -> list[float]:
    return [t for t in times if facts.entered_at <= t <= now]


def recent_reboots(facts: Facts, policy: AutoscalerPolicy, now: float) -> list[float]:
    return [t for t in _since_entry(facts.reboots, facts, now) if t > now - policy.window]


def recent_crashes(facts: Facts, policy: AutoscalerPolicy, now: float) -> list[float]:
    window = policy.crash_storm.window
    return [t for t in _since_entry(facts.crashes, facts, now) if t > now - window]


def last_crash_storm_at(facts: Facts, policy: AutoscalerPolicy, now: float) -> float | None:
    """The latest crash that completed a storm (``crashes`` crashes within its window)."""
    times = _since_entry(facts.crashes, facts, now)
    need, window = policy.crash_storm.crashes, policy.crash_storm.window
    for i in range(len(times) - 1, -1, -1):
        if sum(1 for t in times[: i + 1] if t > times[i] - window) >= need:
            return times[i]
    return None


def stable_since(facts: Facts, policy: AutoscalerPolicy, now: float) -> float:
    """Start of the current stable stretch: state entry, the last reboot or the last crash storm."""
    marks = [facts.entered_at, *_since_entry(facts.reboots, facts, now)]
    storm = last_crash_storm_at(facts, policy, now)
    if storm is not None:
        marks.append(storm)
    return max(marks)


def is_pinned(facts: Facts) -> bool:
    return facts.pinned is not None


def is_reboot_storm(facts: Facts, policy: AutoscalerPolicy, now: float) -> bool:
    return len(recent_reboots(facts, policy, now)) > policy.max_reboots


def has_crash_storm(facts: Facts, policy: AutoscalerPolicy, now: float) -> bool:
    return len(recent_crashes(facts, policy, now)) >= policy.crash_storm.crashes


def is_unstable(facts: Facts, policy: AutoscalerPolicy, now: float) -> bool:
    return is_reboot_storm(facts, policy, now) or has_crash_storm(facts, policy, now)


def running_at(facts: Facts, t: float) -> int:
    """Trainers of the level alive at ``t`` (a run that ends at ``t`` no longer counts)."""
    return sum(1 for s, e in facts.runs if s <= t and (e is None or e > t))


def loaded_time(facts: Facts, start: float, now: float) -> float:
    """Seconds of [start, now] during which at least ``demand`` trainers of the level ran."""
    if not facts.demand:
        return 0.0
    edges: list[tuple[float, int]] = []
    for s, e in facts.runs:
        s, e = max(s, start), min(now if e is None else e, now)
        if e > s:
            edges += [(s, 1), (e, -1)]
    edges.sort()  # at one instant an end (-1) sorts before a start: no credit for a hand-over
    total, alive, last = 0.0, 0, start
    for t, step in edges:
        if alive >= facts.demand:
            total += t - last
        alive, last = alive + step, t
    return total


def has_been_stable(facts: Facts, policy: AutoscalerPolicy, now: float) -> bool:
    """Stable AND loaded for ``promote_after``: the window counts only loaded time."""
    loaded = loaded_time(facts, stable_since(facts, policy, now), now)
    return bool(facts.demand) and loaded >= policy.promote_after


def has_cooldown_elapsed(facts: Facts, policy: AutoscalerPolicy, now: float) -> bool:
    """Fallback ends after ``cooldown_s`` of stable running (a reboot in fallback restarts it)."""
    return facts.state == FALLBACK and now - stable_since(facts, policy, now) >= facts.cooldown_s


def is_due_for_cooldown_reset(facts: Facts, policy: AutoscalerPolicy, now: float) -> bool:
    """A long stable run on a rung forgives earlier failed promotions."""
    return (
        facts.state != FALLBACK
        and facts.failed_promotions > 0
        and now - stable_since(facts, policy, now) >= policy.stable_reset_after
    )


def next_cooldown(facts: Facts, policy: AutoscalerPolicy) -> tuple[float, int]:
    """(cooldown, failed_promotions) for a fallback entered now: 1st waits ``cooldown``, then x2."""
    failed = facts.failed_promotions + 1
    return min(policy.cooldown * 2 ** (failed - 1), policy.cooldown_max), failed


def next_review(
    facts: Facts, policy: AutoscalerPolicy, now: float, up: str | None, bottom: str
) -> tuple[str, float | None]:
    """(what, due) for ``status``: the next automatic move and when it becomes due if nothing
    changes, or (why there is none, None). ``up`` is the rung above (None at the top), ``bottom``
    the ladder's first rung. A due time is never a promise: moves happen at stability checks,
    so the supervisor rounds it up to the next one."""
    if facts.pinned is not None:
        return f"none: pinned at {facts.pinned} (atarictl level unpin to resume)", None
    if is_unstable(facts, policy, now):
        return "fall back (unstable) at the next stability check", now
    since = stable_since(facts, policy, now)
    if facts.state == FALLBACK:
        return f"recover to {bottom} once the cooldown has passed", since + facts.cooldown_s
    if up is None:
        return "stability check (top of the ladder: falls back only if unstable)", now
    if facts.demand is None:
        return "stability check (the load is not known yet)", now
    if facts.demand == 0:
        idle = f" ({facts.idle})" if facts.idle else ""
        return f"none: nothing left to train{idle}; the level stays at {facts.state}", None
    loaded = loaded_time(facts, since, now)
    left = max(0.0, policy.promote_after - loaded)
    if running_at(facts, now) >= facts.demand:
        return f"promote to {up} if stable and loaded", now + left
    return (
        f"none yet: promotion to {up} counts only time with {facts.demand} trainers running "
        f"({running_at(facts, now)} now; {fmt_duration(loaded)} of "
        f"{fmt_duration(policy.promote_after)} so far)"
    ), None


# -- reasons: every decision names the numbers and the setting behind it ------------------------


def reason_fall_back(facts: Facts, policy: AutoscalerPolicy, now: float) -> str:
    reboots = recent_reboots(facts, policy, now)
    if len(reboots) > policy.max_reboots:
        return (
            f"fallback: {len(reboots)} reboots in {fmt_duration(policy.window)} "
            f"> max_reboots={policy.max_reboots}"
        )
    crashes = recent_crashes(facts, policy, now)
    storm = policy.crash_storm
    return (
        f"fallback: {len(crashes)} trainer crashes in {fmt_duration(storm.window)} "
        f">= crash_storm.crashes={storm.crashes}"
    )


def reason_promote(facts: Facts, policy: AutoscalerPolicy, now: float, dest: str) -> str:
    since = stable_since(facts, policy, now)
    loaded = loaded_time(facts, since, now)
    return (
        f"promote: stable and loaded {fmt_duration(round(loaded))} at {facts.state} "
        f"({facts.demand} trainers running, of {fmt_duration(round(now - since))} stable) "
        f">= promote_after={fmt_duration(policy.promote_after)}; moving to {dest}"
    )


def reason_recover(facts: Facts, policy: AutoscalerPolicy, now: float, dest: str) -> str:
    stable = now - stable_since(facts, policy, now)
    return (
        f"recover: stable {fmt_duration(stable)} in fallback >= cooldown "
        f"{fmt_duration(facts.cooldown_s)} (cooldown={fmt_duration(policy.cooldown)} doubled per "
        f"failed promotion, {facts.failed_promotions} so far, cooldown_max="
        f"{fmt_duration(policy.cooldown_max)}); moving to {dest}"
    )


def reason_cooldown_reset(facts: Facts, policy: AutoscalerPolicy, now: float) -> str:
    stable = now - stable_since(facts, policy, now)
    return (
        f"cooldown reset: stable {fmt_duration(stable)} at {facts.state} "
        f">= stable_reset_after={fmt_duration(policy.stable_reset_after)}; "
        f"{facts.failed_promotions} failed promotions forgiven, cooldown back to "
        f"{fmt_duration(policy.cooldown)}"
    )
