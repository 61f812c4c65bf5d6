"""Command line: `atari-trainer [train flags]` or `atari-trainer bench [bench flags]`."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from trainer.args import EXIT_RUN_DIR, UsageError, parse
from trainer.signals import StopFlag


def _check_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".probe"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(
            f"atari-trainer: run dir {run_dir} is not writable ({reason}); "
            "fix its permissions or pass another --run-dir",
            EXIT_RUN_DIR,
        ) from exc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if argv[:1] == ["bench"]:
        from trainer.bench import main as bench_main

        return bench_main(argv[1:])
    # Before torch/envpool are imported (seconds): an early SIGTERM is then a graceful stop.
    stop = StopFlag().install()
    try:
        args = parse(argv)
        _check_run_dir(args.run_dir)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UsageError("atari-trainer: error: --device cuda but no CUDA GPU is visible")
        from trainer.train import main as train_main

        return train_main(args, stop=stop)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
