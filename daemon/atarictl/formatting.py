"""Human output of atarictl: aligned tables and compact durations.

`normalize_status` turns what the daemon (or the offline database read) returns into the one
documented `status --json` shape, so scripts see the same schema either way.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

GAME_COLUMNS = (
    "GAME",
    "STATE",
    "PID",
    "UPTIME",
    "EPISODES",
    "EPS/H",
    "ETA",
    "BEST",
    "AVG100",
    "CKPT AGE",
)


def duration(seconds: float | None) -> str:
    """`45s`, `12m30s`, `3h05m`, `2d04h`; `-` for unknown."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def timestamp(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(int(v))
    return f"{v:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def normalize_game(g: dict[str, Any], now: float) -> dict[str, Any]:
    episodes = _first(g, "episodes") or 0
    target = _first(g, "target", "target_episodes")
    rate = _first(g, "episodes_per_hour", "eps_per_hour")
    uptime = _first(g, "uptime_s", "uptime")
    if uptime is None and g.get("started_at") is not None and g.get("pid"):
        uptime = now - float(g["started_at"])
    ckpt_age = _first(g, "checkpoint_age_s", "checkpoint_age")
    if ckpt_age is None and g.get("last_checkpoint_time") is not None:
        ckpt_age = now - float(g["last_checkpoint_time"])
    state = str(_first(g, "state") or "unknown")
    # Training time left at the last known rate, also for games not running now (the total
    # ETA needs it for queued ones); the ETA column itself is only for running games.
    work = None
    if target is not None and rate and state.upper() not in ("DONE", "FATAL"):
        work = max(0, int(target) - int(episodes)) / float(rate) * 3600.0
    eta = _first(g, "eta_s", "eta")
    if eta is None and g.get("eta_h") is not None:
        eta = float(g["eta_h"]) * 3600.0
    if not any(k in g for k in ("eta_s", "eta", "eta_h")) and state.upper() == "RUNNING":
        eta = work
    return {
        "game": _first(g, "game", "name"),
        "state": state,
        "pid": _first(g, "pid"),
        "uptime_s": uptime,
        "episodes": int(episodes),
        "target": target,
        "episodes_per_hour": rate,
        "eta_s": eta,
        "work_left_s": work,
        "best": _first(g, "best", "best_return"),
        "avg100": _first(g, "avg100"),
        "checkpoint_age_s": ckpt_age,
    }


def total_eta(games: list[dict[str, Any]], slots: int | None) -> float | None:
    """Work left across games, spread over the level's parallel slots (a queue runs later
    games after earlier ones finish); never less than the longest single game."""
    # Stopped games wait for the operator, not for a slot: they are not part of the plan.
    pending = [g for g in games if g["state"].upper() not in ("DONE", "FATAL", "STOPPED")]
    if not pending:
        return 0.0 if games else None
    work = [g["work_left_s"] for g in pending]
    if any(w is None for w in work):
        return None  # some game has no rate yet: an honest total is unknown
    slots = max(1, slots or len(pending))
    return max(max(work), sum(work) / slots)


def _next_move(level: str | None, auto: dict[str, Any]) -> str:
    """What the autoscaler's next review may do, from its ladder and pin."""
    if auto.get("pinned"):
        return f"none while pinned at {auto['pinned']}"
    ladder = list(auto.get("ladder") or [])
    if level in ladder and ladder.index(level) + 1 < len(ladder):
        return f"promote to {ladder[ladder.index(level) + 1]} if stable"
    if ladder:
        return "stability review (top of the ladder)"
    return "stability check"


def normalize_status(raw: dict[str, Any], *, now: float, source: str) -> dict[str, Any]:
    games = [normalize_game(g, now) for g in raw.get("games", [])]
    pinned = raw.get("pinned")
    nd = raw.get("next_decision")
    auto = raw.get("autoscaler") if isinstance(raw.get("autoscaler"), dict) else {}
    if not isinstance(nd, dict):
        at = auto.get("next_decision_at") or raw.get("next_decision_at")
        nd = {"what": nd or _next_move(raw.get("level"), auto), "at": at} if at or nd else None
    running = sum(1 for g in games if g["state"].upper() == "RUNNING")
    slots = raw.get("slots") or raw.get("level_games") or running or None
    eta = _first(raw, "total_eta_s", "total_eta")
    if eta is None:
        eta = total_eta(games, slots)
    cost_rate = raw.get("gpu_cost_per_hour")
    cost = _first(raw, "projected_cost")
    if cost is None and cost_rate is not None and eta is not None:
        cost = eta / 3600.0 * float(cost_rate)
    return {
        "source": source,
        "now": now,
        "daemon": raw.get("daemon") or {"running": source == "daemon"},
        "level": raw.get("level"),
        "level_entered_at": raw.get("level_entered_at"),
        "pinned": bool(pinned),
        "pinned_level": pinned if isinstance(pinned, str) else None,
        "boots_last_hour": raw.get("boots_last_hour"),
        "next_decision": nd,
        "gpu": normalize_gpu(raw["gpu_sample"] if raw.get("gpu_sample") else raw.get("gpu")),
        "games": games,
        "total_eta_s": eta,
        "gpu_cost_per_hour": cost_rate,
        "projected_cost": cost,
    }


