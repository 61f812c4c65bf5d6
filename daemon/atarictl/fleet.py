"""`atarictl --fleet ...`: the whole fleet, read from and written to its PostgreSQL store.

- ``--fleet status``: every box (its level, its last heartbeat, what it holds) and every game
  with its holder, straight from the database: no daemon, no ssh needed.
- ``--fleet start|stop|restart GAME...``: a command row per game (``daemon/store/commands.py``);
  the box that holds the game carries it out on its next loop pass and records the result,
  which is printed here (exit 7 when no holder took it within ``--timeout``; the row stays).

The store is ``--store-url``, else the PostgreSQL URL of the profile the local daemon last ran
under (its copy in the state dir).
"""

from __future__ import annotations

import argparse
import socket
import time
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from daemon.atarictl import formatting as fmt
from daemon.atarictl.client import CtlError
from daemon.durations import duration
from daemon.store import postgres
from daemon.store import schema as s

EXIT_TIMEOUT = 7


class Ctl(Protocol):
    """What these commands use of ``daemon.atarictl.cli.Ctl``."""

    args: argparse.Namespace
    paths: Any

    def out(self, human: str, data: Any) -> None: ...


def store_url(ctl: Ctl) -> str:
    from daemon.store.postgres import url_of_state_dir

    url = getattr(ctl.args, "store_url", None) or url_of_state_dir(ctl.paths.state_dir)
    if not url:
        raise CtlError(
            f"--fleet needs the fleet's store: no PostgreSQL store.url in "
            f"{ctl.paths.state_dir}/profile-in-effect.yaml; pass --store-url "
            "postgresql+psycopg://USER@HOST:PORT/DATABASE",
            "usage",
        )
    return url


def read_fleet(url: str, now: float) -> dict[str, Any]:
    """Boxes and games of the fleet, one consistent snapshot (REPEATABLE READ)."""
    engine = postgres.make_engine(url, 5.0)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            levels = {r.box: r for r in conn.execute(select(s.level_state))}
            runs = {}  # each box's newest daemon run
            for r in conn.execute(select(s.daemon_runs).order_by(s.daemon_runs.c.id)):
                runs[r.box] = r
            leases = {r.game: r for r in conn.execute(select(s.leases))}
            games = {r.name: r for r in conn.execute(select(s.games))}
            pending = conn.execute(
                select(s.commands.c.id, s.commands.c.game, s.commands.c.verb)
                .where(s.commands.c.done_at.is_(None)).order_by(s.commands.c.id)
            ).all()  # fmt: skip
            conn.rollback()
    except DBAPIError as e:
        raise CtlError(postgres.explain(postgres.label(url), e), "db") from None
    finally:
        engine.dispose()

    def live(lease: Any) -> bool:
        return lease is not None and lease.box is not None and (lease.expires_at or 0) >= now

    boxes = []
    for box in sorted(set(levels) | set(runs)):
        run, lv = runs.get(box), levels.get(box)
        beat = run.last_heartbeat if run is not None else None
        boxes.append({
            "box": box,
            "level": lv.state if lv is not None else None,
            "pid": run.pid if run is not None else None,
            "last_heartbeat": beat,
            "heartbeat_age_s": None if beat is None else max(0.0, now - beat),
            "stopped_at": run.stopped_at if run is not None else None,
            "holds": sorted(g for g, lease in leases.items() if live(lease) and lease.box == box),
        })  # fmt: skip
    rows = []
    for name in sorted(set(games) | set(leases)):
        g, lease = games.get(name), leases.get(name)
        rows.append({
            "game": name,
            "state": g.state if g is not None else "QUEUED",
            "episodes": g.episodes if g is not None else 0,
            "target": g.target if g is not None else None,
            "avg100": g.avg100 if g is not None else None,
            "holder": lease.box if live(lease) else None,
            # An expired lease nobody claimed since: the box that stopped renewing it.
            "expired_holder": lease.box if lease is not None and lease.box and not live(lease)
            else None,
            "lease_expires_in_s": (lease.expires_at - now) if live(lease) else None,
            "token": lease.token if lease is not None else None,
            "work_left": lease.work if lease is not None else None,
        })  # fmt: skip
    return {
        "source": "fleet", "store": postgres.label(url), "now": now, "boxes": boxes,
        "games": rows,
        "pending_commands": [{"id": c.id, "game": c.game, "verb": c.verb} for c in pending],
    }  # fmt: skip


