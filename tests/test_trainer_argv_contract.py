"""Every trainer command line the daemon builds, for every level of every shipped profile,
parses with the trainer's own parser into the values the level asked for (issue 10: a level
with ``buffer_gb: null`` used to omit --buffer-gb, so the trainer took another budget than the
one the profile validator counted), and the learner memory the trainer allocates for the level's
algo is the validator's estimate."""

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
            algo = profile.level_algo(level)
            assert args.algo == algo
            # The data memory the trainer allocates is what the validator counted (issue 17).
            assert contract.learner_memory_bytes(
                args.algo, args.num_envs, args.batch_size, args.buffer_gb, args.rollout_steps
            ) == contract.learner_memory_bytes(
                algo, level.num_envs, level.batch_size, level.buffer_gb
            )  # fmt: skip
            assert args.seed == profile.seed + i and args.device == profile.device
            assert args.run_dir == Path("/r") / gt.name


def test_a_run_keeps_its_algo_at_a_level_of_another(tmp_path: Path) -> None:
    import dataclasses
    import subprocess

    profile = load_profile(PROFILES[0].parent / "cpu-tiny.yaml")
    dqn_level = dataclasses.replace(profile.levels[0], algo="dqn")
    pqn_level = dataclasses.replace(profile.levels[0], algo="pqn")
    game = Game("CartPole-v1", 8, 0)
    run_dir = tmp_path / "CartPole-v1"
    assert parse(trainer_argv(profile, dqn_level, game, run_dir)[3:]).algo == "dqn"

    # A PQN run exists in the run dir (the real trainer, 8 episodes) ...
    first = subprocess.run(trainer_argv(profile, pqn_level, game, run_dir), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert "pqn: " in first.stderr
    # ... so a level whose algo is dqn starts the game without --algo, and the trainer goes on
    # with the run's own PQN network instead of refusing or starting a DQN run from scratch.
    argv = trainer_argv(profile, dqn_level, Game("CartPole-v1", 12, 0), run_dir)
    assert "--algo" not in argv
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resume: --algo pqn restored from the checkpoint" in again.stderr
    assert "pqn: " in again.stderr
