"""`atarictl backup` and `restore` on a PostgreSQL store (the profile copy's ``store.url``),
against a real PostgreSQL server: the archive holds the server's rows as its ``atari.db``, a
restore puts exactly those rows back in one transaction (ids continue past them), keeps the
replaced rows under ``pre-restore-*/atari.db``, swaps ``runs/``, and never makes an SQLite file
in the state dir."""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path

from sqlalchemy import create_engine, select

from daemon.store import Store
from daemon.store import schema as s
from tests.support.state import atarictl, populate_state


def _dump(target: Path | str) -> dict[str, list[tuple]]:
    """Every row of every store table, in a stable order."""
    eng = create_engine(target if isinstance(target, str) else f"sqlite:///{target}")
    try:
        with eng.connect() as conn:
            return {
                t.name: sorted((tuple(r) for r in conn.execute(select(t))), key=repr)
                for t in s.metadata.sorted_tables
            }
    finally:
        eng.dispose()


def test_backup_and_restore_of_a_postgres_store(tmp_path: Path, pg_server) -> None:
    url = pg_server.fresh_url("backup")
    state = populate_state(tmp_path / "state", db=url)
    (state / "profile-in-effect.yaml").write_text(f"store: {{url: '{url}'}}\n")
    store = Store.open(url)
    store.add_telemetry(1.0, "host", {"cpu": 12.5})
    before = _dump(url)
    assert before["runs"] and before["boots"] and before["telemetry"]

    archive = tmp_path / "b.tar.gz"
    out = atarictl("--state-dir", str(state), "backup", str(archive), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["games"] == ["CartPole-v1", "Pong"]
    assert not (state / "atari.db").exists()
    with tarfile.open(archive) as tar:
        tar.extract("atari.db", tmp_path / "x", filter="data")
    assert _dump(tmp_path / "x" / "atari.db") == before  # the archive holds the server's rows

    # Life goes on after the backup: new rows, changed rows, a run dir file rewritten.
    store.record_decision(2.0, "operator", "after the backup")
    store.upsert_game("Pong", episodes=99)
    (state / "runs" / "Pong" / "progress.json").write_text('{"episodes": 99}')
    after = _dump(url)
    assert after != before

    out = atarictl("--state-dir", str(state), "restore", str(archive))
    assert out.returncode == 0, out.stderr
    assert _dump(url) == before
    assert json.loads((state / "runs" / "Pong" / "progress.json").read_text())["episodes"] == 3
    assert not (state / "atari.db").exists()
    (aside,) = state.glob("pre-restore-*")
    assert _dump(aside / "atari.db") == after  # the replaced rows are kept
    with sqlite3.connect(aside / "atari.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # The id sequences moved past the restored rows: the next rows do not collide.
    store.record_decision(3.0, "operator", "after the restore")
    ids = [d["id"] for d in store.decisions()]
    assert len(ids) == len(set(ids)) == len(before["decisions"]) + 1


def test_a_sqlite_backup_restores_into_a_postgres_store(tmp_path: Path, pg_server) -> None:
    # The archive is the same format for both stores: moving a box to PostgreSQL is a restore.
    old = populate_state(tmp_path / "old")
    archive = tmp_path / "sqlite.tar.gz"
    assert atarictl("--state-dir", str(old), "backup", str(archive)).returncode == 0
    url = pg_server.fresh_url("moved")
    new = tmp_path / "new"
    new.mkdir()
    (new / "profile-in-effect.yaml").write_text(f"store: {{url: '{url}'}}\n")
    out = atarictl("--state-dir", str(new), "restore", str(archive))
    assert out.returncode == 0, out.stderr
    assert _dump(url) == _dump(old / "atari.db")
    assert (new / "runs" / "Pong" / "best.pt").is_file()
