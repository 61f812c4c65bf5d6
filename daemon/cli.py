"""Command line of the supervisor daemon. Placeholder until the daemon issue lands."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="atari-supervisord",
        description="Supervise one trainer per game from a profile (not implemented yet).",
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("atari-supervisord: not implemented yet", file=sys.stderr)
    return 1
