"""The periodic progress report: Markdown, plus HTML with the learning-curve plot embedded.

``make_report(state_dir)`` reads the store (read-only), the run dirs and the profile copy the
daemon keeps in the state dir, and writes ``<state-dir>/reports/report-<UTC stamp>.{md,html,png}``:
the level story, per-game progress with ETA and cost, the latest evals, the reboots and crashes
since the previous report, and the GPU. Only the newest ``reports.keep`` reports stay.

The daemon's ``report`` check runs it as its own process (``python -m daemon.reporting``), so
matplotlib never loads into the daemon and a slow plot never holds up the main loop;
``atarictl report`` calls it in-process.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.durations import duration, eta_text
from daemon.paths import DB_NAME, RUNS_NAME, box_of
from daemon.reporting.data import EVAL_COLUMNS, connect_ro, of_box, read_history, select
from daemon.scores import human_normalized
from daemon.status import (
    STORED_GAME_COLUMNS,
    STORED_RUN_COLUMNS,
    normalize_gpu,
    projected_cost,
    stored_rows,
    total_eta,
    total_eta_rough,
)

REPORTS_DIR = "reports"
DEFAULT_KEEP = 48  # a day of half-hourly reports
FIRST_WINDOW_S = 86400.0  # the first report looks back one day
_NAME = re.compile(r"^report-(\d{8}T\d{6}Z)\.md$")


@dataclass(frozen=True)
class Made:
    markdown: Path
    html: Path
    png: Path
    since: float
    at: float
    removed: int


def stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def reports(state_dir: Path) -> list[tuple[float, Path]]:
    """Existing reports, oldest first, with their time."""
    d = state_dir / REPORTS_DIR
    out = []
    for p in d.glob("report-*.md") if d.is_dir() else []:
        m = _NAME.match(p.name)
        if m:
            t = dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
            out.append((t.timestamp(), p))
    return sorted(out)


def _profile(state_dir: Path) -> Any:
    """The profile in effect (the daemon's copy), or None: slots, cost and keep then default."""
    from daemon.config import ProfileError, load_profile
    from daemon.paths import PROFILE_COPY_NAME

    path = state_dir / PROFILE_COPY_NAME
    if not path.is_file():
        return None
    try:
        return load_profile(path)
    except ProfileError:
        return None


def gather(state_dir: Path, now: float, since: float) -> dict[str, Any]:
    db, runs = state_dir / DB_NAME, state_dir / RUNS_NAME
    profile = _profile(state_dir)
    box = box_of(state_dir)
    with connect_ro(db) as conn:
        mine, me = of_box(conn, "level_state", box)
        level = select(conn, "level_state", ("state", "entered_at", "pinned"),
                       f"WHERE 1 = 1{mine} ORDER BY id LIMIT 1", me)  # fmt: skip
        mine, me = of_box(conn, "decisions", box)
        story = select(
            conn,
            "decisions",
            ("at", "kind", "from_state", "to_state", "reason"),
            "WHERE at >= ? AND game IS NULL AND kind IN ('level', 'process', "
            f"'operator'){mine} ORDER BY at",
            (since, *me),
        )
        games = select(conn, "games", STORED_GAME_COLUMNS, "ORDER BY name")
        mine, me = of_box(conn, "boots", box)
        boots = select(
            conn,
            "boots",
            ("detected_at", "boot_id", "downtime_s", "previous_clean_shutdown"),
            f"WHERE detected_at >= ? AND previous_boot_id IS NOT NULL{mine} ORDER BY detected_at",
            (since, *me),
        )
        crashes = select(
            conn,
            "runs",
            ("game", "ended_at", "exit_code", "signal", "reason"),
            "WHERE ended_at >= ? AND outcome = 'crash' ORDER BY ended_at",
            (since,),
        )
        runs_rows = select(conn, "runs", STORED_RUN_COLUMNS, "ORDER BY id")
        mine, me = of_box(conn, "daemon_runs", box)
        heartbeat = select(conn, "daemon_runs", ("last_heartbeat",),
                           f"WHERE 1 = 1{mine} ORDER BY id DESC LIMIT 1", me)  # fmt: skip
        evals = select(conn, "evals", EVAL_COLUMNS, "ORDER BY id")
        mine, me = of_box(conn, "telemetry", box)
        gpu = select(conn, "telemetry", ("at", "payload"),
                     f"WHERE kind = 'gpu'{mine} ORDER BY at DESC LIMIT 1", me)  # fmt: skip
    latest = {e["game"]: e for e in evals}
    # EPS/H and ETA as `atarictl status` computes them from the same state dir.
    last = heartbeat[0]["last_heartbeat"] if heartbeat else None
    rows = stored_rows(games, runs_rows, last, runs, now)
    slots = cost = None
    if profile is not None and level and level[0]["state"] in profile.level_names:
        slots = profile.level(level[0]["state"]).games
    if profile is not None:
        cost = profile.gpu_cost_per_hour
    eta = total_eta(rows, slots)
    sample = None
    if gpu:
        payload = gpu[0]["payload"]
        sample = json.loads(payload) if isinstance(payload, str) else payload
    return {
        "now": now,
        "since": since,
        "level": level[0] if level else None,
        "story": story,
        "games": rows,
        "latest_evals": latest,
        "reboots": boots,
        "crashes": crashes,
        "gpu": normalize_gpu(sample),
        "gpu_at": gpu[0]["at"] if gpu else None,
        "total_eta_s": eta,
        "total_eta_rough": total_eta_rough(rows, eta),
        "cost_per_hour": cost,
        "projected_cost": projected_cost(eta, cost),
        "keep": profile.reports.keep if profile is not None else DEFAULT_KEEP,
        "db": str(db),
        "runs": str(runs),
    }


def _ep(v: int | None) -> str:
    return "-" if v is None else str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return out


def markdown(d: dict[str, Any], png_name: str) -> str:
    now = d["now"]
    lv = d["level"] or {}
    md = [
        f"# atari-supervisor report, {when(now)}",
        "",
        f"Covers {when(d['since'])} to {when(now)} ({duration(now - d['since'])}).",
        "",
        "## Level",
        "",
    ]
    if lv:
        pin = f", pinned at {lv['pinned']}" if lv.get("pinned") else ""
        md.append(f"Now **{lv['state']}** for {duration(now - lv['entered_at'])}{pin}.")
    else:
        md.append("No level recorded yet.")
    md.append("")
    if d["story"]:
        for s in d["story"]:
            move = f"{s['from_state'] or '-'} → {s['to_state'] or '-'}"
            md.append(f"- {when(s['at'])} · {s['kind']} · {move}: {s['reason']}")
    else:
        md.append("- no level changes in this period")
    md += ["", "## Games", ""]
    rows = []
    for g in d["games"]:
        e = d["latest_evals"].get(g.game)
        target = "?" if g.target is None else f"{g.target:,}"
        pct = "" if not g.target else f" ({100 * g.episodes / g.target:.0f}%)"
        rows.append(
            [
                g.game,
                g.state,
                f"{g.episodes:,}/{target}{pct}",
                num(g.episodes_per_hour, 0),
                eta_text(g.work_left_s, g.eta_rough),
                num(g.avg100),
                num(g.best),
                "-" if e is None else num(e["mean"]),
            ]
        )
    if rows:
        md += _table(["game", "state", "episodes", "eps/h", "ETA", "avg100", "best", "eval"], rows)
    else:
        md.append("(no games)")
    cost = d["projected_cost"]
    tail = f"Total ETA {eta_text(d['total_eta_s'], d.get('total_eta_rough'))}"
    if d["cost_per_hour"] is not None:
        tail += (
            f" · projected cost {'-' if cost is None else f'${cost:,.2f}'} at "
            f"${d['cost_per_hour']:g}/h"
        )
    md += ["", tail + ".", "", "## Latest evals", ""]
    ev = sorted(d["latest_evals"].values(), key=lambda e: e["game"])
    if ev:
        md += _table(
            ["game", "when", "model", "mean ± std", "min/max", "human-norm.", "by"],
            [
                [
                    e["game"],
                    when(e["at"]),
                    f"{e['model_kind']} ep {_ep(e['model_episode'])}",
                    f"{num(e['mean'])} ± {num(e['std'])}",
                    f"{num(e['min'])}/{num(e['max'])}",
                    "-" if (hn := human_normalized(e["game"], e["mean"])) is None else f"{hn:.0f}%",
                    e["source"] or "-",
                ]
                for e in ev
            ],
        )
    else:
        md.append("No evals yet (`atarictl eval GAME`, or the profile's `eval.every`).")
    md += ["", "## Reboots and crashes in this period", ""]
    for b in d["reboots"]:
        down = "" if b["downtime_s"] is None else f", down {duration(b['downtime_s'])}"
        clean = (
            ""
            if b["previous_clean_shutdown"] is None
            else (", clean shutdown" if b["previous_clean_shutdown"] else ", unclean shutdown")
        )
        md.append(f"- {when(b['detected_at'])} · reboot{down}{clean}")
    for c in d["crashes"]:
        md.append(f"- {when(c['ended_at'])} · {c['game']} crashed: {c['reason'] or '-'}")
    if not d["reboots"] and not d["crashes"]:
        md.append("None.")
    md += ["", "## GPU", ""]
    gpu = d["gpu"]
    if gpu is None:
        md.append("No GPU sample in the store.")
    elif not gpu["available"]:
        md.append(f"No GPU ({gpu['reason'] or 'NVML unavailable'}); training runs on the CPU.")
    else:
        for g in gpu["gpus"]:
            md.append(
                f"- {g['name']}: {num(g['util_pct'], 0)}% util, "
                f"{num(g['mem_used_mib'], 0)}/{num(g['mem_total_mib'], 0)} MiB, "
                f"{num(g['temp_c'], 0)}°C, {num(g['power_w'], 0)} W "
                f"(sampled {when(d['gpu_at'])})"
            )
    md += ["", "## Learning curves", "", f"![learning curves]({png_name})", ""]
    return "\n".join(md)


def to_html(md: str, png: bytes) -> str:
    """A small Markdown subset to HTML (headings, lists, tables, bold, the image inline)."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    while i < len(lines):
        ln = lines[i]
        if ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            body.append(f"<h{level}>{inline(ln[level:].strip())}</h{level}>")
        elif ln.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif ln.startswith("| "):
            cells = [c.strip() for c in ln.strip("|").split("|")]
            rows = []
            i += 2  # the header and the |---| line
            while i < len(lines) and lines[i].startswith("| "):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head = "".join(f"<th>{inline(c)}</th>" for c in cells)
            trs = "".join(
                "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            continue
        elif ln.startswith("!["):
            data = base64.b64encode(png).decode()
            body.append(f'<img alt="learning curves" src="data:image/png;base64,{data}">')
        elif ln.strip():
            body.append(f"<p>{inline(ln)}</p>")
        i += 1
    style = (
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1700px}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left;font-size:14px}th{background:#f2f2f2}"
        "img{max-width:100%;border:1px solid #ddd}h1{font-size:22px}h2{font-size:18px;"
        "margin-top:22px}"
    )
    title = html.escape(lines[0].lstrip("# ")) if lines else "report"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_report(state_dir: Path, now: float | None = None, keep: int | None = None) -> Made:
    from daemon.reporting.plot import render

    now = time.time() if now is None else now
    previous = reports(state_dir)
    since = previous[-1][0] if previous else now - FIRST_WINDOW_S
    d = gather(state_dir, now, since)
    out = state_dir / REPORTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    name = f"report-{stamp(now)}"
    png = out / f"{name}.png"
    # The curves span the whole run (what a fallback cost shows against what came before).
    h = read_history(state_dir / DB_NAME, state_dir / RUNS_NAME, None, 0.0)
    render(h, png)
    md = markdown(d, png.name)
    _write(out / f"{name}.html", to_html(md, png.read_bytes()).encode())
    _write(out / f"{name}.md", md.encode())  # last: a report is listed once it is whole
    keep = d["keep"] if keep is None else keep
    removed = 0
    for _t, old in reports(state_dir)[:-keep] if keep > 0 else []:
        for suffix in (".md", ".html", ".png"):
            old.with_suffix(suffix).unlink(missing_ok=True)
        removed += 1
    return Made(out / f"{name}.md", out / f"{name}.html", png, since, now, removed)
