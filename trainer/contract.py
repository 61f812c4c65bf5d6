"""The trainer's contract: everything the daemon may know about the trainer, defined once.

Standard library only. The daemon imports this module and must never pull in torch, numpy or
envpool (it stays ~54 MB RSS); a test checks that importing it loads none of them.

- ``Args``: the trainer's arguments. The single source of every flag, its default and what a
  resume does with it; ``trainer/args.py`` builds the parser from it and ``to_argv`` builds a
  command line from field values (the daemon's ``trainer_argv``).
- ``replay_budget_bytes``: what a ``--buffer-gb`` value buys. The trainer sizes its replay buffer
  with it and the profile validator counts it, so the two cannot disagree.
- ``ExitCode``: what each exit status means and whether a retry can help.
- Run-dir file names and the temp-file rule of atomic writes.
- Checkpoint framing: MAGIC | sha256 of payload | payload length | payload.
- ``progress.json``: its fields and types, the writer's serializer and the one validated reader.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

# ---------------------------------------------------------------------------------- arguments

ALGOS = ("dqn", "pqn")

# What a resume does with a flag that is not on the command line. A given flag always wins.
RESTORE = "restore"  # the checkpoint's value (the run's own config), not the default
FIXED = "fixed"  # a different given value is refused; not given: the checkpoint's
RUN = "run"  # this invocation only (paths, limits, threads): never restored


def _arg(default: Any, help: str, resume: str = RESTORE, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, "resume": resume, **meta})


def _meta(help: str, resume: str) -> dict[str, str]:
    return {"help": help, "resume": resume}


@dataclass(frozen=True)
class Args:
    game: str = field(metadata=_meta("Atari game (Pong = Pong-v5) or CartPole-v1", FIXED))
    episodes: int = field(metadata=_meta("target number of real episodes", RUN))
    run_dir: Path = field(metadata=_meta("checkpoints, progress, logs", RUN))
    algo: str = _arg(
        "dqn",
        "dqn: Double DQN with replay; pqn: replay-free Q(lambda)",
        FIXED,
        choices=ALGOS,
    )
    num_envs: int = _arg(8, "environments stepped together")
    batch_size: int = _arg(32, "learner batch (pqn: the minibatch of each rollout)")
    device: str = _arg("auto", "auto = CUDA when present", RUN, choices=("auto", "cpu", "cuda"))
    seed: int = _arg(1, "torch, numpy and env seeds")
    checkpoint_every: float = _arg(90.0, "seconds between checkpoints", RUN)
    keep_checkpoints: int = _arg(3, "newest K checkpoint files kept", RUN)
    progress_every: float = _arg(2.0, "seconds between progress.json rewrites", RUN)
    buffer_gb: float = _arg(7.0, "replay memory budget, decimal GB")
    replay_ratio: float = _arg(
        8.0, "samples trained per env step (pqn: passes over each rollout); scaled with the batch"
    )
    learning_starts: int = _arg(80_000, "transitions before the learner starts")
    lr: float = _arg(1e-4, "Adam learning rate; scaled with the batch unless given")
    adam_eps: float = _arg(1.5e-4, "Adam epsilon")
    gamma: float = _arg(0.99, "discount")
    n_step: int = _arg(3, "n-step returns")
    target_update: int = _arg(32_000, "env steps between target syncs")
    eps_start: float = _arg(1.0, "epsilon-greedy start")
    eps_end: float = _arg(0.01, "epsilon-greedy end")
    eps_decay_steps: int = _arg(1_000_000, "env steps of the linear epsilon decay")
    max_grad_norm: float = _arg(10.0, "gradient clipping")
    q_lambda: float = _arg(0.65, "pqn: lambda of the Q(lambda) returns")
    lr_decay_steps: int = _arg(
        0, "pqn: env steps of a linear lr decay to 1/10 of --lr, then held; 0 = constant lr"
    )
    rollout_steps: int | None = _arg(
        None, "pqn: env steps per env between updates; default from the batch (scaling rule)"
    )
    hidden: int = _arg(256, "MLP width (CartPole); fixes the network shape", FIXED)
    threads: int = _arg(0, "torch.set_num_threads; 0 = torch default (OMP_NUM_THREADS)", RUN)
    env_threads: int = _arg(0, "envpool threads, 0 = auto", RUN)
    stop_avg100: float | None = _arg(None, "also done when avg100 >= X", RUN)
    max_env_steps: int | None = _arg(None, "stop after this many env steps", RUN)
    max_seconds: float | None = _arg(None, "stop after this long", RUN)
    overlap: bool = _arg(True, "learn while envpool steps (--no-overlap: step, then learn)", RUN)
    allow_fresh: bool = _arg(
        False, "start from scratch when every checkpoint in the run dir is corrupt", RUN
    )
    tensorboard: bool = _arg(
        True, "TensorBoard curves in <run-dir>/tb, written at each checkpoint", RUN
    )
    fence_token: int | None = _arg(
        None,
        "fleet mode: this run's fencing token; before each write into the run dir the trainer "
        "reads <run-dir>/fence and exits 8 (superseded) when it holds a larger token",
        RUN,
    )

    @property
    def env_id(self) -> str:
        return self.game if self.game in CLASSIC_TASKS else f"{self.game}-v5"

    @property
    def is_atari(self) -> bool:
        return self.game not in CLASSIC_TASKS

    def to_dict(self) -> dict[str, object]:
        """Plain values only: this goes into checkpoints, which load with weights_only=True."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["run_dir"] = str(self.run_dir)
        return d