def normalize_gpu(gpu: Any) -> dict[str, Any] | None:
    """`{"available": bool, "reason": str | None, "gpus": [...]}` from the daemon's telemetry
    sample (`{"gpu": "ok", "gpus": [...]}` / `{"gpu": "no GPU", "reason": ...}`), a summary
    string, or nothing (unknown)."""
    if gpu is None:
        return None
    if isinstance(gpu, str):
        return {"available": gpu not in ("no GPU", "unknown"), "reason": gpu, "gpus": []}
    if isinstance(gpu, list):
        gpu = {"gpu": "ok", "gpus": gpu}
    if not isinstance(gpu, dict):
        return None
    items = gpu.get("gpus") or ([gpu] if "util_pct" in gpu else [])
    gpus = []
    for i, g in enumerate(items):
        used = _first(g, "mem_used_mib", "mem_used_mb")
        total = _first(g, "mem_total_mib", "mem_total_mb")
        if used is None and g.get("mem_used_bytes") is not None:
            used = g["mem_used_bytes"] / 2**20
        if total is None and g.get("mem_total_bytes") is not None:
            total = g["mem_total_bytes"] / 2**20
        gpus.append(
            {
                "name": g.get("name", f"gpu{i}"),
                "util_pct": _first(g, "util_pct", "util"),
                "mem_used_mib": used,
                "mem_total_mib": total,
                "temp_c": _first(g, "temp_c", "temperature_c", "temperature"),
                "power_w": g.get("power_w"),
            }
        )
    available = bool(gpus) and gpu.get("gpu", "ok") == "ok"
    return {"available": available, "reason": gpu.get("reason"), "gpus": gpus}


def _gpu_line(gpu: dict[str, Any] | None) -> str:
    if gpu is None:
        return "unknown (no telemetry yet)"
    if not gpu["available"]:
        return "no GPU"
    if not gpu["gpus"]:
        return str(gpu["reason"])  # only the daemon's summary line is known
    parts = []
    for g in gpu["gpus"]:
        mem = "-" if g["mem_used_mib"] is None else f"{g['mem_used_mib'] / 1024:.1f}"
        if g["mem_total_mib"] is not None:
            mem += f"/{g['mem_total_mib'] / 1024:.1f} GiB"
        parts.append(
            f"{g['name']} {number(g['util_pct'], 0)}% util, {mem}, {number(g['temp_c'], 0)}°C"
        )
    return "; ".join(parts)


def format_status(st: dict[str, Any]) -> str:
    now = st["now"]
    lines = []
    if st["source"] != "daemon":
        d = st.get("daemon") or {}
        hb = d.get("last_heartbeat")
        since = f", last heartbeat {duration(now - hb)} ago" if hb else ""
        what = "DOWN"
        if d.get("pid_alive"):
            what = f"NOT ANSWERING (pid {d['pid']} alive, socket unreachable)"
        lines.append(f"daemon {what}{since}: read-only view from the database {st.get('db', '')}")
    level = st["level"] or "-"
    entered = st["level_entered_at"]
    in_level = f" for {duration(now - entered)}" if entered else ""
    pin = (
        f"pinned ({st['pinned_level']})"
        if st["pinned_level"]
        else ("pinned" if st["pinned"] else "not pinned")
    )
    boots = st["boots_last_hour"]
    lines.append(
        f"level {level}{in_level} · {pin} · reboots in last hour: {'-' if boots is None else boots}"
    )
    nd = st["next_decision"]
    if nd and (nd.get("what") or nd.get("at")):
        when = nd.get("at")
        rel = "" if when is None else f" in {duration(when - now)} ({timestamp(when)})"
        lines.append(f"next decision: {nd.get('what') or 'check'}{rel}")
    else:
        lines.append("next decision: -")
    lines.append(
        "gpu: " + (_gpu_line(st["gpu"]) if st["source"] == "daemon" else "unknown (daemon down)")
    )
    rows = []
    for g in st["games"]:
        target = "?" if g["target"] is None else str(g["target"])
        rows.append(
            [
                str(g["game"]),
                g["state"],
                "-" if not g["pid"] else str(g["pid"]),
                duration(g["uptime_s"]),
                f"{g['episodes']}/{target}",
                number(g["episodes_per_hour"], 0),
                duration(g["eta_s"]),
                number(g["best"], 1),
                number(g["avg100"], 1),
                duration(g["checkpoint_age_s"]),
            ]
        )
    lines.append("")
    lines.append(table(GAME_COLUMNS, rows) if rows else "(no games)")
    tail = f"total ETA {duration(st['total_eta_s'])}"
    if st["gpu_cost_per_hour"] is not None:
        cost = st["projected_cost"]
        tail += " · projected cost " + (
            "-" if cost is None else f"${cost:,.2f} at ${st['gpu_cost_per_hour']:g}/h"
        )
    lines.append("")
    lines.append(tail)
    return "\n".join(lines)


def format_history(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no events in this window)"
    return table(
        ("TIME", "KIND", "GAME", "WHAT", "REASON"),
        [
            [timestamp(r["at"]), r["kind"], r.get("game") or "-", r["what"], r.get("reason") or ""]
            for r in rows
        ],
    )


def format_models(rows: list[dict[str, Any]], now: float) -> str:
    if not rows:
        return "(no models yet)"
    return table(
        ("GAME", "KIND", "EPISODE", "RETURN", "SAVED", "PATH"),
        [
            [
                r["game"],
                r["kind"],
                "-" if r["episode"] is None else str(r["episode"]),
                number(r["return"], 1),
                "-" if r["at"] is None else f"{duration(now - r['at'])} ago",
                r["path"],
            ]
            for r in rows
        ],
    )
