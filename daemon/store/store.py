"""``Store``: the one gateway to the database: every read and write of the daemon and its tests.

Each method is one short transaction (writes on the main loop and the telemetry job), and every
driver error leaves it as a one-line ``StoreError`` (locked, corrupt, read-only), so the daemon's
``except StoreError`` sees every database failure. The SQL is SQLAlchemy Core; what is specific
to SQLite (pragmas, upsert, integrity checks, snapshots) lives in ``daemon/store/sqlite.py``, and
to PostgreSQL (a ``postgresql+psycopg://`` URL, docs/fleet.md) in ``daemon/store/postgres.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError

from daemon.paths import default_box
from daemon.store import dialect
from daemon.store import schema as s
from daemon.store.dialect import begin_write, quick_check, table_names, upsert


class StoreError(RuntimeError):
    """The database cannot be used (locked, corrupt, newer schema); str() is one line."""


# Built once: these run on every stability check and building the expressions costs more than
# running them. Each box sees only its own reboots and crashes (fleet mode, docs/fleet.md).
_REBOOTS_SINCE = (
    select(s.boots.c.detected_at)
    .where(s.IS_REBOOT, s.boots.c.detected_at >= bindparam("since"),
           s.boots.c.box == bindparam("box"))
    .order_by(s.boots.c.detected_at)
)  # fmt: skip
# A crash is a run that died on its own: the process manager records that as runs.outcome.
_CRASHES_SINCE = (
    select(s.runs.c.ended_at)
    .where(
        s.runs.c.ended_at.is_not(None),
        s.runs.c.ended_at >= bindparam("since"),
        s.runs.c.outcome.in_(s.CRASH_OUTCOMES),
        s.runs.c.box == bindparam("box"),
    )
    .order_by(s.runs.c.ended_at)
)


class Store:
    """Open with ``Store.open(path_or_url)``; every method is one short transaction,
    thread-safe. ``path`` is the SQLite file (None on PostgreSQL); ``where`` names the database
    in messages (the path, or the URL without its password). ``box`` is the box this store
    writes for: boots, daemon runs, the level, decisions, runs and telemetry are recorded per
    box, and the per-box reads see only this box's rows (``schema.PER_BOX_TABLES``)."""

    def __init__(
        self, path: Path | None, engine: Any, where: str | None = None, box: str | None = None
    ) -> None:
        self.path = path
        self.engine = engine
        self.where = where if where is not None else str(path)
        self.box = box or default_box()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, path: Path | str, *, busy_timeout_s: float = 10.0, box: str | None = None
    ) -> Store:
        """``path``: an SQLite file (or ``sqlite:///PATH``), or a ``postgresql+psycopg://`` URL;
        ``box``: this box's name (default the host name)."""
        file = dialect.sqlite_path(path)
        if file is not None and not file.parent.is_dir():
            raise StoreError(f"{file}: directory {file.parent} does not exist; create it first")
        engine, where = dialect.open_engine(path, busy_timeout_s)
        store = cls(file, engine, where, box)
        try:
            store._check_and_migrate()
        except DBAPIError as e:
            raise StoreError(dialect.explain(engine, where, e)) from None
        return store

    def _check_and_migrate(self) -> None:
        with self.engine.begin() as conn:
            begin_write(conn)  # the migration below is one transaction, DDL included
            result = quick_check(conn)
            if result != "ok":
                raise StoreError(
                    f"{self.where}: database is corrupt (quick_check: {result}); restore it with "
                    "`atarictl restore BACKUP` or move it aside"
                )
            existing = table_names(conn)
            if "schema_version" not in existing:
                if existing - {"sqlite_sequence"}:
                    raise StoreError(
                        f"{self.where}: not an atari-supervisor database (tables: "
                        f"{', '.join(sorted(existing))}); point --state-dir elsewhere"
                    )
                s.metadata.create_all(conn)
                conn.execute(insert(s.schema_version).values(version=s.SCHEMA_VERSION))
                return
            version = conn.execute(select(s.schema_version.c.version)).scalar_one()
            if version > s.SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where}: database schema version {version} is newer than this "
                    f"atari-supervisor understands ({s.SCHEMA_VERSION}); upgrade atari-supervisor "
                    "or restore a backup made by this version"
                )
            old = version
            while version < s.SCHEMA_VERSION:
                s.MIGRATIONS[version](conn)
                version += 1
            if old < 6:
                s.adopt_rows(conn, self.box)
            s.metadata.create_all(conn)  # tables that did not exist in any migration step
            # Always a write: a database locked by another writer is reported here, at open.
            conn.execute(update(s.schema_version).values(version=version))

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One transaction; a driver error leaves as a one-line StoreError."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as e:
            raise StoreError(dialect.explain(self.engine, self.where, e)) from None

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ decisions

    def record_decision(
        self,
        at: float,
        kind: str,
        reason: str,
        game: str | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
    ) -> None:
        with self._begin() as conn:
            conn.execute(
                insert(s.decisions).values(
                    at=at,
                    kind=kind,
                    game=game,
                    from_state=from_state,
                    to_state=to_state,
                    reason=reason,
                    box=self.box,
                )
            )

    def decisions(
        self,
        since: float = 0.0,
        game: str | None = None,
        kinds: tuple[str, ...] | None = None,
        limit: int | None = None,
        *,
        all_boxes: bool = False,
    ) -> list[dict[str, Any]]:
        """This box's decisions (``all_boxes``: the fleet's), oldest first; with ``limit``, only
        the newest ``limit`` rows."""
        q = select(s.decisions).where(s.decisions.c.at >= since).order_by(s.decisions.c.id.desc())
        if not all_boxes:
            q = q.where(s.decisions.c.box == self.box)
        if game is not None:
            q = q.where(s.decisions.c.game == game)
        if kinds is not None:
            q = q.where(s.decisions.c.kind.in_(kinds))
        if limit:
            q = q.limit(limit)
        with self._begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)][::-1]

    # ------------------------------------------------------------------ games

    def upsert_game(self, name: str, **fields: Any) -> None:
        with self._begin() as conn:
            upsert(conn, s.games, {"name": name}, fields, {"state": "QUEUED", "target": 0})

    def games(self) -> dict[str, dict[str, Any]]:
        with self._begin() as conn:
            return {r.name: dict(r._mapping) for r in conn.execute(select(s.games))}

    # ------------------------------------------------------------------ runs

    def run_started(
        self,
        game: str,
        pid: int,
        started_at: float,
        *,
        level: str | None,
        num_envs: int | None,
        batch_size: int | None,
        proc_start_time: float | None,
        device: str | None = None,
    ) -> int:
        with self._begin() as conn:
            res = conn.execute(
                insert(s.runs).values(
                    game=game,
                    pid=pid,
                    started_at=started_at,
                    level=level,
                    num_envs=num_envs,
                    batch_size=batch_size,
                    proc_start_time=proc_start_time,
                    device=device,
                    box=self.box,
                )
            )
            return int(res.inserted_primary_key[0])

    def run_ended(
        self,
        run_id: int,
        ended_at: float,
        *,
        exit_code: int | None,
        signal: str | None,
        reason: str,
        outcome: s.Outcome | None = None,
    ) -> None:
        """``outcome`` (crash/stopped/done/unknown) is what the crash-storm guard reads; the
        process manager always gives it. None leaves the run unclassified (never a crash)."""
        with self._begin() as conn:
            conn.execute(
                update(s.runs)
                .where(s.runs.c.id == run_id)
                .values(
                    ended_at=ended_at,
                    exit_code=exit_code,
                    signal=signal,
                    reason=reason,
                    outcome=None if outcome is None else outcome.value,
                )
            )

    def open_runs(self) -> list[dict[str, Any]]:
        """This box's runs with no end recorded: after a daemon crash these may still be
        alive. (Another box's open runs are its own to close.)"""
        q = (select(s.runs).where(s.runs.c.ended_at.is_(None), s.runs.c.box == self.box)
             .order_by(s.runs.c.id))  # fmt: skip
        with self._begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def runs(self, game: str | None = None) -> list[dict[str, Any]]:
        """Every box's runs (a game's runs move between boxes in fleet mode)."""
        q = select(s.runs).order_by(s.runs.c.id)
        if game is not None:
            q = q.where(s.runs.c.game == game)
        with self._begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def run_outcome_counts(self) -> dict[tuple[str, str], int]:
        """Ended runs per (game, outcome): the /metrics restart counters (daemon/metrics.py)."""
        c = s.runs.c
        q = (select(c.game, c.outcome, func.count())
             .where(c.ended_at.is_not(None), c.box == self.box)
             .group_by(c.game, c.outcome))  # fmt: skip
        with self._begin() as conn:
            return {(g, o or "unknown"): n for g, o, n in conn.execute(q)}

    def decision_moves(self, kind: str) -> dict[tuple[str | None, str | None], int]:
        """Decisions of one kind per (from_state, to_state): the autoscaler's move counters."""
        c = s.decisions.c
        q = (select(c.from_state, c.to_state, func.count())
             .where(c.kind == kind, c.box == self.box)
             .group_by(c.from_state, c.to_state))  # fmt: skip
        with self._begin() as conn:
            return {(a, b): n for a, b, n in conn.execute(q)}

    # ------------------------------------------------------------------ daemon runs and boots

    def daemon_started(self, pid: int, boot_id: str | None, at: float) -> int:
        with self._begin() as conn:
            res = conn.execute(
                insert(s.daemon_runs).values(
                    pid=pid, boot_id=boot_id, started_at=at, last_heartbeat=at,
                    clean_shutdown=False, box=self.box,
                )
            )
            return int(res.inserted_primary_key[0])

    def daemon_heartbeat(self, run_id: int, at: float) -> None:
        with self._begin() as conn:
            conn.execute(
                update(s.daemon_runs).where(s.daemon_runs.c.id == run_id).values(last_heartbeat=at)
            )

    def daemon_stopped(self, run_id: int, at: float, clean: bool) -> None:
        with self._begin() as conn:
            conn.execute(
                update(s.daemon_runs)
                .where(s.daemon_runs.c.id == run_id)
                .values(stopped_at=at, last_heartbeat=at, clean_shutdown=clean)
            )

    def last_daemon_run(self, before_id: int | None = None) -> dict[str, Any] | None:
        q = (select(s.daemon_runs).where(s.daemon_runs.c.box == self.box)
             .order_by(s.daemon_runs.c.id.desc()).limit(1))  # fmt: skip
        if before_id is not None:
            q = q.where(s.daemon_runs.c.id < before_id)
        with self._begin() as conn:
            row = conn.execute(q).first()
            return dict(row._mapping) if row else None

    def record_boot(self, boot_id: str, detected_at: float, *, reason: str, **fields: Any) -> None:
        """A boot row and the ``boot`` decision that explains it, in one transaction."""
        with self._begin() as conn:
            conn.execute(insert(s.boots).values(boot_id=boot_id, detected_at=detected_at,
                                                box=self.box, **fields))  # fmt: skip
            conn.execute(
                insert(s.decisions).values(
                    at=detected_at,
                    kind="boot",
                    from_state=fields.get("previous_boot_id"),
                    to_state=boot_id,
                    reason=reason,
                    box=self.box,
                )
            )

    def last_boot_and_daemon_run(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The newest boot row and the newest daemon run under that boot (either may be None)."""
        with self._begin() as conn:
            boot = conn.execute(
                select(s.boots).where(s.boots.c.box == self.box)
                .order_by(s.boots.c.detected_at.desc(), s.boots.c.id.desc())
            ).first()  # fmt: skip
            if boot is None:
                return None, None
            run = conn.execute(
                select(s.daemon_runs)
                .where(s.daemon_runs.c.boot_id == boot.boot_id, s.daemon_runs.c.box == self.box)
                .order_by(s.daemon_runs.c.started_at.desc(), s.daemon_runs.c.id.desc())
            ).first()
        return dict(boot._mapping), dict(run._mapping) if run else None

    def reboot_times(self, since: float) -> tuple[float, ...]:
        """When each reboot since ``since`` was detected: boots that replaced a known earlier
        boot (``schema.IS_REBOOT``); the very first boot a database sees is not a reboot."""
        with self._begin() as conn:
            rows = conn.execute(_REBOOTS_SINCE, {"since": since, "box": self.box}).all()
        return tuple(float(r.detected_at) for r in rows)

    def reboots_since(self, since: float) -> int:
        return len(self.reboot_times(since))

    def crash_times(self, since: float) -> tuple[float, ...]:
        """When each run that crashed (``schema.CRASH_OUTCOMES``) since ``since`` ended."""
        with self._begin() as conn:
            rows = conn.execute(_CRASHES_SINCE, {"since": since, "box": self.box}).all()
        return tuple(float(r.ended_at) for r in rows)

    def run_spans(self, level: str, since: float) -> tuple[tuple[float, float | None], ...]:
        """(start, end or None) of every trainer run at ``level`` alive at or after ``since``:
        the autoscaler's load fact. A run that ended while the daemon was down (outcome
        ``unknown``) is left out: when it really died is not known, so it proves no load."""
        q = (
            select(s.runs.c.started_at, s.runs.c.ended_at)
            .where(
                s.runs.c.level == level,
                s.runs.c.box == self.box,
                or_(s.runs.c.ended_at.is_(None), s.runs.c.ended_at >= since),
                or_(s.runs.c.outcome.is_(None), s.runs.c.outcome != s.Outcome.UNKNOWN.value),
            )
            .order_by(s.runs.c.started_at)
        )
        with self._begin() as conn:
            rows = conn.execute(q).all()
        return tuple((float(r.started_at), r.ended_at) for r in rows)

    # ------------------------------------------------------------------ level state

    def level_state(self) -> dict[str, Any] | None:
        """This box's level row."""
        q = select(s.level_state).where(s.level_state.c.box == self.box)
        with self._begin() as conn:
            row = conn.execute(q).first()
            return dict(row._mapping) if row else None

    def save_level_state(self, decision: dict[str, Any] | None = None, **fields: Any) -> None:
        """Upsert this box's state row and, when given, the decision behind it (a
        ``decisions`` row: at, kind, reason, from_state, to_state, game) in one transaction, so a
        crash between the two never leaves a state change without its reason."""
        with self._begin() as conn:
            upsert(conn, s.level_state, {"box": self.box}, fields)
            if decision is not None:
                conn.execute(insert(s.decisions).values(**decision, box=self.box))

    # ------------------------------------------------------------------ telemetry and models

    def add_telemetry(self, at: float, kind: str, payload: dict[str, Any]) -> None:
        with self._begin() as conn:
            conn.execute(insert(s.telemetry).values(at=at, kind=kind, payload=payload,
                                                    box=self.box))  # fmt: skip

    def prune_telemetry(self, older_than: float) -> int:
        with self._begin() as conn:
            return int(
                conn.execute(delete(s.telemetry).where(s.telemetry.c.at < older_than,
                                                       s.telemetry.c.box == self.box)).rowcount
            )

    def upsert_model(self, game: str, kind: str, **fields: Any) -> None:
        with self._begin() as conn:
            upsert(conn, s.models, {"game": game, "kind": kind}, fields)

    def models(self) -> list[dict[str, Any]]:
        with self._begin() as conn:
            return [dict(r._mapping) for r in conn.execute(select(s.models))]

    # ------------------------------------------------------------------ evals

    def record_eval(self, **fields: Any) -> int:
        """One evaluation result (columns of ``schema.evals``); returns its id."""
        with self._begin() as conn:
            return int(conn.execute(insert(s.evals).values(**fields)).inserted_primary_key[0])

    def evals(
        self, game: str | None = None, since: float = 0.0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Oldest first; with ``limit``, only the newest ``limit`` rows."""
        q = select(s.evals).where(s.evals.c.at >= since).order_by(s.evals.c.id.desc())
        if game is not None:
            q = q.where(s.evals.c.game == game)
        if limit:
            q = q.limit(limit)
        with self._begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)][::-1]
