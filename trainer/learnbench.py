"""Learning benchmark: env steps and wall seconds to a threshold per algo, shape and seed, in one
table; then Atari throughput while learning on Pong at the light shape, per algo.

    python -m trainer.learnbench [--algos dqn,pqn] [--shapes 8x128,32x512,64x1024,256x2048]
                                 [--seeds 1,2,3] [--tasks CartPole-v1,Acrobot-v1]
                                 [--budget 300000] [--pong-seconds 120] [--jobs 1]
                                 [--resume-every 0] [--out DIR]

Each row is one real trainer subprocess with one torch thread and one envpool thread, with no
flag but the shape, seed and limits: the values come from the scaling rule (``trainer/scaling.py``),
exactly as a daemon level gets them. ``--jobs 1`` (the default) runs rows one after another so
they do not steal each other's core; ``--jobs 2`` halves the time on a 2-core host and slows each
row (the wall column then says so). From the run's episodes.jsonl: the env steps of the first
episode at which avg100 reached the threshold, the wall seconds to it, the final avg100 at the
budget (the run goes on to the budget, so a late collapse shows); peak RSS from ``wait4``.

``--resume-every N`` adds, for every row, the same run stopped gracefully and started again on
its run dir every N env steps (the ``starts`` column): what a reboot storm or frequent level
changes cost in learning.

The Pong table runs each algo at the light shape (32 envs x batch 512) for ``--pong-seconds``
(and DQN once more with its values from before the scaling rule), one row at a time with
``--pong-threads`` torch threads, and reports the trainer's own ``learning_env_steps_per_sec``
(measured from the first update) and the peak RSS; ``--pong-seconds 0`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainer.contract import read_progress
from trainer.scaling import reference_for, scale

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}
LIGHT = (32, 512)


def _run(argv: list[str], log_path: Path) -> tuple[int, float, float]:
    """(exit code, wall s, peak RSS MiB) of one trainer subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.monotonic() - t0, usage.ru_maxrss / 1024


