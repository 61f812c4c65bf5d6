"""Fleet mode, one box's side (docs/fleet.md): which games it holds, and when it finds out.

The shared queue is ``daemon/store/leases.py`` (claims with ``FOR UPDATE SKIP LOCKED``, leases,
fencing tokens); this module is what a box does with it:
- ``claim(n)``: the process manager fills free slots with games claimed from the queue (this
  box's profile's games only, the most work left first);
- ``renew()``: the health check renews every lease at once; what comes back missing was lost to
  another box (``lost``), and its trainer must stop;
- ``release(game)``: a game handed back (the box shuts down, the game is done, or it holds more
  queued games than its level has slots);
- ``fence(run_dir, token)``: the new holder's token goes into the run dir before its trainer
  starts, so a stale trainer (``--fence-token``, an older token) writes nothing more.

Every database call can raise ``StoreError`` (PostgreSQL restarting): the caller keeps its
trainers running and tries again on the next pass; a lease is ``fleet.lease`` long so a few
missed renewals cost nothing (a renewal after expiry takes the lease back unless another box
claimed it meanwhile).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

from daemon.clock import Clock
from daemon.paths import fsync_dir
from daemon.store import Store
from daemon.store.commands import CommandRow, Commands
from daemon.store.leases import Lease, Leases
from trainer import contract


class Paced:
    """When to try a database call next: every ``every`` seconds while it works; after a failure
    ``2, 4, 8 ...`` seconds up to ``most`` (a restarting server is not hammered once a second by
    every box). ``failed`` and ``worked`` say when a streak begins and ends, so each outage is two
    log lines, not one a second."""

    def __init__(self, every: float = 1.0, most: float = 30.0) -> None:
        self.every, self.most = every, most
        self.failures = 0
        self.next_at = 0.0

    def due(self, mono: float) -> bool:
        return mono >= self.next_at

    def worked(self, mono: float) -> int:
        """Schedule the next try; returns how many failures this success ends (0: none)."""
        ended, self.failures = self.failures, 0
        self.next_at = mono + self.every
        return ended

    def failed(self, mono: float) -> float:
        """Schedule the retry; returns its delay (the first failure of a streak: ``every`` x 2)."""
        self.failures += 1
        delay = min(self.most, self.every * 2.0**self.failures)
        self.next_at = mono + delay
        return delay


class Fleet:
    def __init__(
        self, store: Store, lease_s: float, clock: Clock, games: Collection[str]
    ) -> None:
        self.box = store.box
        self.leases = Leases(store, store.box, lease_s)
        self.commands = Commands(store)
        self.clock = clock
        self.games = frozenset(games)  # what this box's profile may run
        self.held: dict[str, Lease] = {}
        self.claims, self.polls = Paced(), Paced()  # the manager's claims, the command polls
        self.renew_failures = 0  # renewals ride on the health check; counted for the log

    def start(self, work: Mapping[str, float]) -> int:
        """At daemon start: offer the profile's games (work left each), and hand back the
        leases a previous run of this box left behind (its trainers were stopped as
        leftovers), so they are claimed afresh with a new token. Returns how many."""
        self.leases.offer(work)
        n = 0
        for lease in self.leases.holders(float("-inf")).values():
            if lease is not None and lease.box == self.box:
                n += self.leases.release(lease)
        return n

    def claim(self, n: int) -> list[Lease]:
        got = self.leases.claim(n, self.clock.now(), self.games)
        for lease in got:
            self.held[lease.game] = lease
        return got

    def renew(self) -> list[str]:
        """Renew every lease; the games this box held and holds no more (another box claimed
        them), which the caller must stop."""
        live = {lease.game: lease for lease in self.leases.renew(self.clock.now())}
        lost = [g for g, lease in self.held.items()
                if g not in live or live[g].token != lease.token]  # fmt: skip
        self.held = {g: live[g] for g in self.held if g not in lost}
        return lost

    def release(self, game: str, *, done: bool = False) -> None:
        lease = self.held.pop(game, None)
        if lease is not None:
            self.leases.release(lease, done=done)

    def forget(self, game: str) -> None:
        """A game lost to another box: nothing to release (the lease is theirs)."""
        self.held.pop(game, None)

    def token(self, game: str) -> int | None:
        lease = self.held.get(game)
        return None if lease is None else lease.token

    def due_commands(self) -> list[CommandRow]:
        return self.commands.due(self.held)


def fence_is(run_dir: Path, token: int | None) -> bool:
    """Whether the run dir's fence still holds ``token``: what the daemon checks before it
    writes into a run dir itself (an eval's best-eval.pt), as the trainer does before each
    rename. False when it holds another token, cannot be read, or ``token`` is None."""
    if token is None:
        return False
    try:
        return (run_dir / contract.FENCE_FILE).read_text().strip() == str(token)
    except OSError:
        return False


def write_fence(run_dir: Path, token: int) -> None:
    """``<run-dir>/fence`` := ``token``, atomically and durably, before the new holder's trainer
    starts: a stale trainer reads it before each write and stops (trainer/rundir.py)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / contract.FENCE_FILE
    tmp = run_dir / contract.temp_name(contract.FENCE_FILE, os.getpid())
    with open(tmp, "w") as f:
        f.write(f"{token}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(run_dir)
