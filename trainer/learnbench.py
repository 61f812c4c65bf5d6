"""Learning benchmark: env steps and wall seconds to a threshold per shape and seed, one table.

    python -m trainer.learnbench [--shapes 8x128,32x512] [--seeds 1,2,3] [--tasks CartPole-v1]
                                 [--budget 300000] [--out DIR]

Each row is one real trainer subprocess (one thread, run one after another so rows do not steal
each other's core), with the scaling rule's values (``trainer/scaling.py``) passed as flags. From
the run's episodes.jsonl: the env steps of the first episode at which avg100 reached the
threshold, the wall seconds to it, the final avg100 at the budget; peak RSS from ``wait4``.

Not yet: ``--algo`` (only dqn exists), Acrobot-v1 (the trainer's CLASSIC_TASKS lacks it) and the
Pong throughput table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.scaling import reference_for, scale

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}


def run_one(task: str, envs: int, batch: int, seed: int, budget: int, out: Path) -> dict:
    v = scale(reference_for(False), envs, batch)
    run_dir = out / f"{task}-{envs}x{batch}-s{seed}"
    argv = [sys.executable, "-m", "trainer", "--game", task, "--episodes", "1000000",
            "--run-dir", str(run_dir), "--num-envs", str(envs), "--batch-size", str(batch),
            "--seed", str(seed), "--lr", repr(v.lr), "--replay-ratio", repr(v.replay_ratio),
            "--n-step", str(v.n_step), "--target-update", str(v.target_update),
            "--learning-starts", str(v.learning_starts), "--eps-decay-steps",
            str(v.eps_decay_steps), "--eps-end", "0.01", "--buffer-gb", "0.01", "--threads", "1",
            "--env-threads", "1", "--max-env-steps", str(budget)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    with open(out / f"{run_dir.name}.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    returns: list[float] = []
    reached = None
    for line in (run_dir / "episodes.jsonl").read_text().splitlines():
        e = json.loads(line)
        returns.append(e["return"])
        full = len(returns) >= 100
        if reached is None and full and sum(returns[-100:]) / 100 >= THRESHOLDS[task]:
            reached = (e["env_steps"], e["t"] - t0)
    final = sum(returns[-100:]) / min(100, len(returns)) if returns else None
    return {"task": task, "shape": f"{envs}x{batch}", "seed": seed, "rc": proc.returncode,
            "steps": reached[0] if reached else None, "wall": reached[1] if reached else None,
            "final": final, "rss_mib": usage.ru_maxrss / 1024, "lr": v.lr,
            "ratio": v.replay_ratio}  # fmt: skip


def table(rows: list[dict], budget: int) -> str:
    head = (f"| algo | task | shape | seed | lr | ratio | env steps to threshold | wall s to it | "
            f"final avg100 at {budget} | peak RSS MiB | rc |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        steps = f"{r['steps']:,}" if r["steps"] is not None else "not reached"
        wall = f"{r['wall']:.0f}" if r["wall"] is not None else "–"
        final = f"{r['final']:.1f}" if r["final"] is not None else "–"
        lines.append(f"| dqn | {r['task']} | {r['shape']} | {r['seed']} | {r['lr']:g} | "
                     f"{r['ratio']:g} | {steps} | {wall} | {final} | {r['rss_mib']:.0f} | "
                     f"{r['rc']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.learnbench", description=__doc__)
    p.add_argument("--shapes", default="8x128,32x512,64x1024,256x2048")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--tasks", default="CartPole-v1")
    p.add_argument("--budget", type=int, default=300_000, help="env steps per row")
    p.add_argument("--out", type=Path, default=None, help="run dirs (default: a temp dir)")
    a = p.parse_args(argv)
    out = a.out or Path(tempfile.mkdtemp(prefix="learnbench-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in a.tasks.split(","):
        if task not in THRESHOLDS:
            p.error(f"--tasks: unknown task {task!r}; one of {', '.join(THRESHOLDS)}")
        for shape in a.shapes.split(","):
            envs, batch = (int(x) for x in shape.split("x"))
            for seed in (int(s) for s in a.seeds.split(",")):
                rows.append(run_one(task, envs, batch, seed, a.budget, out))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows, a.budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
