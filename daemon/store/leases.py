"""Fleet mode's shared game queue: claims, leases and fencing tokens (docs/fleet.md).

Every box offers the games of its profile (``offer``); each then claims up to its free slots
(``claim``): the free games with the most work left first, taken with ``SELECT ... FOR UPDATE
SKIP LOCKED`` on PostgreSQL, so boxes claiming at the same moment skip each other's rows instead
of waiting or taking the same game (the queue pattern of procrastinate, Oban, pg-boss). A claim
is a lease: it lasts ``lease_s`` and the box renews all of its leases at once (``renew``, one
UPDATE from the health check). A lease not renewed in time expires, and any box may claim the
game; until one does, the holder's next renewal takes it back (its token still the game's, no
other box ever ran it: a box that only missed renewals, e.g. while PostgreSQL restarted, loses
nothing). Every claim adds one to the game's ``token``: a holder whose token is no longer the
game's knows it was superseded (``current_token``), and must write nothing more for the game.

Times are the caller's clock (``now``): every box's clock is assumed within a small fraction of
``lease_s`` of the others (NTP), as docs/fleet.md states. On SQLite (one box) the same calls
work, serialized by the file's write lock (``BEGIN IMMEDIATE``).

The daemon's side (what to claim, when to renew, what a lost game means) is ``daemon/fleet.py``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, or_, select, update

from daemon.store import schema as s
from daemon.store.dialect import upsert
from daemon.store.store import Store

_c = s.leases.c


@dataclass(frozen=True)
class Lease:
    game: str
    box: str
    token: int
    expires_at: float


def write_lock(conn: Connection) -> None:
    # SQLite takes its write lock at the first write: a claim's SELECT would read a queue another
    # process is about to change. IMMEDIATE takes it first; PostgreSQL has row locks instead.
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Leases:
    """One box's view of the shared queue."""

    def __init__(self, store: Store, box: str, lease_s: float) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.store, self.box, self.lease_s = store, box, lease_s

    def offer(self, work: Mapping[str, float]) -> None:
        """Put games in the queue (or update how much work each has left); a holder is kept."""
        with self.store._begin() as conn:
            for game, left in sorted(work.items()):
                upsert(conn, s.leases, {"game": game}, {"work": float(left)}, {"token": 0})

    def claim(self, n: int, now: float, games: Collection[str] | None = None) -> list[Lease]:
        """Up to ``n`` free games (never held, released, or expired), most work first; only
        ``games`` when given (a box claims only games its profile has)."""
        if n <= 0:
            return []
        q = (
            select(_c.game)
            .where(or_(_c.box.is_(None), _c.expires_at < now), _c.work > 0)
            .order_by(_c.work.desc(), _c.game)
            .limit(n)
            .with_for_update(skip_locked=True)
        )
        if games is not None:
            q = q.where(_c.game.in_(sorted(games)))
        with self.store._begin() as conn:
            write_lock(conn)
            games = list(conn.execute(q).scalars())
            if not games:
                return []
            rows = conn.execute(
                update(s.leases)
                .where(_c.game.in_(games))
                .values(
                    box=self.box,
                    token=_c.token + 1,
                    claimed_at=now,
                    expires_at=now + self.lease_s,
                )
                .returning(_c.game, _c.token, _c.expires_at)
            ).all()
        order = {g: i for i, g in enumerate(games)}
        return sorted((Lease(r.game, self.box, int(r.token), float(r.expires_at)) for r in rows),
                      key=lambda lease: order[lease.game])  # fmt: skip

    def renew(self, now: float) -> list[Lease]:
        """Extend every lease of this box (one statement); what it returns is what the box
        still holds. A game missing from it was lost (claimed by another box): its trainer must
        stop without writing. An expired lease nobody claimed since is still this box's (same
        token) and is renewed."""
        with self.store._begin() as conn:
            rows = conn.execute(
                update(s.leases)
                .where(_c.box == self.box, _c.expires_at.is_not(None))
                .values(expires_at=now + self.lease_s)
                .returning(_c.game, _c.token, _c.expires_at)
            ).all()
        return sorted((Lease(r.game, self.box, int(r.token), float(r.expires_at)) for r in rows),
                      key=lambda lease: lease.game)  # fmt: skip

    def release(self, lease: Lease, *, done: bool = False) -> bool:
        """Give the game back (``done``: with no work left, so nobody claims it again); False
        when the lease had already been superseded, so a stale holder never frees a newer
        holder's game."""
        values: dict[str, object] = {"box": None, "expires_at": None}
        if done:
            values["work"] = 0.0
        with self.store._begin() as conn:
            res = conn.execute(
                update(s.leases)
                .where(_c.game == lease.game, _c.box == self.box, _c.token == lease.token)
                .values(**values)
            )
        return res.rowcount == 1

    def current_token(self, game: str) -> int | None:
        with self.store._begin() as conn:
            tok = conn.execute(select(_c.token).where(_c.game == game)).scalar()
        return None if tok is None else int(tok)

    def holders(self, now: float) -> dict[str, Lease | None]:
        """Every queued game and its live lease (None: free)."""
        with self.store._begin() as conn:
            rows = conn.execute(select(s.leases).order_by(_c.game)).all()
        return {
            r.game: Lease(r.game, r.box, int(r.token), float(r.expires_at))
            if r.box is not None and r.expires_at is not None and r.expires_at >= now
            else None
            for r in rows
        }
