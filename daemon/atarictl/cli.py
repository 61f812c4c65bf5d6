"""atarictl: supervisorctl-style control of atari-supervisord over its Unix socket.

Exit codes (documented in docs/cli.md): 0 ok, 1 command failed, 2 usage, 3 daemon not running
(status/history still print from the database), 4 permission denied, 5 unknown game,
6 backup refused or invalid, 7 daemon timed out, 8 --wait ran out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from daemon.atarictl import formatting as fmt
from daemon.atarictl.client import (
    Client,
    CtlError,
    DaemonUnreachable,
    UnknownGame,
)
from daemon.atarictl.names import resolve_game, resolve_games
from daemon.atarictl.wait import DEFAULT_WAIT_S, attach_wait_value
from daemon.paths import Dirs, resolve_dirs

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be a positive number")
    return value


def _duration_arg(text: str) -> float:
    from daemon.config import parse_duration

    try:
        value = parse_duration(text if not text.isdigit() else int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use seconds or 90s, 15m, 2h, 1d"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (`atarictl: CAUSE; see 'atarictl CMD --help'`, exit 2); a
    mistyped command gets the nearest one, git's manner, instead of three lines of usage."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"atarictl: {message}; see '{self.prog} --help'\n")


def _unknown_command(argv: list[str], commands: list[str]) -> str | None:
    """The one-line message for a mistyped command, or None when the command is known."""
    from daemon.atarictl.names import suggest

    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _GLOBAL_VALUED:
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        if word in commands:
            return None
        hint = suggest(word, commands)
        did = f"; did you mean {hint!r}?" if hint else f"; commands: {', '.join(commands)}"
        return f"atarictl: unknown command {word!r}{did}"
    return None


# Options that take a value, accepted before or after the command (supervisorctl/git style).
_GLOBAL_VALUED = (
    "--state-dir",
    "--runtime-dir",
    "--logs-dir",
    "--socket",
    "--timeout",
    "--print-completion",
    "--store-url",
)
DEFAULT_TIMEOUT = 30.0


def _globals(p: argparse.ArgumentParser, suppress: bool) -> None:
    # On the subcommands the defaults are SUPPRESS, so an option given before the command is not
    # overwritten by the subcommand's default.
    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--state-dir",
        type=Path,
        default=d(None),
        help="daemon state dir (default: $STATE_DIRECTORY, else /var/lib/atari-supervisor "
        "when it exists, else ./state; see docs/cli.md)",
    )
    p.add_argument(
        "--runtime-dir",
        type=Path,
        default=d(None),
        help="dir holding atarictl.sock (default: STATE_DIR/run)",
    )
    p.add_argument(
        "--logs-dir",
        type=Path,
        default=d(None),
        help="dir holding the per-game logs (default: STATE_DIR/logs)",
    )
    p.add_argument(
        "--socket",
        type=Path,
        default=d(None),
        help="control socket path (overrides --runtime-dir)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds_arg,
        default=d(DEFAULT_TIMEOUT),
        help=f"seconds to wait for the daemon (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=d(False),
        help="machine-readable output (default: human text)",
    )
    p.add_argument(
        "--fleet",
        action="store_true",
        default=d(False),
        help="status, start, stop, restart over every box of the fleet, through its PostgreSQL "
        "store (docs/fleet.md)",
    )
    p.add_argument(
        "--store-url",
        default=d(None),
        metavar="URL",
        help="the fleet's store for --fleet (default: the local daemon's store.url)",
    )


def package_version() -> str:
    """The installed distribution's version (one source: pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atari-supervisor")
    except PackageNotFoundError:  # a bare source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="atarictl",
        description="Query and control the atari-supervisor daemon (see docs/cli.md).",
    )
    p.add_argument("--version", action="version", version=f"atarictl {package_version()}")
    # Shell completion from the parser itself (shtab), so it never drifts from the commands.
    import shtab

    shtab.add_argument_to(p, ["--print-completion"], help="print a bash/zsh completion script")
    _globals(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    js = argparse.ArgumentParser(add_help=False)
    _globals(js, suppress=True)

    s = sub.add_parser("status", parents=[js], help="level, GPU and one line per game")
    s.add_argument("games", nargs="*", metavar="GAME")
    s.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=float,
        metavar="SECONDS",
        help="refresh in place every SECONDS (default 2) until Ctrl-C",
    )
    for name, what in (
        ("start", "start games (clears FATAL)"),
        ("stop", "stop games gracefully (they checkpoint)"),
        ("restart", "stop then start games; they resume from their checkpoints"),
    ):
        c = sub.add_parser(name, parents=[js], help=what)
        c.add_argument("games", nargs="+", metavar="GAME", help="game names or 'all'")
        c.add_argument(
            "--wait",
            nargs="?",
            const=DEFAULT_WAIT_S,
            type=_duration_arg,
            metavar="SECONDS",
            help="return once each game is in its next steady state (RUNNING, QUEUED, "
            "BACKOFF, STOPPED, DONE, FATAL) and print it; exit 8 after SECONDS "
            f"(default {DEFAULT_WAIT_S:g})",
        )
    t = sub.add_parser("tail", parents=[js], help="a game's trainer log")
    t.add_argument("game", metavar="GAME")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    t.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="lines (default 20)")
    lv = sub.add_parser("level", parents=[js], help="show, pin or unpin the autoscaler level")
    lv_sub = lv.add_subparsers(dest="level_cmd", metavar="ACTION")
    pin = lv_sub.add_parser("pin", parents=[js], help="hold the level at NAME")
    pin.add_argument("name", metavar="NAME")
    lv_sub.add_parser("unpin", parents=[js], help="let the autoscaler decide again")
    sub.add_parser(
        "top", parents=[js], help="per-trainer CPU, RSS and GPU memory, and the host's load"
    )
    h = sub.add_parser("history", parents=[js], help="boots, level changes, runs and decisions")
    h.add_argument(
        "--since",
        type=_duration_arg,
        default=86400.0,
        metavar="DURATION",
        help="how far back (default 24h)",
    )
    h.add_argument(
        "--kind",
        choices=("boots", "levels", "runs", "decisions", "evals"),
        action="append",
        help="only these kinds (repeatable; default all)",
    )
    sub.add_parser("reload", parents=[js], help="re-read the profile (kept if invalid)")
    b = sub.add_parser("backup", parents=[js], help="verified tar.gz of state, models and DB")
    b.add_argument("path", nargs="?", type=Path, metavar="PATH")
    b.add_argument(
        "--with-logs",
        action="store_true",
        help="also archive the per-game trainer logs (default: off)",
    )
    r = sub.add_parser("restore", parents=[js], help="restore a backup (daemon must be stopped)")
    r.add_argument("path", type=Path, metavar="PATH")
    sh = sub.add_parser("shutdown", parents=[js], help="stop all games gracefully, then exit")
    sh.add_argument("--no-wait", action="store_true", help="do not wait for the daemon to exit")
    mo = sub.add_parser("models", parents=[js], help="each game's best and latest model")
    mo.add_argument("games", nargs="*", metavar="GAME", help="only these games (default all)")
    d = sub.add_parser("doctor", parents=[js], help="preflight checks; no daemon needed")
    d.add_argument(
        "--profile",
        type=Path,
        help="profile to check (default: /etc/atari-supervisor/profile.yaml, else cpu-tiny)",
    )
    i = sub.add_parser("install-service", parents=[js], help="install the systemd unit")
    i.add_argument("--profile", type=Path, help="profile the service runs with")
    i.add_argument("--user", help="system user the service runs as")
    sub.add_parser("uninstall-service", parents=[js], help="remove the systemd unit")
    from daemon.atarictl import eval as eval_cmd

    eval_cmd.add_parser(sub, [js])
    from daemon.atarictl import progress

    progress.add_parsers(sub, [js], _duration_arg)
    return p


