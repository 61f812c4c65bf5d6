"""Command line of atarictl. Placeholder until the atarictl issue lands."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="atarictl", description="Control the atari-supervisor daemon (not implemented yet)."
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("atarictl: not implemented yet", file=sys.stderr)
    return 1
