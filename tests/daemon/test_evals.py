"""The daemon's eval decisions (daemon/evals.py) with a real store, real files and an injected
clock; only the process spawn is replaced (the OS boundary: the real evaluator runs under a real
daemon in tests/atarictl/test_progress.py). Which game is evaluated and when: only with an idle
slot unless ``idle_slot_only`` is off, never the same best.pt twice; what the result does: a
store row, best-eval.pt only when the mean beats the kept one, best.pt never touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.clock import FakeClock
from daemon.config.schema import EvalSettings
from daemon.evals import Evals
from daemon.side_jobs import SideJobs
from daemon.store import Store


class Spawned:
    """What the fake spawn hands back: a child that has not exited (the test ends it)."""

    pid = 4242

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def poll(self) -> int | None:
        return None


@pytest.fixture
def box(tmp_path: Path) -> Any:
    runs = tmp_path / "runs"
    (runs / "Pong").mkdir(parents=True)
    store = Store.open(tmp_path / "atari.db")
    spawned: list[Spawned] = []

    def spawn(argv: list[str], **_kw: Any) -> Spawned:
        spawned.append(Spawned(argv))
        return spawned[-1]

    jobs = SideJobs(FakeClock(), spawn=spawn)
    yield runs, store, jobs, spawned
    store.close()


def finish(jobs: SideJobs, mean: float, sha: str) -> None:
    """The evaluator's JSON result, as trainer.evaluate prints it."""
    job = jobs.jobs.pop("eval")
    result = {"game": "Pong", "episodes": 5, "seed": 0, "device": "cpu", "threads": 1,
              "model": {"path": "x", "sha256": sha, "kind": "best", "episode": 120,
                        "train_avg100": -15.0},
              "protocol": {}, "scores": [mean] * 5, "lengths": [800] * 5, "truncated": 0,
              "mean": mean, "median": mean, "std": 0.0, "min": mean, "max": mean,
              "wall_s": 3.0}  # fmt: skip
    job.on_done(0, json.dumps(result) + "\n", "")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_waits_for_an_idle_slot_then_keeps_the_best_eval(box: Any) -> None:
    runs, store, jobs, spawned = box
    run = runs / "Pong"
    evals = Evals(EvalSettings(every=60.0, episodes=5), runs, store, FakeClock(), jobs)
    (run / "best.pt").write_bytes(b"weights one")
    evals.due(["Pong"])
    evals.tick(lambda: False)
    assert spawned == [] and evals.pending == ["Pong"]  # every slot busy: it waits
    evals.tick(lambda: True)
    assert len(spawned) == 1 and evals.pending == []
    argv = spawned[0].argv
    candidate = run / "eval" / "candidate.pt"
    assert argv[argv.index("--model") + 1] == str(candidate)
    assert argv[argv.index("--episodes") + 1] == "5" and "trainer.evaluate" in argv
    assert candidate.read_bytes() == b"weights one"  # the weights measured are the ones kept
    first = sha(run / "best.pt")
    finish(jobs, -10.0, first)
    assert (run / "best-eval.pt").read_bytes() == b"weights one" and not candidate.exists()
    assert json.loads((run / "best-eval.json").read_text())["mean"] == -10.0
    [row] = store.evals(game="Pong")
    assert row["source"] == "daemon" and row["model_sha256"] == first
    assert row["human_normalized"] == pytest.approx(100 * (-10.0 + 20.7) / 30.0)

    evals.due(["Pong"])  # the same best.pt: nothing to measure
    evals.tick(lambda: True)
    assert len(spawned) == 1 and not candidate.exists()

    (run / "best.pt").write_bytes(b"weights two")  # a new best.pt that plays worse
    evals.due(["Pong"])
    evals.tick(lambda: True)
    assert len(spawned) == 2
    finish(jobs, -15.0, sha(run / "best.pt"))
    assert (run / "best-eval.pt").read_bytes() == b"weights one"
    assert (run / "best.pt").read_bytes() == b"weights two" and not candidate.exists()

    (run / "best.pt").write_bytes(b"weights three")  # and one that plays better
    evals.due(["Pong"])
    evals.tick(lambda: True)
    finish(jobs, 5.0, sha(run / "best.pt"))
    assert (run / "best-eval.pt").read_bytes() == b"weights three"
    reasons = [d["reason"] for d in store.decisions(kinds=("eval",))]
    assert len(reasons) == 2 and "new best eval 5 (was -10)" in reasons[-1]


def test_without_idle_slot_only_it_runs_beside_full_slots(box: Any) -> None:
    runs, store, jobs, spawned = box
    (runs / "Pong" / "best.pt").write_bytes(b"w")
    settings = EvalSettings(every=60.0, idle_slot_only=False, threads=3, device="cuda")
    evals = Evals(settings, runs, store, FakeClock(), jobs)
    evals.due(["Pong", "Breakout"])  # Breakout has no best.pt yet: skipped
    evals.tick(lambda: False)
    assert len(spawned) == 1 and evals.pending == ["Breakout"]
    argv = spawned[0].argv
    assert argv[argv.index("--threads") + 1] == "3" and argv[argv.index("--device") + 1] == "cuda"
    evals.tick(lambda: False)
    assert len(spawned) == 1  # one eval at a time


def test_a_failed_eval_records_nothing(box: Any) -> None:
    runs, store, jobs, _spawned = box
    (runs / "Pong" / "best.pt").write_bytes(b"w")
    evals = Evals(EvalSettings(every=60.0), runs, store, FakeClock(), jobs)
    evals.due(["Pong"])
    evals.tick(lambda: True)
    jobs.jobs.pop("eval").on_done(7, "", "atari-eval: model … is corrupt")
    assert store.evals() == [] and not (runs / "Pong" / "best-eval.pt").exists()
    assert not (runs / "Pong" / "eval" / "candidate.pt").exists()


def test_a_fleet_box_superseded_during_an_eval_writes_no_best_eval(box: Any) -> None:
    # Fleet mode: the box's fence check (daemon/fleet.py: fence_is) says whether it still holds
    # the game when the eval ends; another box's run dir is left as it is.
    from daemon.fleet import fence_is, write_fence

    runs, store, jobs, _spawned = box
    run = runs / "Pong"
    (run / "best.pt").write_bytes(b"w")
    write_fence(run, 3)
    evals = Evals(EvalSettings(every=60.0), runs, store, FakeClock(), jobs)
    evals.may_write = lambda game: fence_is(runs / game, 3)
    evals.due(["Pong"])
    evals.tick(lambda: True)
    write_fence(run, 4)  # another box claimed Pong meanwhile
    finish(jobs, -10.0, sha(run / "best.pt"))
    assert not (run / "best-eval.pt").exists() and not (run / "eval" / "candidate.pt").exists()
    assert len(store.evals()) == 1  # the measurement itself is recorded
    assert fence_is(run, 4) and not fence_is(run, None) and not fence_is(runs / "Nope", 4)
