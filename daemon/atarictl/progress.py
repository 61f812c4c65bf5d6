"""``atarictl plot`` and ``atarictl report``: learning curves and the progress report.

Both read the state dir only (episodes.jsonl of each run dir, the store read-only, the profile
copy): they answer with the daemon down too. The drawing and the report are
``daemon/reporting``'s, the same code the daemon's report check runs as its own process.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.atarictl.client import CtlError
from daemon.atarictl.names import resolve_games
from trainer.contract import BEST_EVAL_FILE, BEST_EVAL_INFO


class PlotUsage(CtlError):
    exit_code = 2


def add_parsers(sub: Any, parents: list[Any], duration: Any) -> None:
    """Registered by daemon/atarictl/cli.py."""
    p = sub.add_parser("plot", parents=parents, help="learning curves, one panel per game")
    p.add_argument("games", nargs="*", metavar="GAME", help="only these games (default all)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("atari-curves.png"),
        metavar="FILE",
        help="FILE.png or FILE.svg (default ./atari-curves.png)",
    )
    p.add_argument(
        "--since",
        type=duration,
        metavar="DURATION",
        help="only the last DURATION (default: everything)",
    )
    r = sub.add_parser("report", parents=parents, help="the latest progress report, or a new one")
    r.add_argument("--now", action="store_true", help="make a new report first")
    r.add_argument("--html", action="store_true", help="print the HTML file's path, not the text")


def _store_errors(fn: Callable[[Any], int]) -> Callable[[Any], int]:
    """A PostgreSQL store that cannot be read is atarictl's one-line error, not a traceback."""

    @functools.wraps(fn)
    def run(ctl: Any) -> int:
        from daemon.store import StoreError

        try:
            return fn(ctl)
        except StoreError as exc:
            raise CtlError(str(exc), "db") from None

    return run


@_store_errors
def cmd_plot(ctl: Any) -> int:
    from daemon.reporting.data import connect_ro, game_names, read_history
    from daemon.reporting.plot import FORMATS, render

    a, paths = ctl.args, ctl.paths
    if a.out.suffix.lower() not in FORMATS:
        raise PlotUsage(f"--out {a.out}: the file name must end in .png or .svg", "bad_args")
    with connect_ro(paths.db) as conn:
        known = game_names(conn, paths.runs_dir)
    if not known:
        raise CtlError(
            f"nothing to plot: no games in {paths.db} and no run dirs in "
            f"{paths.runs_dir}; pass --state-dir DIR",
            "no_data",
        )
    games = resolve_games(a.games, known) if a.games else known
    since = time.time() - a.since if a.since else 0.0
    t0 = time.monotonic()
    h = read_history(paths.db, paths.runs_dir, games, since)
    drawn = render(h, a.out)
    drawn["seconds"] = time.monotonic() - t0
    n = sum(g["episodes"] for g in drawn["games"].values())
    ev = sum(g["evals"] for g in drawn["games"].values())
    ctl.out(
        f"wrote {a.out}: {len(games)} game{'s' if len(games) != 1 else ''}, {n:,} episodes, "
        f"{_n(ev, 'eval')}, {_n(drawn['reboots'], 'reboot')}, "
        f"{_n(drawn['level_changes'], 'level change')} "
        f"({drawn['seconds']:.1f}s)",
        drawn,
    )
    return 0


def _n(k: int, what: str) -> str:
    return f"{k} {what}{'' if k == 1 else 's'}"


@_store_errors
def cmd_report(ctl: Any) -> int:
    from daemon.reporting.report import make_report, reports

    state = ctl.paths.state_dir
    have = reports(state)
    made = None
    if ctl.args.now or not have:
        if not ctl.paths.db.is_file() and not ctl.paths.runs_dir.is_dir():
            raise CtlError(
                f"no database at {ctl.paths.db} and no runs at {ctl.paths.runs_dir};"
                " pass --state-dir DIR",
                "no_database",
            )
        try:
            made = make_report(state)
        except OSError as exc:
            raise CtlError(f"cannot write a report under {state / 'reports'} "
                           f"({exc.strerror or exc}); run as the daemon's user, or read the "
                           "latest with `atarictl report`", "report_failed") from None  # fmt: skip
        md = made.markdown
    else:
        md = have[-1][1]
    html = md.with_suffix(".html")
    data = {
        "markdown": str(md),
        "html": str(html),
        "png": str(md.with_suffix(".png")),
        "made_now": made is not None,
        "text": md.read_text(),
    }
    ctl.out(str(html) if ctl.args.html else data["text"], data)
    return 0


# ------------------------------------------------------------------ evals in status and models


def latest_evals_of(db: Path, games: list[str]) -> dict[str, dict[str, Any]]:
    """The newest eval of each listed game ({} when there is no evals table yet, or the store
    cannot be read: status shows the rest). On a PostgreSQL store (``store.url``) the evals
    table is read from the server, as the daemon writes it."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    from daemon.reporting.data import latest_evals
    from daemon.store.postgres import url_of_state_dir

    try:
        if not db.is_file() and (url := url_of_state_dir(db.parent)) is not None:
            rows = _postgres_latest_evals(url)
        else:
            rows = latest_evals(db)
    except (sqlite3.Error, SQLAlchemyError):
        return {}
    return {g: e for g, e in rows.items() if g in games}


def _postgres_latest_evals(url: str) -> dict[str, dict[str, Any]]:
    """``daemon.reporting.data.latest_evals``'s answer from a PostgreSQL store: one read-only
    SELECT of the evals table (not the whole-store snapshot the offline reads take)."""
    from sqlalchemy import select

    from daemon.reporting.data import EVAL_COLUMNS
    from daemon.store import postgres
    from daemon.store import schema as s

    engine = postgres.make_engine(url, 5.0)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        q = select(*(s.evals.c[c] for c in EVAL_COLUMNS)).order_by(s.evals.c.id)
        rows = [dict(r._mapping) for r in conn.execute(q)]
    return {r["game"]: r for r in rows}


def with_evals(rows: list[dict[str, Any]], db: Path, runs_dir: Path) -> list[dict[str, Any]]:
    """Each model row gets ``eval``: the mean of the newest eval of that game's model of that
    kind (best, latest), and each game with a ``best-eval.pt`` gets its row (the weights of the
    daemon's best eval score, kept apart from best.pt)."""
    import json
    import sqlite3

    from daemon.reporting.data import EVAL_COLUMNS, connect_ro, select

    try:
        with connect_ro(db) as conn:
            evals = select(conn, "evals", EVAL_COLUMNS, "ORDER BY id")
    except sqlite3.Error:
        evals = []
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for e in evals:
        newest[(e["game"], e["model_kind"] or "")] = e
    out = []
    for r in rows:
        e = newest.get((r["game"], r["kind"]))
        out.append(r | {"eval": None if e is None else e["mean"],
                        "eval_at": None if e is None else e["at"]})  # fmt: skip
    kept = sorted(runs_dir.glob(f"*/{BEST_EVAL_FILE}")) if runs_dir.is_dir() else []
    for path in kept:
        game = path.parent.name
        try:
            info = json.loads((runs_dir / game / BEST_EVAL_INFO).read_text())
        except (OSError, ValueError):
            info = {}
        out.append({"game": game, "kind": "best-eval", "episode": info.get("model_episode"),
                    "return": None, "eval": info.get("mean"), "eval_at": info.get("at"),
                    "at": path.stat().st_mtime, "path": str(path),
                    "source": "run dir"})  # fmt: skip
    out.sort(key=lambda r: (r["game"], r["kind"]))
    return out
