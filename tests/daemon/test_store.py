"""The store on real databases: schema versions, migration and round trips on both SQLite files
and a real PostgreSQL server (``new_db`` runs each such test once per backend); pragmas, locked
and corrupt files on SQLite; one-line errors and URL handling on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, Table, create_engine, text

from daemon.store import Store, StoreError
from daemon.store import schema as s


def _version(path: Path) -> int:
    """The file's schema version, read as any other reader of the file would (not via Store)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT version FROM schema_version").fetchone()[0])


def _engine(target: Path | str) -> Engine:
    """A plain engine of our own on the database (not the store's pooled one)."""
    return create_engine(target if isinstance(target, str) else f"sqlite:///{target}")


def _version_of(target: Path | str) -> int:
    eng = _engine(target)
    try:
        with eng.connect() as conn:
            return int(conn.execute(text("SELECT version FROM schema_version")).scalar_one())
    finally:
        eng.dispose()


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


def test_repositories_round_trip(new_db) -> None:
    store = Store.open(new_db())
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
    store.upsert_game("Pong", env_steps=3 * 2**31)  # a long run's frame count (64-bit)
    assert store.games()["Pong"]["env_steps"] == 3 * 2**31
    store.daemon_stopped(store.daemon_started(7, "boot", 1.0), 2.0, clean=True)
    assert store.last_daemon_run()["clean_shutdown"] is True


def test_telemetry_retention_is_bounded(new_db) -> None:
    target = new_db()
    store = Store.open(target)
    for t in range(10):
        store.add_telemetry(float(t), "host", {"cpu": t})
    assert store.prune_telemetry(older_than=7.0) == 7
    eng = _engine(target)
    with eng.connect() as conn:  # as another reader sees it: the payload is JSON text
        rows = conn.execute(text("SELECT CAST(payload AS TEXT) FROM telemetry")).scalars().all()
    eng.dispose()
    assert sorted(json.loads(p)["cpu"] for p in rows) == [7, 8, 9]


def test_newer_schema_is_refused(new_db) -> None:
    target = new_db()
    Store.open(target).close()
    eng = _engine(target)
    with eng.begin() as conn:
        conn.execute(s.schema_version.update().values(version=s.SCHEMA_VERSION + 1))
    eng.dispose()
    with pytest.raises(StoreError, match="newer than this atari-supervisor understands"):
        Store.open(target)


def _pre_v3_database(path: Path | str, version: int) -> Engine:
    """The v1 tables, with runs still lacking v3's outcome and v5's device columns, stamped
    ``version``."""
    eng = _engine(path)
    later = {"outcome", "device", "box"}  # columns of versions 3, 5 and 6
    v1 = MetaData()
    for name in s.V1_TABLES:
        cols = [c._copy() for c in s.metadata.tables[name].columns if c.name not in later]
        Table(name, v1, *cols)
    with eng.begin() as conn:
        v1.create_all(conn)
        conn.execute(s.schema_version.insert().values(version=version))
    return eng


