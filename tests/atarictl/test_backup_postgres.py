"""`atarictl backup` and `restore` on a PostgreSQL store (the profile copy's ``store.url``),
against a real PostgreSQL server: the archive holds the server's rows as its ``atari.db``, a
restore puts exactly those rows back in one transaction (ids continue past them), keeps the
replaced rows under ``pre-restore-*/atari.db``, swaps ``runs/``, and never makes an SQLite file
in the state dir."""

from __future__ import annotations

import json
import sqlite3
import tarfile
import time
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


def test_offline_reads_of_a_postgres_store_match_the_same_state_on_sqlite(
    tmp_path: Path, pg_server
) -> None:
    # The daemon is down: status and history read PostgreSQL just as they read SQLite. The same
    # rows in both stores must print the same thing (the state dir's path aside).
    now = time.time() - 60  # one instant for both stores
    url = pg_server.fresh_url("offline")
    lite = populate_state(tmp_path / "lite", now=now)
    pg = populate_state(tmp_path / "pg", now=now, db=url)
    (pg / "profile-in-effect.yaml").write_text(f"store: {{url: '{url}'}}\n")
    # status exits 3 (daemon not running, read from the store), the others 0.
    for cmd, rc in ((["status", "--json"], 3), (["history", "--json", "--since", "30d"], 0),
                    (["models", "--json"], 0)):  # fmt: skip
        a = atarictl("--state-dir", str(lite), *cmd)
        b = atarictl("--state-dir", str(pg), *cmd)
        assert a.returncode == b.returncode == rc, (a.stderr, b.stderr)
        assert "Pong" in a.stdout
        if cmd[0] == "status":  # ages move with the clock: compare what the rows say
            sa, sb = json.loads(a.stdout), json.loads(b.stdout)
            keys = ("game", "state", "episodes", "target", "best_return", "avg100", "pid")
            assert [[g.get(k) for k in keys] for g in sb["games"]] == [
                [g.get(k) for k in keys] for g in sa["games"]]  # fmt: skip
            assert sb.get("level") == sa.get("level") and sa["games"]
        else:
            da = json.loads(a.stdout.replace(str(lite), "STATE"))
            db = json.loads(b.stdout.replace(str(pg), "STATE"))
            da.pop("since", None), db.pop("since", None)  # taken from the clock at the call
            for m in da.get("models", []) + db.get("models", []):
                if m["source"] != "registry":
                    m.pop("at")  # a run dir file's mtime: the two state dirs were made apart
            assert db == da
    assert not (pg / "atari.db").exists()


def test_offline_status_with_postgres_down_is_one_line(tmp_path: Path, pg_server) -> None:
    state = tmp_path / "state"
    state.mkdir()
    url = pg_server.url("gone").replace(f":{pg_server.port}/", ":1/")  # nothing listens
    (state / "profile-in-effect.yaml").write_text(f"store: {{url: '{url}'}}\n")
    out = atarictl("--state-dir", str(state), "status")
    assert out.returncode != 0
    assert "cannot reach PostgreSQL" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_status_shows_the_latest_eval_of_a_postgres_store(tmp_path: Path, pg_server) -> None:
    # status's latest-eval line reads the store the daemon writes, not only an SQLite file.
    now = time.time() - 60
    url = pg_server.fresh_url("evals")
    lite = populate_state(tmp_path / "lite", now=now)
    pg = populate_state(tmp_path / "pg", now=now, db=url)
    (pg / "profile-in-effect.yaml").write_text(f"store: {{url: '{url}'}}\n")
    for target in (lite / "atari.db", url):
        store = Store.open(target)
        try:
            for mean in (-20.5, -18.0):  # the newer one is shown
                store.record_eval(at=now, game="Pong", model_kind="best", episodes=3,
                                  mean=mean, std=1.0, source="atarictl")  # fmt: skip
        finally:
            store.close()
    a = atarictl("--state-dir", str(lite), "status", "--json")
    b = atarictl("--state-dir", str(pg), "status", "--json")
    assert a.returncode == b.returncode == 3, (a.stderr, b.stderr)
    ea, eb = json.loads(a.stdout)["latest_evals"], json.loads(b.stdout)["latest_evals"]
    assert ea["Pong"]["mean"] == -18.0 and eb == ea
    text = atarictl("--state-dir", str(pg), "status")
    assert "latest evals: Pong -18.0 (best model" in text.stdout, text.stdout


def test_the_report_and_the_plot_read_a_postgres_store_as_they_read_sqlite(
    tmp_path: Path, pg_server
) -> None:
    # The daemon's periodic report and `atarictl plot` read the store through
    # daemon/reporting/data.py: on PostgreSQL they must see the same rows as on SQLite.
    from daemon.reporting.data import read_history
    from daemon.reporting.report import gather

    now = time.time() - 60
    url = pg_server.fresh_url("report")
    lite = populate_state(tmp_path / "lite", now=now)
    pg = populate_state(tmp_path / "pg", now=now, db=url)
    (pg / "profile-in-effect.yaml").write_text(f"store: {{url: '{url}'}}\n")
    ga, gb = gather(lite, now, now - 30 * 86400), gather(pg, now, now - 30 * 86400)
    assert ga["level"] and ga["games"]
    assert json.loads(json.dumps(gb, default=str).replace(str(pg), "S")) == json.loads(
        json.dumps(ga, default=str).replace(str(lite), "S"))  # fmt: skip
    ha = read_history(lite / "atari.db", lite / "runs", None, now - 30 * 86400)
    hb = read_history(pg / "atari.db", pg / "runs", None, now - 30 * 86400)
    assert ha.spans and (hb.spans, hb.reboots, hb.level_changes, hb.evals) == (
        ha.spans, ha.reboots, ha.level_changes, ha.evals)  # fmt: skip
    assert not (pg / "atari.db").exists()


def test_plot_with_postgres_down_is_one_line(tmp_path: Path, pg_server) -> None:
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    url = pg_server.url("gone").replace(f":{pg_server.port}/", ":1/")  # nothing listens
    (state / "profile-in-effect.yaml").write_text(f"store: {{url: '{url}'}}\n")
    out = atarictl("--state-dir", str(state), "plot", "--out", str(tmp_path / "p.png"))
    assert out.returncode == 1, out
    assert "cannot reach PostgreSQL" in out.stderr and len(out.stderr.strip().splitlines()) == 1
