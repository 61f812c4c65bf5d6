"""Trainer settings: one frozen dataclass, parsed and validated once, errors as one line."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_ARGS = 2
EXIT_UNKNOWN_GAME = 3
EXIT_RUN_DIR = 4

CLASSIC_TASKS = ("CartPole-v1",)


class UsageError(Exception):
    """Bad input: carries the exit code and the one line that explains it."""

    def __init__(self, message: str, code: int = EXIT_BAD_ARGS) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Args:
    game: str
    episodes: int
    run_dir: Path
    num_envs: int = 8
    batch_size: int = 32
    device: str = "auto"
    seed: int = 1
    checkpoint_every: float = 90.0
    keep_checkpoints: int = 3
    progress_every: float = 2.0
    buffer_gb: float = 7.0
    replay_ratio: float = 8.0
    learning_starts: int = 80_000
    lr: float = 1e-4
    adam_eps: float = 1.5e-4
    gamma: float = 0.99
    n_step: int = 3
    target_update: int = 32_000
    eps_start: float = 1.0
    eps_end: float = 0.01
    eps_decay_steps: int = 1_000_000
    max_grad_norm: float = 10.0
    hidden: int = 256
    threads: int = 0
    env_threads: int = 0
    stop_avg100: float | None = None
    max_env_steps: int | None = None
    max_seconds: float | None = None
    overlap: bool = True

    @property
    def env_id(self) -> str:
        return self.game if self.game in CLASSIC_TASKS else f"{self.game}-v5"

    @property
    def is_atari(self) -> bool:
        return self.game not in CLASSIC_TASKS

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every error is exactly one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"atari-trainer: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="atari-trainer",
        description="Double-DQN on envpool Atari games (or CartPole-v1). "
        "Run `atari-trainer bench --help` for the benchmark.",
    )
    d = Args(game="", episodes=0, run_dir=Path())
    p.add_argument("--game", required=True, help="Atari game (Pong = Pong-v5) or CartPole-v1")
    p.add_argument("--episodes", type=int, required=True, help="target number of real episodes")
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints, progress, logs")
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=float, default=d.checkpoint_every, help="seconds")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--progress-every", type=float, default=d.progress_every, help="seconds")
    p.add_argument("--buffer-gb", type=float, default=d.buffer_gb, help="replay memory budget")
    p.add_argument(
        "--replay-ratio", type=float, default=d.replay_ratio, help="samples trained per env step"
    )
    p.add_argument("--learning-starts", type=int, default=d.learning_starts, help="transitions")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--adam-eps", type=float, default=d.adam_eps)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--n-step", type=int, default=d.n_step)
    p.add_argument(
        "--target-update", type=int, default=d.target_update, help="env steps between syncs"
    )
    p.add_argument("--eps-start", type=float, default=d.eps_start)
    p.add_argument("--eps-end", type=float, default=d.eps_end)
    p.add_argument("--eps-decay-steps", type=int, default=d.eps_decay_steps, help="env steps")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    p.add_argument("--hidden", type=int, default=d.hidden, help="MLP width (CartPole)")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch.set_num_threads; 0 = torch default (honours OMP_NUM_THREADS)",
    )
    p.add_argument("--env-threads", type=int, default=d.env_threads, help="envpool, 0 = auto")
    p.add_argument("--stop-avg100", type=float, default=None, help="also done when avg100 >= X")
    p.add_argument("--max-env-steps", type=int, default=None, help="stop after this many")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument(
        "--no-overlap",
        dest="overlap",
        action="store_false",
        help="step envs, then learn (default: learn while envpool steps)",
    )
    return p


def known_games() -> list[str]:
    import envpool

    games = [e[: -len("-v5")] for e in envpool.list_all_envs() if e.endswith("-v5")]
    return sorted(set(games)) + list(CLASSIC_TASKS)


def check_game(game: str) -> None:
    games = known_games()
    if game in games:
        return
    close = difflib.get_close_matches(game, games, n=3, cutoff=0.5)
    if not close:
        close = [g for g in games if g.lower().startswith(game.lower()[:3])][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see envpool.list_all_envs()"
    raise UsageError(f"atari-trainer: unknown game {game!r} (--game){hint}", EXIT_UNKNOWN_GAME)


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        need = ">= 0" if allow_zero else ">= 1" if isinstance(value, int) else "> 0"
        raise UsageError(f"atari-trainer: error: {name} must be {need}, got {value}")


def validate(a: Args) -> Args:
    _positive("--episodes", a.episodes)
    _positive("--num-envs", a.num_envs)
    _positive("--batch-size", a.batch_size)
    _positive("--checkpoint-every", a.checkpoint_every)
    _positive("--keep-checkpoints", a.keep_checkpoints)
    _positive("--progress-every", a.progress_every)
    _positive("--buffer-gb", a.buffer_gb)
    _positive("--replay-ratio", a.replay_ratio)
    _positive("--learning-starts", a.learning_starts, allow_zero=True)
    _positive("--lr", a.lr)
    _positive("--adam-eps", a.adam_eps)
    # A negative clip norm flips every gradient (clip_grad_norm_ scales by max_norm / norm).
    _positive("--max-grad-norm", a.max_grad_norm)
    _positive("--n-step", a.n_step)
    _positive("--target-update", a.target_update)
    _positive("--eps-decay-steps", a.eps_decay_steps)
    _positive("--hidden", a.hidden)
    _positive("--threads", a.threads, allow_zero=True)
    _positive("--env-threads", a.env_threads, allow_zero=True)
    if not 0 < a.gamma <= 1:
        raise UsageError(f"atari-trainer: error: --gamma must be in (0, 1], got {a.gamma}")
    for name, v in (("--eps-start", a.eps_start), ("--eps-end", a.eps_end)):
        if not 0 <= v <= 1:
            raise UsageError(f"atari-trainer: error: {name} must be in [0, 1], got {v}")
    if a.max_env_steps is not None:
        _positive("--max-env-steps", a.max_env_steps)
    if a.max_seconds is not None:
        _positive("--max-seconds", a.max_seconds)
    check_game(a.game)
    # The buffer-size check needs the frame size, so it lives in replay.capacity_for().
    return a


def parse(argv: list[str]) -> Args:
    ns = build_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Args)}
    return validate(Args(**{k: v for k, v in vars(ns).items() if k in fields}))
