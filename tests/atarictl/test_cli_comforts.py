"""Issue 12 items 6-8, 9 (--version), 11, 12 against the real atarictl process (no daemon: the
database of tests.support.state stands in; a down daemon is the case these commands handle)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.state import atarictl


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_mistyped_command_suggests_the_nearest_in_one_line() -> None:
    out = atarictl("stauts")
    assert out.returncode == 2
    assert one_line(out.stderr) == "atarictl: unknown command 'stauts'; did you mean 'status'?"
    assert out.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--bogus"),
        ("history", "--since", "x"),
        (),
        ("tail",),
        ("--timeout", "x", "status"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: tuple[str, ...]) -> None:
    out = atarictl(*args)
    assert out.returncode == 2, out
    assert one_line(out.stderr).startswith("atarictl: ")


def test_game_names_are_case_insensitive_and_global_options_follow_the_command(
    state: Path,
) -> None:
    out = atarictl("status", "pong", "--json", "--state-dir", str(state))
    assert out.returncode == 3, out.stderr  # offline view, read from the database
    assert '"game": "Pong"' in out.stdout and "CartPole" not in out.stdout
    out = atarictl("models", f"--state-dir={state}", "cartpole-v1")
    assert out.returncode == 0, out.stderr
    assert "CartPole-v1" in out.stdout and "Pong" not in out.stdout


@pytest.mark.parametrize("cmd", ["status", "tail", "models"])
def test_unknown_game_has_one_wording_with_one_suggestion(state: Path, cmd: str) -> None:
    out = atarictl("--state-dir", str(state), cmd, "pongg")
    assert out.returncode == 5, out
    assert one_line(out.stderr) == (
        "atarictl: unknown game 'pongg'; did you mean 'Pong'? known games: CartPole-v1, Pong "
        "(names as in the profile's games:)"
    )


def test_models_without_a_state_dir_fails_in_one_line(tmp_path: Path) -> None:
    out = atarictl("--state-dir", str(tmp_path / "none"), "models")
    assert out.returncode == 3
    assert "no database at" in one_line(out.stderr)


def test_shutdown_with_the_daemon_down_is_already_stopped(state: Path) -> None:
    out = atarictl("shutdown", "--state-dir", str(state))
    assert out.returncode == 0, out.stderr
    assert one_line(out.stdout) == "daemon is not running (already stopped)"


def test_version() -> None:
    out = atarictl("--version")
    assert out.returncode == 0
    assert one_line(out.stdout).startswith("atarictl 0.")


def test_help_states_the_defaults() -> None:
    out = atarictl("--help")
    text = " ".join(out.stdout.split())
    assert "(default 30)" in text and "else ./state" in text
