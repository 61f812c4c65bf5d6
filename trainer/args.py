"""The command line: ``Args`` (in ``trainer/contract.py``) parsed and validated once, errors as
one line. The parser is built from the dataclass, so a flag, its type and its default are written
once; a resume merges the checkpoint's config by each field's ``resume`` rule."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import math
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from trainer.contract import (
    CLASSIC_TASKS,
    FIXED,
    RESTORE,
    Args,
    ExitCode,
    bool_flag,
    flag,
)

__all__ = ["Args", "UsageError", "build_parser", "parse", "parse_given", "resume_config"]

log = logging.getLogger("trainer")


class UsageError(Exception):
    """Bad input or a refused start: carries the exit code and the one line that explains it."""

    def __init__(self, message: str, code: int = ExitCode.BAD_ARGS) -> None:
        super().__init__(message)
        self.code = int(code)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every error is exactly one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"atari-trainer: error: {message}")


def _value_type(hint: Any) -> Any:
    if isinstance(hint, types.UnionType):  # `float | None` parses as a float
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint


def build_parser() -> argparse.ArgumentParser:
    # No argparse defaults: the namespace holds only the flags that were given (a resume needs to
    # know which), and every default comes from the dataclass.
    p = _Parser(
        prog="atari-trainer",
        description="Double-DQN on envpool Atari games (or CartPole-v1). "
        "Run `atari-trainer bench --help` for the benchmark.",
        argument_default=argparse.SUPPRESS,
    )
    hints = typing.get_type_hints(Args)
    for f in dataclasses.fields(Args):
        help_ = f.metadata["help"]
        required = f.default is dataclasses.MISSING
        if not required:
            help_ += f" (default: {f.default})"
        kind = _value_type(hints[f.name])
        if kind is bool:
            action = "store_false" if f.default else "store_true"
            p.add_argument(bool_flag(f.name, bool(f.default)), dest=f.name, action=action,
                           help=help_)  # fmt: skip
        else:
            p.add_argument(flag(f.name), dest=f.name, type=kind, required=required,
                           choices=f.metadata.get("choices"), help=help_)  # fmt: skip
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
    raise UsageError(f"atari-trainer: unknown game {game!r} (--game){hint}", ExitCode.UNKNOWN_GAME)


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    # Written so that NaN fails too (every comparison with NaN is False); infinity is refused:
    # `--checkpoint-every inf` would mean a checkpoint only at exit.
    if (value >= 0 if allow_zero else value > 0) and math.isfinite(value):
        return
    if value > 0:
        need = "finite"
    else:
        need = ">= 0" if allow_zero else ">= 1" if isinstance(value, int) else "> 0"
    raise UsageError(f"atari-trainer: error: {name} must be {need}, got {value}")


def validate(a: Args) -> Args:
    """Value checks that need no envpool (a resume re-checks the merged config with these)."""
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
    _positive("--lr-decay-steps", a.lr_decay_steps, allow_zero=True)
    if a.rollout_steps is not None:
        _positive("--rollout-steps", a.rollout_steps)
    if not 0 <= a.q_lambda <= 1:  # also false for NaN
        raise UsageError(f"atari-trainer: error: --q-lambda must be in [0, 1], got {a.q_lambda}")
    _positive("--threads", a.threads, allow_zero=True)
    _positive("--env-threads", a.env_threads, allow_zero=True)
    if not 0 < a.gamma <= 1:  # also false for NaN
        raise UsageError(f"atari-trainer: error: --gamma must be in (0, 1], got {a.gamma}")
    for name, v in (("--eps-start", a.eps_start), ("--eps-end", a.eps_end)):
        if not 0 <= v <= 1:
            raise UsageError(f"atari-trainer: error: {name} must be in [0, 1], got {v}")
    if a.stop_avg100 is not None and not math.isfinite(a.stop_avg100):
        raise UsageError(f"atari-trainer: error: --stop-avg100 must be finite, got {a.stop_avg100}")
    if a.max_env_steps is not None:
        _positive("--max-env-steps", a.max_env_steps)
    if a.max_seconds is not None:
        _positive("--max-seconds", a.max_seconds)
    # The buffer-size check needs the frame size, so it lives in replay.capacity_for().
    return a


def parse_given(argv: list[str]) -> tuple[Args, frozenset[str]]:
    """The validated ``Args`` and the names of the fields given on the command line."""
    given = vars(build_parser().parse_args(argv))
    args = validate(Args(**given))
    check_game(args.game)
    return args, frozenset(given)


def parse(argv: list[str]) -> Args:
    return parse_given(argv)[0]


def resume_config(
    args: Args, saved: Mapping[str, Any], given: Collection[str] | None, run_dir: Path
) -> Args:
    """The config a resume runs with. A flag on the command line wins (logged when it changes
    the run's value); a ``restore`` field that was not given takes the checkpoint's value, so a
    manual resume without the original flags continues the same run; a ``fixed`` field that
    differs is refused with one line naming both values. ``given=None``: every field was given
    (a direct caller of ``train.main`` built ``args`` on purpose)."""
    where = run_dir / "checkpoints"
    if saved.get("game", args.game) != args.game:
        raise UsageError(
            f"atari-trainer: error: --run-dir {run_dir} holds checkpoints of "
            f"{saved['game']!r}, not {args.game!r}; use another --run-dir"
        )
    changes: dict[str, Any] = {}
    notes: list[str] = []  # logged only once nothing is refused: a refusal is one line
    for f in dataclasses.fields(Args):
        rule, name = f.metadata["resume"], f.name
        if name not in saved or saved[name] == getattr(args, name):
            continue
        ours, theirs = getattr(args, name), saved[name]
        if rule == FIXED and given is not None and name not in given:
            # Not given: the run's own value (a manual resume need not repeat --algo/--hidden).
            notes.append(f"resume: {flag(name)} {theirs} restored from the checkpoint")
            changes[name] = theirs
            continue
        if rule == FIXED:
            raise UsageError(
                f"atari-trainer: error: {flag(name)} {ours} conflicts with {flag(name)} {theirs} "
                f"of the checkpoints in {where} (it cannot change on resume); pass "
                f"{flag(name)} {theirs} or use another --run-dir"
            )
        if rule != RESTORE:
            continue
        if given is None or name in given:
            notes.append(f"resume: {flag(name)} {ours} given (the checkpoint ran with {theirs})")
        else:
            notes.append(f"resume: {flag(name)} {theirs} restored from the checkpoint")
            changes[name] = theirs
    merged = validate(dataclasses.replace(args, **changes)) if changes else args
    for note in notes:
        log.info("%s", note)
    return merged
