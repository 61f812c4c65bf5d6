"""Which database a store target names, and the dialect module that speaks to it.

A target is an SQLite file (a path, or a ``sqlite:///PATH`` URL) or a ``postgresql+psycopg://``
URL. ``sqlite.py`` and ``postgres.py`` provide the same functions (engine, one-line errors,
the ``ON CONFLICT`` insert that ``upsert`` builds on, the migration lock, the open-time check,
table names); ``Store`` calls them through this module and stays free of either dialect. The
statement-level helpers pick the module from the connection's dialect, so they need no store at
hand.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import Connection, Engine, Table

from daemon.store import postgres, sqlite

SQLITE_URL = "sqlite:///"


def sqlite_path(target: Path | str) -> Path | None:
    """The SQLite file ``target`` names, or None when it is a PostgreSQL URL."""
    if postgres.is_url(target):
        return None
    s = str(target)
    return Path(s[len(SQLITE_URL):]) if s.startswith(SQLITE_URL) else Path(s)


def open_engine(target: Path | str, busy_timeout_s: float) -> tuple[Engine, str]:
    """The engine for ``target`` and the label its messages use (path, or URL sans password)."""
    path = sqlite_path(target)
    if path is None:
        return postgres.make_engine(str(target), busy_timeout_s), postgres.label(str(target))
    return sqlite.make_engine(path, busy_timeout_s), str(path)


def module(conn_or_engine: Connection | Engine) -> ModuleType:
    return postgres if conn_or_engine.dialect.name == "postgresql" else sqlite


def explain(engine: Engine, where: str, e: BaseException) -> str:
    if engine.dialect.name == "postgresql":
        return postgres.explain(where, e)
    return sqlite.explain(Path(where), e)


def upsert(
    conn: Connection,
    table: Table,
    key: dict[str, Any],
    values: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> None:
    """Insert the row ``key`` or update its ``values``, in one statement (``ON CONFLICT`` on
    both dialects); ``defaults`` fill columns only when the row is new."""
    stmt = module(conn).insert(table).values(**{**(defaults or {}), **values, **key})
    if values:
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=values)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    conn.execute(stmt)


def begin_write(conn: Connection) -> None:
    module(conn).begin_write(conn)


def quick_check(conn: Connection) -> str:
    return str(module(conn).quick_check(conn))


def table_names(conn: Connection) -> set[str]:
    return set(module(conn).table_names(conn))
