"""What the plot and the report read: episodes.jsonl of each run dir and the store, read-only.

The database is opened with ``mode=ro`` (the daemon owns it; a WAL file serves consistent read
snapshots while it writes), and only columns that exist are selected, so an older schema reads
as empty lists instead of a crash. Standard library only: ``atarictl plot`` and the daemon's
report program load it without torch.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Curve:
    """One game's finished episodes, oldest first."""

    game: str
    t: list[float] = field(default_factory=list)  # unix time the episode ended
    episode: list[int] = field(default_factory=list)
    ret: list[float] = field(default_factory=list)  # unclipped return


@dataclass(frozen=True)
class Span:
    """A trainer run of a game at one level (the runs table)."""

    game: str
    level: str | None
    start: float
    end: float | None  # None: still running
    outcome: str | None  # done | stopped | crash | unknown


@dataclass(frozen=True)
class History:
    games: list[str]
    curves: dict[str, Curve]
    spans: list[Span]
    reboots: list[float]
    level_changes: list[tuple[float, str | None, str | None]]  # (at, from, to)
    evals: list[dict[str, Any]]


@contextlib.contextmanager
def connect_ro(db: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection, or None when there is no database (plots from run dirs only).
    On a PostgreSQL store (the state dir's profile copy names one), a snapshot of its rows
    (``daemon/store/portable.py``); ``StoreError`` when the server cannot be read."""
    from daemon.store.postgres import url_of_state_dir

    if not db.is_file() and (url := url_of_state_dir(db.parent)) is not None:
        from daemon.store.portable import snapshot

        with snapshot(url) as snap, connect_ro(snap) as conn:
            yield conn
        return
    if not db.is_file():
        yield None
        return
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def select(
    conn: sqlite3.Connection | None,
    table: str,
    wanted: tuple[str, ...],
    tail: str = "",
    params: tuple[Any, ...] = (),
) -> list[dict[str, Any]]:
    if conn is None:
        return []
    have = columns(conn, table)
    if not have or not set(wanted) <= have:
        return []
    rows = conn.execute(f"SELECT {', '.join(wanted)} FROM {table} {tail}", params).fetchall()
    return [dict(r) for r in rows]


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The table's columns in this file ({} when it has no such table): readers of an older or
    newer schema select only what exists."""
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def of_box(conn: sqlite3.Connection | None, table: str, box: str) -> tuple[str, tuple[str, ...]]:
    """``AND box = ?`` and its parameter when ``table`` records boxes (schema 6), else nothing:
    a fleet box's report shows its own level, boots and heartbeat."""
    if conn is None or "box" not in columns(conn, table):
        return "", ()
    return " AND box = ?", (box,)


def read_curve(run_dir: Path, since: float = 0.0) -> Curve:
    """The episode log; a torn last line (a trainer killed mid-append) is skipped."""
    curve = Curve(run_dir.name)
    try:
        fh = (run_dir / "episodes.jsonl").open("rb")
    except OSError:
        return curve
    with fh:
        for line in fh:
            try:
                e = json.loads(line)
                t, ep, r = float(e["t"]), int(e["episode"]), float(e["return"])
            except (ValueError, KeyError, TypeError):
                continue
            if t >= since:
                curve.t.append(t)
                curve.episode.append(ep)
                curve.ret.append(r)
    return curve


def game_names(conn: sqlite3.Connection | None, runs_dir: Path) -> list[str]:
    names = [r["name"] for r in select(conn, "games", ("name",), "ORDER BY name")]
    if runs_dir.is_dir():
        names += [p.name for p in runs_dir.iterdir() if p.is_dir() and p.name not in names]
    return sorted(set(names))


def read_history(db: Path, runs_dir: Path, games: list[str] | None, since: float) -> History:
    with connect_ro(db) as conn:
        names = games if games else game_names(conn, runs_dir)
        spans = [
            Span(r["game"], r["level"], r["started_at"], r["ended_at"], r["outcome"])
            for r in select(
                conn,
                "runs",
                ("game", "level", "started_at", "ended_at", "outcome"),
                "WHERE ended_at IS NULL OR ended_at >= ? ORDER BY started_at",
                (since,),
            )
            if r["game"] in names
        ]
        reboots = [
            r["detected_at"]
            for r in select(
                conn,
                "boots",
                ("detected_at",),
                "WHERE detected_at >= ? AND previous_boot_id IS NOT NULL ORDER BY detected_at",
                (since,),
            )
        ]
        # The supervisor's own row for a level change of the running games (game NULL).
        changes = [
            (r["at"], r["from_state"], r["to_state"])
            for r in select(
                conn,
                "decisions",
                ("at", "from_state", "to_state"),
                "WHERE kind = 'process' AND game IS NULL AND from_state IS NOT NULL "
                "AND to_state IS NOT NULL AND at >= ? ORDER BY at",
                (since,),
            )
        ]
        evals = [
            r
            for r in select(conn, "evals", EVAL_COLUMNS, "WHERE at >= ? ORDER BY at", (since,))
            if r["game"] in names
        ]
    curves = {g: read_curve(runs_dir / g, since) for g in names}
    return History(names, curves, spans, reboots, changes, evals)


EVAL_COLUMNS = (
    "id",
    "at",
    "game",
    "model_kind",
    "model_sha256",
    "model_episode",
    "train_avg100",
    "episodes",
    "mean",
    "median",
    "std",
    "min",
    "max",
    "human_normalized",
    "wall_s",
    "device",
    "source",
)


def latest_evals(db: Path) -> dict[str, dict[str, Any]]:
    """The newest eval row of each game (status, models, report)."""
    with connect_ro(db) as conn:
        rows = select(conn, "evals", EVAL_COLUMNS, "ORDER BY id")
    return {r["game"]: r for r in rows}


def avg100(returns: list[float]) -> list[float]:
    """The trainer's avg100: the mean of the last (up to) 100 returns, at every episode."""
    out: list[float] = []
    total = 0.0
    for i, r in enumerate(returns):
        total += r
        if i >= 100:
            total -= returns[i - 100]
        out.append(total / min(i + 1, 100))
    return out
