"""Command line of the trainer. Placeholder until the trainer issue lands."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="atari-trainer",
        description="Train a Double-DQN agent on one envpool game (not implemented yet).",
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("atari-trainer: not implemented yet", file=sys.stderr)
    return 1