# ------------------------------------------------------------------------------ commands


class Ctl:
    def __init__(self, args: argparse.Namespace, paths: Dirs) -> None:
        self.args = args
        self.paths = paths
        self.client = Client(paths.socket, timeout=args.timeout)
        self.json = bool(getattr(args, "json", False))

    def out(self, human: str, data: Any) -> None:
        if self.json:
            print(json.dumps(data, indent=1, default=str))
        else:
            print(human)

    def live_or_offline(
        self, command: str, offline: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], int]:
        """The daemon's answer to COMMAND (exit 0) or, while it is down, the same shape read from
        the database (exit 3, with the file named); neither: one line naming both."""
        try:
            return self.client.call(command, {}), EXIT_OK
        except DaemonUnreachable as down:
            from daemon.atarictl.offline import NoDatabase

            try:
                data = offline()
            except NoDatabase:
                raise DaemonUnreachable(
                    f"{down}; and no database at {self.paths.db} to read instead", down.code
                ) from None
            data["db"] = str(self.paths.db)
            return data, EXIT_NOT_RUNNING

    # status ---------------------------------------------------------------------------------

    def status_data(self) -> tuple[dict[str, Any], int]:
        games = list(self.args.games)
        now = time.time()

        def read() -> dict[str, Any]:  # imported only while the daemon is down
            from daemon.atarictl.offline import offline_status

            return offline_status(self.paths.db, now)

        # Filtered here, not by the daemon, so an unknown name gets the list of known ones.
        st, code = self.live_or_offline("status", read)
        if games:
            wanted = resolve_games(games, [g["game"] for g in st["games"]])
            st["games"] = [g for g in st["games"] if g["game"] in wanted]
        from daemon.atarictl.progress import latest_evals_of

        st["latest_evals"] = latest_evals_of(self.paths.db, [g["game"] for g in st["games"]])
        return st, code

    def cmd_status(self) -> int:
        if self.args.fleet:
            from daemon.atarictl.fleet import cmd_fleet_status

            return cmd_fleet_status(self)
        if self.args.watch is None:
            st, code = self.status_data()
            self.out(fmt.format_status(st), st)
            return code
        interval = max(0.2, self.args.watch)
        tty = sys.stdout.isatty()
        try:
            while True:
                st, code = self.status_data()
                if self.json:
                    print(json.dumps(st, default=str), flush=True)
                else:
                    # Home + clear-to-end redraws in place without flicker of a full clear.
                    prefix = "\x1b[H\x1b[2J" if tty else ""
                    stamp = time.strftime("%H:%M:%S")
                    sys.stdout.write(
                        f"{prefix}every {interval:g}s · {stamp} · Ctrl-C to quit\n"
                        f"{fmt.format_status(st)}\n"
                    )
                    sys.stdout.flush()
                time.sleep(interval)
        except KeyboardInterrupt:
            return EXIT_OK

    # start / stop / restart -------------------------------------------------------------------

    def _games_cmd(self, cmd: str) -> int:
        from daemon.atarictl.wait import report

        if self.args.fleet:
            from daemon.atarictl.fleet import cmd_fleet_games

            return cmd_fleet_games(self, cmd)
        # The profile's spelling, case-insensitively; an unknown name gets the one wording.
        before = self.client.call("status", {})
        # A fleet box also takes the fleet's games it does not hold (it forwards them).
        fleet = before.get("fleet") or {}
        known = {g["game"] for g in before["games"]} | set(fleet.get("games", []))
        games = resolve_games(self.args.games, sorted(known), allow_all=True)
        result = self.client.call(cmd, {"games": games})
        return report(self, self.client, cmd, result, before, self.args.wait)

    def cmd_start(self) -> int:
        return self._games_cmd("start")

    def cmd_stop(self) -> int:
        return self._games_cmd("stop")

    def cmd_restart(self) -> int:
        return self._games_cmd("restart")

    # tail -------------------------------------------------------------------------------------

    def cmd_tail(self) -> int:
        from daemon.atarictl.logs import follow, last_lines
        from daemon.atarictl.offline import known_games

        game = self.args.game
        if "/" in game or game.startswith("."):
            raise UnknownGame(f"unknown game {game!r}; give a game name, not a path")
        known = known_games(self.paths.db)
        if known:
            game = resolve_game(game, known)
        path = self.paths.logs_dir / f"{game}.log"
        if not path.is_file():
            raise CtlError(
                f"no log for {game} at {path}; it has not run yet, or pass --logs-dir",
                "not_found",
            )
        lines, offset = last_lines(path, self.args.lines)
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        if self.args.follow:
            with contextlib.suppress(KeyboardInterrupt):
                follow(path, offset)
        return EXIT_OK

    # level ------------------------------------------------------------------------------------

    def cmd_level(self) -> int:
        action = self.args.level_cmd
        if action == "pin":
            result = self.client.call("pin", {"level": self.args.name})
        elif action == "unpin":
            result = self.client.call("unpin", {})
        else:
            try:
                result = self.client.call("level", {})
            except DaemonUnreachable:
                from daemon.atarictl.offline import offline_status

                raw = offline_status(self.paths.db, time.time())
                result = {
                    "level": raw["level"],
                    "entered_at": raw["level_entered_at"],
                    "pinned": raw["pinned"],
                    "source": "database",
                }
                self.out(_describe_level(result), result)
                return EXIT_NOT_RUNNING
        self.out(_describe_level(result), result)
        return EXIT_OK

    # history / models ---------------------------------------------------------------------------

    def cmd_top(self) -> int:
        """The daemon's newest telemetry samples; from the database when it is down."""

        def read() -> dict[str, Any]:  # imported only while the daemon is down
            from daemon.atarictl.offline import offline_top

            return offline_top(self.paths.db, time.time())

        data, code = self.live_or_offline("top", read)
        self.out(fmt.format_top(data), data)
        return code

    def cmd_history(self) -> int:
        from daemon.atarictl.offline import HISTORY_KINDS, history

        kinds = tuple(self.args.kind or HISTORY_KINDS)
        now = time.time()
        rows = history(self.paths.db, now - self.args.since, kinds)
        running = self.client.reachable()
        source = "daemon running" if running else "daemon DOWN"
        data = {"since": now - self.args.since, "kinds": list(kinds), "events": rows}
        head = (
            f"history since {fmt.timestamp(now - self.args.since)} "
            f"({', '.join(kinds)}) · {source} · read-only from {self.paths.db}"
        )
        self.out(f"{head}\n{fmt.format_history(rows)}", data)
        return EXIT_OK

    def cmd_eval(self) -> int:
        from daemon.atarictl.eval import cmd_eval

        return cmd_eval(self)

    def cmd_plot(self) -> int:
        from daemon.atarictl.progress import cmd_plot

        return cmd_plot(self)

    def cmd_report(self) -> int:
        from daemon.atarictl.progress import cmd_report

        return cmd_report(self)

    def cmd_models(self) -> int:
        from daemon.atarictl.offline import NoDatabase, known_games, models

        if not self.paths.db.is_file() and not self.paths.runs_dir.is_dir():
            # Like history/status: no state here is an error, not an empty list (item 11).
            raise NoDatabase(
                f"no database at {self.paths.db} and no runs at {self.paths.runs_dir}; "
                "pass --state-dir DIR or start atari-supervisord",
                "no_database",
            )
        rows = models(self.paths.db, self.paths.runs_dir)
        from daemon.atarictl.progress import with_evals

        rows = with_evals(rows, self.paths.db, self.paths.runs_dir)
        if self.args.games:
            known = {r["game"] for r in rows} | set(known_games(self.paths.db))
            wanted = resolve_games(self.args.games, known)
            rows = [r for r in rows if r["game"] in wanted]
        self.out(fmt.format_models(rows, time.time()), {"models": rows})
        return EXIT_OK

    # reload / shutdown --------------------------------------------------------------------------

    def cmd_reload(self) -> int:
        result = self.client.call("reload", {})
        self.out(_describe("reload", result), result)
        return EXIT_OK

    def cmd_shutdown(self) -> int:
        try:
            result = self.client.call("shutdown", {})
        except DaemonUnreachable as down:
            # supervisorctl's manner: asking a stopped daemon to stop is not an error (item 12).
            self.out(
                "daemon is not running (already stopped)",
                {"already_stopped": True, "detail": str(down)},
            )
            return EXIT_OK
        if not self.args.no_wait:
            # The daemon first stops every trainer gracefully (up to stop_grace), then exits.
            deadline = time.monotonic() + max(self.args.timeout, 5.0) * 10
            while time.monotonic() < deadline and self.client.reachable():
                time.sleep(0.2)
            if self.client.reachable():
                raise CtlError(
                    "daemon accepted shutdown but still runs; check journalctl -u atari-supervisor",
                    "timeout",
                )
        self.out("daemon shut down" if not self.args.no_wait else "shutdown requested", result)
        return EXIT_OK

    # backup / restore / doctor ------------------------------------------------------------------

    def cmd_backup(self) -> int:
        from daemon.atarictl.backup import backup, default_backup_path

        now = time.time()
        result = backup(self.paths, self.args.path or default_backup_path(now), now,
                        with_logs=self.args.with_logs)  # fmt: skip
        human = (
            f"backup {result['path']}: {result['files']} files, {len(result['games'])} games, "
            f"{result['bytes'] / 2**20:.1f} MiB -> {result['archive_bytes'] / 2**20:.1f} MiB, "
            "verified"
        )
        human += "; the profile in effect" if result["profile"] else "; no profile copy"
        if self.args.with_logs:
            human += f"; {result['logs']} log files"
        for w in result["warnings"]:
            human += f"\nwarning: {w}"
        self.out(human, result)
        return EXIT_OK

    def cmd_restore(self) -> int:
        from daemon.atarictl.restore import restore

        result = restore(self.paths, self.args.path)
        human = (
            f"restored {result['files']} files ({', '.join(result['games']) or 'no games'}) from "
            f"{result['path']} (taken {fmt.timestamp(result['created_at'])}) into "
            f"{result['state_dir']}"
        )
        if result["previous"]:
            human += f"\nprevious state kept in {result['previous']}"
        self.out(human, result)
        return EXIT_OK

    def cmd_doctor(self) -> int:
        from daemon.atarictl.doctor import FAIL, as_json, format_checks, run_checks
        from daemon.config import DEFAULT_PROFILE

        # The profile an installed service runs with (install-service puts it there) comes
        # before the embedded default.
        installed = Path("/etc/atari-supervisor/profile.yaml")
        profile = self.args.profile or (installed if installed.is_file() else DEFAULT_PROFILE)
        checks = run_checks(self.paths, profile)
        self.out(format_checks(checks), {"checks": as_json(checks)})
        return EXIT_FAILED if any(c.status == FAIL for c in checks) else EXIT_OK

    def cmd_install_service(self) -> int:
        from daemon.atarictl import service

        return int(service.install_service(self.args.profile, self.args.user))

    def cmd_uninstall_service(self) -> int:
        from daemon.atarictl import service

        return int(service.uninstall_service())