def test_older_schema_is_migrated(new_db) -> None:
    path = new_db()
    # A version-1 database: the v1 tables only (runs without its v3 outcome), with data in them.
    eng = _pre_v3_database(path, version=1)
    with eng.begin() as conn:
        conn.execute(s.games.insert().values(name="Pong", state="QUEUED", target=3, episodes=2))
        conn.execute(text("INSERT INTO level_state (id, state, entered_at, failed_promotions) "
                          "VALUES (1, 'medium', 1.0, 0)"))  # the old singleton row
        for reason in (
            "crashed: killed by SIGKILL; restart in 10s",
            "target reached (3/3)",
            "operator stop: exit code 0",
            "failed start: exit code 1",
            None,
        ):
            conn.execute(
                text("INSERT INTO runs (game, pid, started_at, ended_at, reason) "
                     "VALUES ('Pong', 1, 0, :end, :reason)"),
                {"end": None if reason is None else 1.0, "reason": reason},
            )  # fmt: skip
    eng.dispose()
    store = Store.open(path)
    assert _version_of(path) == s.SCHEMA_VERSION == 6
    assert store.evals() == []  # v3 -> v4: the evals table exists (issue 13)
    assert store.games()["Pong"]["episodes"] == 2
    store.upsert_model("Pong", "best", episode=2, return_=1.0, at=1.0, path="best.pt")
    assert store.models()[0]["path"] == "best.pt"
    # v2 -> v3: the reason wording of old runs becomes the structured outcome.
    assert [r["outcome"] for r in store.runs()] == ["crash", "done", "stopped", "crash", None]
    # v4 -> v5: runs record the GPU a trainer was placed on (none for the old rows).
    assert {r["device"] for r in store.runs()} == {None}
    # v5 -> v6: the rows so far are the opening box's, and its per-box reads see them.
    assert {r["box"] for r in store.runs()} == {store.box}
    assert store.crash_times(0.0) == (1.0, 1.0)
    assert store.level_state()["state"] == "medium"
    # A second box's level row takes a new id (on PostgreSQL the serial moved past the old row).
    other = Store.open(path, box="other-box")
    other.save_level_state(state="light", entered_at=2.0)
    assert (store.level_state()["state"], other.level_state()["state"]) == ("medium", "light")
    other.close()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "atari.db"
    path.write_bytes(b"this is not sqlite at all " * 200)
    with pytest.raises(StoreError) as info:
        Store.open(path)
    msg = str(info.value)
    assert "corrupt" in msg and str(path) in msg and "\n" not in msg


def test_foreign_database_is_refused(new_db) -> None:
    path = new_db()
    eng = _engine(path)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id INTEGER)"))
    eng.dispose()
    with pytest.raises(StoreError, match="not an atari-supervisor database") as info:
        Store.open(path)
    assert "\n" not in str(info.value)


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


def test_a_failed_migration_leaves_the_old_version_whole(new_db, monkeypatch) -> None:
    # A migration step that fails midway (after its DDL) must roll back whole: a half-migrated
    # file at the old version could never be opened again ("duplicate column name").
    path = new_db()
    _pre_v3_database(path, version=2).dispose()
    step = s.MIGRATIONS[2]

    def power_cut(conn) -> None:
        step(conn)
        raise RuntimeError("power cut")

    monkeypatch.setitem(s.MIGRATIONS, 2, power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        Store.open(path)
    eng = _engine(path)
    with eng.connect() as conn:
        assert "outcome" not in list(conn.execute(text("SELECT * FROM runs LIMIT 0")).keys())
    eng.dispose()
    monkeypatch.setitem(s.MIGRATIONS, 2, step)
    Store.open(path).close()
    assert _version_of(path) == s.SCHEMA_VERSION


# ---------------------------------------------------------------------------- PostgreSQL only


def test_postgres_url_is_told_from_a_path_and_sqlite_urls_still_name_files(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'atari.db'}")
    assert store.path == tmp_path / "atari.db" and store.engine.dialect.name == "sqlite"
    assert _version(tmp_path / "atari.db") == s.SCHEMA_VERSION


def test_two_processes_opening_one_new_postgres_database_create_it_once(pg_server) -> None:
    # Boxes of a fleet start together: the advisory lock makes one create the tables and
    # the other see them, instead of both failing on CREATE TABLE.
    url = pg_server.fresh_url()
    code = f"from daemon.store import Store; Store.open({url!r}).close(); print('ok')"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o.strip() for o, _ in outs] == ["ok"] * 3, [e for _, e in outs]
    assert _version_of(url) == s.SCHEMA_VERSION
    eng = _engine(url)
    with eng.connect() as conn:
        assert conn.execute(s.schema_version.select()).all() == [(s.SCHEMA_VERSION,)]
    eng.dispose()


def test_unreachable_postgres_is_one_line_without_the_password(pg_server) -> None:
    port = pg_server.port
    pg_server.port = 1  # nothing listens there
    try:
        url = pg_server.url("nowhere").replace("postgres@", "postgres:s3cret@")
    finally:
        pg_server.port = port
    with pytest.raises(StoreError) as info:
        Store.open(url, busy_timeout_s=2)
    msg = str(info.value)
    assert "cannot reach PostgreSQL" in msg and "127.0.0.1:1/nowhere" in msg
    assert "s3cret" not in msg and "\n" not in msg


