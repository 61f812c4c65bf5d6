"""Evals the daemon runs itself (profile ``eval:``), decided in the main loop.

The ``eval`` check (every ``eval.every``) only queues the games; each loop pass then starts at
most one eval when the profile allows it: with ``idle_slot_only`` (the default) only while the
level has a free slot (fewer trainers than its ``games``), else at any time within the eval's own
budget (``eval.threads`` CPU threads, ``eval.device``). The eval is ``python -m trainer.evaluate``
as a side job (``daemon/side_jobs.py``), niced and thread-bounded; the daemon never loads torch.

A game is evaluated when its ``best.pt`` changed since its last eval (compared by sha256). The
daemon first copies best.pt to ``<run>/eval/candidate.pt`` and evaluates that copy, so the
weights measured are the weights kept: when the mean beats the game's ``best-eval.pt`` (its
score in ``best-eval.json``), the copy is renamed over ``best-eval.pt``. best.pt (the training
avg100 peak) is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.clock import Clock
from daemon.config.schema import EvalSettings
from daemon.paths import fsync_dir
from daemon.scores import human_normalized
from daemon.side_jobs import SideJobs
from daemon.store import Store, StoreError
from trainer.contract import BEST_EVAL_FILE, BEST_EVAL_INFO, BEST_FILE

log = structlog.get_logger("daemon.evals")

EVAL_DIR = "eval"
CANDIDATE = "candidate.pt"


def _sha256_copy(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` (fsynced) and return the sha256 of exactly the bytes copied."""
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fi, dst.open("wb") as fo:
        while chunk := fi.read(1 << 20):
            h.update(chunk)
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest()


def best_eval_info(run_dir: Path) -> dict[str, Any] | None:
    if not (run_dir / BEST_EVAL_FILE).is_file():
        return None
    try:
        info = json.loads((run_dir / BEST_EVAL_INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("mean"), int | float) else None


class Evals:
    def __init__(
        self, settings: EvalSettings, runs_dir: Path, store: Store, clock: Clock, jobs: SideJobs
    ) -> None:
        self.settings, self.runs_dir, self.store = settings, runs_dir, store
        self.clock, self.jobs = clock, jobs
        self.pending: list[str] = []
        # Fleet mode: whether this box may still write into the game's run dir (its fence
        # holds this box's token); one box alone always may.
        self.may_write: Callable[[str], bool] = lambda _game: True

    @property
    def enabled(self) -> bool:
        return self.settings.every is not None

    def due(self, games: list[str]) -> None:
        """The eval check: queue every game (each is skipped at its turn if its best.pt has not
        changed since its last eval)."""
        for g in games:
            if g not in self.pending:
                self.pending.append(g)

    def tick(self, idle_slot: Callable[[], bool]) -> None:
        """Every loop pass: start the next queued eval when the profile allows it now."""
        if not self.pending or self.jobs.running("eval"):
            return
        if self.settings.idle_slot_only and not idle_slot():
            return  # waits for a free slot; the queue keeps its games
        while self.pending:
            game = self.pending.pop(0)
            if self._start(game):
                return

    def _start(self, game: str) -> bool:
        run = self.runs_dir / game
        best = run / BEST_FILE
        if not best.is_file():
            return False
        candidate = run / EVAL_DIR / CANDIDATE
        try:
            sha = _sha256_copy(best, candidate)
        except OSError as e:
            log.warning("eval skipped: cannot copy best.pt", game=game, error=str(e))
            return False
        last = self.store.evals(game=game, limit=1)
        if last and last[-1]["model_sha256"] == sha:
            candidate.unlink(missing_ok=True)
            return False
        s = self.settings
        argv = [
            "trainer.evaluate",
            "--model",
            str(candidate),
            "--game",
            game,
            "--episodes",
            str(s.episodes),
            "--threads",
            str(s.threads),
            "--device",
            s.device,
            "--seed",
            "0",
        ]
        return self.jobs.start(
            "eval",
            game,
            argv,
            timeout=s.timeout,
            threads=s.threads,
            on_done=lambda rc, out, err: self._done(game, rc, out, err),
        )

    def _done(self, game: str, rc: int, out: str, err: str) -> None:
        run = self.runs_dir / game
        candidate = run / EVAL_DIR / CANDIDATE
        if rc != 0:
            log.warning("eval failed", game=game, exit_code=rc, error=err)
            candidate.unlink(missing_ok=True)
            return
        r = json.loads(out.strip().splitlines()[-1])
        now = self.clock.now()
        m = r["model"]
        hn = human_normalized(game, r["mean"])
        try:
            eval_id = self.store.record_eval(
                at=now,
                game=game,
                model_kind="best",
                model_path=str(run / BEST_FILE),
                model_sha256=m["sha256"],
                model_episode=m["episode"],
                train_avg100=m["train_avg100"],
                episodes=r["episodes"],
                mean=r["mean"],
                median=r["median"],
                std=r["std"],
                min=r["min"],
                max=r["max"],
                human_normalized=hn,
                seed=r["seed"],
                wall_s=r["wall_s"],
                device=r["device"],
                source="daemon",
                detail={k: r[k] for k in ("protocol", "scores", "lengths", "truncated", "threads")},
            )
        except StoreError as e:
            log.warning("eval done but not recorded", game=game, error=str(e))
            eval_id = None
        prev = best_eval_info(run)
        better = prev is None or r["mean"] > prev["mean"]
        log.info(
            "eval",
            game=game,
            mean=r["mean"],
            std=r["std"],
            episodes=r["episodes"],
            model_episode=m["episode"],
            human_normalized=hn,
            wall_s=round(r["wall_s"], 1),
            new_best_eval=better,
        )
        if not better:
            candidate.unlink(missing_ok=True)
            return
        info = {
            "mean": r["mean"],
            "std": r["std"],
            "episodes": r["episodes"],
            "sha256": m["sha256"],
            "model_episode": m["episode"],
            "eval_id": eval_id,
            "at": now,
        }
        if not self.may_write(game):
            log.warning("eval result not copied: another box holds the game now (its run dir's "
                        "fence holds a newer token)", game=game)  # fmt: skip
            candidate.unlink(missing_ok=True)
            return
        tmp = run / f".{BEST_EVAL_INFO}.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(candidate, run / BEST_EVAL_FILE)
        os.replace(tmp, run / BEST_EVAL_INFO)
        fsync_dir(run)
        was = "none" if prev is None else f"{prev['mean']:g}"
        with contextlib.suppress(StoreError):
            self.store.record_decision(
                now,
                "eval",
                f"new best eval {r['mean']:g} (was {was}): best.pt of episode "
                f"{m['episode']} copied to {BEST_EVAL_FILE}",
                game,
                None,
                None,
            )
