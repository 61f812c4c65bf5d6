"""Everything PostgreSQL-specific about the store, beside ``sqlite.py`` and with its functions.

Selected by a ``postgresql+psycopg://`` URL in the profile's ``store.url`` (docs/fleet.md). The
tables, migrations and queries are the same SQLAlchemy Core as on SQLite; what differs is here:

- ``make_engine``: pool with ``pool_pre_ping`` (a server restart costs the next call a fresh
  connection, not an error), ``connect_timeout`` and ``lock_timeout`` from the store's busy
  timeout, so a blocked statement fails as "locked" just as SQLite's busy timeout does;
- ``explain``: a driver error as one line (cannot connect, locked, read-only, ...);
- ``insert``: the dialect's ``INSERT`` with ``ON CONFLICT`` (``dialect.upsert`` builds on it);
- ``begin_write``: a transaction-scoped advisory lock, so two processes opening an old database
  migrate it one at a time (PostgreSQL's DDL is transactional already);
- ``quick_check``: there is no page-level check to run at open (``integrity_check`` and the
  online backup API are SQLite's); a successful round trip is the check;
- ``table_names``: the tables of the connection's schema.

A password in the URL never reaches a message: ``label`` renders the URL without it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.dialects.postgresql import insert as insert
from sqlalchemy.engine import make_url

SCHEME = "postgresql"
_ENGINES: dict[tuple[str, float], Engine] = {}
_ENGINES_LOCK = threading.Lock()
# Any constant shared by every atari-supervisor process: the key of the migration lock.
_MIGRATION_LOCK_KEY = 0x41544152  # "ATAR"


def is_url(target: object) -> bool:
    return isinstance(target, str) and target.split(":", 1)[0].split("+", 1)[0] == SCHEME


def url_of_state_dir(state_dir: Path) -> str | None:
    """The ``store.url`` of the profile a state dir's daemon last ran under, when it names
    PostgreSQL; None for the state dir's own SQLite file."""
    from daemon.paths import profile_copy

    url = (profile_copy(state_dir).get("store") or {}).get("url")
    return url if isinstance(url, str) and is_url(url) else None


def label(url: str) -> str:
    """The URL as messages show it: no password."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, busy_timeout_s: float) -> Engine:
    """One engine per URL per process (SQLAlchemy pools connections per engine)."""
    key = (url, busy_timeout_s)
    with _ENGINES_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = create_engine(
                url,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": max(1, round(busy_timeout_s)),
                    "options": f"-c lock_timeout={max(1, int(busy_timeout_s * 1000))}",
                    "application_name": "atari-supervisor",
                },
            )
            _ENGINES[key] = eng
        return eng


def explain(where: str, e: BaseException) -> str:
    """One line: what is wrong with the database at ``where`` and what to do about it."""
    msg = " ".join((str(getattr(e, "orig", e)) or type(e).__name__).split())
    low = msg.lower()
    if "lock timeout" in low or "canceling statement due to lock" in low:
        return (
            f"{where}: database is locked by another session ({msg}); wait and retry, or find "
            "the session holding the lock in pg_stat_activity"
        )
    if "does not exist" in low and "database" in low:
        return f"{where}: {msg}; create it first (createdb) or fix store.url"
    if ("connection" in low and ("refused" in low or "failed" in low or "closed" in low)) or (
        "terminating connection" in low or "server closed" in low or "timeout expired" in low
    ):
        return (
            f"{where}: cannot reach PostgreSQL ({msg}); check that the server runs and that "
            "store.url names its host, port and database"
        )
    if "read-only" in low or "permission denied" in low:
        return f"{where}: database refuses writes ({msg}); check the role's privileges"
    return f"{where}: cannot use database ({msg}); check the server and store.url"


def begin_write(conn: Connection) -> None:
    """Serialize openers that may migrate: the lock ends with the transaction."""
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")


def quick_check(conn: Connection) -> str:
    return "ok" if conn.exec_driver_sql("SELECT 1").scalar() == 1 else "no answer to SELECT 1"


def table_names(conn: Connection) -> set[str]:
    rows = conn.exec_driver_sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    )
    return {str(r[0]) for r in rows}
