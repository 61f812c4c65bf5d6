"""Hostile values in a profile: every number must be finite and sane, the ladder must be one the
autoscaler can build. Each is refused by ``load_profile`` with one line
``FILE:LINE: FIELD: problem; fix``, never accepted and then crashed on at start."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.autoscaler.machine import LevelModel, build_machine
from daemon.config import Level, Profile, ProfileError, load_profile

ROOT = Path(__file__).resolve().parents[2]
MINIMAL_TEXT = (ROOT / "tests" / "fixtures" / "profiles" / "valid-minimal.yaml").read_bytes()
MINIMAL = yaml.safe_load(MINIMAL_TEXT)
AFTER = MINIMAL_TEXT.count(b"\n") + 1  # the line of text appended to MINIMAL_TEXT
NUMERIC = ("int", "float", "duration", "size")


def numeric_fields() -> list[tuple[str, ...]]:
    """Every number an operator can write, as a key path, read from the schema itself, so a field
    added later is covered without touching this test."""
    out: list[tuple[str, ...]] = []

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        for f in dataclasses.fields(cls):
            kind = f.metadata.get("kind")
            if kind == "section":
                walk(f.metadata["cls"], (*prefix, f.name))
            elif kind in NUMERIC:
                out.append((*prefix, f.name))

    walk(Profile, ())
    walk(Level, ("levels", "light"))
    return out


def write(tmp_path: Path, doc: dict[str, Any], raw: str) -> tuple[Path, int]:
    """Dump ``doc`` with the placeholder ``@@`` replaced by ``raw`` YAML; return the file and the
    placeholder's line."""
    text = yaml.safe_dump(doc, sort_keys=False).replace("'@@'", raw)
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if raw in s)
    return path, line


def with_value(keys: tuple[str, ...], value: object) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(MINIMAL))
    node = doc
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return doc


def refused(path: Path, line: int, dotted: str) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(path, host_memory_bytes=1024**5)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: {dotted}: "), msg
    assert "; " in msg, msg
    return msg


HOSTILE = {
    ".nan": "finite",
    ".inf": "finite",
    "-.inf": "",
    ".NaN": "finite",
    "1.0e+400": "finite",  # overflows to inf when YAML reads it
    "9" * 400: "",  # a whole number no float can hold
    '"' + "9" * 400 + 's"': "",  # a duration string that parses to inf
}


@pytest.mark.parametrize("raw", list(HOSTILE))
@pytest.mark.parametrize("keys", numeric_fields(), ids=".".join)
def test_every_number_must_be_finite(tmp_path: Path, keys: tuple[str, ...], raw: str) -> None:
    path, line = write(tmp_path, with_value(keys, "@@"), raw)
    refused(path, line, ".".join(keys))


@pytest.mark.parametrize(
    ("keys", "raw", "words"),
    [
        (("stop_grace",), ".nan", "must be a finite number"),
        (("checks", "health"), ".inf", "must be a finite number"),
        (("frozen_after",), ".inf", "must be a finite number"),
        (("backoff", "factor"), ".nan", "must be a finite number"),
        (("checkpoint_every",), ".nan", "must be a finite number"),
        (("levels", "light", "buffer_gb"), ".nan", "must be a finite number"),
        # finite but past what a timer, a timedelta or a float estimate can hold
        (("checks", "stability"), "1.0e+300", "at most"),
        (("levels", "light", "num_envs"), "9" * 30, "at most"),
    ],
)
def test_named_fields_say_why(tmp_path: Path, keys: tuple[str, ...], raw: str, words: str) -> None:
    path, line = write(tmp_path, with_value(keys, "@@"), raw)
    assert words in refused(path, line, ".".join(keys))


LEVEL = {"games": 1, "num_envs": 2, "batch_size": 8, "buffer_gb": 0.01}


def ladder_profile(levels: list[str], **autoscaler: object) -> dict[str, Any]:
    return {
        "games": {"CartPole-v1": 20},
        "levels": {name: dict(LEVEL) for name in levels},
        "start_level": levels[0],
        "autoscaler": {"fallback_level": levels[0], **autoscaler, "ladder": "@@"},
    }