def test_a_missing_postgres_database_says_so(pg_server) -> None:
    with pytest.raises(StoreError, match="does not exist; create it first") as info:
        Store.open(pg_server.url("no_such_db"))
    assert "\n" not in str(info.value)


def test_the_store_survives_a_postgres_restart(pg_server) -> None:
    # pg_ctl restart cuts every pooled connection; the next call must reconnect, not fail.
    store = Store.open(pg_server.fresh_url())
    store.upsert_game("Pong", state="RUNNING", target=10, episodes=1)
    pg_server.restart()
    store.upsert_game("Pong", episodes=2)
    assert store.games()["Pong"]["episodes"] == 2


# ---------------------------------------------------------------------------- the profile field

_MINIMAL = Path(__file__).resolve().parents[1] / "fixtures" / "profiles" / "valid-minimal.yaml"


@pytest.mark.parametrize(
    "url",
    ["mysql://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h:5432", "sqlite://"],
)
def test_a_bad_store_url_names_the_field_and_line(tmp_path: Path, url: str) -> None:
    from daemon.config import ProfileError, load_profile

    text_ = _MINIMAL.read_text()
    prof = tmp_path / "p.yaml"
    prof.write_text(text_ + f"store: {{url: '{url}'}}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(prof)
    msg = str(info.value)
    assert f"{prof}:{text_.count(chr(10)) + 1}: store.url:" in msg and "\n" not in msg


def test_store_url_defaults_to_the_state_dir_file_and_takes_a_postgres_url(tmp_path: Path) -> None:
    from daemon.config import load_profile

    prof = tmp_path / "p.yaml"
    prof.write_text(_MINIMAL.read_text())
    assert load_profile(prof).store.url is None
    url = "postgresql+psycopg://atari:pw@db.example:5432/atari?sslmode=require"
    prof.write_text(_MINIMAL.read_text() + f"store: {{url: '{url}'}}\n")
    assert load_profile(prof).store.url == url


def test_per_box_rows_are_kept_apart(new_db) -> None:
    """Fleet mode: two boxes on one database record boots, levels, decisions, runs and daemon
    runs each for itself; each box's autoscaler facts (reboots, crashes, load spans, its level
    row) are its own, while games and runs stay visible to both."""
    url = new_db()
    a, b = Store.open(url, box="a"), Store.open(url, box="b")
    try:
        a.record_boot("boot-1", 10.0, reason="first")
        a.record_boot("boot-2", 20.0, reason="reboot", previous_boot_id="boot-1")
        b.record_boot("boot-9", 15.0, reason="first")
        assert a.reboot_times(0.0) == (20.0,)
        assert b.reboot_times(0.0) == ()
        assert b.last_boot_and_daemon_run()[0]["boot_id"] == "boot-9"
        a.save_level_state(state="medium", entered_at=1.0)
        b.save_level_state(state="light", entered_at=2.0,
                           decision={"at": 2.0, "kind": "level", "reason": "start"})  # fmt: skip
        assert (a.level_state()["state"], b.level_state()["state"]) == ("medium", "light")
        assert [d["reason"] for d in b.decisions()] == ["first", "start"]
        assert len(a.decisions(all_boxes=True)) == 4
        ra = a.run_started("Pong", 1, 5.0, level="light", num_envs=1, batch_size=1,
                           proc_start_time=None)  # fmt: skip
        a.run_ended(ra, 6.0, exit_code=1, signal=None, reason="crashed", outcome=s.Outcome.CRASH)
        b.run_started("Pong", 2, 7.0, level="light", num_envs=1, batch_size=1,
                      proc_start_time=None)  # fmt: skip
        assert a.crash_times(0.0) == (6.0,) and b.crash_times(0.0) == ()
        assert [r["pid"] for r in b.open_runs()] == [2] and a.open_runs() == []
        assert [r["box"] for r in a.runs("Pong")] == ["a", "b"]
        assert b.run_spans("light", 0.0) == ((7.0, None),)
        a.daemon_started(100, "boot-2", 21.0)
        assert b.last_daemon_run() is None and a.last_daemon_run()["pid"] == 100
    finally:
        a.close()
        b.close()
