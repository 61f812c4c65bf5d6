"""``python -m daemon.reporting --state-dir DIR``: write one report (the daemon's report check
runs this as its own process). Prints the Markdown file's path; exit 1 with one line on failure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.reporting.report import make_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m daemon.reporting")
    p.add_argument("--state-dir", type=Path, required=True)
    a = p.parse_args(argv)
    try:
        made = make_report(a.state_dir)
    except Exception as exc:  # one line for the daemon's log; the next report tries again
        print(f"report failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(made.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
