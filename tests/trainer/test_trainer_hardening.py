"""Trainer hardening, end to end where it can be: a checkpoint is data and never a program, an
intact but unloadable checkpoint stops the run (never a silent fresh start), a run dir is locked,
a manual resume continues the run's own config, the replay budget counts what it can sample, and
``progress.json`` is read without ever raising.

The subprocess tests use only the command line and files, and spell the contract's constants
(exit codes, lock file, temp names, checkpoint framing) as literals that
``test_literals_mirror_the_contract`` pins to ``trainer/contract.py``: an older trainer without
that module still runs them, and fails them for the behaviour, not at import.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_testlib import run

# trainer/contract.py, spelled out (see the module docstring).
CHECKPOINT_UNLOADABLE, RUN_DIR_BUSY, NO_VALID_CHECKPOINT, BAD_ARGS = 5, 6, 7, 2
LOCK_FILE = "trainer.lock"
MAGIC = b"ATRCKPT1"

# The fixture run: every flag a resume may restore is off its default, so a restore shows.
TINY = ["--game", "CartPole-v1", "--episodes", "100000", "--hidden", "32", "--buffer-gb", "0.001",
        "--threads", "1", "--env-threads", "1", "--replay-ratio", "1"]  # fmt: skip
FIRST_RUN = ["--num-envs", "2", "--batch-size", "16", "--learning-starts", "64",
             "--max-env-steps", "300"]  # fmt: skip
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) ")


def frame(payload: bytes) -> bytes:
    """A checkpoint frame whose checksum agrees: MAGIC | sha256 | length (LE) | payload."""
    return struct.pack("<8s32sQ", MAGIC, hashlib.sha256(payload).digest(), len(payload)) + payload


def saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def ckpt(seq: int) -> str:
    return f"ckpt-{seq:09d}.pt"


def temp(name: str, pid: int) -> str:
    return f".{name}.tmp{pid}"


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def error_line(stderr: str) -> str:
    """The one line that says why the trainer stopped: the last one, and the only one that is no
    log record (a resume logs what it restored before it refuses)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not LOG_RECORD.match(ln)]
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr
    return lines[0]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run dir but the lock (its pid changes), by relative path."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def progress(run_dir: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((run_dir / "progress.json").read_text())
    return data


