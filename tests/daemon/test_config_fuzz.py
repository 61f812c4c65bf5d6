"""Fuzz the profile loader: whatever the file holds, ``load_profile`` returns a ``Profile`` or
raises a one-line ``ProfileError``, never a traceback of another type; and a profile it accepts
holds only finite numbers and builds the autoscaler's machine.

The example counts are bounded (``FUZZ_EXAMPLES``, default 150 per test) and the runs derandomized,
so CI is fast and the same on every run; raise the count locally to search longer.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.autoscaler.machine import LevelModel, build_machine
from daemon.config import Profile, ProfileError, load_profile

ROOT = Path(__file__).resolve().parents[2]
VALID = (ROOT / "profiles" / "cpu-tiny.yaml").read_text()
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def outcome(path: Path) -> Profile | ProfileError:
    """The loader's answer; any exception other than ProfileError fails the test with its
    traceback, which is the point."""
    try:
        return load_profile(path, host_memory_bytes=1024**5)
    except ProfileError as e:
        return e


def check(result: Profile | ProfileError) -> None:
    if isinstance(result, ProfileError):
        msg = str(result)
        assert len(msg.splitlines()) == 1 and "\n" not in msg, repr(msg)
        assert ": " in msg and "; " in msg, msg
        return
    assert isinstance(result, Profile)
    for value in numbers(result):
        assert math.isfinite(value), result
    build_machine(LevelModel(result.autoscaler), result.autoscaler.ladder[0])


def numbers(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    if dataclasses.is_dataclass(obj):
        return [v for f in dataclasses.fields(obj) for v in numbers(getattr(obj, f.name))]
    if isinstance(obj, tuple):
        return [v for item in obj for v in numbers(item)]
    return []


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "profile.yaml"
    path.write_bytes(data)
    check(outcome(path))


@FUZZ
@given(data=st.binary(max_size=200), at=st.integers(0, len(VALID)))
def test_random_bytes_spliced_into_a_valid_profile(tmp_path: Path, data: bytes, at: int) -> None:
    path = tmp_path / "profile.yaml"
    raw = VALID.encode()
    path.write_bytes(raw[:at] + data + raw[at:])
    check(outcome(path))


# Values an attacker or an unlucky operator might write anywhere a value goes, as raw YAML text.
HOSTILE_SCALARS = st.sampled_from(
    [
        ".nan", ".inf", "-.inf", "1.0e+400", "-1", "0", "9" * 400, "-" + "9" * 400,
        '"9999999999999999999s"', "~", "''", "true", "no", "0x7fffffffffffffff", "1_000",
        "!!binary aGVsbG8=", "!!float nan", "!!int 0b101", "!!python/name:os.system ''",
        "!!timestamp 2001-12-14", "&a 3", "*a", "*undefined", '"\\u0000"', '"a\\nb"', "[]", "{}",
        "[light, light]", "[fallback]", "fallback", "{a: {b: {c: 1}}}", "[" * 50 + "]" * 50,
        '"90s"', '"15m"', "2h", "500ms", '"-5s"', '"10MB"', '"1e3"',
    ]
)  # fmt: skip
KEYS = st.sampled_from(
    [
        "games", "levels", "start_level", "autoscaler", "checks", "stop_grace", "startsecs",
        "backoff", "frozen_after", "telemetry_retention", "control", "gpu_cost_per_hour",
        "trainer_args", "checkpoint_every", "device", "seed", "game_logs", "paths", "ladder",
        "fallback_level", "pinned", "health", "factor", "max", "num_envs", "buffer_gb", "light",
        "fallback", "Pong", "<<", "? ", "'\\n'", "",
    ]
)  # fmt: skip


@st.composite
def mutated_profile(draw: st.DrawFn) -> str:
    """cpu-tiny.yaml with a few of its lines' values replaced by hostile scalars, lines dropped, or
    hostile key: value lines inserted at a random indent."""
    lines = VALID.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["value", "drop", "insert"]))
        line = lines[i]
        if action == "value" and ":" in line and not line.lstrip().startswith("#"):
            key = line.split(":", 1)[0]
            lines[i] = f"{key}: {draw(HOSTILE_SCALARS)}"
        elif action == "drop":
            del lines[i]
            if not lines:
                lines = ["games:"]
        else:
            indent = " " * draw(st.sampled_from([0, 2, 4]))
            lines.insert(i, f"{indent}{draw(KEYS)}: {draw(HOSTILE_SCALARS)}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=mutated_profile())
def test_structured_hostile_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    check(outcome(path))


def yaml_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


@FUZZ
@given(
    section=st.sampled_from(
        ["autoscaler", "checks", "backoff", "game_logs", "paths", "control", None]
    ),
    key=st.text(max_size=12) | KEYS,
    value=yaml_values(),
)
def test_any_value_in_any_section(
    tmp_path: Path, section: str | None, key: str, value: Any
) -> None:
    doc = yaml.safe_load(VALID)
    target = doc if section is None else doc.setdefault(section, {})
    if not isinstance(target, dict):
        target = doc
    target[key] = value
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    check(outcome(path))
