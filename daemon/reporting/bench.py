"""Plot benchmark: ``python -m daemon.reporting.bench [--games 10] [--episodes 30000]``.

Writes a synthetic state dir (one episodes.jsonl per game with a noisy rising curve, and a real
store with runs at two levels, a fallback, two reboots and evals), then times reading it and
drawing the PNG and the SVG, and prints a table. The numbers in docs/cli.md come from it.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from daemon.reporting.data import read_history
from daemon.reporting.plot import render
from daemon.scores import REFERENCE_SCORES

GAMES = tuple(sorted(REFERENCE_SCORES))  # the ten games of the gpu-box profile


def synth_state(
    state: Path, games: int, episodes: int, *, start: float | None = None, seed: int = 0
) -> None:
    """A state dir as a week of training would leave it (test fixture and benchmark input)."""
    from daemon.store.schema import Outcome
    from daemon.store.store import Store

    rng = random.Random(seed)
    start = time.time() - 7 * 86400 if start is None else start
    span = 7 * 86400.0
    state.mkdir(parents=True, exist_ok=True)
    store = Store.open(state / "atari.db")
    try:
        light_to_medium, fall = start + span * 0.3, start + span * 0.55
        back = start + span * 0.75
        store.record_boot("boot-a", start, reason="first boot seen")
        for i, at in enumerate((fall - 600, fall - 60)):
            store.record_boot(
                f"boot-{i}",
                at,
                reason="reboot",
                previous_boot_id="boot-a",
                downtime_s=90.0,
                previous_clean_shutdown=False,
            )
        for at, a, b in (
            (light_to_medium, "light", "medium"),
            (fall, "medium", "light"),
            (back, "light", "medium"),
        ):
            store.record_decision(at, "process", f"level change {a} -> {b} (synthetic)", None, a, b)
        for k in range(games):
            name = GAMES[k % len(GAMES)] + ("" if k < len(GAMES) else str(k))
            store.upsert_game(name, state="RUNNING", target=episodes * 2, episodes=episodes)
            for s0, s1, lv, out in (
                (start, light_to_medium, "light", Outcome.STOPPED),
                (light_to_medium, fall, "medium", Outcome.CRASH),
                (fall, back, "light", Outcome.STOPPED),
                (back, start + span, "medium", Outcome.STOPPED),
            ):
                rid = store.run_started(
                    name, 1000 + k, s0, level=lv, num_envs=8, batch_size=64, proc_start_time=None
                )
                store.run_ended(rid, s1, exit_code=0, signal=None, reason="synthetic", outcome=out)
            run = state / "runs" / name
            run.mkdir(parents=True, exist_ok=True)
            lo, hi = -21.0 + k, 21.0 + 40 * k
            with (run / "episodes.jsonl").open("w") as fh:
                for e in range(episodes):
                    frac = e / max(1, episodes - 1)
                    mean = lo + (hi - lo) * (1 - 2.718 ** (-4 * frac))
                    r = round(mean + rng.gauss(0, (hi - lo) * 0.12))
                    fh.write(
                        json.dumps(
                            {
                                "t": start + span * frac,
                                "episode": e + 1,
                                "return": r,
                                "length": 800,
                                "env_steps": e * 800,
                            }
                        )
                        + "\n"
                    )
            for j in range(1, 8):
                at = start + span * j / 8
                mean = lo + (hi - lo) * (1 - 2.718 ** (-4 * j / 8))
                store.record_eval(
                    at=at,
                    game=name,
                    model_kind="best",
                    model_path="-",
                    model_sha256=f"{j:064x}",
                    model_episode=episodes * j // 8,
                    train_avg100=mean,
                    episodes=10,
                    mean=mean,
                    median=mean,
                    std=(hi - lo) * 0.05,
                    min=mean - 3,
                    max=mean + 3,
                    human_normalized=None,
                    seed=0,
                    wall_s=1.0,
                    device="cpu",
                    source="daemon",
                    detail={},
                )
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m daemon.reporting.bench", description=__doc__)
    p.add_argument("--games", type=int, default=10)
    p.add_argument("--episodes", type=int, default=30_000, help="per game")
    p.add_argument("--keep", type=Path, help="write the plots here instead of a temp dir")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        t0 = time.perf_counter()
        synth_state(state, a.games, a.episodes)
        made = time.perf_counter() - t0
        out = a.keep or Path(tmp)
        rows = []
        t0 = time.perf_counter()
        h = read_history(state / "atari.db", state / "runs", None, 0.0)
        read = time.perf_counter() - t0
        for suffix in (".png", ".svg"):
            t0 = time.perf_counter()
            render(h, out / f"bench-plot{suffix}")
            rows.append(
                (suffix, time.perf_counter() - t0, (out / f"bench-plot{suffix}").stat().st_size)
            )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"plot benchmark: {a.games} games x {a.episodes:,} episodes "
        f"(synthetic state written in {made:.1f}s)"
    )
    print(f"{'step':<14}{'seconds':>9}{'size':>12}")
    print(f"{'read':<14}{read:>9.2f}{'':>12}")
    for suffix, secs, size in rows:
        print(f"{'draw ' + suffix:<14}{secs:>9.2f}{size / 1024:>9.0f} KiB")
    print(f"peak RSS {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
