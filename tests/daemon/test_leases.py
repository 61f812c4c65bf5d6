"""Fleet mode's queue (daemon/store/leases.py) on SQLite and on a real PostgreSQL server: claims
split the games, most work first; a lease not renewed expires and another box claims the game
with a higher fencing token; the stale holder learns it on its next renewal and cannot release
the new holder's game. On PostgreSQL, real processes claiming at once never share a game."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daemon.store import Store
from daemon.store.commands import Commands
from daemon.store.leases import Leases

WORK = {"Breakout": 500.0, "Pong": 300.0, "Qbert": 200.0, "CartPole-v1": 10.0, "Done": 0.0}


def test_claims_split_the_games_most_work_first(new_db) -> None:
    store = Store.open(new_db())
    a, b = Leases(store, "box-a", 30), Leases(store, "box-b", 30)
    a.offer(WORK)
    b.offer(WORK)  # every box offers its profile's games; offering twice changes nothing
    got_a = a.claim(2, now=100.0)
    assert [(x.game, x.token, x.expires_at) for x in got_a] == [
        ("Breakout", 1, 130.0), ("Pong", 1, 130.0)]  # fmt: skip
    got_b = b.claim(5, now=101.0)
    assert [x.game for x in got_b] == ["Qbert", "CartPole-v1"]  # never "Done": no work left
    assert b.claim(1, now=102.0) == []
    assert {g: (h.box if h else None) for g, h in a.holders(102.0).items()} == {
        "Breakout": "box-a", "Pong": "box-a", "Qbert": "box-b", "CartPole-v1": "box-b",
        "Done": None}  # fmt: skip


def test_an_expired_lease_moves_with_a_higher_token_and_the_stale_holder_finds_out(
    new_db,
) -> None:
    store = Store.open(new_db())
    a, b = Leases(store, "box-a", 10), Leases(store, "box-b", 10)
    a.offer({"Pong": 100.0})
    (held,) = a.claim(1, now=0.0)
    assert b.claim(1, now=5.0) == []  # live: not free
    assert [x.expires_at for x in a.renew(now=8.0)] == [18.0]  # renewed from the health check
    assert b.claim(1, now=17.0) == []
    # box-a stops renewing (paused, partitioned, dead): at 19 the lease is over.
    (moved,) = b.claim(1, now=19.0)
    assert (moved.box, moved.token) == ("box-b", held.token + 1)
    assert a.renew(now=20.0) == []  # box-a learns it lost Pong: its trainer must stop
    assert a.release(held) is False  # and cannot free box-b's claim
    assert a.current_token("Pong") == moved.token
    assert b.release(moved) is True
    (again,) = a.claim(1, now=21.0)  # released: free again, one more token
    assert again.token == moved.token + 1
    # Expired at 31 but claimed by nobody since: box-a's next renewal takes it back, same token
    # (a box that missed renewals while the database restarted loses nothing).
    assert [(x.game, x.token) for x in a.renew(now=40.0)] == [("Pong", again.token)]
    assert b.claim(1, now=41.0) == []
    assert a.release(again, done=True) is True
    assert b.claim(1, now=42.0) == []  # done: no work left, nobody claims it again


def test_a_box_claims_only_the_games_of_its_profile(new_db) -> None:
    store = Store.open(new_db())
    a, b = Leases(store, "box-a", 10), Leases(store, "box-b", 10)
    a.offer({"Pong": 100.0, "Breakout": 50.0})
    assert [x.game for x in b.claim(2, now=0.0, games={"Breakout"})] == ["Breakout"]
    assert [x.game for x in a.claim(2, now=0.0, games={"Pong", "Breakout"})] == ["Pong"]


_CLAIMER = textwrap.dedent("""
    import json, os, sys, time
    from daemon.store import Store
    from daemon.store.leases import Leases
    url, box, go = sys.argv[1], sys.argv[2], sys.argv[3]
    leases = Leases(Store.open(url), box, 3600)
    while not os.path.exists(go):
        time.sleep(0.005)
    mine = []
    while True:
        got = leases.claim(1, now=time.time())
        if not got:
            break
        mine += [(x.game, x.token) for x in got]
    print(json.dumps(mine))
""")


def test_boxes_claiming_at_once_on_postgres_never_share_a_game(pg_server, tmp_path: Path) -> None:
    url = pg_server.fresh_url("claims")
    games = {f"Game{i:02d}": float(100 - i) for i in range(24)}
    Leases(Store.open(url), "setup", 3600).offer(games)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, url, f"box-{i}", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]  # fmt: skip
    time.sleep(2.0)  # every claimer connected and waiting (not a measurement)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    claimed = [tuple(x) for out, _ in outs for x in json.loads(out)]
    assert sorted(g for g, _ in claimed) == sorted(games)  # each game exactly once
    assert {t for _, t in claimed} == {1}


def test_the_fleet_benchmark_prints_its_rows(pg_server) -> None:
    # Rows, not a timed test: only that every claim and renewal happened and was reported.
    out = subprocess.run(
        [sys.executable, "-m", "daemon.fleet_bench", "--url", pg_server.fresh_url("bench"),
         "--boxes", "4", "--games", "3", "--rounds", "2", "--workers", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split()[:2] == ["phase", "calls"]
    claim, renew = lines[2].split(), lines[3].split()
    assert claim[:2] == ["claim", "12"] and "claimed 12/12 games" in lines[2]
    assert renew[:2] == ["renew", "8"] and "leases renewed 24/24" in lines[3]
    poll = lines[4].split()
    assert poll[:2] == ["poll", "8"] and "12 pending found per round" in lines[4]


def test_the_fleet_benchmark_refuses_nonsense(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "daemon.fleet_bench", "--url", "x", "--boxes",
                          "0"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "must be positive" in out.stderr


def test_a_command_waits_for_the_holder_and_one_for_an_unheld_game_is_done_in_the_queue(
    new_db,
) -> None:
    store = Store.open(new_db(), box="box-a")
    a = Leases(store, "box-a", 10)
    a.offer({"Pong": 10.0, "Breakout": 5.0})
    a.claim(1, now=0.0)  # Pong
    cmds = Commands(store)
    cid, done = cmds.send("Pong", "stop", 1.0, "atarictl@ops")
    assert done is None
    assert [(c.id, c.verb, c.sent_by) for c in cmds.due(["Pong", "Breakout"])] == [
        (cid, "stop", "atarictl@ops")]  # fmt: skip
    cmds.done(cid, 2.0, "Pong STOPPING")
    assert cmds.due(["Pong"]) == [] and cmds.get(cid)["done_by"] == "box-a"
    # Breakout has no holder: the stop is done at once, in its shared games row.
    cid2, done2 = cmds.send("Breakout", "stop", 3.0)
    assert done2 is not None and "no box holds it" in done2
    assert store.games()["Breakout"]["state"] == "STOPPED"
    assert cmds.due(["Breakout"]) == [] and cmds.get(cid2)["done_at"] == 3.0
    cmds.send("Breakout", "start", 4.0)
    assert store.games()["Breakout"]["state"] == "QUEUED"
    with pytest.raises(ValueError, match="unknown fleet command"):
        cmds.send("Pong", "explode", 5.0)