CLASSIC_TASKS = ("CartPole-v1", "Acrobot-v1")


def flag(name: str) -> str:
    """The command-line flag of an ``Args`` field: ``num_envs`` -> ``--num-envs``."""
    return "--" + name.replace("_", "-")


def bool_flag(name: str, default: bool) -> str:
    """A boolean field has one flag, the one that flips its default."""
    return flag(name) if default is False else "--no-" + name.replace("_", "-")


def to_argv(values: Mapping[str, object]) -> list[str]:
    """Trainer arguments (without ``python -m trainer``) for the given ``Args`` field values.
    ``None`` leaves a flag out. Floats are written with ``repr`` so they parse back exactly."""
    known = {f.name: f for f in fields(Args)}
    argv: list[str] = []
    for name, value in values.items():
        if name not in known:
            raise ValueError(f"{name!r} is not a trainer argument (trainer/contract.py: Args)")
        if value is None:
            continue
        if isinstance(value, bool):
            default = known[name].default
            if value != default:
                argv.append(bool_flag(name, bool(default)))
            continue
        text = repr(float(value)) if isinstance(value, float) else str(value)
        argv += [flag(name), text]
    return argv


def buffer_gb_or_default(buffer_gb: float | None) -> float:
    """A level's ``buffer_gb``; ``None`` means the trainer's own default."""
    return Args.buffer_gb if buffer_gb is None else buffer_gb


def replay_budget_bytes(buffer_gb: float | None) -> int:
    """Bytes of replay memory a ``--buffer-gb`` value buys (decimal GB, as the flag says)."""
    return int(buffer_gb_or_default(buffer_gb) * 1e9)


ATARI_OBS_BYTES = 4 * 84 * 84  # one stacked uint8 observation
# One PQN rollout sample on the device: observation, action (int64), reward, value (float32)
# and three flags; trainer/pqn.py's rollout_buffers allocates exactly this (tested).
PQN_SAMPLE_BYTES = ATARI_OBS_BYTES + 8 + 4 + 4 + 3


ROLLOUT_BATCHES = 2
MAX_ROLLOUT_STEPS = 128


def pqn_rollout_steps(num_envs: int, batch_size: int) -> int:
    """PQN's env steps per env between updates (the scaling rule's, trainer/scaling.py): every
    rollout splits into ROLLOUT_BATCHES minibatches, clamped to 1..MAX_ROLLOUT_STEPS steps. Here
    because it sizes the rollout the profile validator counts."""
    return max(1, min(MAX_ROLLOUT_STEPS, math.ceil(ROLLOUT_BATCHES * batch_size / num_envs)))


