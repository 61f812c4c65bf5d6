"""Command line of the supervisor daemon: ``atari-supervisord`` (also ``python -m daemon``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.config import DEFAULT_PROFILE


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atari-supervisor")
    except PackageNotFoundError:  # a bare source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atari-supervisord",
        description="Supervise one trainer per game from a profile: queue, levels, graceful "
        "stops, backoff, SQLite state. `atari-supervisord bench --help` measures its overhead.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--profile", type=Path, default=DEFAULT_PROFILE,
                   help=f"profile YAML (default: {DEFAULT_PROFILE})")  # fmt: skip
    p.add_argument("--state-dir", help="database and run dirs ($STATE_DIRECTORY, ./state)")
    p.add_argument("--logs-dir", help="per-game logs ($LOGS_DIRECTORY, <state-dir>/logs)")
    p.add_argument("--runtime-dir", help="control socket ($RUNTIME_DIRECTORY, <state-dir>/run)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from daemon.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    from daemon.app import run_daemon
    from daemon.logging import configure_logging

    configure_logging(level=args.log_level)
    return run_daemon(args.profile, args.state_dir, args.logs_dir, args.runtime_dir)
