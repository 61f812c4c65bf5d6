"""Fleet mode's operator commands: `atarictl start/stop/restart GAME` for a game another box
holds travels as a row of ``commands`` (docs/fleet.md). Any box, or atarictl with the store's
URL, writes one (``send``); the box that holds the game picks it up on its next loop pass
(``due``), carries it out as if the command had come over its own socket, and records what it
did (``done``). No ssh, and no box needs to reach another: the database is the only channel.

A game no box holds (queued, or handed back at a shutdown) has nobody to carry a command out:
``send`` then changes its shared games row at once (stop: STOPPED; start, restart: QUEUED),
in the transaction that sees it unheld, with its lease row locked so no claim slips in. The box
that claims it next restores that state, as a daemon restores a game at its start.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from daemon.store import schema as s
from daemon.store.dialect import upsert
from daemon.store.leases import write_lock
from daemon.store.store import Store

VERBS = ("start", "stop", "restart")
_c = s.commands.c


@dataclass(frozen=True)
class CommandRow:
    id: int
    at: float
    game: str
    verb: str
    sent_by: str | None


class Commands:
    def __init__(self, store: Store) -> None:
        self.store = store

    def send(
        self, game: str, verb: str, now: float, sent_by: str | None = None
    ) -> tuple[int, str | None]:
        """(command id, result): the result is None while the holder is to carry it out, else
        what was done in the queue (the game had no holder)."""
        if verb not in VERBS:
            raise ValueError(f"unknown fleet command {verb!r}; known: {', '.join(VERBS)}")
        sender = sent_by or self.store.box
        with self.store._begin() as conn:
            write_lock(conn)
            # Held: some box's name on the lease, even expired (its holder may renew it yet,
            # and a box that claims it meanwhile picks the command up as the new holder).
            holder = conn.execute(select(s.leases.c.box).where(s.leases.c.game == game)
                                  .with_for_update()).scalar()  # fmt: skip
            result = None
            if holder is None:
                result = self._in_queue(conn, game, verb)
            res = conn.execute(insert(s.commands).values(
                at=now, game=game, verb=verb, sent_by=sender, done_at=None if result is None
                else now, done_by=None if result is None else sender, result=result))  # fmt: skip
            return int(res.inserted_primary_key[0]), result

    @staticmethod
    def _in_queue(conn: Any, game: str, verb: str) -> str:
        state = conn.execute(select(s.games.c.state).where(s.games.c.name == game)).scalar()
        if verb == "stop":
            new = "STOPPED"
        else:
            new = "QUEUED" if state in (None, "STOPPED", "FATAL", "QUEUED") else state
        if new != state:
            upsert(conn, s.games, {"name": game}, {"state": new}, {"target": 0})
        return (f"{verb} {game}: no box holds it; {state or 'QUEUED'} -> {new} in the queue, "
                "where the next box that claims it takes it up")  # fmt: skip

    def due(self, games: Collection[str]) -> list[CommandRow]:
        """Commands not carried out yet for ``games`` (the ones this box holds), oldest first."""
        if not games:
            return []
        q = (select(_c.id, _c.at, _c.game, _c.verb, _c.sent_by)
             .where(_c.done_at.is_(None), _c.game.in_(sorted(games))).order_by(_c.id))  # fmt: skip
        with self.store._begin() as conn:
            return [CommandRow(int(r.id), float(r.at), r.game, r.verb, r.sent_by)
                    for r in conn.execute(q)]  # fmt: skip

    def done(self, command_id: int, now: float, result: str) -> None:
        with self.store._begin() as conn:
            conn.execute(update(s.commands).where(_c.id == command_id, _c.done_at.is_(None))
                         .values(done_at=now, done_by=self.store.box, result=result))  # fmt: skip

    def get(self, command_id: int) -> dict[str, Any] | None:
        with self.store._begin() as conn:
            row = conn.execute(select(s.commands).where(_c.id == command_id)).first()
        return None if row is None else dict(row._mapping)