def learner_memory_bytes(
    algo: str, num_envs: int, batch_size: int, buffer_gb: float | None,
    rollout_steps: int | None = None,
) -> int:  # fmt: skip
    """The learner's data memory for an Atari game: DQN's replay budget, or PQN's rollout (no
    replay: ``buffer_gb`` does not apply). The profile validator counts this, the trainer
    allocates it."""
    if algo == "pqn":
        steps = rollout_steps or pqn_rollout_steps(num_envs, batch_size)
        return steps * num_envs * PQN_SAMPLE_BYTES
    return replay_budget_bytes(buffer_gb)


# ---------------------------------------------------------------------------------- exit codes


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    BAD_ARGS = 2
    UNKNOWN_GAME = 3
    RUN_DIR_UNWRITABLE = 4
    CHECKPOINT_UNLOADABLE = 5
    RUN_DIR_BUSY = 6
    NO_VALID_CHECKPOINT = 7
    SUPERSEDED = 8  # fleet mode: the run dir's fence holds a newer holder's token

    @property
    def meaning(self) -> str:
        return _MEANING[self]

    @property
    def retry_can_help(self) -> bool:
        """False: the same command line on the same run dir fails the same way again."""
        return self in (ExitCode.OK, ExitCode.FAILURE)


_MEANING = {
    ExitCode.OK: "target reached or graceful stop; progress.json status says which",
    ExitCode.FAILURE: "unexpected failure, or the final checkpoint of a stop was not written",
    ExitCode.BAD_ARGS: "bad arguments or value",
    ExitCode.UNKNOWN_GAME: "unknown game",
    ExitCode.RUN_DIR_UNWRITABLE: "run dir not writable",
    ExitCode.CHECKPOINT_UNLOADABLE: "a checkpoint passed its checksum but cannot be loaded",
    ExitCode.RUN_DIR_BUSY: "run dir busy: another trainer holds its lock",
    ExitCode.NO_VALID_CHECKPOINT: "every checkpoint in the run dir is corrupt",
    ExitCode.SUPERSEDED: "superseded: the run dir's fence holds a newer fencing token",
}


# What an operator does about each final exit before `atarictl start GAME`.
_FIX = {
    ExitCode.BAD_ARGS: "fix the profile (the game's log names the flag)",
    ExitCode.UNKNOWN_GAME: "fix the game's name in the profile",
    ExitCode.RUN_DIR_UNWRITABLE: "fix the run dir's permissions",
    ExitCode.CHECKPOINT_UNLOADABLE: "move the checkpoint named in the game's log aside",
    ExitCode.RUN_DIR_BUSY: "stop the other trainer (the game's log has its pid)",
    ExitCode.NO_VALID_CHECKPOINT: "restore a backup, or move the checkpoints aside to start over",
    ExitCode.SUPERSEDED: "another holder owns the game now (fleet mode); nothing to fix here",
}


def fatal_reason(code: int | None) -> str | None:
    """Why a trainer exit is final (FATAL, no retry) and what fixes it; None when a retry can
    help (0, 1, an unknown code or a signal)."""
    if code is None:
        return None
    try:
        exit_code = ExitCode(code)
    except ValueError:
        return None
    if exit_code.retry_can_help:
        return None
    return f"trainer exit code {code} ({exit_code.meaning}); {_FIX[exit_code]}"


# ---------------------------------------------------------------------------------- run dir

