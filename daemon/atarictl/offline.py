"""Read-only reads of the daemon's SQLite file: status when the daemon is down, history, models.

On a PostgreSQL store (``store.url`` in the profile the daemon last ran under) the same reads run
on a snapshot of the server's rows taken into a temporary SQLite file (one REPEATABLE READ READ
ONLY transaction, daemon/store/portable.py), so every offline command works unchanged.

Always opened with `mode=ro`: atarictl must never write the daemon's database, and a WAL
database serves consistent read snapshots while the daemon writes. Queries select only the
columns that exist, so an older or newer schema degrades to `-` fields instead of crashing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from daemon.atarictl.client import CtlError
from daemon.reporting.data import columns, of_box
from daemon.status import (
    STORED_GAME_COLUMNS,
    STORED_RUN_COLUMNS,
    NextDecision,
    build,
    stored_rows,
)
from daemon.top import build as build_top

HISTORY_KINDS = ("boots", "levels", "runs", "decisions", "evals")


class NoDatabase(CtlError):
    exit_code = 3


def _postgres_url(state_dir: Path) -> str | None:
    from daemon.store.postgres import url_of_state_dir  # sqlalchemy: only when it is asked

    return url_of_state_dir(state_dir)


@contextlib.contextmanager
def _postgres_snapshot(url: str) -> Iterator[Path]:
    from daemon.store import StoreError
    from daemon.store.portable import snapshot

    try:
        with snapshot(url) as snap:
            yield snap
    except StoreError as exc:
        raise CtlError(str(exc), "db") from None


@contextlib.contextmanager
def connect_ro(db: Path) -> Iterator[sqlite3.Connection]:
    if not db.is_file() and (url := _postgres_url(db.parent)) is not None:
        with _postgres_snapshot(url) as snap, connect_ro(snap) as conn:
            yield conn
        return
    if not db.is_file():
        raise NoDatabase(
            f"no database at {db}; the daemon has never run with this state dir "
            "(pass --state-dir DIR or start atari-supervisord)",
            "no_database",
        )
    try:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError as exc:
        raise CtlError(f"{db}: cannot open read-only ({exc}); check permissions", "db") from exc
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        raise CtlError(f"{db}: {exc}; is this an atari-supervisor database?", "db") from exc
    finally:
        conn.close()


def _select(
    conn: sqlite3.Connection,
    table: str,
    wanted: tuple[str, ...],
    tail: str = "",
    params: tuple[Any, ...] = (),
) -> list[dict[str, Any]]:
    have = columns(conn, table)
    if not have:
        return []
    cols = [c for c in wanted if c in have]
    sql = f"SELECT {', '.join(cols)} FROM {table} {tail}"
    try:
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        # The tail names a column this schema lacks; fall back to an unfiltered read.
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
    return [{c: r[c] for c in cols} | {c: None for c in wanted if c not in have} for r in rows]


def daemon_info(conn: sqlite3.Connection, box: str | None = None) -> dict[str, Any]:
    mine, me = of_box(conn, "daemon_runs", box) if box else ("", ())
    rows = _select(
        conn,
        "daemon_runs",
        ("pid", "started_at", "last_heartbeat", "stopped_at", "clean_shutdown"),
        f"WHERE 1 = 1{mine} ORDER BY id DESC LIMIT 1",
        me,
    )
    if not rows:
        return {"running": False, "pid": None, "last_heartbeat": None}
    r = rows[0]
    # No answer on the socket, yet the last run never recorded a stop and its pid lives: the
    # daemon may be wedged or its control socket failed; say so rather than "down".
    alive = r["stopped_at"] is None and bool(r["pid"]) and psutil.pid_exists(int(r["pid"]))
    return {
        "running": False,
        "pid_alive": alive,
        "pid": r["pid"],
        "last_heartbeat": r["last_heartbeat"],
        "stopped_at": r["stopped_at"],
        "clean_shutdown": None if r["clean_shutdown"] is None else bool(r["clean_shutdown"]),
    }


def offline_status(
    db: Path, now: float, games: list[str] | None = None, runs_dir: Path | None = None
) -> dict[str, Any]:
    """``daemon/status.py``'s shape from the tables (no GPU, no next decision, no slots); the
    episode rate from the runs table and each run dir's episodes.jsonl (``runs_dir``, default
    the state dir's ``runs/``), by the daemon's own formula."""
    from daemon.paths import box_of

    runs_dir = db.parent / "runs" if runs_dir is None else runs_dir
    box = box_of(db.parent)
    with connect_ro(db) as conn:
        # This box's rows (fleet mode; a schema before version 6 had one box).
        mine, me = of_box(conn, "level_state", box)
        level = _select(conn, "level_state", ("state", "entered_at", "pinned"),
                        f"WHERE 1 = 1{mine} ORDER BY id LIMIT 1", me)  # fmt: skip
        # Reboots only, as the daemon and the autoscaler count them (the first boot is none).
        mine, me = of_box(conn, "boots", box)
        boots = _select(
            conn,
            "boots",
            ("detected_at",),
            f"WHERE detected_at >= ? AND previous_boot_id IS NOT NULL{mine}",
            (now - 3600.0, *me),
        )
        rows = _select(conn, "games", STORED_GAME_COLUMNS, "ORDER BY name")
        info = daemon_info(conn, box)
        runs = _select(conn, "runs", STORED_RUN_COLUMNS, "ORDER BY id")
    lv = level[0] if level else {}
    if games:
        rows = [r for r in rows if r["name"] in games]
    # pid None: the daemon is down, so none of its trainers is supervised now.
    game_rows = stored_rows(rows, runs, info.get("last_heartbeat"), runs_dir, now)
    return build(
        source="database", now=now, daemon=info, level=lv.get("state"),
        level_entered_at=lv.get("entered_at"), pinned=lv.get("pinned"),
        boots_last_hour=len(boots), gpu=None,
        next_decision=NextDecision("none: the daemon is down (it decides nothing)", None),
        # Not in the database: the level's slots and the cost are the profile's (the total
        # ETA then assumes every pending game runs at once, and no cost is projected).
        slots=None, games=game_rows, gpu_cost_per_hour=None, extra={"box": box},
    ).to_dict()  # fmt: skip


def offline_top(db: Path, now: float) -> dict[str, Any]:
    """``daemon/top.py``'s shape from the newest telemetry rows: what the daemon last sampled,
    trainer pids named by the runs table, the daemon's by its last daemon run."""
    from daemon.paths import box_of

    box = box_of(db.parent)
    with connect_ro(db) as conn:
        samples: dict[str, Any] = {}
        at: float | None = None
        mine, me = of_box(conn, "telemetry", box)  # this box's samples
        for kind in ("host", "process", "gpu"):
            rows = _select(conn, "telemetry", ("at", "payload"),
                           f"WHERE kind = ?{mine} ORDER BY at DESC LIMIT 1",
                           (kind, *me))  # fmt: skip
            if rows and rows[0]["payload"]:
                with contextlib.suppress(ValueError, TypeError):
                    samples[kind] = json.loads(rows[0]["payload"])
                    at = max(at or 0.0, rows[0]["at"])
        # Newest run last: a reused pid is named by its latest run.
        games = {r["pid"]: r["game"] for r in _select(conn, "runs", ("pid", "game"), "ORDER BY id")}
        info = daemon_info(conn, box)
    return build_top(source="database", now=now, sampled_at=at, host=samples.get("host"),
                     processes=samples.get("process"), gpu=samples.get("gpu"), games=games,
                     daemon_pid=info.get("pid"))  # fmt: skip


