"""`atari-trainer bench --quick` prints its three tables, and `python -m trainer.learnbench` its
two (shape only, never speed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_testlib import env, run

NUM = r"[\d,]+(\.\d+)?"


@pytest.mark.slow
def test_bench_quick_prints_tables() -> None:
    r = run(["bench", "--quick", "--seconds", "0.5", "--threads", "1"], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("|-")]
    env_rows = [ln for ln in rows if re.fullmatch(rf"\| \d+ \| {NUM} \|", ln)]
    learner_rows = [ln for ln in rows if re.fullmatch(rf"\| \d+ \|( {NUM} \|){{3}}", ln)]
    level_rows = [ln for ln in rows if re.match(r"\| \d+/\d+ \|", ln)]
    assert [ln.split("|")[1].strip() for ln in env_rows] == ["1", "8"]
    assert [ln.split("|")[1].strip() for ln in learner_rows] == ["32", "128"]
    assert [ln.split("|")[1].strip() for ln in level_rows] == ["1/32", "8/128"]
    for ln in level_rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == 6 and cells[2].endswith("x") and cells[3].endswith("%")
        assert float(cells[1].replace(",", "")) > 0  # the trainer really stepped


@pytest.mark.slow
def test_learnbench_prints_one_row_per_algo_shape_and_start(tmp_path: Path) -> None:
    # Tiny budgets: the table's shape and the resume rows, not learning (the suite's CartPole
    # tests and docs/trainer.md's figures prove that).
    cmd = [sys.executable, "-m", "trainer.learnbench", "--algos", "dqn,pqn", "--shapes", "4x32",
           "--seeds", "1", "--tasks", "CartPole-v1", "--budget", "3000", "--resume-every", "1500",
           "--pong-seconds", "3", "--out", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln.strip("|").split("|") for ln in r.stdout.splitlines() if ln.startswith("| dqn")
            or ln.startswith("| pqn")]  # fmt: skip
    learn = [[c.strip() for c in row] for row in rows if len(row) == 12]
    assert [(c[0], c[2], c[4], c[11]) for c in learn] == [
        ("dqn", "4x32", "1", "0"), ("dqn", "4x32", "2", "0"),
        ("pqn", "4x32", "1", "0"), ("pqn", "4x32", "2", "0"),
    ]  # fmt: skip
    pong = [[c.strip() for c in row] for row in rows if len(row) == 6]
    assert [c[0] for c in pong] == ["dqn", "pqn", "dqn (before the rule)"]
    assert all(c[5] == "0" and int(c[2]) > 0 for c in pong)  # every Pong row really stepped