PROGRESS_FILE = "progress.json"
EPISODES_FILE = "episodes.jsonl"
BEST_FILE = "best.pt"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = "trainer.lock"  # flock()ed for the trainer's lifetime; holds its pid
# Fleet mode: the newest holder's fencing token, one integer; a trainer started with a smaller
# --fence-token writes nothing more (exit SUPERSEDED). Absent: no fencing.
FENCE_FILE = "fence"
# The daemon's own evals (daemon/evals.py) keep the weights with the best eval score apart from
# best.pt, with that score beside them; the trainer never writes either.
BEST_EVAL_FILE = "best-eval.pt"
BEST_EVAL_INFO = "best-eval.json"
# The run's files besides checkpoints (what a backup takes).
RUN_FILES = (PROGRESS_FILE, EPISODES_FILE, BEST_FILE, BEST_EVAL_FILE, BEST_EVAL_INFO)
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
# Atomic writes go through ".<name>.tmp<pid>" in the same directory, then a rename.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run dir holds a checkpoint file (intact or not: the trainer decides)."""
    try:
        return any(CHECKPOINT_NAME.match(p.name) for p in (run_dir / CHECKPOINT_DIR).iterdir())
    except OSError:
        return False


def checkpoint_name(seq: int) -> str:
    return f"ckpt-{seq:09d}.pt"


def temp_name(name: str, pid: int) -> str:
    return f".{name}.tmp{pid}"


# ---------------------------------------------------------------------------------- framing

CHECKPOINT_MAGIC = b"ATRCKPT1"
FRAME_HEADER = struct.Struct("<8s32sQ")  # magic, sha256 of the payload, payload length (LE)
_CHUNK = 1 << 20


class BadFrame(ValueError):
    """Truncated, wrong length or checksum mismatch: a damaged file (fall back to an older one).
    The checksum is unkeyed: it catches accidents, it does not authenticate the file."""


class NotFramed(BadFrame):
    """No magic: not a trainer checkpoint at all."""


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(CHECKPOINT_MAGIC, hashlib.sha256(payload).digest(), len(payload)) + (
        payload
    )


def _header(head: bytes, where: object) -> tuple[bytes, int]:
    if len(head) < FRAME_HEADER.size:
        raise BadFrame(f"{where}: truncated header ({len(head)} bytes)")
    magic, digest, length = FRAME_HEADER.unpack(head)
    if magic != CHECKPOINT_MAGIC:
        raise NotFramed(f"{where}: not a trainer checkpoint (bad magic)")
    return digest, length


def _check(where: object, digest: bytes, length: int, got: int, got_digest: bytes) -> None:
    if got != length:
        raise BadFrame(f"{where}: {got} payload bytes, header says {length}")
    if got_digest != digest:
        raise BadFrame(f"{where}: checksum mismatch")


def unframe(data: bytes, where: object) -> memoryview:
    """The payload of a whole framed file held in memory; ``BadFrame`` when it does not verify."""
    digest, length = _header(data[: FRAME_HEADER.size], where)
    payload = memoryview(data)[FRAME_HEADER.size :]
    _check(where, digest, length, len(payload), hashlib.sha256(payload).digest())
    return payload


def check_frame(f: IO[bytes], where: object) -> int:
    """Verify a framed file streamed from its start (never all in memory); returns the payload
    length. ``BadFrame`` when it does not verify."""
    digest, length = _header(f.read(FRAME_HEADER.size), where)
    h, n = hashlib.sha256(), 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
    _check(where, digest, length, n, h.digest())
    return n


# ---------------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class ProgressField:
    kind: type  # int, float or str
    meaning: str
    nullable: bool = False
    minimum: float | None = None
    choices: tuple[str, ...] = ()


PROGRESS_STATUSES = ("starting", "running", "done", "stopped")

