"""Fleet mode's operator commands: `atarictl start/stop/restart GAME` for a game another box
holds travels as a row of ``commands`` (docs/fleet.md). Any box, or atarictl with the store's
URL, writes one (``send``); the box that holds the game picks it up on its next loop pass
(``due``), carries it out as if the command had come over its own socket, and records what it
did (``done``). No ssh, and no box needs to reach another: the database is the only channel.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from daemon.store import schema as s
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

    def send(self, game: str, verb: str, now: float, sent_by: str | None = None) -> int:
        if verb not in VERBS:
            raise ValueError(f"unknown fleet command {verb!r}; known: {', '.join(VERBS)}")
        with self.store._begin() as conn:
            res = conn.execute(insert(s.commands).values(
                at=now, game=game, verb=verb, sent_by=sent_by or self.store.box))  # fmt: skip
            return int(res.inserted_primary_key[0])

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
