"""A host reboot, as systemd and the daemon see it: the sandbox powers off (systemd stops the
service the way a real shutdown does), then a new sandbox boots on the same disk with a new
boot id, and the enabled service starts by itself (WantedBy=multi-user.target)."""

from __future__ import annotations

from pathlib import Path

import pytest
from atari_service import GAMES, PROFILE, Service
from systemd_sandbox import Sandbox, wait_for

pytestmark = [pytest.mark.systemd, pytest.mark.slow]


def test_reboot_is_recorded_and_training_resumes(sandbox_root: Path) -> None:
    with Sandbox(sandbox_root) as first:
        first.boot()
        service = Service(first)
        service.write_dropin()
        result = service.atarictl("install-service", "--profile", str(PROFILE))
        assert result.returncode == 0, result.stderr + result.stdout
        service.wait_training()
        # A level other than the start level, so "kept" cannot be the default coming back.
        pinned = service.atarictl("level", "pin", "medium")
        assert pinned.returncode == 0, pinned.stderr + pinned.stdout
        wait_for(
            lambda: (
                service.query("SELECT state, pinned FROM level_state") == [("medium", "medium")]
            ),
            120,
            "the pin never reached the level state",
        )
        service.wait_training(min_episodes=1, batch_size=32)  # medium's settings
        first.shutdown()
    old_boot = first.boot_id
    before = {game: service.progress(game) for game in GAMES}
    level_before = service.query("SELECT state, entered_at, pinned FROM level_state")
    assert level_before[0][0] == "medium"
    for game, progress in before.items():
        # The poweroff stopped the service gracefully: every trainer checkpointed.
        assert progress is not None and progress["status"] == "stopped", (game, progress)

    with Sandbox(sandbox_root) as second:
        second.boot()
        assert second.boot_id != old_boot
        service = Service(second)
        after = service.wait_training()
        boots = service.query(
            "SELECT previous_boot_id, previous_clean_shutdown FROM boots WHERE boot_id = ?",
            second.boot_id,
        )
        assert boots == [(old_boot, 1)]
        assert service.query("SELECT state, entered_at, pinned FROM level_state") == level_before
        for game in GAMES:
            assert after[game]["batch_size"] == 32
            assert after[game]["episodes"] >= before[game]["episodes"]
            assert after[game]["env_steps"] >= before[game]["env_steps"]
        second.systemctl("stop", "atari-supervisor.service", check=False, timeout=200)
