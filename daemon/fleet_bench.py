"""What fleet mode's queue costs the database: claim latency and lease-renewal load.

    python -m daemon.fleet_bench --url postgresql+psycopg://USER@HOST:PORT/SCRATCH_DB \
        [--boxes 100] [--games 10] [--rounds 20] [--workers 8] [--health 15]

On a scratch database (it adds a ``leases`` row per simulated game and leaves them), ``boxes``
simulated boxes each claim ``games`` games (one claim call per slot, ``workers`` boxes at a time
on their own connections, so claims contend as on a real fleet), then every box renews its
leases once per round for ``rounds`` rounds, and looks for operator command rows addressed to
its games (what each daemon does once a second). It prints one row per phase: calls, latency
percentiles, calls/s, and for renewals the database time one health-check interval costs the
fleet. Rows, not a pass/fail: compare runs side by side on one machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from daemon.store import Store, StoreError
from daemon.store.commands import Commands
from daemon.store.leases import Leases


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _row(name: str, lat: list[float], wall: float, extra: str = "") -> str:
    ms = sorted(x * 1000 for x in lat)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return (f"{name:<10} {len(ms):>7} {q[49]:>8.2f} {q[94]:>8.2f} {ms[-1]:>8.2f} "
            f"{len(ms) / wall:>9.0f}  {extra}")  # fmt: skip


def run(url: str, boxes: int, games: int, rounds: int, workers: int, health_s: float) -> list[str]:
    store = Store.open(url)
    prefix = f"bench{int(time.time() * 1000) % 10**9}-"
    names = [f"{prefix}{i:05d}" for i in range(boxes * games)]
    work = {g: float(len(names) - i) for i, g in enumerate(names)}
    Leases(store, "bench-setup", 3600).offer(work)
    fleet = [Leases(store, f"{prefix}box{b:03d}", 3600) for b in range(boxes)]
    now = time.time()

    def claim_all(box: Leases) -> list[tuple[float, int]]:
        """One claim call per slot, as a box filling its level's slots one by one."""
        out = []
        for _ in range(games):
            lat, got = _timed(lambda: box.claim(1, now))
            out.append((lat, len(got)))  # type: ignore[arg-type]
        return out

    def renew(box: Leases, at: float) -> tuple[float, object]:
        return _timed(lambda: box.renew(at))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = [x for per_box in pool.map(claim_all, fleet) for x in per_box]
    claim_wall = time.perf_counter() - t0
    claimed = sum(n for _, n in results)

    renew_lat: list[float] = []
    held = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for r in range(rounds):
            for lat, leases in pool.map(renew, fleet, [now + r] * len(fleet)):
                renew_lat.append(lat)
                held += len(leases)  # type: ignore[arg-type]
    renew_wall = time.perf_counter() - t0
    per_round = renew_wall / max(1, rounds)

    # A few commands among the fleet's games, so the polls find some (and the index is used).
    commands = Commands(store)
    for g in names[:: max(1, len(names) // 10)]:
        commands.send(g, "restart", now, "bench")
    mine = {box.box: [g for g in names if g.startswith(prefix)][i * games:(i + 1) * games]
            for i, box in enumerate(fleet)}  # fmt: skip

    def poll(box: Leases) -> tuple[float, object]:
        return _timed(lambda: commands.due(mine[box.box]))

    poll_lat: list[float] = []
    found = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(rounds):
            for lat, due in pool.map(poll, fleet):
                poll_lat.append(lat)
                found += len(due)  # type: ignore[arg-type]
    poll_wall = time.perf_counter() - t0
    return [
        f"fleet_bench: {boxes} boxes x {games} games on {store.where}, {workers} at a time",
        f"{'phase':<10} {'calls':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'calls/s':>9}",
        _row("claim", [lat for lat, _ in results], claim_wall,
             f"claimed {claimed}/{len(names)} games"),
        _row("renew", renew_lat, renew_wall,
             f"leases renewed {held}/{claimed * rounds}; one round of the fleet "
             f"{per_round * 1000:.1f} ms = {100 * per_round / health_s:.2f}% of a "
             f"{health_s:g} s health check"),
        _row("poll", poll_lat, poll_wall,
             f"command polls (one a second per box): {found // max(1, rounds)} pending found "
             f"per round; one round of the fleet {1000 * poll_wall / max(1, rounds):.1f} ms"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daemon.fleet_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--url", required=True, help="a scratch database (postgresql+psycopg://...)")
    ap.add_argument("--boxes", type=int, default=100)
    ap.add_argument("--games", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--health", type=float, default=15.0, help="health check interval, seconds")
    a = ap.parse_args(argv)
    if min(a.boxes, a.games, a.rounds, a.workers) < 1 or a.health <= 0:
        ap.error("--boxes, --games, --rounds, --workers and --health must be positive")
    try:
        rows = run(a.url, a.boxes, a.games, a.rounds, a.workers, a.health)
    except StoreError as e:
        print(f"fleet_bench: {e}", file=sys.stderr)
        return 1
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
