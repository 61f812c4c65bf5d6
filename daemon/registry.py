"""The model registry: each game's ``best`` and ``latest`` model in the store's ``models`` table.

The trainer writes ``<run-dir>/checkpoints/ckpt-N.pt`` and ``<run-dir>/best.pt`` in the framing of
``trainer/contract.py`` (MAGIC | sha256 | length | ``torch.save`` payload, see docs/trainer.md).
The daemon must stay light (no torch: ~54 MB RSS), so it reads them with the standard library:
the contract's streamed frame check decides validity exactly as the trainer's loader does, and
the payload's ``data.pkl`` (a small pickle; the tensors live in other zip members and are never
read) is unpickled by a restricted unpickler that imports nothing and turns every tensor into a
placeholder. ``data.pkl`` is read only up to ``MAX_PICKLE_BYTES`` decompressed (a zip member can
inflate a thousandfold), and any failure makes the file ``Unreadable``. That gives the exact
episode count, avg100 and time of each file, which progress.json (rewritten after every
checkpoint, read up to a health interval later) cannot.

``latest``: the newest checkpoint that verifies: ``episode`` = its episode count, ``return_`` = its
avg100 (mean of the window it holds), ``at`` = its ``time``. ``best``: ``best.pt``: ``episode`` =
the episode count when it was exported, ``return_`` = its avg100 score, ``at`` = the file's mtime.
A file is read again only when its (inode, size, mtime) changes, failures included (a bad file is
read and logged once per version, not on every health check), and a row is written only when it
differs from what the store holds (every commit is an fsync).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import structlog

from daemon.store import Store
from trainer.contract import BEST_FILE, CHECKPOINT_DIR, CHECKPOINT_NAME, BadFrame, check_frame

log = structlog.get_logger("daemon.registry")

# A trainer's data.pkl is a few kB (tensors are separate zip members); 8 MiB is generous.
MAX_PICKLE_BYTES = 8 << 20

# (inode, size, mtime_ns): the trainer replaces files by rename, so a new file is a new inode
Ident = tuple[int, int, int]
Row = dict[str, Any]


class Unreadable(Exception):
    """A model file that fails the trainer's own checks (or is not a torch.save dict)."""


class _Opaque:
    """Stands for anything but plain data in the pickle (tensors, storages, torch types)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _MetadataUnpickler(pickle.Unpickler):
    # Never imports a module: loading torch here would cost the daemon hundreds of MB.
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        return None  # tensor storages: the data is not needed


def read_metadata(path: Path) -> dict[str, Any]:
    """The dict a trainer model file holds, tensors replaced by placeholders; ``Unreadable`` when
    its frame does not verify (the trainer would skip it too) or its payload is not a small
    ``torch.save`` dict."""
    with open(path, "rb") as f:
        try:
            check_frame(f, path)  # streamed: a 27 MB checkpoint never sits in memory
        except BadFrame as e:
            raise Unreadable(str(e)) from None
        try:
            # zipfile finds the archive behind the 48-byte header (like a self-extractor).
            with zipfile.ZipFile(f) as zf:
                pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                with zf.open(pkl) as member:  # read() stops at the bound whatever the header says
                    raw = member.read(MAX_PICKLE_BYTES + 1)
                if len(raw) > MAX_PICKLE_BYTES:
                    raise Unreadable(f"{path}: data.pkl larger than {MAX_PICKLE_BYTES} bytes")
                data = _MetadataUnpickler(io.BytesIO(raw)).load()
        except Unreadable:
            raise
        except StopIteration:
            raise Unreadable(f"{path}: not a torch.save archive (no data.pkl)") from None
        except Exception as e:  # any pickle or zip failure: hostile bytes raise anything
            raise Unreadable(f"{path}: not a torch.save archive ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise Unreadable(f"{path}: holds a {type(data).__name__}, not a dict")
    return data


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def latest_row(path: Path) -> Row:
    data = read_metadata(path)
    stats = data.get("stats") if isinstance(data.get("stats"), dict) else {}
    window = [float(x) for x in stats.get("window") or [] if _number(x) is not None]
    episodes = stats.get("episodes")
    return {
        "episode": episodes if isinstance(episodes, int) else None,
        "return_": sum(window) / len(window) if window else None,
        "at": _number(data.get("time")) or path.stat().st_mtime,
        "path": str(path),
    }


def best_row(path: Path) -> Row:
    data = read_metadata(path)
    episodes = data.get("episodes")
    return {
        "episode": episodes if isinstance(episodes, int) else None,
        "return_": _number(data.get("avg100")),
        "at": path.stat().st_mtime,  # best.pt records no time of its own
        "path": str(path),
    }


def _ident(path: Path) -> Ident | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class ModelRegistry:
    """Keeps the ``models`` table current; ``update(game, run_dir)`` is called by the process
    manager wherever it reads the game's progress.json (health check, exit, restore)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rows: dict[tuple[str, str], Row] = {
            (r["game"], r["kind"]): {k: r[k] for k in ("episode", "return_", "at", "path")}
            for r in store.models()
        }
        # Per file: its identity when last read and what it gave (None: unreadable).
        self._files: dict[Path, tuple[Ident, Row | None]] = {}

    def update(self, game: str, run_dir: Path) -> list[str]:
        """Read what changed in ``run_dir``; returns the kinds written to the store."""
        run_dir = run_dir.absolute()
        found = {"latest": self._newest_valid(run_dir / CHECKPOINT_DIR),
                 "best": self._read(run_dir / BEST_FILE, best_row)}  # fmt: skip
        written = []
        for kind, row in found.items():
            if row is None or self.rows.get((game, kind)) == row:
                continue
            self.store.upsert_model(game, kind, **row)
            self.rows[(game, kind)] = row
            written.append(kind)
            # A new best model is news; a new latest checkpoint comes every checkpoint_every and
            # would flood the journal at info.
            emit = log.info if kind == "best" else log.debug
            emit("model registry", game=game, kind=kind, episode=row["episode"],
                 avg100=row["return_"], path=row["path"])  # fmt: skip
        return written

    def _newest_valid(self, ckpt_dir: Path) -> Row | None:
        try:
            names = [p.name for p in ckpt_dir.iterdir()]
        except OSError:
            return None
        ckpts = sorted((n for n in names if CHECKPOINT_NAME.match(n)), reverse=True)
        # Files the trainer rotated away are forgotten, so the cache stays as small as the dir.
        for stale in [p for p in self._files if p.parent == ckpt_dir and p.name not in ckpts]:
            del self._files[stale]
        for name in ckpts:
            row = self._read(ckpt_dir / name, latest_row)
            if row is not None:
                return row
        return None

    def _read(self, path: Path, reader: Any) -> Row | None:
        ident = _ident(path)
        if ident is None:
            return None
        cached = self._files.get(path)
        if cached is not None and cached[0] == ident:
            return cached[1]
        row: Row | None
        try:
            row = reader(path)
        except FileNotFoundError:
            return None  # rotated away between listing and reading: look again next time
        except Exception as e:
            # Every failure is cached with the file's identity, so it is read and logged once
            # per file version; the previous checkpoint counts instead, as on resume.
            reason = str(e) if isinstance(e, Unreadable) else f"{path}: {type(e).__name__}: {e}"
            log.warning("model file skipped", reason=reason[:300])
            row = None
        self._files[path] = (ident, row)
        return row
