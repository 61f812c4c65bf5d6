"""Human output of atarictl: aligned tables and compact durations.

It only formats: the status it prints is ``daemon/status.py``'s one shape, built by the daemon
or, when the daemon is down, from the database, so ``status --json`` has one schema either way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

# One formula for people's durations, shared with the periodic report (daemon/reporting).
from daemon.durations import duration
from daemon.durations import eta_text as eta

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


def pressure_line(p: dict[str, Any] | None, gpu_sample: dict[str, Any] | None = None) -> str:
    """PSI full avg10/avg60 per resource, memory headroom, swap rates, OOM kills and the GPUs'
    limits (daemon/pressure.py and daemon/telemetry.py sample them)."""
    if not p:
        return "unknown (no telemetry yet)"
    parts = []
    psi = p.get("psi") or {}
    for res in ("memory", "io", "cpu"):
        r = psi.get(res) or {}
        kind = "full" if "full" in r else "some"
        if kind in r:
            parts.append(f"{res} {kind} {r[kind]['avg10']:.1f}/{r[kind]['avg60']:.1f}%")
    if not psi:
        parts.append("no PSI")
    if p.get("mem_available_mb") is not None and p.get("mem_total_mb"):
        parts.append(f"avail {p['mem_available_mb'] / 1024:.1f}/{p['mem_total_mb'] / 1024:.1f} GiB")
    if p.get("cgroup_mem_limit_mb") is not None:
        parts.append(f"cgroup {p['cgroup_mem_current_mb'] / 1024:.2f}/"
                     f"{p['cgroup_mem_limit_mb'] / 1024:.2f} GiB")  # fmt: skip
    if p.get("swap_in_per_s") is not None:
        parts.append(f"swap in/out {p['swap_in_per_s']:.0f}/{p['swap_out_per_s']:.0f} pages/s")
    if p.get("oom_kill") is not None:
        parts.append(f"oom kills {p['oom_kill']}")
    for g in (gpu_sample or {}).get("gpus") or []:
        lim = g.get("power_limit_w")
        if lim and g.get("power_w") is not None:
            parts.append(f"gpu{g.get('index', 0)} power {g['power_w']:.0f}/{lim:.0f} W")
        if g.get("throttle_reasons"):
            parts.append(f"gpu{g.get('index', 0)} throttled: {','.join(g['throttle_reasons'])}")
    return " · ".join(parts)


def level_pressure_lines(p: dict[str, Any]) -> list[str]:
    """``atarictl level``: the pressure thresholds in effect, what is over them now, the shed
    cooldown and the promotion guard's projection (daemon/autoscaler/shedding.py)."""
    th = p.get("thresholds") or {}
    shown = " ".join(
        f"{k}={duration(v) if k.endswith('_after') else v}" for k, v in th.items()
    )  # fmt: skip
    lines = [f"pressure thresholds: {shown}"]
    over = p.get("over") or {}
    lines.append("pressure now: " + ("; ".join(over.values()) if over else "none over threshold"))
    until = p.get("shed_cooldown_until")
    if until:
        lines.append(f"shed cooldown: no promotion until {timestamp(until)}")
    proj = p.get("projection")
    if proj:
        verdict = "fits" if proj.get("fits") else "does NOT fit: promotion refused"
        lines.append(f"promotion guard: {proj.get('text')} ({verdict})")
    else:
        lines.append("promotion guard: no next level, or nothing measured yet")
    return lines


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
    pin = f"pinned ({st['pinned']})" if st["pinned"] else "not pinned"
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
    if st["source"] == "daemon":
        lines.append("pressure: " + pressure_line(st.get("pressure"), st.get("gpu_sample")))
    fleet = st.get("fleet")
    if isinstance(fleet, dict):
        held = ", ".join(f"{g} (token {t})" for g, t in sorted(fleet.get("held", {}).items()))
        lines.append(f"fleet: box {st.get('box')} holds {held or 'nothing'} · lease "
                     f"{fleet.get('lease_s', 0):g}s · every box: atarictl --fleet status")
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
                eta(g["eta_s"], g.get("eta_rough")),
                number(g["best"], 1),
                number(g["avg100"], 1),
                duration(g["checkpoint_age_s"]),
            ]
        )
    lines.append("")
    lines.append(table(GAME_COLUMNS, rows) if rows else "(no games)")
    # Why a game waits although it has work left: the autoscaler paused it under pressure.
    lines += [f"{g['game']} {g['reason']}" for g in st["games"] if g["state"] == "QUEUED"
              and str(g.get("reason") or "").startswith("paused under pressure")]  # fmt: skip
    tail = f"total ETA {eta(st['total_eta_s'], st.get('total_eta_rough'))}"
    if st["gpu_cost_per_hour"] is not None:
        cost = st["projected_cost"]
        tail += " · projected cost " + (
            "-" if cost is None else f"${cost:,.2f} at ${st['gpu_cost_per_hour']:g}/h"
        )
    lines.append("")
    lines.append(tail)
    evals = st.get("latest_evals") or {}
    if evals:
        lines.append("latest evals: " + " · ".join(
            f"{g} {number(e['mean'], 1)} ({e['model_kind']} model, episode "
            f"{'-' if e['model_episode'] is None else e['model_episode']}, "
            f"{duration(now - e['at'])} ago)" for g, e in sorted(evals.items())))  # fmt: skip
    return "\n".join(lines)