PROGRESS: dict[str, ProgressField] = {
    "game": ProgressField(str, "game as given on the command line"),
    "pid": ProgressField(int, "trainer pid", minimum=1),
    "status": ProgressField(
        str,
        "`starting`, `running`, `done` (target reached), `stopped` (graceful stop)",
        choices=PROGRESS_STATUSES,
    ),
    "episodes": ProgressField(int, "real game episodes finished, across all resumes", minimum=0),
    "target_episodes": ProgressField(int, "`--episodes`", minimum=1),
    "env_steps": ProgressField(int, "environment steps (summed over envs), all resumes", minimum=0),
    "updates": ProgressField(int, "gradient updates, across all resumes", minimum=0),
    "episodes_per_hour": ProgressField(float, "rate over the last 10 minutes", minimum=0),
    "best_return": ProgressField(float, "best avg100 so far (the best model's score)", True),
    "avg100": ProgressField(float, "mean unclipped return of the last 100 real episodes", True),
    "epsilon": ProgressField(float, "current epsilon", minimum=0),
    "last_checkpoint_time": ProgressField(
        float, "unix time of the newest checkpoint", True, minimum=0
    ),
    "updated_at": ProgressField(float, "unix time this file was written", minimum=0),
    "num_envs": ProgressField(int, "`--num-envs` of this run", minimum=1),
    "batch_size": ProgressField(int, "`--batch-size` of this run", minimum=1),
    "device": ProgressField(str, "torch device of this run"),
    "replay_size": ProgressField(int, "sampleable transitions in the replay buffer", minimum=0),
    "learning_env_steps_per_sec": ProgressField(
        float, "env steps/s since the learner started in this process", True, minimum=0
    ),
}
MAX_PROGRESS_BYTES = 64 * 1024  # the trainer writes ~600 bytes; anything larger is not ours


class _BigInt:
    """An integer literal too long to be a counter (and too long for ``int()``)."""


def _parse_int(text: str) -> int | _BigInt:
    return int(text) if len(text) <= 30 else _BigInt()


def progress_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a valid ``progress.json`` value of field ``name``; None when it is."""
    spec = PROGRESS[name]
    if value is None:
        return None if spec.nullable else f"{name}: null"
    if isinstance(value, bool) or not isinstance(value, int | float | str) or (
        spec.kind is int and not isinstance(value, int)
    ) or (spec.kind is float and isinstance(value, str)) or (
        spec.kind is str and not isinstance(value, str)
    ):  # fmt: skip
        return f"{name}: {type(value).__name__} {value!r:.40}, want {spec.kind.__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value!r} is not finite"
    if spec.minimum is not None and isinstance(value, int | float) and value < spec.minimum:
        return f"{name}: {value!r} is below {spec.minimum:g}"
    if spec.choices and value not in spec.choices:
        return f"{name}: {value!r:.40} is not one of {', '.join(spec.choices)}"
    return None


def parse_progress(text: str | bytes) -> tuple[dict[str, Any], list[str]]:
    """(valid fields, problems). A bad value drops that field only; never raises."""
    try:
        data = json.loads(text, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return {}, [f"not JSON ({exc})"]
    if not isinstance(data, dict):
        return {}, [f"a JSON {type(data).__name__}, not an object"]
    fields_: dict[str, Any] = {}
    problems = []
    for name, value in data.items():
        if name not in PROGRESS:
            continue  # a newer trainer's extra field
        problem = progress_problem(name, value)
        if problem is None:
            fields_[name] = float(value) if PROGRESS[name].kind is float and value is not None \
                else value  # fmt: skip
        else:
            problems.append(problem)
    return fields_, problems


def read_progress(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """The one validated reader of ``progress.json``: (valid fields, problems). A missing file is
    ``({}, [])``; a bad value is left out (with its problem named), never raised."""
    try:
        with open(run_dir / PROGRESS_FILE, "rb") as f:
            data = f.read(MAX_PROGRESS_BYTES + 1)
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        return {}, [f"unreadable ({exc.strerror or exc})"]
    if len(data) > MAX_PROGRESS_BYTES:
        return {}, [f"larger than {MAX_PROGRESS_BYTES} bytes"]
    return parse_progress(data)


def dump_progress(values: Mapping[str, Any]) -> bytes:
    """The trainer's side: exactly the contract's fields, non-finite floats as null."""
    if set(values) != set(PROGRESS):
        missing, extra = set(PROGRESS) - set(values), set(values) - set(PROGRESS)
        raise ValueError(f"progress fields differ from the contract: missing {missing}, "
                         f"unknown {extra}")  # fmt: skip
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()
    }
    return (json.dumps(clean, indent=1, allow_nan=False) + "\n").encode()