class RunsCode:
    """Unpickling this runs a shell command: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run dir: one checkpoint, progress.json and episodes.jsonl of a tiny CartPole run."""
    run_dir = tmp_path_factory.mktemp("hardening") / "run"
    r = run([*TINY, *FIRST_RUN, "--run-dir", str(run_dir)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [ckpt(1)]
    assert progress(run_dir)["episodes"] > 0  # type: ignore[operator]
    return run_dir


@pytest.fixture
def run_dir(first_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(first_run, copy)
    (copy / LOCK_FILE).unlink(missing_ok=True)
    return copy


def resume(run_dir: Path, *extra: str, same: bool = True) -> subprocess.CompletedProcess[str]:
    """Resume with the first run's flags (``same``), or without them; bounded, so an older
    trainer that ignores the problem still exits."""
    flags = FIRST_RUN[:6] if same else []
    return run([*TINY, *flags, "--run-dir", str(run_dir), "--max-env-steps", "400", *extra])


# ------------------------------------------------------------------- checkpoints are data


def test_malicious_checkpoint_pickle_never_runs_and_stops_fatal(run_dir: Path) -> None:
    marker = run_dir.parent / "pwned"
    state = {"config": {"game": "CartPole-v1"}, "q": RunsCode(marker)}
    newest = run_dir / "checkpoints" / ckpt(2)
    newest.write_bytes(frame(saved(state)))
    before = snapshot(run_dir)

    r = resume(run_dir)

    assert not marker.exists(), "loading a checkpoint ran code from its pickle"
    assert r.returncode == CHECKPOINT_UNLOADABLE, r.stderr[-3000:]
    line = one_line(r.stderr)
    assert str(newest) in line and "passed its checksum but cannot be loaded" in line
    assert "nothing was deleted" in line
    assert snapshot(run_dir) == before  # neither file deleted, no fallback to ckpt 1, no fresh run


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        pytest.param(b"this is not a torch file at all", "", id="framed-garbage"),
        pytest.param(
            saved({"config": {"game": "CartPole-v1"}, "q": argparse.Namespace(w=1)}),
            "UnpicklingError",
            id="non-allowlisted-class",
        ),
        pytest.param(
            saved({"config": {"game": "CartPole-v1", "learning_starts": 64}, "time": 0.0}),
            "KeyError",
            id="no-weights",
        ),
    ],
)
def test_intact_but_unloadable_checkpoint_is_fatal_not_a_fresh_start(
    run_dir: Path, payload: bytes, why: str
) -> None:
    newest = run_dir / "checkpoints" / ckpt(2)
    newest.write_bytes(frame(payload))
    before = snapshot(run_dir)
    episodes_before = progress(run_dir)["episodes"]

    r = resume(run_dir)

    assert r.returncode == CHECKPOINT_UNLOADABLE, r.stderr[-3000:]
    line = error_line(r.stderr)
    assert str(newest) in line and why in line and "nothing was deleted" in line
    # Nothing deleted, no checkpoint written, progress and episodes untouched (not reset to 0).
    assert snapshot(run_dir) == before
    assert progress(run_dir)["episodes"] == episodes_before


def test_intact_checkpoint_of_a_list_is_unloadable_not_corrupt(tmp_path: Path) -> None:
    from trainer import checkpoint

    path = tmp_path / ckpt(1)
    path.write_bytes(frame(saved([1, 2, 3])))
    with pytest.raises(checkpoint.UnloadableCheckpoint, match="holds a list, not a dict") as err:
        checkpoint.load_newest(tmp_path)
    assert err.value.code == CHECKPOINT_UNLOADABLE and path.exists()


def _corrupt_every_checkpoint(run_dir: Path) -> list[Path]:
    ckpt_dir = run_dir / "checkpoints"
    shutil.copy(ckpt_dir / ckpt(1), ckpt_dir / ckpt(2))
    paths = sorted(ckpt_dir.iterdir())
    for p in paths:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF  # the header still says the old checksum
        p.write_bytes(bytes(data))
    return paths


def test_every_checkpoint_corrupt_exits_no_valid_checkpoint_and_deletes_nothing(
    run_dir: Path,
) -> None:
    _corrupt_every_checkpoint(run_dir)
    before = snapshot(run_dir)

    r = resume(run_dir)

    assert r.returncode == NO_VALID_CHECKPOINT, r.stderr[-3000:]
    # One warning record per skipped file, then the one line that says why the run stopped.
    assert r.stderr.count("WARNING trainer.checkpoint") == 2
    line = error_line(r.stderr)
    assert "every checkpoint in" in line and "(2 files; newest ckpt-000000002.pt)" in line
    assert "nothing was deleted" in line and "--allow-fresh" in line
    assert snapshot(run_dir) == before


def test_every_checkpoint_corrupt_with_allow_fresh_starts_from_scratch(run_dir: Path) -> None:
    corrupt = _corrupt_every_checkpoint(run_dir)
    episodes_before = progress(run_dir)["episodes"]

    r = run([*TINY, *FIRST_RUN[:6], "--run-dir", str(run_dir), "--max-env-steps", "40",
             "--allow-fresh"])  # fmt: skip

    assert r.returncode == 0, r.stderr[-3000:]
    assert "--allow-fresh: starting from scratch" in r.stderr
    p = progress(run_dir)
    assert p["env_steps"] == 40 and p["updates"] == 0  # from zero, not the first run's 300
    assert p["episodes"] < episodes_before  # type: ignore[operator]
    assert all(c.exists() for c in corrupt)  # the damaged files are still there to inspect
    assert (run_dir / "checkpoints" / ckpt(3)).exists()


# ------------------------------------------------------------------- the run-dir lock


def test_busy_run_dir_is_refused_naming_the_holder_and_keeps_its_temp_file(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    in_flight = run_dir / "checkpoints" / temp(ckpt(2), os.getpid())
    in_flight.write_bytes(b"half a checkpoint")
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())

        r = resume(run_dir)

        assert r.returncode == RUN_DIR_BUSY, r.stderr[-3000:]
        line = one_line(r.stderr)
        assert f"busy: another trainer (pid {os.getpid()})" in line
        assert in_flight.read_bytes() == b"half a checkpoint"
        assert not (run_dir / "progress.json").exists()
    finally:
        os.close(fd)


def test_trainer_start_removes_stale_temps_of_a_killed_writer(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    dead = 4_194_301  # above the default pid_max: no live process has it
    stale = [run_dir / temp("best.pt", dead), run_dir / temp("progress.json", dead),
             run_dir / "checkpoints" / temp(ckpt(7), dead)]  # fmt: skip
    others = [run_dir / temp("notes.txt", dead), run_dir / "checkpoints" / temp("other", dead)]
    for p in stale + others:
        p.write_bytes(b"x")

    r = resume(run_dir, "--max-env-steps", "20")

    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in stale if p.exists()] == []
    assert all(p.exists() for p in others), "removed a file that is no trainer temp"
    assert "removed 3 temp files of a killed writer" in r.stderr


# ------------------------------------------------------------------- manual resume


def test_manual_resume_without_the_original_flags_restores_the_runs_config(
    run_dir: Path,
) -> None:
    # --num-envs 2, --batch-size 16 and --learning-starts 64 are left out; --batch-size is given
    # a new value, which wins.
    r = resume(run_dir, "--batch-size", "8", same=False)

    assert r.returncode == 0, r.stderr[-3000:]
    p = progress(run_dir)
    assert p["num_envs"] == 2 and p["batch_size"] == 8, p
    assert p["env_steps"] == 400 and p["updates"] > 14  # type: ignore[operator]
    assert "resume: --num-envs 2 restored from the checkpoint" in r.stderr
    assert "resume: --learning-starts 64 restored from the checkpoint" in r.stderr
    assert "resume: --batch-size 8 given (the checkpoint ran with 16)" in r.stderr


def test_resume_with_a_conflicting_fixed_flag_is_refused_naming_both_values(
    run_dir: Path,
) -> None:
    before = snapshot(run_dir)

    r = resume(run_dir, "--hidden", "64")

    assert r.returncode == BAD_ARGS, r.stderr[-3000:]
    line = one_line(r.stderr)
    assert "--hidden 64 conflicts with --hidden 32" in line and "cannot change on resume" in line
    assert snapshot(run_dir) == before


# ------------------------------------------------------------------- replay budget


def _cartpole_spec():  # type: ignore[no-untyped-def]
    from trainer.envs import EnvSpec

    return EnvSpec(obs_shape=(4,), obs_dtype=np.dtype(np.float32), stack=1, num_actions=2)


def test_buffer_barely_above_learning_starts_is_refused_naming_buffer_gb() -> None:
    from trainer.args import Args, UsageError
    from trainer.replay import capacity_for, slot_bytes

    spec = _cartpole_spec()
    # Exactly --learning-starts slots: the stack and n-step slots of each ring make it too few.
    gb = 2000 * slot_bytes(spec) / 1e9
    args = Args(game="CartPole-v1", episodes=1, run_dir=Path(), num_envs=2, batch_size=16,
                learning_starts=2000, buffer_gb=gb)  # fmt: skip
    with pytest.raises(UsageError) as err:
        capacity_for(args, spec, 2)
    msg = str(err.value)
    assert "\n" not in msg and f"--buffer-gb {gb}" in msg and "--learning-starts 2000" in msg
    m = re.search(r"raise --buffer-gb to at least (\S+)$", msg)
    assert m, msg
    assert capacity_for(dataclasses.replace(args, buffer_gb=float(m[1])), spec, 2) > 2000


def test_buffer_that_per_episode_slots_keep_below_learning_starts_still_learns(
    tmp_path: Path,
) -> None:
    # 2 rings of 105 CartPole slots (31 bytes each): capacity_for counts 2 * (105 - 5) = 200
    # sampleable, but every ~20-step episode also leaves its final frame unsampleable, so the
    # buffer never holds 200 ready transitions; the learner must start once it is full.
    run_dir = tmp_path / "run"
    r = run([*TINY, "--run-dir", str(run_dir), "--buffer-gb", "6.52e-6", "--num-envs", "2",
             "--batch-size", "16", "--learning-starts", "200",
             "--max-env-steps", "600"])  # fmt: skip

    assert r.returncode == 0, r.stderr[-3000:]
    assert "(full; below --learning-starts)" in r.stderr, r.stderr[-3000:]
    p = progress(run_dir)
    assert p["replay_size"] < 200 and p["updates"] > 0, p  # type: ignore[operator]


# ------------------------------------------------------------------- progress.json reading

GOOD = {"game": "Pong", "status": "running", "episodes": 12, "best_return": None,
        "epsilon": 0.5, "avg100": 3}  # fmt: skip
BAD = {  # raw JSON text of each bad value, by field
    "env_steps": "NaN",
    "updates": "Infinity",
    "epsilon": "-Infinity",
    "episodes_per_hour": "1e999",  # parses to inf
    "pid": '"123"',
    "target_episodes": "-5",
    "replay_size": "9" * 5000,
    "num_envs": '{"a": [1, {"b": [null, true]}]}',
    "batch_size": "true",
    "device": "7",
    "updated_at": "[1.0]",
    "last_checkpoint_time": "-1.0",
    "status": '"exploded"',
}


def test_progress_json_bad_fields_are_dropped_and_named_good_ones_kept() -> None:
    from trainer.contract import parse_progress

    good = {k: v for k, v in GOOD.items() if k not in BAD}
    items = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in good.items()]
    items += [f'"{k}": {v}' for k, v in BAD.items()]
    text = "{" + ", ".join([*items, '"future_field": 1']) + "}"

    fields, problems = parse_progress(text)

    assert fields == {**good, "avg100": 3.0} and isinstance(fields["avg100"], float)
    assert sorted(p.split(":")[0] for p in problems) == sorted(BAD), problems
    assert all(len(p) < 200 and "\n" not in p for p in problems), problems
    assert fields == parse_progress(text.encode())[0]


