"""CartPole-v1 is learned inside the suite: avg100 >= 475 for seeds 1, 2, 3 within 300K env
steps, for DQN at the reference shape 8x128 and at the light level's shape 32x512,
and for PQN at both.

The seeds were fixed before any tuning. No flag but the shape (and the algo) is given: every
hyper-parameter comes from the scaling rule (trainer/scaling.py), exactly as a daemon level gets
it. The three runs go in parallel subprocesses, one thread each, which on 2 cores takes about 1.5
times one run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from trainer_testlib import kill_group, read_progress, start

SEEDS = (1, 2, 3)
# The suite's budget for both algos. Issue 17's tighter PQN target (150K at every shape) is a
# benchmark figure (python -m trainer.learnbench, docs/trainer.md), not asserted here: at 32x512
# seed 2 the chosen rule needs 202K, measured before this test was written.
STEP_BUDGET = 300_000
CARTPOLE = ["--game", "CartPole-v1", "--episodes", "100000", "--buffer-gb", "0.01",
            "--threads", "1", "--env-threads", "1", "--stop-avg100", "475"]  # fmt: skip


def shape(algo: str, envs: int, batch: int, budget: int) -> list[str]:
    return [*CARTPOLE, "--algo", algo, "--num-envs", str(envs), "--batch-size", str(batch),
            "--max-env-steps", str(budget)]  # fmt: skip


@pytest.mark.slow
def test_cartpole_reaches_475_for_three_seeds(tmp_path: Path) -> None:
    reaches_475(shape("dqn", 8, 128, STEP_BUDGET), STEP_BUDGET, tmp_path)


@pytest.mark.slow
def test_cartpole_reaches_475_at_the_light_shape(tmp_path: Path) -> None:
    reaches_475(shape("dqn", 32, 512, STEP_BUDGET), STEP_BUDGET, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("envs", "batch"), [(8, 128), (32, 512)])
def test_pqn_cartpole_reaches_475(envs: int, batch: int, tmp_path: Path) -> None:
    reaches_475(shape("pqn", envs, batch, STEP_BUDGET), STEP_BUDGET, tmp_path)


def reaches_475(flags: list[str], budget: int, tmp_path: Path) -> None:
    procs = {}
    t0 = time.monotonic()
    try:
        for seed in SEEDS:
            run_dir = tmp_path / f"seed{seed}"
            argv = [*flags, "--seed", str(seed), "--run-dir", str(run_dir)]
            procs[seed] = start(argv, tmp_path / f"seed{seed}.log")
        took = {}
        for seed, proc in procs.items():
            assert proc.wait(timeout=840) == 0, (tmp_path / f"seed{seed}.log").read_text()[-2000:]
            took[seed] = time.monotonic() - t0
    finally:
        for proc in procs.values():
            kill_group(proc)
    for seed in SEEDS:
        p = read_progress(tmp_path / f"seed{seed}")
        assert p is not None
        print(f"seed {seed}: {p['status']} avg100={p['avg100']} env_steps={p['env_steps']} "
              f"episodes={p['episodes']} wall={took[seed]:.0f}s")  # fmt: skip
        assert p["status"] == "done", f"seed {seed}: budget spent, avg100 {p['avg100']}"
        assert p["avg100"] >= 475 and p["env_steps"] <= budget
        # Not only the trainer's own word: the avg100 of the episode log, and the exported
        # best model playing greedily.
        log = (tmp_path / f"seed{seed}" / "episodes.jsonl").read_text()
        episodes = [json.loads(ln) for ln in log.splitlines()]
        last = [e["return"] for e in episodes[-100:]]
        assert len(last) == 100 and sum(last) / 100 >= 475
        # The greedy bar is CartPole-v0's "solved" (195), not 475: best.pt holds the weights of
        # the moment avg100 peaked, and the 100 episodes behind that average were played by
        # earlier weights (DQN at 32x512, seed 1: 327.75 greedy on these seeds).
        greedy = greedy_scores(tmp_path / f"seed{seed}" / "best.pt")
        print(f"seed {seed}: best.pt greedy mean of 4 episodes {greedy:.1f}")
        assert greedy >= 195


def greedy_scores(best: Path) -> float:
    """Mean return of 4 greedy episodes of the exported best model (a fresh seed)."""
    import numpy as np
    import torch

    from trainer.evaluate import build_network, load_model, make_eval_envs, play

    model = load_model(best)
    envs = make_eval_envs("CartPole-v1", 4, seed=12345, threads=1)
    q = build_network(model, envs, torch.device("cpu"))
    scores = [r["score"] for r in play(q, envs, 4, 0.0, np.random.default_rng(0), "cpu")]
    return sum(scores) / len(scores)
