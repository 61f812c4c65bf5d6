"""Checkpoint files: atomic, checksummed, newest K kept, corrupt ones skipped with a warning.

File layout: MAGIC (8 bytes) | sha256 of payload (32 bytes) | payload length (8 bytes, LE) |
payload (a torch.save of the state dict). A file is trusted only if all four agree.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MAGIC = b"ATRCKPT1"
_HEADER = struct.Struct("<8s32sQ")
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")

log = logging.getLogger("trainer.checkpoint")


class CorruptCheckpoint(Exception):
    pass


def encode(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return _HEADER.pack(MAGIC, hashlib.sha256(payload).digest(), len(payload)) + payload


def decode(data: bytes, where: Path) -> dict[str, Any]:
    if len(data) < _HEADER.size:
        raise CorruptCheckpoint(f"{where}: truncated header ({len(data)} bytes)")
    magic, digest, length = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if magic != MAGIC:
        raise CorruptCheckpoint(f"{where}: not a trainer checkpoint (bad magic)")
    if len(payload) != length:
        raise CorruptCheckpoint(f"{where}: {len(payload)} payload bytes, header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpoint(f"{where}: checksum mismatch")
    # The checksum proved this is our own file, so full unpickling is safe here.
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: Path, data: bytes, write: Callable[[int, bytes], None] = _write_fd) -> None:
    """temp file → fsync → rename → fsync dir. `write` is the seam tests use to fail writes."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(sequence, path) of checkpoint files, newest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save(
    ckpt_dir: Path,
    state: dict[str, Any],
    keep: int,
    write: Callable[[int, bytes], None] = _write_fd,
) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    existing = list_checkpoints(ckpt_dir)
    seq = existing[0][0] + 1 if existing else 1
    path = ckpt_dir / f"ckpt-{seq:09d}.pt"
    write_atomic(path, encode(state), write)
    for _, old in list_checkpoints(ckpt_dir)[keep:]:
        old.unlink(missing_ok=True)
    # Temp files of writers that were killed mid-write are garbage.
    for stale in ckpt_dir.glob(".ckpt-*.pt.tmp*"):
        if not stale.name.endswith(f".tmp{os.getpid()}"):
            stale.unlink(missing_ok=True)
    return path


def load_newest(ckpt_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that verifies; older ones are tried with a warning each."""
    for _, path in list_checkpoints(ckpt_dir):
        try:
            return decode(path.read_bytes(), path), path
        except (CorruptCheckpoint, OSError, EOFError, RuntimeError) as exc:
            log.warning("skipping corrupt checkpoint, falling back to the previous one: %s", exc)
    return None


def verify_main(argv: list[str]) -> int:
    """`python -m trainer.checkpoint DIR`: print which checkpoint would load (used by tests)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    got = load_newest(Path(argv[0]))
    if got is None:
        print("none")
        return 1
    state, path = got
    print(f"{path.name} env_steps={state['counters']['env_steps']}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(verify_main(sys.argv[1:]))
