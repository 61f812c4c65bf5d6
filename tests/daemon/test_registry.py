"""The model registry reads real trainer model files (written by ``trainer.checkpoint``, with real
tensors) without torch, and writes the store only when something changed. The real trainer's
files are covered by tests/daemon/test_integration.py (CartPole reaching DONE)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from daemon.process import State
from daemon.registry import ModelRegistry, read_metadata
from daemon.store import Store
from tests.support.fake_os import ManagerParts, build_manager, pid
from tests.support.profiles import MANAGER_PROFILE
from trainer import checkpoint


def trainer_state(episodes: int, window: list[float], at: float) -> dict[str, Any]:
    """What ``trainer/train.py`` saves, with real tensors, optimizer and RNG states."""
    q = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(q.parameters())
    q(torch.zeros(1, 4)).sum().backward()
    opt.step()
    return {
        "version": 1, "config": {"game": "CartPole-v1", "run_dir": "/x"},
        "q": q.state_dict(), "target": q.state_dict(), "optim": opt.state_dict(),
        "counters": {"env_steps": 100 * episodes, "updates": 3, "last_sync": 0},
        "stats": {"episodes": episodes, "window": window, "best": max(window)},
        "epsilon": 0.5,
        "rng": {"numpy": np.random.default_rng(1).bit_generator.state,
                "torch": torch.get_rng_state()},
        "best_weights": {k: v.clone() for k, v in q.state_dict().items()}, "time": at,
    }  # fmt: skip


def write_best(run: Path, episodes: int, score: float) -> Path:
    weights = torch.nn.Linear(4, 2).state_dict()
    blob = checkpoint.encode({"q": weights, "avg100": score, "episodes": episodes,
                              "env_id": "CartPole-v1", "obs_shape": (4,), "num_actions": 2,
                              "config": {"game": "CartPole-v1"}})  # fmt: skip
    checkpoint.write_atomic(run / "best.pt", blob)
    return run / "best.pt"


def test_best_and_latest_are_read_without_torch_and_written_only_on_change(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "CartPole-v1"
    ckpts = run / "checkpoints"
    checkpoint.save(ckpts, trainer_state(10, [10.0, 20.0], 1000.0), keep=3)
    newest = checkpoint.save(ckpts, trainer_state(25, [20.0, 40.0, 60.0], 2000.0), keep=3)
    best = write_best(run, 25, 40.0)
    store = Store.open(tmp_path / "atari.db")
    reg = ModelRegistry(store)

    assert sorted(reg.update("CartPole-v1", run)) == ["best", "latest"]
    rows = {r["kind"]: r for r in store.models()}
    assert rows["latest"] == {"game": "CartPole-v1", "kind": "latest", "episode": 25,
                              "return_": 40.0, "at": 2000.0, "path": str(newest)}  # fmt: skip
    mtime = best.stat().st_mtime
    assert rows["best"] == {"game": "CartPole-v1", "kind": "best", "episode": 25,
                            "return_": 40.0, "at": mtime, "path": str(best)}  # fmt: skip

    # Nothing changed: no write, neither from this registry nor from a restarted daemon's.
    assert reg.update("CartPole-v1", run) == []
    assert ModelRegistry(store).update("CartPole-v1", run) == []

    # A new checkpoint moves latest; best.pt is untouched.
    newer = checkpoint.save(ckpts, trainer_state(30, [50.0], 3000.0), keep=3)
    assert reg.update("CartPole-v1", run) == ["latest"]
    assert {r["kind"]: r["path"] for r in store.models()}["latest"] == str(newer)

    # A corrupt newest checkpoint is skipped, as the trainer's loader skips it.
    newest_again = checkpoint.save(ckpts, trainer_state(35, [70.0], 4000.0), keep=3)
    data = bytearray(newest_again.read_bytes())
    data[-10] ^= 0xFF
    newest_again.write_bytes(bytes(data))
    assert reg.update("CartPole-v1", run) == []  # still the previous valid one
    assert {r["kind"]: r["path"] for r in store.models()}["latest"] == str(newer)

    # A re-exported best.pt (new score) is picked up.
    write_best(run, 35, 55.5)
    assert reg.update("CartPole-v1", run) == ["best"]
    assert {r["kind"]: r["return_"] for r in store.models()}["best"] == 55.5


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:20], "truncated header"),
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:-1], "header says"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
    ],
)
def test_a_damaged_model_file_is_unreadable_with_the_trainers_reasons(
    tmp_path: Path, damage: Any, message: str
) -> None:
    from daemon.registry import Unreadable

    path = write_best(tmp_path, 1, 1.0)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(Unreadable, match=message):
        read_metadata(path)


def test_the_daemon_reads_model_files_without_importing_torch(tmp_path: Path) -> None:
    path = write_best(tmp_path, 7, 3.5)
    code = (
        "import sys; from pathlib import Path; from daemon.registry import best_row; "
        f"row = best_row(Path({str(path)!r})); import daemon.app; "
        "print(row['episode'], row['return_'], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["7", "3.5", "False"]


@pytest.fixture
def env(tmp_path: Path) -> ManagerParts:
    return build_manager(tmp_path, MANAGER_PROFILE.load(tmp_path / "p.yaml"))


def test_the_process_manager_keeps_the_registry_current(env: ManagerParts) -> None:
    mgr, fake, clock, store = env
    mgr.tick()
    clock.advance(5)
    mgr.tick()
    assert mgr.games["Pong"].state is State.RUNNING
    run = mgr.run_dir("Pong")
    checkpoint.save(run / "checkpoints", trainer_state(3, [-21.0, -20.0], 1500.0), keep=3)
    mgr.health()
    assert [(r["game"], r["kind"], r["episode"]) for r in store.models()] == [("Pong", "latest", 3)]
    # The final checkpoint and the best export of a stop are recorded when the trainer exits.
    mgr.stop(["Pong"])
    checkpoint.save(run / "checkpoints", trainer_state(4, [-19.0], 1600.0), keep=3)
    write_best(run, 4, -19.0)
    fake.exits[pid(mgr, "Pong")] = 0
    mgr.tick()
    assert mgr.games["Pong"].state is State.STOPPED
    got = {r["kind"]: (r["episode"], r["return_"]) for r in store.models()}
    assert got == {"latest": (4, -19.0), "best": (4, -19.0)}
