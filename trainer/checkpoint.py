"""Checkpoint files: atomic, framed and checksummed (``trainer/contract.py``), newest K kept.

A checkpoint is data, never a program: payloads load with ``torch.load(weights_only=True)``, which
builds only tensors and plain containers and refuses any other pickled object without running
it. The checksum is unkeyed; it detects damage, not tampering (docs/trainer.md says what a
checkpoint is trusted for). Loading tells three cases apart:

- a file that fails its frame check (truncated, half-written, checksum) is damaged: warn and try
  the previous one;
- a file that verifies but does not load (a torch upgrade, a foreign pickle) is
  ``UnloadableCheckpoint``: the run stops FATAL and nothing is deleted, because an older file
  would silently throw away the newest progress;
- checkpoint files exist but none verifies: ``NoValidCheckpoint``, FATAL unless the caller allows
  a fresh start.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.args import UsageError
from trainer.contract import (
    CHECKPOINT_NAME,
    BadFrame,
    ExitCode,
    checkpoint_name,
    frame,
    unframe,
)
from trainer.rundir import write_atomic, write_fd

__all__ = ["CorruptCheckpoint", "NoValidCheckpoint", "UnloadableCheckpoint", "decode", "encode",
           "list_checkpoints", "load_newest", "save", "write_atomic"]  # fmt: skip

log = logging.getLogger("trainer.checkpoint")


class CorruptCheckpoint(Exception):
    """Damaged: the frame check failed. An older checkpoint may be used instead."""


class UnloadableCheckpoint(UsageError):
    """Intact (the checksum agrees) but torch cannot or will not load it."""


class NoValidCheckpoint(UsageError):
    """Checkpoint files exist, but every one of them is damaged."""


def encode(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return frame(buf.getvalue())


def decode(data: bytes, where: Path) -> dict[str, Any]:
    try:
        payload = unframe(data, where)
    except BadFrame as exc:
        raise CorruptCheckpoint(str(exc)) from None
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise unloadable(where, exc) from exc
    if not isinstance(state, dict):
        raise unloadable(where, f"holds a {type(state).__name__}, not a dict")
    return state


def unloadable(where: Path, why: BaseException | str) -> UnloadableCheckpoint:
    if isinstance(why, BaseException):  # torch's messages span many lines: keep the first
        lines = str(why).strip().splitlines()
        why = f"{type(why).__name__}: {lines[0] if lines else ''}"[:200]
    return UnloadableCheckpoint(
        f"atari-trainer: checkpoint {where} passed its checksum but cannot be loaded ({why}); "
        "nothing was deleted: move it aside to resume from the previous checkpoint",
        ExitCode.CHECKPOINT_UNLOADABLE,
    )


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(sequence, path) of checkpoint files, newest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = CHECKPOINT_NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save(
    ckpt_dir: Path,
    state: dict[str, Any],
    keep: int,
    write: Callable[[int, bytes], None] = write_fd,
) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    existing = list_checkpoints(ckpt_dir)
    seq = existing[0][0] + 1 if existing else 1
    path = ckpt_dir / checkpoint_name(seq)
    write_atomic(path, encode(state), write)
    for _, old in list_checkpoints(ckpt_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_newest(ckpt_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that verifies (damaged newer ones skipped with a warning each);
    None when there is none at all. Raises ``UnloadableCheckpoint`` or ``NoValidCheckpoint``."""
    found = list_checkpoints(ckpt_dir)
    for _, path in found:
        try:
            return decode(path.read_bytes(), path), path
        except (CorruptCheckpoint, OSError) as exc:
            log.warning("skipping corrupt checkpoint, falling back to the previous one: %s", exc)
    if not found:
        return None
    raise NoValidCheckpoint(
        f"atari-trainer: every checkpoint in {ckpt_dir} is corrupt ({len(found)} files; newest "
        f"{found[0][1].name}); nothing was deleted; pass --allow-fresh to start from scratch",
        ExitCode.NO_VALID_CHECKPOINT,
    )


def verify_main(argv: list[str]) -> int:
    """`python -m trainer.checkpoint DIR`: print which checkpoint would load (used by tests)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        got = load_newest(Path(argv[0]))
    except UsageError as exc:
        print(exc)
        return exc.code
    if got is None:
        print("none")
        return 1
    state, path = got
    print(f"{path.name} env_steps={state['counters']['env_steps']}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(verify_main(sys.argv[1:]))
