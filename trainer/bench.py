"""`atari-trainer bench`: env ceiling, learner ceiling and whole-trainer throughput tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.args import Args, UsageError, check_game
from trainer.envs import env_spec, make_envs
from trainer.network import make_qnetwork
from trainer.train import learn

FULL = {"envs": [1, 8, 32, 64, 256], "batches": [32, 512, 1024, 2048]}
FULL_LEVELS = [(32, 512), (64, 1024), (256, 2048)]
QUICK = {"envs": [1, 8], "batches": [32, 128]}
QUICK_LEVELS = [(8, 128)]


def env_ceiling(game: str, num_envs: int, seconds: float) -> float:
    args = Args(game=game, episodes=1, run_dir=Path(), num_envs=num_envs)
    envs = make_envs(args)
    envs.reset()
    n_actions = int(envs.action_space.n)
    rng = np.random.default_rng(0)
    steps = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        envs.step(rng.integers(0, n_actions, size=num_envs).astype(np.int32))
        steps += num_envs
    rate = steps / (time.perf_counter() - t0)
    envs.close()
    return rate


def learner_ceiling(game: str, batch: int, seconds: float, device: torch.device) -> float:
    args = Args(game=game, episodes=1, run_dir=Path(), num_envs=1, batch_size=batch)
    probe = make_envs(args)
    spec = env_spec(probe)
    probe.close()
    q = make_qnetwork(spec, args.hidden).to(device)
    target = make_qnetwork(spec, args.hidden).to(device)
    opt = torch.optim.Adam(q.parameters(), lr=args.lr)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 255, size=(batch, *spec.obs_shape)).astype(spec.obs_dtype)
    data = {
        "obs": obs,
        "next_obs": obs[::-1].copy(),
        "action": rng.integers(0, spec.num_actions, size=batch),
        "return": rng.random(batch).astype(np.float32),
        "discount": np.full(batch, 0.97, dtype=np.float32),
    }
    learn(args, q, target, opt, data, device)  # warm-up: allocator, kernels
    n = 0
    t0 = time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        learn(args, q, target, opt, data, device)
        n += 1
    return n / (time.perf_counter() - t0)


def trainer_rate(game: str, num_envs: int, batch: int, ratio: float, seconds: float,
                 device: str, overlap: bool = True) -> float:  # fmt: skip
    return trainer_run(game, num_envs, batch, ratio, seconds, device, overlap)[0]


def trainer_run(
    game: str,
    num_envs: int,
    batch: int,
    ratio: float,
    seconds: float,
    device: str,
    overlap: bool = True,
    algo: str = "dqn",
    tensorboard: bool = True,
    checkpoint_every: float = 10**6,
) -> tuple[float, float]:
    """(env steps/s while learning, CPU ms of this process per 1000 env steps). The CPU figure
    counts every thread (envpool's too) and is what a busy shared host disturbs least."""
    from trainer.train import main as train_main

    with tempfile.TemporaryDirectory(prefix="atari-bench-") as tmp:
        args = Args(
            game=game,
            episodes=10**9,
            run_dir=Path(tmp),
            num_envs=num_envs,
            batch_size=batch,
            device=device,
            replay_ratio=ratio,
            learning_starts=batch,
            buffer_gb=0.5,
            checkpoint_every=checkpoint_every,
            max_seconds=seconds + 3.0,  # plus the short fill phase before learning
            overlap=overlap,
            algo=algo,
            tensorboard=tensorboard,
        )
        cpu0 = time.process_time()
        train_main(args)
        cpu = time.process_time() - cpu0
        progress = json.loads((Path(tmp) / "progress.json").read_text())
    per_k = 1000.0 * 1000.0 * cpu / max(1, int(progress["env_steps"]))
    return float(progress["learning_env_steps_per_sec"] or 0.0), per_k


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atari-trainer bench", description=__doc__)
    p.add_argument("--game", default="Pong")
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--quick", action="store_true", help="fewer, shorter measurements (smoke)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--replay-ratio", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch default")
    p.add_argument(
        "--tb-overhead", metavar="SHAPES", default=None,
        help="only the TensorBoard overhead table: whole-trainer env steps/s with and without "
        "--tensorboard, alternating, at these ALGO:ENVSxBATCH shapes (e.g. dqn:8x128,pqn:8x128)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="--tb-overhead: on/off pairs per row")
    return p


@contextlib.contextmanager
def timed_curves() -> Iterator[dict[str, float]]:
    """Wall time spent inside ``trainer.tb.Curves`` (collecting and writing points), for the
    overhead table: a direct measure that a busy shared host disturbs much less than the rates."""
    from trainer import tb

    spent = {"s": 0.0}
    names = ("episodes", "learner_due", "learner", "tick", "level", "commit", "close")
    saved = {n: getattr(tb.Curves, n) for n in names}

    def wrap(orig: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                spent["s"] += time.perf_counter() - t0

        return timed

    for n, orig in saved.items():
        setattr(tb.Curves, n, wrap(orig))
    try:
        yield spent
    finally:
        for n, orig in saved.items():
            setattr(tb.Curves, n, orig)


def tb_overhead(game: str, shapes: str, seconds: float, device: str, rr: float,
                repeats: int) -> None:  # fmt: skip
    """TensorBoard on vs off, side by side: each row alternates on/off runs (so drift on a
    shared host hits both), checkpoints (and so event writes) every 5 s; medians."""
    t0 = time.perf_counter()
    import torch.utils.tensorboard  # noqa: F401 - once per process, at the trainer's start

    print(f"# torch.utils.tensorboard import: {time.perf_counter() - t0:.2f} s once per trainer "
          "start (not in the rows)")  # fmt: skip
    print(f"# {game}, device {device}, {seconds:g} s per run, {repeats} on/off pairs per row, "
          "checkpoint (and event flush) every 5 s", flush=True)  # fmt: skip
    print("\n| algo | level | TB on env steps/s | TB off env steps/s | on/off "
          "| TB on CPU ms/1k steps | TB off CPU ms/1k steps | on/off | time in tb code |"
          "\n|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)  # fmt: skip
    for item in shapes.split(","):
        algo, shape = item.split(":")
        n, b = (int(x) for x in shape.split("x"))
        on: list[tuple[float, float]] = []
        off: list[tuple[float, float]] = []
        share: list[float] = []
        # Warm-up (discarded): the first run of a process pays one-time costs (libraries,
        # allocator); then on/off and off/on alternate so order favours neither.
        trainer_run(game, n, b, rr, min(seconds, 2.0), device, algo=algo, tensorboard=False)
        for i in range(repeats):
            for tb_on in (True, False) if i % 2 == 0 else (False, True):
                if not tb_on:
                    off.append(trainer_run(game, n, b, rr, seconds, device, algo=algo,
                                           tensorboard=False, checkpoint_every=5.0))  # fmt: skip
                    continue
                with timed_curves() as spent:
                    t0 = time.perf_counter()
                    on.append(trainer_run(game, n, b, rr, seconds, device, algo=algo,
                                          tensorboard=True, checkpoint_every=5.0))  # fmt: skip
                    share.append(spent["s"] / (time.perf_counter() - t0))
        r_on, r_off = (statistics.median(r for r, _ in x) for x in (on, off))
        c_on, c_off = (statistics.median(c for _, c in x) for x in (on, off))
        print(f"| {algo} | {n}/{b} | {r_on:,.0f} | {r_off:,.0f} | {r_on / r_off:.3f} "
              f"| {c_on:,.1f} | {c_off:,.1f} | {c_on / c_off:.3f} "
              f"| {100 * statistics.median(share):.2f} % |", flush=True)  # fmt: skip


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    if ns.seconds <= 0:
        raise SystemExit("atari-trainer bench: error: --seconds must be > 0")
    try:
        check_game(ns.game)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    logging.getLogger("trainer").setLevel(logging.WARNING)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    device_name = "cuda" if ns.device == "auto" and torch.cuda.is_available() else ns.device
    device = torch.device("cpu" if device_name == "auto" else device_name)
    if ns.tb_overhead:
        tb_overhead(ns.game, ns.tb_overhead, ns.seconds, str(device), ns.replay_ratio,
                    ns.repeats)  # fmt: skip
        return 0
    sizes, levels = (QUICK, QUICK_LEVELS) if ns.quick else (FULL, FULL_LEVELS)
    seconds = min(ns.seconds, 2.0) if ns.quick else ns.seconds
    rr = ns.replay_ratio
    print(
        f"# {ns.game}, device {device}, torch threads {torch.get_num_threads()}, "
        f"replay ratio {rr}, {seconds:g} s per measurement",
        flush=True,
    )
    # Each row is printed as soon as it is measured: a full run takes minutes.
    print("\n| num_envs | raw envpool steps/s |\n|---:|---:|")
    env_c: dict[int, float] = {}
    for n in sizes["envs"]:
        env_c[n] = env_ceiling(ns.game, n, seconds)
        print(f"| {n} | {env_c[n]:,.0f} |", flush=True)
    print(
        "\n| batch | learner updates/s | samples/s | env steps/s it can feed |"
        "\n|---:|---:|---:|---:|"
    )
    learn_c: dict[int, float] = {}
    for b in sizes["batches"]:
        u = learn_c[b] = learner_ceiling(ns.game, b, seconds, device)
        print(f"| {b} | {u:,.2f} | {u * b:,.0f} | {u * b / rr:,.0f} |", flush=True)
    print(
        "\n| level (envs/batch) | trainer env steps/s | speed-up vs 1/32 | % of raw ceiling "
        "| serial bound | efficiency |\n|---|---:|---:|---:|---:|---:|"
    )
    base = 0.0
    for n, b in [(1, 32), *levels]:
        for overlap in [True] if ns.quick else [True, False]:
            rate = trainer_rate(ns.game, n, b, rr, seconds, str(device), overlap)
            base = base or rate
            ec = env_c.get(n) or env_ceiling(ns.game, n, seconds)
            lc = (learn_c.get(b) or learner_ceiling(ns.game, b, seconds, device)) * b / rr
            bound = 1.0 / (1.0 / ec + 1.0 / lc)
            speed = f"{rate / base:.2f}x" if base > 0 else "n/a"
            label = f"{n}/{b}" + ("" if overlap else " serial")
            print(
                f"| {label} | {rate:,.0f} | {speed} | {100 * rate / ec:.1f}% "
                f"| {bound:,.0f} | {rate / bound:.2f} |",
                flush=True,
            )
    print(
        "\nserial bound = 1/(1/env ceiling + 1/learner ceiling in env steps/s); `serial` rows "
        "run with --no-overlap (step, then learn); other rows learn while envpool steps."
    )
    return 0
