"""`atarictl doctor`: a preflight for a new box; works without a running daemon.

Each check returns OK, WARN or FAIL with one line of detail and, unless OK, one line saying how
to fix it. Checks never raise: an unexpected exception becomes that check's FAIL line.
"""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from daemon.atarictl.client import Client
from daemon.paths import Dirs

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CHECKPOINTS_KEPT = 3


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


class _Ctx:
    def __init__(self, paths: Dirs, profile_path: Path) -> None:
        self.paths = paths
        self.profile_path = profile_path
        self.profile: Any = None  # set by the profile check, used by the resource checks
        self.cuda = False


def _python(ctx: _Ctx) -> Check:
    v = sys.version_info
    text = f"Python {platform.python_version()} at {sys.executable}"
    if v < (3, 11):
        return Check("python", FAIL, text, "install Python 3.11 or newer and recreate the venv")
    return Check("python", OK, text)


def _profile(ctx: _Ctx) -> Check:
    from daemon.config import ProfileError, load_profile

    try:
        ctx.profile = load_profile(ctx.profile_path)
    except ProfileError as exc:
        return Check("profile", FAIL, str(exc), "edit the profile at the named line")
    levels = ", ".join(lv.name for lv in ctx.profile.levels)
    games = len(ctx.profile.games)
    return Check("profile", OK, f"{ctx.profile_path}: {games} games, levels {levels}")


def _torch(ctx: _Ctx) -> Check:
    import torch

    ctx.cuda = bool(torch.cuda.is_available())
    wants_cuda = ctx.profile is not None and str(ctx.profile.device).startswith("cuda")
    if ctx.cuda:
        name = torch.cuda.get_device_name(0)
        return Check("torch", OK, f"torch {torch.__version__}, CUDA {torch.version.cuda}: {name}")
    detail = f"torch {torch.__version__} without CUDA (built for {torch.version.cuda or 'CPU'})"
    fix = (
        "install the CUDA build of torch 2.13.0 matching the driver (see README), or run CPU "
        "profiles only"
    )
    return Check("torch", FAIL if wants_cuda else WARN, detail, fix)


def _nvml(ctx: _Ctx) -> Check:
    import pynvml

    wants_cuda = ctx.profile is not None and str(ctx.profile.device).startswith("cuda")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Check(
            "nvml",
            FAIL if wants_cuda else WARN,
            f"NVML unavailable ({exc}): no GPU telemetry",
            "install the NVIDIA driver (libnvidia-ml.so) on a GPU box; ignore on a CPU box",
        )
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    driver = driver.decode() if isinstance(driver, bytes) else driver
    return Check("nvml", OK, f"driver {driver}, {count} GPU(s)")


def _envpool(ctx: _Ctx) -> Check:
    import envpool

    from daemon.config import envpool_task

    game = "Pong"
    if ctx.profile is not None:
        atari = [g.name for g in ctx.profile.games if not g.name.startswith("CartPole")]
        game = atari[0] if atari else ctx.profile.games[0].name
    task = envpool_task(game) or "Pong-v5"
    try:
        env = envpool.make(task, env_type="gym", num_envs=1)
        env.reset()
        env.close()
    except Exception as exc:
        return Check(
            "envpool",
            FAIL,
            f"envpool {envpool.__version__} cannot make {task}: {exc}",
            "reinstall envpool (pip install --force-reinstall envpool>=1.2.5); ROMs ship with it",
        )
    return Check("envpool", OK, f"envpool {envpool.__version__}: made {task} and reset it")


def _largest_level(ctx: _Ctx) -> tuple[str, float] | None:
    if ctx.profile is None:
        return None
    p = ctx.profile
    lv = max(p.levels, key=lambda lv: lv.memory_gib(p.level_algo(lv)))
    return lv.name, lv.memory_gib(p.level_algo(lv))