def _describe(cmd: str, result: Any) -> str:
    """One line per game for start/stop/restart; the daemon's message otherwise."""
    if isinstance(result, dict):
        if isinstance(result.get("message"), str):
            return result["message"]
        if cmd == "reload":
            changes = result.get("changes") or []
            return f"reloaded {result.get('profile', 'the profile')}: " + (
                "; ".join(map(str, changes)) or "no game changes"
            )
        games = result.get("games")
        if isinstance(games, dict):
            return "\n".join(f"{g}: {v}" for g, v in games.items()) or f"{cmd}: nothing to do"
        if isinstance(games, list):
            lines = []
            for g in games:
                if isinstance(g, dict):
                    name = g.get("game") or g.get("name")
                    lines.append(f"{name}: {g.get('result') or g.get('state') or 'ok'}")
                else:
                    lines.append(f"{g}: {cmd} requested")
            return "\n".join(lines) or f"{cmd}: nothing to do"
    return f"{cmd}: ok"


def _describe_level(result: Any) -> str:
    if not isinstance(result, dict):
        return str(result)
    if isinstance(result.get("message"), str):
        return result["message"]
    if isinstance(result.get("reason"), str) and "to_level" in result:
        return f"level {result['to_level']}: {result['reason']}"  # a pin/unpin decision
    level = result.get("level") or result.get("state") or "-"
    entered = result.get("entered_at") or result.get("level_entered_at")
    since = f" for {fmt.duration(time.time() - entered)}" if entered else ""
    pinned = result.get("pinned")
    pin = (
        f"pinned ({pinned})" if isinstance(pinned, str) else ("pinned" if pinned else "not pinned")
    )
    line = f"level {level}{since} · {pin}"
    if result.get("source") == "database":
        line = "daemon DOWN: read-only view from the database\n" + line
    if isinstance(result.get("pressure"), dict):
        line += "\n" + "\n".join(fmt.level_pressure_lines(result["pressure"]))
    return line


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:  # argparse has no public accessor for subcommand names
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = attach_wait_value(list(sys.argv[1:] if argv is None else argv))
    unknown = _unknown_command(argv, _commands(parser))
    if unknown:
        print(unknown, file=sys.stderr)
        return EXIT_USAGE
    try:
        args, extra = parser.parse_known_args(argv)
    except BrokenPipeError:  # `atarictl --print-completion bash | head`
        return EXIT_OK
    if extra:  # named by the command's parser, so the hint is that command's --help
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "fleet", False) and args.command not in ("status", "start", "stop", "restart"):
        _subparser(parser, args.command).error(
            "--fleet works with status, start, stop and restart")
    paths = resolve_dirs(args.state_dir, args.runtime_dir, args.logs_dir, args.socket)
    ctl = Ctl(args, paths)
    handler = getattr(ctl, "cmd_" + args.command.replace("-", "_"))
    try:
        return int(handler())
    except CtlError as exc:
        message = str(exc)
        if exc.exit_code == EXIT_USAGE and "; " not in message:
            message += f"; see 'atarictl {args.command} --help'"  # a usage error's FIX
        print(f"atarictl: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK  # `atarictl history | head`
