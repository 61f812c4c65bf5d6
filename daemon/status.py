"""One status shape for the live daemon and the offline database (``atarictl status``).

Supervisor's ``getProcessInfo`` feeds ``supervisorctl`` one dict per process; here ``Status`` and
``GameRow`` are that shape. The daemon builds it from its manager and level source
(``Supervisor.cmd_status``), ``atarictl`` builds it from the SQLite tables when the daemon is
down (``daemon/atarictl/offline.py``), and both go through ``game_row`` and ``build`` below, so
the ETA, the total ETA and the projected cost have one formula each. The client only formats.

Standard library only at import (and the stdlib-only ``daemon.episode_log``): atarictl loads it
without the daemon's packages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daemon.episode_log import episode_counter

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
    # What the rate stands on (``episode_rate``): too few episodes make the ETA rough ("~2d").
    rate_episodes: int | None = None
    rate_window_s: float | None = None
    eta_rough: bool = False


# The episode rate behind EPS/H and every ETA: the episodes a game finished in its last
# RATE_WINDOW_S seconds of running time (its trainer runs, from the runs table; time queued,
# stopped or with the daemon down does not count), counted in its episodes.jsonl. A window with
# fewer than RATE_MIN_EPISODES episodes is doubled, up to RATE_MAX_WINDOW_S, for a slow game;
# still fewer: the rate is rough and so is the ETA, shown as "~2d" (docs/cli.md).
RATE_WINDOW_S = 1800.0
RATE_MAX_WINDOW_S = 6 * 3600.0
RATE_MIN_EPISODES = 20


@dataclass(frozen=True)
class Rate:
    per_hour: float | None  # None: no episode in the window (or no running time yet)
    episodes: int  # episodes behind it
    window_s: float  # running time behind it (less than RATE_WINDOW_S for a young game)

    @property
    def rough(self) -> bool:
        return self.episodes < RATE_MIN_EPISODES


def running_window(
    spans: list[tuple[float, float | None]], now: float, window: float = RATE_WINDOW_S
) -> list[tuple[float, float]]:
    """The last ``window`` seconds of a game's running time as wall-clock pieces, newest first.
    ``spans`` are its trainer runs (start, end or None while it runs)."""
    out: list[tuple[float, float]] = []
    left = window
    for start, end in sorted(spans, key=lambda x: x[0], reverse=True):
        stop = now if end is None else min(end, now)
        if stop <= start:
            continue
        take = min(left, stop - start)
        out.append((stop - take, stop))
        left -= take
        if left <= 0:
            break
    return out


def episode_rate(
    spans: list[tuple[float, float | None]], count: Callable[[float, float], int] | None,
    now: float,
) -> Rate:  # fmt: skip
    """Episodes per hour over the game's last RATE_WINDOW_S of running time (widened for a
    slow game, see above). ``count(a, b)`` says how many episodes finished in (a, b]
    (``daemon/episode_log.py``); None: no log."""
    window, ran, n = RATE_WINDOW_S, 0.0, 0
    while True:
        pieces = running_window(spans, now, window)
        ran = sum(b - a for a, b in pieces)
        if count is None or ran <= 0:
            return Rate(None, 0, ran)
        n = sum(count(a, b) for a, b in pieces)
        # Enough episodes, the widest window, or no more running time to widen into.
        if n >= RATE_MIN_EPISODES or window >= RATE_MAX_WINDOW_S or ran < window:
            return Rate(n / ran * 3600.0 if n else None, n, ran)
        window = min(2 * window, RATE_MAX_WINDOW_S)


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
    total_eta_rough: bool = False  # some planned game's ETA stands on too few episodes
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
    rate_of: Rate | None = None,
) -> GameRow:  # fmt: skip
    """One game's row. ``rate_of`` (``episode_rate``) is the rate the daemon and the offline
    read both use; ``episodes_per_hour`` is taken as it is only when no rate was measured."""
    episodes = int(episodes) if isinstance(episodes, int) else 0
    rate = _num(episodes_per_hour) if rate_of is None else rate_of.per_hour
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
        rate_episodes=None if rate_of is None else rate_of.episodes,
        rate_window_s=None if rate_of is None else rate_of.window_s,
        eta_rough=work is not None and rate_of is not None and rate_of.rough,
    )  # fmt: skip


def game_rate(spans: list[tuple[float, float | None]], run_dir: Path, now: float) -> Rate:
    """``episode_rate`` over the episodes.jsonl in ``run_dir`` (none yet: no rate)."""
    log = episode_counter(run_dir)
    return episode_rate(spans, None if log is None else log.count, now)


# What ``stored_rows`` reads of the store's ``games`` and ``runs`` tables (runs oldest first).
STORED_GAME_COLUMNS = ("name", "state", "target", "episodes", "best_return", "avg100",
                       "episodes_per_hour", "last_checkpoint_time")  # fmt: skip
STORED_RUN_COLUMNS = ("game", "started_at", "ended_at")


def stored_rows(
    games: list[dict[str, Any]], runs: list[dict[str, Any]], last_heartbeat: float | None,
    runs_dir: Path, now: float,
) -> list[GameRow]:  # fmt: skip
    """Game rows from the store's tables (``STORED_GAME_COLUMNS``, ``STORED_RUN_COLUMNS``), the
    rate from each game's run dir under ``runs_dir``: atarictl's offline status and the periodic
    report read the state dir the same way."""
    spans: dict[str, list[tuple[float, float | None]]] = {}
    for r in runs:
        # A run still open counts up to the daemon's last heartbeat (it may be down now).
        end = r["ended_at"] if r["ended_at"] is not None else last_heartbeat
        spans.setdefault(r["game"], []).append((r["started_at"], end))
    return [
        game_row(
            game=g["name"], state=g["state"] or "unknown", target=g["target"], now=now,
            episodes=g["episodes"] or 0, episodes_per_hour=g["episodes_per_hour"],
            best=g["best_return"], avg100=g["avg100"],
            last_checkpoint_time=g["last_checkpoint_time"],
            rate_of=game_rate(spans.get(g["name"], []), runs_dir / g["name"], now),
        )
        for g in games
    ]  # fmt: skip


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


def total_eta_rough(games: list[GameRow], eta: float | None) -> bool:
    """``total_eta``'s result stands on some planned game's rough rate (shown as "~2d")."""
    return eta is not None and any(g.eta_rough for g in games if g.state not in _NOT_PLANNED)


def projected_cost(eta_s: float | None, cost_per_hour: float | None) -> float | None:
    """What finishing costs: the box is rented until the last game is done."""
    if eta_s is None or cost_per_hour is None:
        return None
    return eta_s / 3600.0 * cost_per_hour


def decision_time(
    due: float | None, now: float, next_check: float | None, interval: float
) -> float | None:
    """When a move that becomes due at ``due`` is made: the first stability check at or after
    it (checks every ``interval`` s, the next at ``next_check``). Never in the past: None when
    there is no move, or no scheduler to say when the check runs."""
    if due is None:
        return None
    if next_check is None:
        return due if due > now else None
    while next_check <= now:  # a check that is running right now: the one after it
        next_check += interval
    if due <= next_check:
        return next_check
    return next_check + math.ceil((due - next_check) / interval) * interval


def build(
    *, source: str, now: float, daemon: dict[str, Any], level: str | None,
    level_entered_at: float | None, pinned: str | None, boots_last_hour: int | None,
    next_decision: NextDecision | None, gpu: dict[str, Any] | None, slots: int | None,
    games: list[GameRow], gpu_cost_per_hour: float | None, extra: dict[str, Any] | None = None,
) -> Status:  # fmt: skip
    eta = total_eta(games, slots)
    rough = total_eta_rough(games, eta)
    return Status(
        source=source, now=now, daemon=daemon, level=level, level_entered_at=level_entered_at,
        pinned=pinned or None, boots_last_hour=boots_last_hour, next_decision=next_decision,
        gpu=gpu, slots=slots, games=games, total_eta_s=eta, gpu_cost_per_hour=gpu_cost_per_hour,
        projected_cost=projected_cost(eta, gpu_cost_per_hour), extra=dict(extra or {}),
        total_eta_rough=rough,
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