def _memory(ctx: _Ctx) -> Check:
    vm = psutil.virtual_memory()
    total, avail = vm.total / 2**30, vm.available / 2**30
    big = _largest_level(ctx)
    if big is None:
        return Check("ram", WARN, f"{avail:.1f} of {total:.1f} GiB free", "fix the profile first")
    name, need = big
    detail = f"{avail:.1f} of {total:.1f} GiB free; level {name} needs about {need:.1f} GiB"
    fix = f"lower games, num_envs or buffer_gb of level {name}, or add RAM"
    if total < need:
        return Check("ram", FAIL, detail, fix)
    if avail < need:
        return Check("ram", WARN, detail, "stop other memory users or " + fix)
    return Check("ram", OK, detail)


CHECKPOINT_GIB = 0.05


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _disk(ctx: _Ctx) -> Check:
    where = _existing_parent(ctx.paths.state_dir)
    free = shutil.disk_usage(where).free / 2**30
    need = 1.0  # logs, database, backups staging
    if ctx.profile is not None:
        # A checkpoint holds networks, optimizer state and counters, not the replay buffer:
        # Nature CNN + target + Adam moments is about 27 MB.
        need += len(ctx.profile.games) * CHECKPOINTS_KEPT * CHECKPOINT_GIB
    detail = f"{free:.1f} GiB free at {where}; about {need:.1f} GiB wanted for checkpoints"
    if free < need / 4:
        return Check("disk", FAIL, detail, f"free space on {where} or use another --state-dir")
    if free < need:
        return Check("disk", WARN, detail, f"free space on {where} before long runs")
    return Check("disk", OK, detail)


def _dir_check(name: str, path: Path) -> Check:
    if path.is_dir():
        if os.access(path, os.W_OK | os.X_OK):
            return Check(name, OK, f"{path} exists and is writable")
        return Check(
            name, FAIL, f"{path} is not writable by uid {os.getuid()}", f"chown or chmod {path}"
        )
    if path.exists():
        return Check(name, FAIL, f"{path} exists but is not a directory", f"move {path} away")
    parent = _existing_parent(path)
    if os.access(parent, os.W_OK | os.X_OK):
        return Check(name, OK, f"{path} does not exist yet; the daemon will create it")
    return Check(
        name,
        FAIL,
        f"{path} does not exist and {parent} is not writable",
        f"mkdir -p {path} as root and chown it to the daemon's user",
    )


def _state_dir(ctx: _Ctx) -> Check:
    check = _dir_check("state-dir", ctx.paths.state_dir)
    db = ctx.paths.db
    if check.status != OK or not db.is_file():
        return check
    try:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
        finally:
            conn.close()
    except (sqlite3.Error, TypeError) as exc:
        return Check(
            "state-dir",
            FAIL,
            f"{db} is not a readable atari-supervisor database ({exc})",
            "restore a backup (atarictl restore) or move the file away",
        )
    return Check("state-dir", OK, f"{check.detail}; database schema v{version}")


def _runtime_dir(ctx: _Ctx) -> Check:
    check = _dir_check("runtime-dir", ctx.paths.runtime_dir)
    if check.status == OK and ctx.paths.socket.exists():
        up = Client(ctx.paths.socket).reachable()
        return Check(
            "runtime-dir",
            OK,
            f"{check.detail}; daemon {'answers' if up else 'not running (stale socket)'} on "
            f"{ctx.paths.socket}",
        )
    return check


CHECKS: tuple[Callable[[_Ctx], Check], ...] = (
    _python,
    _profile,
    _torch,
    _nvml,
    _envpool,
    _memory,
    _disk,
    _state_dir,
    _runtime_dir,
)


def run_checks(paths: Dirs, profile_path: Path) -> list[Check]:
    ctx = _Ctx(paths, profile_path)
    out = []
    for fn in CHECKS:
        name = fn.__name__.strip("_").replace("_", "-")
        try:
            out.append(fn(ctx))
        except Exception as exc:
            out.append(
                Check(name, FAIL, f"check crashed: {type(exc).__name__}: {exc}", "see the error")
            )
    return out


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        line = f"{c.status:<4}  {c.name:<{width}}  {c.detail}"
        if c.status != OK and c.fix:
            line += f" — fix: {c.fix}"
        lines.append(line)
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append(f"{len(checks)} checks: {fails} FAIL, {warns} WARN")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> list[dict[str, str]]:
    return [asdict(c) for c in checks]
