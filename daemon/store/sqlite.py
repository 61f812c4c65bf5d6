"""Everything SQLite-specific about the store, in one place.

``Store`` (``store.py``) speaks SQLAlchemy Core and knows nothing of the file format; the second
dialect (PostgreSQL, ``postgres.py``) sits beside this module and provides the same things
(``dialect.py`` picks one):

- ``make_engine``: the engine and its per-connection settings (WAL, ``synchronous=FULL``, busy
  timeout, foreign keys);
- ``explain``: a driver error as one line that says what to do (locked, corrupt, ...);
- ``insert``: the dialect's ``INSERT`` with ``ON CONFLICT`` (``dialect.upsert`` builds on it);
- ``quick_check``: the page-level health check run when the store opens;
- ``snapshot`` / ``check_file``: the consistent copy a backup archives, and the check a restore
  runs on an archived file before it is put in place.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects.sqlite import insert as insert

_ENGINES: dict[tuple[str, float], Engine] = {}
_ENGINES_LOCK = threading.Lock()


class DatabaseFileError(ValueError):
    """A file that is not a healthy SQLite database; str() is one line."""


def make_engine(path: Path, busy_timeout_s: float) -> Engine:
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
                # What we record most carefully is what happened just before a reboot.
                cur.execute("PRAGMA synchronous = FULL")
                cur.execute("PRAGMA foreign_keys = ON")
                cur.close()

            _ENGINES[key] = eng
        return eng


def explain(path: Path, e: BaseException) -> str:
    """One line: what is wrong with the database at ``path`` and what to do about it."""
    msg = " ".join((str(getattr(e, "orig", e)) or type(e).__name__).split())
    if "locked" in msg or "busy" in msg:
        return (
            f"{path}: database is locked by another process ({msg}); stop the other "
            "atari-supervisord/atarictl using it, or wait and retry"
        )
    if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
        return (
            f"{path}: database is corrupt ({msg}); restore it with `atarictl restore BACKUP` "
            "or move it aside to start from the run dirs (progress is kept there)"
        )
    if "readonly" in msg or "read-only" in msg:
        return f"{path}: database is read-only ({msg}); check the owner and mode of the file"
    return f"{path}: cannot use database ({msg}); check the file and its directory"


def begin_write(conn: Connection) -> None:
    """Start the transaction with the write lock taken, DDL included.

    pysqlite opens a transaction only before DML, so without this a migration's DDL (ALTER
    TABLE) would commit on its own: a failure midway would leave a half-migrated file at the old
    version. IMMEDIATE also makes two processes opening an old file migrate it one at a time.
    """
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def table_names(conn: Connection) -> set[str]:
    rows = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
    return {str(r[0]) for r in rows}


def quick_check(conn: Connection) -> str:
    """'ok' or SQLite's first complaint; reads every page header, so a corrupt file fails at
    open rather than mid-run."""
    return str(conn.exec_driver_sql("PRAGMA quick_check").scalar())


def snapshot(db: Path, dest: Path, timeout_s: float = 30.0) -> None:
    """A transactionally consistent copy of ``db`` at ``dest`` while writers go on, as one
    self-contained file (no -wal sidecar); raises DatabaseFileError when the copy is unhealthy.

    A plain file copy of a WAL database could miss or tear pages; the online backup API cannot.
    """
    try:
        src = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
    except sqlite3.Error as exc:
        raise DatabaseFileError(explain(db, exc)) from None
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        (result,) = dst.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.Error as exc:
        raise DatabaseFileError(explain(db, exc)) from None
    finally:
        dst.close()
        src.close()
    if result != "ok":
        raise DatabaseFileError(f"{db}: database snapshot failed integrity_check: {result}")


def check_file(path: Path) -> None:
    """Raise DatabaseFileError unless ``path`` is an SQLite file that passes integrity_check.
    Opened read-only and immutable, so checking never writes a journal next to it."""
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise DatabaseFileError(f"{path}: cannot open as SQLite ({exc})") from None
    try:
        (result,) = conn.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.Error as exc:
        raise DatabaseFileError(f"{path}: not an SQLite database ({exc})") from None
    finally:
        conn.close()
    if result != "ok":
        raise DatabaseFileError(f"{path}: database fails integrity_check ({result})")