def format_history(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no events in this window)"
    if len({r.get("box") for r in rows if r.get("box")}) > 1:  # a fleet's store: say whose
        return table(
            ("TIME", "BOX", "KIND", "GAME", "WHAT", "REASON"),
            [[timestamp(r["at"]), r.get("box") or "-", r["kind"], r.get("game") or "-",
              r["what"], r.get("reason") or ""] for r in rows],
        )  # fmt: skip
    return table(
        ("TIME", "KIND", "GAME", "WHAT", "REASON"),
        [
            [timestamp(r["at"]), r["kind"], r.get("game") or "-", r["what"], r.get("reason") or ""]
            for r in rows
        ],
    )


def _mib(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"


def format_top(t: dict[str, Any]) -> str:
    """``daemon/top.py``'s shape: the host, the GPUs, then one line per trainer and the daemon."""
    now, lines = t["now"], []
    if t["source"] != "daemon":
        lines.append(f"daemon DOWN: last samples from the database {t.get('db', '')}")
    at = t.get("sampled_at")
    h = t["host"]
    mem = "-" if h["mem_used_mib"] is None else f"{h['mem_used_mib'] / 1024:.1f}"
    if h["mem_total_mib"] is not None:
        mem += f"/{h['mem_total_mib'] / 1024:.1f} GiB"
    lines.append(
        f"host: load {number(h['load1'], 2)} · cpu {number(h['cpu_pct'], 0)}% · mem {mem} · "
        + ("no sample yet" if at is None else f"sampled {duration(now - at)} ago")
    )
    if t["gpus"] is None:
        lines.append("gpu: " + ("unknown (no sample)" if t["source"] == "daemon" else "-"))
    elif not t["gpus"]:
        lines.append(f"gpu: {t.get('gpu_reason') or 'no GPU'}")
    for g in t["gpus"] or []:
        used, total = g["mem_used_mib"], g["mem_total_mib"]
        lines.append(f"gpu{g['index']} {g['name']}: {number(g['util_pct'], 0)}% util, "
                     f"{_mib(used)}/{_mib(total)}")  # fmt: skip
    rows = [
        [r["game"], str(r["pid"]), r.get("state") or "-", number(r["cpu_pct"], 1),
         _mib(r["rss_mib"]), _mib(r["gpu_mem_mib"])]
        for r in t["processes"]
    ]  # fmt: skip
    lines.append("")
    lines.append(
        table(("GAME", "PID", "STATE", "CPU%", "RSS", "GPU MEM"), rows)
        if rows else "(no process samples yet)"
    )  # fmt: skip
    return "\n".join(lines)


def format_models(rows: list[dict[str, Any]], now: float) -> str:
    if not rows:
        return "(no models yet)"
    return table(
        ("GAME", "KIND", "EPISODE", "RETURN", "EVAL", "SAVED", "PATH"),
        [
            [
                r["game"],
                r["kind"],
                "-" if r["episode"] is None else str(r["episode"]),
                number(r["return"], 1),
                number(r.get("eval"), 1),
                "-" if r["at"] is None else f"{duration(now - r['at'])} ago",
                r["path"],
            ]
            for r in rows
        ],
    )
