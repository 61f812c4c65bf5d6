"""A real daemon whose profile's ``store.url`` names a database on a real PostgreSQL server.

Its whole durable state (daemon run, boots, level, games, runs, decisions) lands in PostgreSQL,
no SQLite file is made in the state dir, a restart restores from PostgreSQL, and a PostgreSQL
restart under the running daemon costs it nothing (the pool reconnects).
"""

from __future__ import annotations

import signal
from pathlib import Path

from sqlalchemy import create_engine, select

from daemon.store import schema as s
from tests.support.profiles import daemon_profile


def _rows(url: str, table) -> list[dict]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(table))]
    finally:
        eng.dispose()


def test_a_daemon_keeps_its_state_in_postgres(tmp_path: Path, daemons, pg_server) -> None:
    url = pg_server.fresh_url("daemon")
    spec = daemon_profile({"CartPole-v1": 100_000}, slots=1).section("store", url=url)
    prof = spec.write(tmp_path / "profile.yaml")
    d = daemons.start(prof)
    d.wait_running("CartPole-v1", checkpoint=False)
    runs = _rows(url, s.runs)
    assert [(r["game"], r["ended_at"]) for r in runs] == [("CartPole-v1", None)]
    assert _rows(url, s.games)[0]["state"] == "RUNNING"
    assert _rows(url, s.level_state)[0]["state"] == "light"
    assert not (d.state / "atari.db").exists()  # nothing went to the default SQLite file

    pg_server.restart()  # every pooled connection of the daemon is cut
    d.wait_for("episodes recorded after the PostgreSQL restart",
               lambda: (_rows(url, s.games)[0]["episodes"] or 0) > 0)  # fmt: skip
    assert d.game("CartPole-v1")["state"] == "RUNNING"

    assert d.stop(signal.SIGTERM) == 0
    daemon_runs = _rows(url, s.daemon_runs)
    assert [r["clean_shutdown"] for r in daemon_runs] == [True]
    ended = _rows(url, s.runs)
    assert len(ended) == 1 and ended[0]["outcome"] == s.Outcome.STOPPED.value

    d2 = daemons.start(prof, name="again")
    d2.wait_running("CartPole-v1", checkpoint=False)
    assert len(_rows(url, s.daemon_runs)) == 2
    assert [r["ended_at"] is None for r in _rows(url, s.runs)] == [False, True]
