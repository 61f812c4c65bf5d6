"""One status shape for the live daemon and the offline database (``atarictl status``).

Supervisor's ``getProcessInfo`` feeds ``supervisorctl`` one dict per process; here ``Status`` and
``GameRow`` are that shape. The daemon builds it from its manager and level source
(``Supervisor.cmd_status``), ``atarictl`` builds it from the SQLite tables when the daemon is
down (``daemon/atarictl/offline.py``), and both go through ``game_row`` and ``build`` below, so
the ETA, the total ETA and the projected cost have one formula each. The client only formats.

Standard library only at import: atarictl loads it without the daemon's packages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Games that wait for nobody (a slot will not start them): not part of the remaining plan.
_FINISHED = ("DONE", "FATAL")
_NOT_PLANNED = (*_FINISHED, "STOPPED")


@dataclass(frozen=True)
class GameRow:
    game: str
    state: str
    pid: int | None
    uptime_s: float | None
    episodes: int
    target: int | None
    episodes_per_hour: float | None
    eta_s: float | None  # running games only: time to the target at the current rate
    work_left_s: float | None  # training time left at the last known rate (queued ones too)
    best: float | None
    avg100: float | None
    checkpoint_age_s: float | None
    reason: str = ""


@dataclass(frozen=True)
class NextDecision:
    what: str
    at: float | None  # None: no time, ``what`` says why


@dataclass(frozen=True)
class Status:
    source: str  # "daemon" (live) or "database" (read-only view, daemon down)
    now: float
    daemon: dict[str, Any]
    level: str | None
    level_entered_at: float | None
    pinned: str | None  # the pinned level, or None
    boots_last_hour: int | None
    next_decision: NextDecision | None
    gpu: dict[str, Any] | None  # normalize_gpu's shape; None: unknown
    slots: int | None  # the level's parallel games
    games: list[GameRow]
    total_eta_s: float | None
    gpu_cost_per_hour: float | None
    projected_cost: float | None
    # Live only: the autoscaler's own view, the one-line summary and per-state counts.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def game_row(
    *, game: str, state: str, target: int | None, now: float, pid: int | None = None,
    started_at: float | None = None, episodes: Any = 0, episodes_per_hour: Any = None,
    best: Any = None, avg100: Any = None, last_checkpoint_time: Any = None, reason: str = "",
) -> GameRow:  # fmt: skip
    episodes = int(episodes) if isinstance(episodes, int) else 0
    rate = _num(episodes_per_hour)
    work = None
    if target is not None and rate and state not in _FINISHED:
        work = max(0, target - episodes) / rate * 3600.0
    ckpt = _num(last_checkpoint_time)
    return GameRow(
        game=game, state=state, pid=pid,
        uptime_s=now - started_at if pid and started_at is not None else None,
        episodes=episodes, target=target, episodes_per_hour=rate,
        eta_s=work if state == "RUNNING" else None, work_left_s=work,
        best=_num(best), avg100=_num(avg100),
        checkpoint_age_s=now - ckpt if ckpt else None, reason=reason,
    )  # fmt: skip


def total_eta(games: list[GameRow], slots: int | None) -> float | None:
    """Work left across games, spread over the level's parallel slots (a queue runs later games
    after earlier ones finish); never less than the longest single game. None when some game
    has no rate yet: an honest total is unknown."""
    pending = [g for g in games if g.state not in _NOT_PLANNED]
    if not pending:
        return 0.0 if games else None
    work = [g.work_left_s for g in pending]
    if any(w is None for w in work):
        return None
    known = [w for w in work if w is not None]
    return max(max(known), sum(known) / max(1, slots or len(pending)))


def projected_cost(eta_s: float | None, cost_per_hour: float | None) -> float | None:
    """What finishing costs: the box is rented until the last game is done."""
    if eta_s is None or cost_per_hour is None:
        return None
    return eta_s / 3600.0 * cost_per_hour


def next_move(level: str | None, ladder: list[str], pinned: str | None) -> str:
    """What the autoscaler's next review may do, from its ladder and pin (daemon side only)."""
    from daemon.autoscaler.states import next_rung  # the ladder's one definition of "up"

    if pinned:
        return f"none while pinned at {pinned}"
    if not ladder:
        return "stability check"
    up = next_rung(ladder, level) if level is not None else None
    return f"promote to {up} if stable" if up else "stability review (top of the ladder)"


def build(
    *, source: str, now: float, daemon: dict[str, Any], level: str | None,
    level_entered_at: float | None, pinned: str | None, boots_last_hour: int | None,
    next_decision: NextDecision | None, gpu: dict[str, Any] | None, slots: int | None,
    games: list[GameRow], gpu_cost_per_hour: float | None, extra: dict[str, Any] | None = None,
) -> Status:  # fmt: skip
    eta = total_eta(games, slots)
    return Status(
        source=source, now=now, daemon=daemon, level=level, level_entered_at=level_entered_at,
        pinned=pinned or None, boots_last_hour=boots_last_hour, next_decision=next_decision,
        gpu=gpu, slots=slots, games=games, total_eta_s=eta, gpu_cost_per_hour=gpu_cost_per_hour,
        projected_cost=projected_cost(eta, gpu_cost_per_hour), extra=dict(extra or {}),
    )  # fmt: skip


def normalize_gpu(sample: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"available", "reason", "gpus": [{name, util_pct, mem_used_mib, mem_total_mib, temp_c,
    power_w}]}`` from a telemetry sample (``daemon/telemetry.py``); None when unknown."""
    if not isinstance(sample, dict):
        return None
    gpus = [
        {
            "name": g.get("name", f"gpu{i}"),
            "util_pct": g.get("util_pct"),
            "mem_used_mib": g.get("mem_used_mb"),
            "mem_total_mib": g.get("mem_total_mb"),
            "temp_c": g.get("temperature_c"),
            "power_w": g.get("power_w"),
        }
        for i, g in enumerate(sample.get("gpus") or [])
    ]
    ok = sample.get("gpu") == "ok" and bool(gpus)
    return {"available": ok, "reason": sample.get("reason"), "gpus": gpus}


def from_dict(raw: dict[str, Any]) -> Status:
    """The shape back from its JSON form (``atarictl`` receives the daemon's ``to_dict()``)."""
    known = set(Status.__dataclass_fields__) - {"extra", "games", "next_decision"}
    nd = raw.get("next_decision")
    return Status(
        **{k: raw.get(k) for k in known},
        games=[GameRow(**g) for g in raw.get("games") or []],
        next_decision=NextDecision(**nd) if isinstance(nd, dict) else None,
        extra={k: v for k, v in raw.items() if k not in Status.__dataclass_fields__},
    )