NOT_AN_OBJECT = ["[1, 2]", '"progress"', "42", "null", "9" * 5000, "[" * 100_000, "{" * 100_000,
                 "", '{"episodes": 1', b'{"game": "\xff\xfe"}', '"\\ud800"']  # fmt: skip


@pytest.mark.parametrize("text", NOT_AN_OBJECT, ids=lambda t: repr(t)[:12])
def test_progress_json_that_is_no_object_is_one_problem_never_an_exception(
    text: str | bytes,
) -> None:
    from trainer.contract import parse_progress

    fields, problems = parse_progress(text)

    assert fields == {} and len(problems) == 1 and len(problems[0]) < 300, problems


def test_read_progress_refuses_a_file_over_64_kib_and_reads_the_trainers_own(
    tmp_path: Path, first_run: Path
) -> None:
    from trainer.contract import MAX_PROGRESS_BYTES, PROGRESS, read_progress

    assert read_progress(tmp_path) == ({}, [])  # no file yet
    padded = json.dumps(GOOD)[:-1] + ', "pad": "' + "x" * MAX_PROGRESS_BYTES + '"}'
    (tmp_path / "progress.json").write_text(padded)
    assert read_progress(tmp_path) == ({}, [f"larger than {MAX_PROGRESS_BYTES} bytes"])
    (tmp_path / "progress.json").write_text(padded[: MAX_PROGRESS_BYTES - 2] + '"}')
    fields, problems = read_progress(tmp_path)  # just under the limit: read normally
    assert problems == [] and fields["game"] == "Pong"

    fields, problems = read_progress(first_run)
    assert problems == [] and set(fields) == set(PROGRESS)
    assert all(not isinstance(v, float) or math.isfinite(v) for v in fields.values())


# ------------------------------------------------------------------- the literals above


def test_literals_mirror_the_contract() -> None:
    from trainer import contract

    assert (CHECKPOINT_UNLOADABLE, RUN_DIR_BUSY, NO_VALID_CHECKPOINT, BAD_ARGS) == (
        contract.ExitCode.CHECKPOINT_UNLOADABLE,
        contract.ExitCode.RUN_DIR_BUSY,
        contract.ExitCode.NO_VALID_CHECKPOINT,
        contract.ExitCode.BAD_ARGS,
    )
    assert LOCK_FILE == contract.LOCK_FILE and MAGIC == contract.CHECKPOINT_MAGIC
    assert frame(b"payload") == contract.frame(b"payload")
    assert temp("best.pt", 12) == contract.temp_name("best.pt", 12)
    assert ckpt(7) == contract.checkpoint_name(7)
    assert contract.TEMP_NAME.match(temp(ckpt(2), os.getpid()))