def test_a_repeated_ladder_rung_is_refused(tmp_path: Path) -> None:
    path, line = write(tmp_path, ladder_profile(["light", "medium"]), "[light, medium, light]")
    assert "repeats" in refused(path, line, "autoscaler.ladder")


def test_a_level_named_like_the_fallback_state_is_refused(tmp_path: Path) -> None:
    doc = ladder_profile(["light", "fallback"])
    text = yaml.safe_dump(doc, sort_keys=False).replace("'@@'", "[light, fallback]")
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    line = text.splitlines().index("  fallback:") + 1
    msg = refused(path, line, "levels.fallback")
    assert "autoscaler's own state" in msg and "rename" in msg


def test_a_fallback_level_off_the_ladder_is_refused_too(tmp_path: Path) -> None:
    # Not on the ladder, but `level pin fallback` and every status line could not tell them apart.
    doc = ladder_profile(["light", "fallback"])
    text = yaml.safe_dump(doc, sort_keys=False).replace("'@@'", "[light]")
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    refused(path, text.splitlines().index("  fallback:") + 1, "levels.fallback")


def test_a_profile_pin_must_be_a_state_of_the_machine(tmp_path: Path) -> None:
    doc = ladder_profile(["light", "heavy"], pinned="heavy")
    path, _ = write(tmp_path, doc, "[light]")
    line = path.read_text().splitlines().index("  pinned: heavy") + 1
    assert "not on autoscaler.ladder" in refused(path, line, "autoscaler.pinned")


@pytest.mark.parametrize("ladder", ["[light]", "[light, medium]", "[medium, light]"])
@pytest.mark.parametrize("pinned", [None, "light", "fallback"])
def test_every_profile_that_loads_builds_the_machine(
    tmp_path: Path, ladder: str, pinned: str | None
) -> None:
    path, _ = write(tmp_path, ladder_profile(["light", "medium"], pinned=pinned), ladder)
    profile = load_profile(path, host_memory_bytes=1024**5)
    machine_model = LevelModel(profile.autoscaler)
    build_machine(machine_model, profile.autoscaler.ladder[0])
    assert machine_model.state == profile.autoscaler.ladder[0]


@pytest.mark.parametrize(
    ("data", "line", "dotted", "words"),
    [
        (b"games:\n  Pong: 5\n\xff\xfe\n", 3, "profile", "not UTF-8"),
        (b"games:\n  Pong: 5\x07\n", 2, "profile", "not valid YAML"),
        (b"[" * 5000, None, "profile", ""),
        (
            MINIMAL_TEXT + b"stop_grace: !!python/name:os.system ''\n",
            AFTER,
            "stop_grace",
            "cannot read",
        ),
        (MINIMAL_TEXT + b"stop_grace: !!float abc\n", AFTER, "stop_grace", "cannot read"),
        (b"? [a, b]\n: 1\n", 1, "profile", "plain name"),
        (MINIMAL_TEXT + b'"a\\nb": 1\n', AFTER, "a\\nb", "unknown key"),
        (b"games: {Pong: 5, Pong-v5: 5}\nlevels: {}\n", 1, "games.Pong-v5", "same envpool game"),
        (b"games: {Pong: " + b"9" * 400 + b"}\nlevels: {}\n", 1, "games.Pong", "at most"),
        (b"games: {Pong: 5}\nlevels:\n  a.b: {}\n", 3, "levels.a.b", "level name"),
        (b"games: {Pong: 5}\nlevels:\n  '': {}\n", 3, "levels.", "level name"),
    ],
)
def test_hostile_text_is_one_line(
    tmp_path: Path, data: bytes, line: int | None, dotted: str, words: str
) -> None:
    path = tmp_path / "profile.yaml"
    path.write_bytes(data)
    with pytest.raises(ProfileError) as info:
        load_profile(path, host_memory_bytes=1024**5)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, msg
    where = f"{path}:{line}" if line is not None else f"{path}"
    assert msg.startswith(f"{where}: {dotted}: "), msg
    assert words in msg, msg


def algo_profile(levels: list[str]) -> dict[str, Any]:
    doc = ladder_profile(levels)
    doc["autoscaler"]["ladder"] = levels
    return doc


