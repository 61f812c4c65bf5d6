"""For the atarictl tests: a state dir with real store rows and run dirs, and the
atarictl process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from daemon.store import Store
from trainer.checkpoint import encode


def populate_state(state: Path, now: float | None = None, db: Path | str | None = None) -> Path:
    """A state dir as the daemon leaves it: the real Store schema with a few rows of every kind,
    and run dirs with real (checksummed) trainer checkpoint files. ``db``: another store target
    than the state dir's SQLite file (a PostgreSQL URL)."""
    now = time.time() if now is None else now
    state.mkdir(parents=True, exist_ok=True)
    store = Store.open(db or state / "atari.db")
    try:
        store.record_boot("b00tid-1", now - 7200, reason="first boot", previous_boot_id=None)
        store.record_boot(
            "b00tid-2",
            now - 600,
            reason="reboot: b00tid-1 -> b00tid-2",
            previous_boot_id="b00tid-1",
            downtime_s=42.0,
            previous_clean_shutdown=False,
        )
        run = store.daemon_started(pid=999_999, boot_id="b00tid-2", at=now - 500)
        store.daemon_stopped(run, now - 60, clean=True)
        store.save_level_state(state="light", entered_at=now - 500, pinned=None, updated_at=now)
        store.record_decision(now - 400, "level", "stable for 10m", None, "light", "medium")
        store.record_decision(now - 300, "process", "exit 1", "Pong", "RUNNING", "BACKOFF")
        store.upsert_game(
            "Pong",
            state="STOPPED",
            target=5,
            episodes=3,
            best_return=-20.5,
            avg100=-20.9,
            episodes_per_hour=12.0,
            last_checkpoint_time=now - 90,
        )
        store.upsert_game(
            "CartPole-v1",
            state="DONE",
            target=300,
            episodes=300,
            best_return=180.0,
            avg100=175.5,
            episodes_per_hour=900.0,
        )
        rid = store.run_started(
            "Pong", 4242, now - 450, level="light", num_envs=4, batch_size=32, proc_start_time=None
        )
        store.run_ended(rid, now - 300, exit_code=1, signal=None, reason="crash")
        store.upsert_model(
            "Pong",
            "best",
            episode=3,
            return_=-20.5,
            at=now - 100,
            path=str(state / "runs/Pong/best.pt"),
        )
    finally:
        store.close()
    for game, eps in (("Pong", 3), ("CartPole-v1", 300)):
        run_dir = state / "runs" / game
        (run_dir / "checkpoints").mkdir(parents=True)
        for seq in (1, 2):
            (run_dir / "checkpoints" / f"ckpt-{seq:09d}.pt").write_bytes(
                encode({"episodes": eps, "seq": seq})
            )
        (run_dir / "best.pt").write_bytes(encode({"best": True}))
        (run_dir / "progress.json").write_text(json.dumps({"game": game, "episodes": eps}))
        (run_dir / "episodes.jsonl").write_text(
            "".join(json.dumps({"episode": i + 1, "return": 1.0}) + "\n" for i in range(eps))
        )
    return state


def atarictl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.atarictl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
