"""The SQLite store on real files: pragmas, schema versions, migration, locked and corrupt files."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from daemon.store import Store, StoreError
from daemon.store import schema as s


def _version(path: Path) -> int:
    """The file's schema version, read as any other reader of the file would (not via Store)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT version FROM schema_version").fetchone()[0])


def test_new_database_has_wal_full_sync_and_version(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "atari.db")
    assert _version(store.path) == s.SCHEMA_VERSION
    with store.engine.connect() as conn:  # a pooled connection: the store's own pragmas
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


def test_one_engine_per_process(tmp_path: Path) -> None:
    a = Store.open(tmp_path / "atari.db")
    b = Store.open(tmp_path / "atari.db")
    assert a.engine is b.engine


def test_repositories_round_trip(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "atari.db")
    store.upsert_game("Pong", state="RUNNING", target=3000, episodes=5)
    store.upsert_game("Pong", episodes=7)
    assert store.games()["Pong"]["episodes"] == 7
    assert store.games()["Pong"]["state"] == "RUNNING"
    rid = store.run_started(
        "Pong", 1234, 10.0, level="light", num_envs=4, batch_size=32, proc_start_time=9.5
    )
    assert [r["id"] for r in store.open_runs()] == [rid]
    store.run_ended(rid, 20.0, exit_code=None, signal="SIGKILL", reason="killed by SIGKILL")
    assert store.open_runs() == []
    assert store.runs("Pong")[0]["signal"] == "SIGKILL"
    store.record_decision(21.0, "process", "restart after crash", "Pong", "BACKOFF", "STARTING")
    assert store.decisions(game="Pong")[0]["reason"] == "restart after crash"
    store.save_level_state(state="light", entered_at=1.0, failed_promotions=0)
    store.save_level_state(state="medium", entered_at=2.0)
    assert store.level_state()["state"] == "medium"


def test_telemetry_retention_is_bounded(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "atari.db")
    for t in range(10):
        store.add_telemetry(float(t), "host", {"cpu": t})
    assert store.prune_telemetry(older_than=7.0) == 7
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        payloads = [json.loads(p) for (p,) in db.execute("SELECT payload FROM telemetry")]
    assert sorted(p["cpu"] for p in payloads) == [7, 8, 9]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "atari.db"
    Store.open(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (s.SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this atari-supervisor understands"):
        Store.open(path)


def _pre_v3_database(path: Path, version: int) -> Engine:
    """The v1 tables, with runs still lacking v3's outcome and v5's device columns, stamped
    ``version``."""
    eng = create_engine(f"sqlite:///{path}")
    with eng.begin() as conn:
        for name in s.V1_TABLES:
            s.metadata.tables[name].create(conn)
        conn.exec_driver_sql("ALTER TABLE runs DROP COLUMN outcome")
        conn.exec_driver_sql("ALTER TABLE runs DROP COLUMN device")
        conn.execute(s.schema_version.insert().values(version=version))
    return eng


def test_older_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # A version-1 database: the v1 tables only (runs without its v3 outcome), with data in them.
    eng = _pre_v3_database(path, version=1)
    with eng.begin() as conn:
        conn.execute(s.games.insert().values(name="Pong", state="QUEUED", target=3, episodes=2))
        for reason in (
            "crashed: killed by SIGKILL; restart in 10s",
            "target reached (3/3)",
            "operator stop: exit code 0",
            "failed start: exit code 1",
            None,
        ):
            conn.exec_driver_sql(
                "INSERT INTO runs (game, pid, started_at, ended_at, reason) "
                "VALUES ('Pong', 1, 0, ?, ?)", (None if reason is None else 1.0, reason),
            )  # fmt: skip
    eng.dispose()
    store = Store.open(path)
    assert _version(path) == s.SCHEMA_VERSION == 5
    assert store.evals() == []  # v3 -> v4: the evals table exists (issue 13)
    assert store.games()["Pong"]["episodes"] == 2
    store.upsert_model("Pong", "best", episode=2, return_=1.0, at=1.0, path="best.pt")
    assert store.models()[0]["path"] == "best.pt"
    # v2 -> v3: the reason wording of old runs becomes the structured outcome.
    assert [r["outcome"] for r in store.runs()] == ["crash", "done", "stopped", "crash", None]
    # v4 -> v5: runs record the GPU a trainer was placed on (none for the old rows).
    assert {r["device"] for r in store.runs()} == {None}


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "atari.db"
    path.write_bytes(b"this is not sqlite at all " * 200)
    with pytest.raises(StoreError) as info:
        Store.open(path)
    msg = str(info.value)
    assert "corrupt" in msg and str(path) in msg and "\n" not in msg


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="not an atari-supervisor database"):
        Store.open(path)


def test_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "atari.db"
    Store.open(path).close()
    # Another real process holds the write lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sqlite3, sys, time
            db = sqlite3.connect({str(path)!r}, isolation_level=None)
            db.execute("BEGIN EXCLUSIVE")
            print("locked", flush=True)
            sys.stdin.read()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="locked by another process"):
            Store.open(path, busy_timeout_s=0.2)
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_migration_leaves_the_old_version_whole(tmp_path: Path, monkeypatch) -> None:
    # A migration step that fails midway (after its DDL) must roll back whole: a half-migrated
    # file at the old version could never be opened again ("duplicate column name").
    path = tmp_path / "v2.db"
    _pre_v3_database(path, version=2).dispose()
    step = s.MIGRATIONS[2]

    def power_cut(conn) -> None:
        step(conn)
        raise RuntimeError("power cut")

    monkeypatch.setitem(s.MIGRATIONS, 2, power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        Store.open(path)
    with sqlite3.connect(path) as db:
        assert "outcome" not in [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    monkeypatch.setitem(s.MIGRATIONS, 2, step)
    Store.open(path).close()
    assert _version(path) == s.SCHEMA_VERSION