def run_one(
    algo: str, task: str, envs: int, batch: int, seed: int, budget: int, out: Path,
    resume_every: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """One row. ``resume_every`` > 0: the run stops gracefully (``--max-env-steps``) every that
    many env steps and is started again on its run dir, as a level change or a reboot would."""
    tag = f"-resume{resume_every}" if resume_every else ""
    run_dir = out / f"{algo}-{task}-{envs}x{batch}-s{seed}{tag}"
    argv = [sys.executable, "-m", "trainer", "--algo", algo, "--game", task,
            "--episodes", "1000000", "--run-dir", str(run_dir), "--num-envs", str(envs),
            "--batch-size", str(batch), "--seed", str(seed), "--buffer-gb", "0.01",
            "--threads", "1", "--env-threads", "1"]  # fmt: skip
    t0 = time.time()
    rc, wall, rss, starts = 0, 0.0, 0.0, 0
    limits = range(resume_every, budget, resume_every) if resume_every else []
    for limit in [*limits, budget]:
        rc, took, peak = _run([*argv, "--max-env-steps", str(limit)],
                              out / f"{run_dir.name}.log")  # fmt: skip
        wall, rss, starts = wall + took, max(rss, peak), starts + 1
        if rc != 0:
            break
    returns: list[float] = []
    reached = None
    episodes = run_dir / "episodes.jsonl"
    for line in episodes.read_text().splitlines() if episodes.exists() else []:
        e = json.loads(line)
        returns.append(e["return"])
        full = len(returns) >= 100
        if reached is None and full and sum(returns[-100:]) / 100 >= THRESHOLDS[task]:
            reached = (e["env_steps"], e["t"] - t0)
    final = sum(returns[-100:]) / min(100, len(returns)) if returns else None
    v = scale(reference_for(False, algo), envs, batch, algo)
    return {"algo": algo, "task": task, "shape": f"{envs}x{batch}", "seed": seed, "rc": rc,
            "steps": reached[0] if reached else None, "wall": reached[1] if reached else None,
            "final": final, "rss_mib": rss, "lr": v["lr"], "ratio": v["replay_ratio"],
            "total_wall": wall, "starts": starts}  # fmt: skip


# The Pong rows: each algo with the rule's values, and DQN with the values it ran with before the
# rule (lr 1e-4, replay ratio 8 at every batch), the 101 env steps/s of docs/trainer.md's bench.
PONG_ROWS = {"dqn": [], "pqn": [], "dqn (before the rule)": ["--lr", "1e-4", "--replay-ratio", "8"]}


def pong_one(name: str, seconds: float, threads: int, out: Path) -> dict[str, Any]:
    envs, batch = LIGHT
    algo = name.split()[0]
    run_dir = out / f"{name.replace(' ', '_').strip('()')}-Pong-{envs}x{batch}"
    # learning_starts 2 batches for DQN, so most of the time is spent learning, as in a day run.
    argv = [sys.executable, "-m", "trainer", "--algo", algo, "--game", "Pong",
            "--episodes", "1000000", "--run-dir", str(run_dir), "--num-envs", str(envs),
            "--batch-size", str(batch), "--buffer-gb", "0.5", "--threads", str(threads),
            "--env-threads", "1", "--learning-starts", str(2 * batch),
            "--max-seconds", str(seconds), "--progress-every", "1", *PONG_ROWS[name]]  # fmt: skip
    rc, _, rss = _run(argv, out / f"{run_dir.name}.log")
    fields, _ = read_progress(run_dir)
    return {"algo": name, "rc": rc, "sps": fields.get("learning_env_steps_per_sec"),
            "env_steps": fields.get("env_steps"), "updates": fields.get("updates"),
            "rss_mib": rss}  # fmt: skip


def table(rows: list[dict[str, Any]], budget: int) -> str:
    head = (f"| algo | task | shape | seed | starts | lr | ratio | env steps to threshold | "
            f"wall s to it | final avg100 at {budget:,} | peak RSS MiB | rc |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        steps = f"{r['steps']:,}" if r["steps"] is not None else "not reached"
        wall = f"{r['wall']:.0f}" if r["wall"] is not None else "–"
        final = f"{r['final']:.1f}" if r["final"] is not None else "–"
        lines.append(f"| {r['algo']} | {r['task']} | {r['shape']} | {r['seed']} | "
                     f"{r['starts']} | {r['lr']:g} | "
                     f"{r['ratio']:g} | {steps} | {wall} | {final} | {r['rss_mib']:.0f} | "
                     f"{r['rc']} |")  # fmt: skip
    return "\n".join(lines)


def pong_table(rows: list[dict[str, Any]], seconds: float, threads: int) -> str:
    envs, batch = LIGHT
    lines = [f"Pong-v5 at the light shape {envs}x{batch}, {seconds:g} s per row, {threads} torch "
             "threads, one row at a time:",
             "| algo | env steps/s while learning | env steps | updates | peak RSS MiB | rc |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        sps = f"{r['sps']:.0f}" if r["sps"] is not None else "–"
        lines.append(f"| {r['algo']} | {sps} | {r['env_steps']} | {r['updates']} | "
                     f"{r['rss_mib']:.0f} | {r['rc']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.learnbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--algos", default="dqn,pqn")
    p.add_argument("--shapes", default="8x128,32x512,64x1024,256x2048")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--tasks", default="CartPole-v1,Acrobot-v1")
    p.add_argument("--budget", type=int, default=300_000, help="env steps per row")
    p.add_argument("--pong-seconds", type=float, default=120.0, help="0 skips the Pong table")
    p.add_argument("--pong-threads", type=int, default=2, help="torch threads of the Pong rows")
    p.add_argument("--jobs", type=int, default=1, help="rows run at once")
    p.add_argument("--resume-every", type=int, default=0,
                   help="also each row stopped and resumed every N env steps")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="run dirs (default: a temp dir)")
    a = p.parse_args(argv)
    out = a.out or Path(tempfile.mkdtemp(prefix="learnbench-"))
    out.mkdir(parents=True, exist_ok=True)
    algos = a.algos.split(",")
    for algo in algos:
        if algo not in ("dqn", "pqn"):
            p.error(f"--algos: unknown algo {algo!r}; one of dqn, pqn")
    jobs: list[tuple[str, str, int, int, int, int]] = []
    for task in a.tasks.split(","):
        if task not in THRESHOLDS:
            p.error(f"--tasks: unknown task {task!r}; one of {', '.join(THRESHOLDS)}")
        for algo in algos:
            for shape in a.shapes.split(","):
                envs, batch = (int(x) for x in shape.split("x"))
                for seed in (int(s) for s in a.seeds.split(",")):
                    jobs.append((algo, task, envs, batch, seed, 0))
                    if a.resume_every:
                        jobs.append((algo, task, envs, batch, seed, a.resume_every))

    def one(job: tuple[str, str, int, int, int, int]) -> dict[str, Any]:
        *head, resume_every = job
        row = run_one(*head, a.budget, out, resume_every)  # type: ignore[arg-type]
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        rows = list(pool.map(one, jobs))
    print(f"learnbench: {len(rows)} rows, --jobs {a.jobs}, run dirs in {out}")
    print(table(rows, a.budget))
    if a.pong_seconds > 0:
        names = [n for n in PONG_ROWS if n.split()[0] in algos]
        pong = [pong_one(n, a.pong_seconds, a.pong_threads, out) for n in names]
        print()
        print(pong_table(pong, a.pong_seconds, a.pong_threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
