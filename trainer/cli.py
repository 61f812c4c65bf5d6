"""Command line: `atari-trainer [train flags]` or `atari-trainer bench [bench flags]`."""

from __future__ import annotations

import logging
import os
import sys

from trainer.args import UsageError, parse_given
from trainer.signals import StopFlag


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if argv[:1] == ["--version"]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"atari-trainer {version('atari-supervisor')}")
        except PackageNotFoundError:
            print("atari-trainer unknown (not installed)")
        return 0
    if argv[:1] == ["bench"]:
        from trainer.bench import main as bench_main

        return bench_main(argv[1:])
    # Before torch/envpool are imported (seconds): an early SIGTERM is then a graceful stop.
    stop = StopFlag().install()
    try:
        args, given = parse_given(argv)
        if args.fence_token is not None:
            from trainer.rundir import check_fence, set_fence

            set_fence(args.run_dir, args.fence_token)
            check_fence()  # superseded before it starts: touch nothing
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UsageError("atari-trainer: error: --device cuda but no CUDA GPU is visible")
        from trainer.train import main as train_main

        return train_main(args, stop=stop, given=given)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
