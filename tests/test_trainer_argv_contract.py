"""Every trainer command line the daemon builds, for every level of every shipped profile,
parses with the trainer's own parser into the values the level asked for (issue 10: a level
with ``buffer_gb: null`` used to omit --buffer-gb, so the trainer took another budget than the
one the profile validator counted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_profile
from daemon.process.manager import trainer_argv
from daemon.process.states import Game
from trainer import contract
from trainer.args import parse

PROFILES = sorted((Path(__file__).resolve().parents[1] / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_level_of_every_shipped_profile_parses_into_what_it_asked(path: Path) -> None:
    profile = load_profile(path, host_memory_bytes=1 << 40)  # the GPU box, not this host
    assert profile.level_names
    for level in profile.levels:
        for i, gt in enumerate(profile.games):
            argv = trainer_argv(profile, level, Game(gt.name, gt.target, i), Path("/r") / gt.name)
            assert argv[1:3] == ["-m", "trainer"]
            args = parse(argv[3:])
            assert (args.game, args.episodes) == (gt.name, gt.target)
            assert (args.num_envs, args.batch_size) == (level.num_envs, level.batch_size)
            assert args.buffer_gb == contract.buffer_gb_or_default(level.buffer_gb)
            assert contract.replay_budget_bytes(args.buffer_gb) == contract.replay_budget_bytes(
                level.buffer_gb
            )  # the budget the profile validator counted
            assert args.seed == profile.seed + i and args.device == profile.device
            assert args.run_dir == Path("/r") / gt.name
