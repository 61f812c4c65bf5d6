"""``Store``: the one SQLite engine of a process, its pragmas, schema check and small repositories.

Writes are short transactions on the main loop (and the telemetry job); readers (atarictl offline,
the autoscaler) use the same tables. ``synchronous=FULL`` because what we record most carefully is
what happened just before a reboot.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from daemon.store import schema as s


class StoreError(RuntimeError):
    """The database cannot be used (locked, corrupt, newer schema); str() is one line."""


_ENGINES: dict[tuple[str, float], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine_for(path: Path, busy_timeout_s: float) -> Engine:
    """One engine per database file per process (SQLAlchemy pools connections per engine)."""
    key = (str(path.resolve()), busy_timeout_s)
    with _ENGINES_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = create_engine(
                f"sqlite:///{key[0]}",
                connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
            )

            @event.listens_for(eng, "connect")
            def _pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = FULL")
                cur.execute("PRAGMA foreign_keys = ON")
                cur.close()

            _ENGINES[key] = eng
        return eng


def _explain(path: Path, e: BaseException) -> StoreError:
    msg = str(getattr(e, "orig", e)) or type(e).__name__
    if "locked" in msg or "busy" in msg:
        return StoreError(
            f"{path}: database is locked by another process ({msg}); stop the other "
            "atari-supervisord/atarictl using it, or wait and retry"
        )
    if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
        return StoreError(
            f"{path}: database is corrupt ({msg}); restore it with `atarictl restore BACKUP` "
            "or move it aside to start from the run dirs (progress is kept there)"
        )
    return StoreError(f"{path}: cannot open database ({msg}); check the file and its directory")


def upsert(
    conn: Connection,
    table: Table,
    key: dict[str, Any],
    values: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> None:
    """Insert the row ``key`` or update its ``values`` (one statement: SQLite's ON CONFLICT).
    ``defaults`` fill columns only when the row is new."""
    stmt = sqlite_insert(table).values(**{**(defaults or {}), **values, **key})
    if values:
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=values)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    conn.execute(stmt)


class Store:
    """Open with ``Store.open(path)``; every method is one short transaction, thread-safe."""

    def __init__(self, path: Path, engine: Engine) -> None:
        self.path = path
        self.engine = engine

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path | str, *, busy_timeout_s: float = 10.0) -> Store:
        path = Path(path)
        if not path.parent.is_dir():
            raise StoreError(f"{path}: directory {path.parent} does not exist; create it first")
        engine = _engine_for(path, busy_timeout_s)
        store = cls(path, engine)
        try:
            store._check_and_migrate()
        except DBAPIError as e:
            raise _explain(path, e) from None
        return store

    def _check_and_migrate(self) -> None:
        with self.engine.begin() as conn:
            # pysqlite opens a transaction only before DML, so without this a migration's DDL
            # (ALTER TABLE) would commit on its own: a failure midway would leave a half-migrated
            # file at the old version that no later open could migrate. IMMEDIATE also takes the
            # write lock first, so two processes opening an old file migrate it one at a time.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            # quick_check reads every page header: a corrupt file fails here, not mid-run.
            result = conn.exec_driver_sql("PRAGMA quick_check").scalar()
            if result != "ok":
                raise StoreError(
                    f"{self.path}: database is corrupt (quick_check: {result}); restore it with "
                    "`atarictl restore BACKUP` or move it aside"
                )
            existing = set(
                conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
                .scalars()
                .all()
            )
            if "schema_version" not in existing:
                if existing - {"sqlite_sequence"}:
                    raise StoreError(
                        f"{self.path}: not an atari-supervisor database (tables: "
                        f"{', '.join(sorted(existing))}); point --state-dir elsewhere"
                    )
                s.metadata.create_all(conn)
                conn.execute(insert(s.schema_version).values(version=s.SCHEMA_VERSION))
                return
            version = conn.execute(select(s.schema_version.c.version)).scalar_one()
            if version > s.SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: database schema version {version} is newer than this "
                    f"atari-supervisor understands ({s.SCHEMA_VERSION}); upgrade atari-supervisor "
                    "or restore a backup made by this version"
                )
            while version < s.SCHEMA_VERSION:
                s.MIGRATIONS[version](conn)
                version += 1
            s.metadata.create_all(conn)  # tables that did not exist in any migration step
            # Always a write: a database locked by another writer is reported here, at open.
            conn.execute(update(s.schema_version).values(version=version))

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(s.schema_version.c.version)).scalar_one())

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction on a Core connection (for query helpers outside this module)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as e:
            raise _explain(self.path, e) from None

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
        with self.begin() as conn:
            conn.execute(
                insert(s.decisions).values(
                    at=at,
                    kind=kind,
                    game=game,
                    from_state=from_state,
                    to_state=to_state,
                    reason=reason,
                )
            )

    def decisions(self, since: float = 0.0, game: str | None = None) -> list[dict[str, Any]]:
        q = select(s.decisions).where(s.decisions.c.at >= since).order_by(s.decisions.c.id)
        if game is not None:
            q = q.where(s.decisions.c.game == game)
        with self.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # ------------------------------------------------------------------ games

    def upsert_game(self, name: str, **fields: Any) -> None:
        with self.begin() as conn:
            upsert(conn, s.games, {"name": name}, fields, {"state": "QUEUED", "target": 0})

    def games(self) -> dict[str, dict[str, Any]]:
        with self.begin() as conn:
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
    ) -> int:
        with self.begin() as conn:
            res = conn.execute(
                insert(s.runs).values(
                    game=game,
                    pid=pid,
                    started_at=started_at,
                    level=level,
                    num_envs=num_envs,
                    batch_size=batch_size,
                    proc_start_time=proc_start_time,
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
        with self.begin() as conn:
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
        """Runs with no end recorded: after a daemon crash these may still be alive."""
        q = select(s.runs).where(s.runs.c.ended_at.is_(None)).order_by(s.runs.c.id)
        with self.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def runs(self, game: str | None = None) -> list[dict[str, Any]]:
        q = select(s.runs).order_by(s.runs.c.id)
        if game is not None:
            q = q.where(s.runs.c.game == game)
        with self.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # ------------------------------------------------------------------ daemon runs and boots

    def daemon_started(self, pid: int, boot_id: str | None, at: float) -> int:
        with self.begin() as conn:
            res = conn.execute(
                insert(s.daemon_runs).values(
                    pid=pid, boot_id=boot_id, started_at=at, last_heartbeat=at, clean_shutdown=False
                )
            )
            return int(res.inserted_primary_key[0])

    def daemon_heartbeat(self, run_id: int, at: float) -> None:
        with self.begin() as conn:
            conn.execute(
                update(s.daemon_runs).where(s.daemon_runs.c.id == run_id).values(last_heartbeat=at)
            )

    def daemon_stopped(self, run_id: int, at: float, clean: bool) -> None:
        with self.begin() as conn:
            conn.execute(
                update(s.daemon_runs)
                .where(s.daemon_runs.c.id == run_id)
                .values(stopped_at=at, last_heartbeat=at, clean_shutdown=clean)
            )

    def last_daemon_run(self, before_id: int | None = None) -> dict[str, Any] | None:
        q = select(s.daemon_runs).order_by(s.daemon_runs.c.id.desc()).limit(1)
        if before_id is not None:
            q = q.where(s.daemon_runs.c.id < before_id)
        with self.begin() as conn:
            row = conn.execute(q).first()
            return dict(row._mapping) if row else None

    def record_boot(self, boot_id: str, detected_at: float, **fields: Any) -> None:
        with self.begin() as conn:
            conn.execute(insert(s.boots).values(boot_id=boot_id, detected_at=detected_at, **fields))

    def last_boot(self) -> dict[str, Any] | None:
        with self.begin() as conn:
            row = conn.execute(select(s.boots).order_by(s.boots.c.id.desc()).limit(1)).first()
            return dict(row._mapping) if row else None

    def reboots_since(self, since: float) -> int:
        """Boots that replaced a known earlier boot (``schema.IS_REBOOT``); the very first boot
        a database sees is not a reboot. The autoscaler's guard counts the same rows."""
        q = select(func.count()).where(s.IS_REBOOT, s.boots.c.detected_at >= since)
        with self.begin() as conn:
            return int(conn.execute(q).scalar_one())

    # ------------------------------------------------------------------ level state

    def level_state(self) -> dict[str, Any] | None:
        with self.begin() as conn:
            row = conn.execute(select(s.level_state).where(s.level_state.c.id == 1)).first()
            return dict(row._mapping) if row else None

    def save_level_state(self, **fields: Any) -> None:
        with self.begin() as conn:
            upsert(conn, s.level_state, {"id": 1}, fields)

    # ------------------------------------------------------------------ telemetry and models

    def add_telemetry(self, at: float, kind: str, payload: dict[str, Any]) -> None:
        with self.begin() as conn:
            conn.execute(insert(s.telemetry).values(at=at, kind=kind, payload=payload))

    def prune_telemetry(self, older_than: float) -> int:
        with self.begin() as conn:
            return int(
                conn.execute(delete(s.telemetry).where(s.telemetry.c.at < older_than)).rowcount
            )

    def telemetry(self, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(s.telemetry).order_by(s.telemetry.c.id.desc()).limit(limit)
        if kind is not None:
            q = q.where(s.telemetry.c.kind == kind)
        with self.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def upsert_model(self, game: str, kind: str, **fields: Any) -> None:
        with self.begin() as conn:
            upsert(conn, s.models, {"game": game, "kind": kind}, fields)

    def models(self) -> list[dict[str, Any]]:
        with self.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(select(s.models))]
