"""The store's rows as one SQLite file, and back: backup and restore of a PostgreSQL store.

``atarictl backup`` archives an SQLite file (``atari.db``) whatever the store: on PostgreSQL it
is made here from the server's rows, read in one REPEATABLE READ READ ONLY transaction, so the
copy is one consistent snapshot while the daemon keeps writing (what SQLite's online backup API
gives the file store). The archive format, its verification and its registry export stay the
same for both stores, and an archive of either can be restored into either.

``atarictl restore`` loads the archived rows into the PostgreSQL database in one transaction:
the tables are emptied and refilled, and each ``id`` sequence is set past the largest restored
id. A failure anywhere rolls the whole load back, leaving the database as it was.

This is the documented equivalent of ``pg_dump -Fc``/``pg_restore`` for this store (docs/fleet.md):
it needs no client binaries of the server's version on the box, and it copies exactly the
atari-supervisor tables, through the same SQLAlchemy Core models as every other read and write.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, Integer, create_engine, delete, insert, select, text
from sqlalchemy.exc import DBAPIError

from daemon.store import postgres
from daemon.store import schema as s
from daemon.store.store import StoreError

_CHUNK = 2000  # rows per INSERT: bounded memory for a long telemetry table


def _tables() -> list:
    return list(s.metadata.sorted_tables)


def copy_to_sqlite(src: Engine, dest: Path) -> dict[str, int]:
    """Every store table of ``src`` into the new SQLite file ``dest``: rows per table."""
    out = create_engine(f"sqlite:///{dest}")
    counts: dict[str, int] = {}
    try:
        with src.connect() as rconn:
            if src.dialect.name == "postgresql":
                rconn.exec_driver_sql(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
            with out.begin() as wconn:
                s.metadata.create_all(wconn)
                for table in _tables():
                    n = 0
                    result = rconn.execution_options(yield_per=_CHUNK).execute(select(table))
                    for chunk in result.mappings().partitions(_CHUNK):
                        wconn.execute(insert(table), [dict(r) for r in chunk])
                        n += len(chunk)
                    counts[table.name] = n
            rconn.rollback()
    finally:
        out.dispose()
    return counts


@contextlib.contextmanager
def snapshot(url: str) -> Iterator[Path]:
    """The PostgreSQL store at ``url`` as a temporary SQLite file (one consistent snapshot),
    for the readers written against SQLite: atarictl's offline reads, plots, the report.
    ``StoreError`` (one line, no password) when the server cannot be read."""
    with tempfile.TemporaryDirectory(prefix="atari-pg-") as tmp:
        engine = postgres.make_engine(url, 5.0)
        try:
            copy_to_sqlite(engine, Path(tmp) / "atari.db")
        except DBAPIError as exc:
            raise StoreError(postgres.explain(postgres.label(url), exc)) from None
        finally:
            engine.dispose()
        yield Path(tmp) / "atari.db"


def load_from_sqlite(src: Path, dest: Engine) -> dict[str, int]:
    """Replace every store table's rows in ``dest`` by those of the SQLite file ``src`` (same
    schema version: open both through ``Store.open`` first), in one transaction."""
    inp = create_engine(f"sqlite:///{src}")
    counts: dict[str, int] = {}
    try:
        with inp.connect() as rconn, dest.begin() as wconn:
            names = ", ".join(t.name for t in _tables())
            if dest.dialect.name == "postgresql":
                # Nobody else writes while the rows are swapped (a daemon started meanwhile
                # waits at its first write, then sees the restored state).
                wconn.exec_driver_sql(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
            for table in reversed(_tables()):
                wconn.execute(delete(table))
            for table in _tables():
                n = 0
                for chunk in rconn.execute(select(table)).mappings().partitions(_CHUNK):
                    wconn.execute(insert(table), [dict(r) for r in chunk])
                    n += len(chunk)
                counts[table.name] = n
                pk = list(table.primary_key.columns)
                if (dest.dialect.name == "postgresql" and len(pk) == 1
                        and isinstance(pk[0].type, Integer)):  # fmt: skip
                    # Restored ids were inserted explicitly: move the serial past them.
                    wconn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', "
                            f"'{pk[0].name}'), COALESCE(MAX({pk[0].name}), 0) + 1, false) "
                            f"FROM {table.name}"
                        )
                    )
    finally:
        inp.dispose()
    return counts
