"""`atari-trainer bench --quick` prints its three tables (shape only, never speed)."""

from __future__ import annotations

import re

import pytest
from trainer_testlib import run

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
