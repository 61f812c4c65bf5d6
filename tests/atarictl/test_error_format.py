"""docs/cli.md: "Every error is one line on stderr, `atarictl: CAUSE; FIX`, usage errors
included" -- checked for every command atarictl has, not a sample of them.

In-process (``cli.main``), so a traceback fails the test rather than being printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.atarictl import cli

COMMANDS = cli._commands(cli.build_parser())


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's exit on a usage error or --help
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("atarictl: "), err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_usage_error_of_every_command_is_one_line_naming_its_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([command, "--no-such-option"], capsys)
    assert code == cli.EXIT_USAGE
    assert out == ""
    line = one_error_line(err)
    assert line.endswith(f"; see 'atarictl {command} --help'"), line


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout", "-1", "status"],  # was a traceback (socket.settimeout(-1))
        ["--timeout", "nan", "status"],
        ["status", "--watch", "x"],
        ["history", "--since", "soon"],
        ["stop", "--wait", "-5", "Pong"],
        [],
    ],
)
def test_bad_option_values_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]):
    code, out, err = run(argv, capsys)
    assert code == cli.EXIT_USAGE and out == ""
    assert one_error_line(err).endswith("--help'")


@pytest.mark.parametrize(
    "argv", [["plot", "--out", "curves.jpg"], ["eval", "Pong", "--episodes", "0"]]
)
def test_usage_errors_found_after_parsing_name_the_help(
    argv: list[str], state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[0] not in COMMANDS:
        pytest.skip(f"atarictl has no {argv[0]} command")
    code, out, err = run([*argv, "--state-dir", str(state)], capsys)
    assert code == cli.EXIT_USAGE and out == ""
    assert one_error_line(err).endswith(f"; see 'atarictl {argv[0]} --help'")


@pytest.mark.parametrize(
    "argv",
    [
        ["status"], ["start", "Pong"], ["stop", "Pong", "--wait"], ["restart", "all"],
        ["tail", "Pong"], ["level"], ["level", "pin", "light"], ["level", "unpin"],
        ["history"], ["reload"], ["backup"], ["restore", "nothing.tar.gz"], ["models"],
        ["eval", "Pong"], ["plot"], ["report"], ["top"],
    ],
)  # fmt: skip
def test_no_daemon_and_no_state_is_one_line_with_a_fix(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[0] not in COMMANDS:
        pytest.skip(f"atarictl has no {argv[0]} command")
    code, _, err = run([*argv, "--state-dir", str(tmp_path / "none")], capsys)
    assert code not in (0, cli.EXIT_USAGE)
    line = one_error_line(err)
    assert "; " in line, line  # CAUSE; FIX


def test_service_commands_use_the_one_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.atarictl import service

    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs here: install-service would act")
    code, _, err = run(["install-service", "--profile", "/nonexistent.yaml"], capsys)
    assert code == 1
    assert one_error_line(err).startswith("atarictl: install-service: ")
    assert service.UNIT_TEMPLATE.is_file()