def test_an_unknown_algo_is_refused_at_its_line(tmp_path: Path) -> None:
    path, line = write(tmp_path, {**algo_profile(["light"]), "algo": "@@"}, "ppo")
    assert "unknown algo 'ppo'" in refused(path, line, "algo")
    doc = algo_profile(["light"])
    doc["levels"]["light"]["algo"] = "@@"
    path, line = write(tmp_path, doc, "sarsa")
    assert "use one of: dqn, pqn" in refused(path, line, "levels.light.algo")


def test_levels_may_differ_and_each_level_counts_the_hungriest_algo(tmp_path: Path) -> None:
    # light runs pqn, medium dqn: a game started at medium keeps its DQN run (and replay) when
    # it moves to light, so light's estimate counts DQN's 7 GB too.
    doc = algo_profile(["light", "medium"])
    doc["levels"]["light"] = {"games": 2, "num_envs": 8, "batch_size": 32, "algo": "pqn"}
    doc["levels"]["medium"] = {"games": 1, "num_envs": 8, "batch_size": 32, "algo": "@@"}
    path, _ = write(tmp_path, doc, "dqn")
    with pytest.raises(ProfileError, match=r":\d+: levels\.light: needs about 16\.\d GiB .*dqn"):
        load_profile(path, host_memory_bytes=16 * 1024**3)
    path.write_text(path.read_text().replace("algo: dqn", "algo: pqn"))
    profile = load_profile(path, host_memory_bytes=16 * 1024**3)
    assert [profile.level_algo(lv) for lv in profile.levels] == ["pqn", "pqn"]


def test_the_algo_chooses_the_memory_estimate(tmp_path: Path) -> None:
    # 2 games x 7 GB of replay (buffer_gb null = the trainer's default, not 1 GiB) + base: a
    # 16 GiB host cannot run it with dqn; with pqn (no replay, a 4 MB rollout) it fits.
    doc = algo_profile(["light"])
    doc["levels"]["light"] = {"games": 2, "num_envs": 8, "batch_size": 32, "algo": "@@"}
    path, _ = write(tmp_path, doc, "dqn")
    with pytest.raises(ProfileError, match=r"needs about 16\.\d GiB RAM .*dqn buffer_gb"):
        load_profile(path, host_memory_bytes=16 * 1024**3)
    path.write_text(path.read_text().replace("algo: dqn", "algo: pqn"))
    profile = load_profile(path, host_memory_bytes=16 * 1024**3)
    assert profile.level_algo(profile.level("light")) == "pqn"
    assert profile.level("light").memory_gib("pqn") < 3.2


PG = "postgresql+psycopg://atari@db:5432/atari"


def fleet_profile(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(MINIMAL))
    doc.update({"store": {"url": PG}, "paths": {"runs_dir": "/srv/runs"},
                "checks": {"health": "15s"},
                "fleet": {"enabled": True, "lease": "60s"}})  # fmt: skip
    for dotted, value in changes.items():
        node = doc
        *path, last = dotted.split("__")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("changes", "raw", "dotted", "words"),
    [
        ({"fleet__enabled": "@@", "store": {}}, "true", "fleet.enabled", "set store.url"),
        ({"fleet__enabled": "@@", "paths": {}}, "true", "fleet.enabled", "set paths.runs_dir"),
        ({"fleet__lease": "@@"}, "30s", "fleet.lease", "at least 45s"),
        ({"box": "@@"}, '"box a"', "box", "not a box name"),
    ],
)
def test_fleet_settings_that_cannot_work_are_refused(
    tmp_path: Path, changes: dict[str, Any], raw: str, dotted: str, words: str
) -> None:
    path, line = write(tmp_path, fleet_profile(**changes), raw)
    assert words in refused(path, line, dotted)


def test_a_fleet_profile_loads(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(fleet_profile(box="gpu-07")))
    p = load_profile(path, host_memory_bytes=1024**5)
    assert (p.box, p.fleet.enabled, p.fleet.lease, p.paths.runs_dir) == (
        "gpu-07", True, 60.0, "/srv/runs")  # fmt: skip