def format_fleet(data: dict[str, Any]) -> str:
    out = [f"fleet · {len(data['boxes'])} boxes · {len(data['games'])} games · {data['store']}"]
    out.append(fmt.table(
        ("BOX", "LEVEL", "HEARTBEAT", "DAEMON", "HOLDS"),
        [(b["box"], b["level"] or "-",
          "-" if b["heartbeat_age_s"] is None else f"{duration(b['heartbeat_age_s'])} ago",
          "stopped" if b["stopped_at"] else f"pid {b['pid']}",
          ", ".join(b["holds"]) or "-") for b in data["boxes"]],
    ))  # fmt: skip
    out.append("")
    out.append(fmt.table(
        ("GAME", "STATE", "EPISODES", "AVG100", "HOLDER", "LEASE", "TOKEN"),
        [(g["game"], g["state"],
          f"{g['episodes']}/{g['target']}" if g["target"] else str(g["episodes"]),
          fmt.number(g["avg100"]),
          g["holder"] or (f"none ({g['expired_holder']}'s lease expired)"
                          if g["expired_holder"] else "none"),
          "-" if g["lease_expires_in_s"] is None else f"{g['lease_expires_in_s']:.0f}s left",
          "-" if g["token"] is None else str(g["token"])) for g in data["games"]],
    ))  # fmt: skip
    if data["pending_commands"]:
        out.append("pending commands: " + ", ".join(
            f"#{c['id']} {c['verb']} {c['game']}" for c in data["pending_commands"]))  # fmt: skip
    return "\n".join(out)


def cmd_fleet_status(ctl: Ctl) -> int:
    data = read_fleet(store_url(ctl), time.time())
    wanted = list(getattr(ctl.args, "games", []) or [])
    if wanted:
        from daemon.atarictl.names import resolve_games

        keep = resolve_games(wanted, [g["game"] for g in data["games"]])
        data["games"] = [g for g in data["games"] if g["game"] in keep]
    ctl.out(format_fleet(data), data)
    return 0


def cmd_fleet_games(ctl: Ctl, verb: str) -> int:
    """One command row per game; waits up to ``--timeout`` for the holders' results."""
    from daemon.atarictl.names import resolve_games
    from daemon.store import Store, StoreError
    from daemon.store.commands import Commands

    url = store_url(ctl)
    known = [g["game"] for g in read_fleet(url, time.time())["games"]]
    games = resolve_games(ctl.args.games, known, allow_all=True)
    games = known if "all" in games else games
    try:
        store = Store.open(url)
    except StoreError as e:
        raise CtlError(str(e), "db") from None
    try:
        commands = Commands(store)
        sent_by = f"atarictl@{socket.gethostname()}"
        ids = {g: commands.send(g, verb, time.time(), sent_by)[0] for g in games}
        deadline = time.monotonic() + ctl.args.timeout
        done: dict[str, dict[str, Any]] = {}
        while len(done) < len(ids) and time.monotonic() < deadline:
            for g, cid in ids.items():
                row = commands.get(cid)
                if g not in done and row is not None and row["done_at"] is not None:
                    done[g] = row
            if len(done) < len(ids):
                time.sleep(0.3)
    finally:
        store.close()
    result = {g: {"command": ids[g], "done_by": done[g]["done_by"], "result": done[g]["result"]}
              if g in done else {"command": ids[g], "done_by": None, "result": None}
              for g in games}  # fmt: skip
    lines = [f"{g}: {r['result']} (by {r['done_by']})" if r["done_by"] else
             f"{g}: command #{r['command']} not carried out within {ctl.args.timeout:g}s; it "
             "stays queued for the game's next holder" for g, r in result.items()]  # fmt: skip
    ctl.out("\n".join(lines), {"games": result})
    return 0 if len(done) == len(ids) else EXIT_TIMEOUT