def known_games(db: Path) -> list[str]:
    try:
        with connect_ro(db) as conn:
            return [r["name"] for r in _select(conn, "games", ("name",), "ORDER BY name")]
    except CtlError:
        return []


def history(db: Path, since: float, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with connect_ro(db) as conn:
        if "boots" in kinds:
            for r in _select(
                conn,
                "boots",
                (
                    "detected_at",
                    "boot_id",
                    "previous_boot_id",
                    "downtime_s",
                    "previous_clean_shutdown",
                    "box",
                ),
                "WHERE detected_at >= ? ORDER BY detected_at",
                (since,),
            ):
                down = r["downtime_s"]
                clean = r["previous_clean_shutdown"]
                out.append(
                    {
                        "at": r["detected_at"],
                        "kind": "boot",
                        "game": None,
                        "box": r["box"],
                        "what": f"boot {str(r['boot_id'] or '?')[:8]}",
                        "reason": (
                            (
                                "first boot seen"
                                if not r["previous_boot_id"]
                                else f"after {str(r['previous_boot_id'])[:8]}"
                            )
                            + ("" if down is None else f", down {down:.0f}s")
                            + (
                                ""
                                if clean is None
                                else (", clean shutdown" if clean else ", unclean shutdown")
                            )
                        ),
                    }
                )
        if "runs" in kinds:
            for r in _select(
                conn,
                "runs",
                (
                    "started_at",
                    "game",
                    "pid",
                    "level",
                    "num_envs",
                    "batch_size",
                    "ended_at",
                    "exit_code",
                    "signal",
                    "reason",
                    "box",
                ),
                "WHERE started_at >= ? OR ended_at >= ? ORDER BY started_at",
                (since, since),
            ):
                # Two events at their own times: how a run ended is not known at its start.
                if r["started_at"] is not None and r["started_at"] >= since:
                    out.append(
                        {
                            "at": r["started_at"],
                            "kind": "run",
                            "game": r["game"],
                            "box": r["box"],
                            "what": f"pid {r['pid']} started: {r['level']} "
                            f"envs={r['num_envs']} batch={r['batch_size']}",
                            "reason": None,
                        }
                    )
                if r["ended_at"] is not None and r["ended_at"] >= since:
                    end = f"signal {r['signal']}" if r["signal"] else f"exit {r['exit_code']}"
                    out.append(
                        {
                            "at": r["ended_at"],
                            "kind": "run",
                            "game": r["game"],
                            "box": r["box"],
                            "what": f"pid {r['pid']} ended: {end}",
                            "reason": r["reason"],
                        }
                    )
        if "decisions" in kinds or "levels" in kinds:
            only_levels = "decisions" not in kinds
            for r in _select(
                conn,
                "decisions",
                ("at", "kind", "game", "from_state", "to_state", "reason", "box"),
                "WHERE at >= ? ORDER BY at",
                (since,),
            ):
                if only_levels and r["kind"] != "level":
                    continue
                if r["kind"] == "boot" and "boots" in kinds:
                    continue  # the boots table already lists it, with more detail
                out.append(
                    {
                        "at": r["at"],
                        "kind": r["kind"] or "decision",
                        "game": r["game"],
                        "box": r["box"],
                        "what": f"{r['from_state'] or '-'} -> {r['to_state'] or '-'}",
                        "reason": r["reason"],
                    }
                )
        if "evals" in kinds:
            out += _eval_events(conn, since)
    out.sort(key=lambda r: r["at"] or 0.0)
    return out


def _eval_events(conn: sqlite3.Connection, since: float) -> list[dict[str, Any]]:
    cols = ("at", "game", "model_kind", "model_episode", "episodes", "mean", "std",
            "human_normalized", "source", "wall_s")  # fmt: skip
    out = []
    for r in _select(conn, "evals", cols, "WHERE at >= ? ORDER BY at", (since,)):
        ep = "-" if r["model_episode"] is None else r["model_episode"]
        hn = r["human_normalized"]
        out.append({
            "at": r["at"], "kind": "eval", "game": r["game"],
            "what": f"{r['model_kind']} model (episode {ep}): mean {r['mean']:.1f} ± "
                    f"{(r['std'] or 0.0):.1f} over {r['episodes']} episodes",
            "reason": ("" if hn is None else f"{hn:.0f}% human-normalized · ")
                      + f"by {r['source'] or '-'} in {(r['wall_s'] or 0.0):.0f}s",
        })  # fmt: skip
    return out


def models(db: Path, runs_dir: Path) -> list[dict[str, Any]]:
    """The model registry (store table `models`), completed from run dirs for games the store
    does not list yet, so `atarictl models` answers even before the first registry write."""
    rows: list[dict[str, Any]] = []
    if db.is_file() or _postgres_url(db.parent) is not None:
        with connect_ro(db) as conn:
            for r in _select(
                conn,
                "models",
                ("game", "kind", "episode", "return_", "at", "path"),
                "ORDER BY game, kind",
            ):
                rows.append(
                    {
                        "game": r["game"],
                        "kind": r["kind"],
                        "episode": r["episode"],
                        "return": r["return_"],
                        "at": r["at"],
                        "path": r["path"],
                        "source": "registry",
                    }
                )
    listed = {(r["game"], r["kind"]) for r in rows}
    for run in sorted(p for p in runs_dir.glob("*") if p.is_dir()) if runs_dir.is_dir() else []:
        rows.extend(r for r in _scan_run_dir(run) if (r["game"], r["kind"]) not in listed)
    rows.sort(key=lambda r: (r["game"], r["kind"]))
    return rows


def _scan_run_dir(run: Path) -> list[dict[str, Any]]:
    progress: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        progress = json.loads((run / "progress.json").read_text())
    out = []
    best = run / "best.pt"
    if best.is_file():
        out.append(
            {
                "game": run.name,
                "kind": "best",
                "episode": None,
                "return": progress.get("best_return"),
                "at": best.stat().st_mtime,
                "path": str(best),
                "source": "run dir",
            }
        )
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    if ckpts:
        latest = ckpts[-1]
        # The file name is a sequence number, not an episode; the episode count is only known
        # from progress.json when it was written with this checkpoint.
        same = (
            progress.get("last_checkpoint_time") is not None
            and abs(float(progress["last_checkpoint_time"]) - latest.stat().st_mtime) < 5.0
        )
        out.append(
            {
                "game": run.name,
                "kind": "latest",
                "episode": progress.get("episodes") if same else None,
                "return": progress.get("avg100"),
                "at": latest.stat().st_mtime,
                "path": str(latest),
                "source": "run dir",
            }
        )
    return out
