"""`atarictl tail`: the last lines of a game's trainer log, optionally following it.

Follows across rotation (the daemon rotates `<Game>.log` to `<Game>.log.1`): when the path's
inode changes or the file shrinks, the new file is read from its start.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def last_lines(path: Path, n: int) -> tuple[list[str], int]:
    """The last n lines and the byte offset where reading should continue."""
    with open(path, "rb") as f:
        lines = deque((raw.decode("utf-8", "replace") for raw in f), maxlen=n) if n > 0 else []
        return list(lines), f.tell()


def follow(
    path: Path,
    offset: int,
    out: TextIO = sys.stdout,
    *,
    poll: float = 0.5,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    ino = os.stat(path).st_ino
    f = open(path, "rb")  # noqa: SIM115 - reopened on rotation, closed in finally
    try:
        f.seek(offset)
        partial = b""
        while not should_stop():
            chunk = f.read(65536)
            if chunk:
                data = partial + chunk
                cut = data.rfind(b"\n") + 1
                out.write(data[:cut].decode("utf-8", "replace"))
                out.flush()
                partial = data[cut:]
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                time.sleep(poll)  # between rotate and re-create
                continue
            if st.st_ino != ino or st.st_size < f.tell():
                f.close()
                f = open(path, "rb")  # noqa: SIM115
                ino = st.st_ino
                partial = b""
                continue
            time.sleep(poll)
    finally:
        f.close()
