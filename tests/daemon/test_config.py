"""Profile loading: the shipped profiles load, every invalid fixture is refused with file:line and
the field, and every config field is documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from daemon.config import (
    DEFAULT_PROFILE,
    AutoscalerPolicy,
    ProfileError,
    documented_fields,
    load_profile,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "profiles"
BIG_HOST = 1024 * 1024**3


def test_cpu_tiny_loads_and_is_the_default() -> None:
    p = load_profile(DEFAULT_PROFILE)
    assert DEFAULT_PROFILE == ROOT / "profiles" / "cpu-tiny.yaml"
    assert len(p.games) == 2
    assert p.start_level in p.level_names
    assert isinstance(p.autoscaler, AutoscalerPolicy)
    assert p.autoscaler.crash_storm.window == 600.0


def test_gpu_box_has_the_seed_games_and_levels() -> None:
    p = load_profile(ROOT / "profiles" / "gpu-box.yaml", host_memory_bytes=BIG_HOST)
    assert {g.name: g.target for g in p.games} == {
        "MsPacman": 30000,
        "Asteroids": 25000,
        "Seaquest": 25000,
        "BeamRider": 20000,
        "SpaceInvaders": 15000,
        "Enduro": 15000,
        "Breakout": 10000,
        "Boxing": 10000,
        "Freeway": 3000,
        "Pong": 3000,
    }
    shape = {lv.name: (lv.games, lv.num_envs, lv.batch_size) for lv in p.levels}
    assert shape == {"light": (2, 32, 512), "medium": (4, 64, 1024), "heavy": (8, 256, 2048)}
    assert p.autoscaler.ladder == ("light", "medium")
    assert p.autoscaler.cooldown == 7200.0 and p.checks.stability == 300.0


def test_config_is_frozen() -> None:
    p = load_profile(FIXTURES / "valid-minimal.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.stop_grace = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fixture", "line", "field", "words"),
    [
        ("typo-key.yaml", 10, "start_lvl", "did you mean 'start_level'"),
        ("unknown-key.yaml", 15, "checks.colour", "unknown key"),
        ("wrong-type.yaml", 7, "levels.light.num_envs", "whole number"),
        ("negative-value.yaml", 13, "stop_grace", "must be positive"),
        ("unknown-game.yaml", 3, "games.Pongg", "did you mean Pong"),
        ("too-much-memory.yaml", 5, "levels.light", "GiB RAM"),
        ("bad-duration.yaml", 13, "backoff.max", "expected a duration"),
        ("unknown-level.yaml", 10, "start_level", "not a level"),
        ("bad-yaml.yaml", 14, "profile", "not valid YAML"),
        ("zero-target.yaml", 2, "games.CartPole-v1", "must be >= 1"),
    ],
)
def test_invalid_profile_names_file_line_and_field(
    fixture: str, line: int, field: str, words: str
) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile(FIXTURES / fixture)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{FIXTURES / fixture}:{line}: {field}: "), msg
    assert words in msg
    assert "; " in msg  # the fix part


def test_memory_check_uses_the_given_host_size(tmp_path: Path) -> None:
    # The same level fits a big host and is refused on a small one.
    load_profile(FIXTURES / "valid-minimal.yaml", host_memory_bytes=BIG_HOST)
    with pytest.raises(ProfileError, match=r"levels\.light: needs about"):
        load_profile(FIXTURES / "valid-minimal.yaml", host_memory_bytes=1024**3)


def test_missing_file_is_one_line() -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile("/nonexistent/profile.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_every_config_field_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", doc, flags=re.MULTILINE))
    missing = [f for f in documented_fields() if f not in documented]
    assert not missing, f"docs/configuration.md lacks a table row for: {missing}"
    stale = documented - set(documented_fields())
    assert not stale, f"docs/configuration.md documents fields that do not exist: {stale}"
