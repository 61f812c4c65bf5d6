"""Reboot detection: the real kernel boot id once, then files, then the store's daemon runs."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.autoscaler import Autoscaler, BootIdError
from daemon.autoscaler.boots import (
    DEFAULT_BOOT_ID_PATH,
    PreviousRun,
    describe,
    detect_boot,
    kernel_boot_time,
    read_boot_id,
)
from tests.support.autoscaler_box import T0, Box

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.mark.skipif(not Path(DEFAULT_BOOT_ID_PATH).exists(), reason="not a Linux kernel")
def test_the_real_kernel_boot_id_reads_as_a_stable_uuid() -> None:
    first = read_boot_id()
    assert UUID.match(first), first
    assert read_boot_id() == first  # the same boot, the same id
    assert 0 < kernel_boot_time() <= time.time()


def test_boot_id_file_errors_are_one_line_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(BootIdError, match=rf"^{re.escape(str(missing))}: cannot read") as info:
        read_boot_id(missing)
    assert "paths.boot_id_file" in str(info.value) and "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(BootIdError, match="empty boot id"):
        read_boot_id(empty)


def test_detect_boot_is_pure() -> None:
    assert detect_boot("b", 100.0, 200.0, PreviousRun("b", 90.0, True)) is None
    first = detect_boot("a", 100.0, 200.0, PreviousRun(None, None, None))
    assert first is not None and not first.is_reboot
    assert describe(first) == "boot: first boot seen (a)"
    record = detect_boot("c", 1000.0, 1030.0, PreviousRun("b", 400.0, False))
    assert record is not None and record.is_reboot
    assert (record.previous_boot_id, record.downtime_s, record.previous_clean_shutdown) == (
        "b",
        600.0,
        False,
    )
    assert describe(record) == (
        "boot: reboot detected, boot id b -> c; down about 600 s since the last heartbeat; "
        "previous daemon did not shut down cleanly"
    )


def test_record_boot_reads_heartbeat_and_clean_flag_from_daemon_runs(
    make_box: Callable[..., Box],
) -> None:
    box = make_box()
    old_boot = box.boot_file.read_text().strip()
    run = box.store.daemon_started(pid=111, boot_id=old_boot, at=T0)
    box.store.daemon_heartbeat(run, T0 + 500)
    box.store.daemon_stopped(run, T0 + 510, clean=True)
    new_boot = str(uuid.uuid4())
    box.boot_file.write_text(new_boot)
    box.clock.advance(3600)
    scaler = Autoscaler(box.policy, box.store, box.clock, boot_id_path=box.boot_file)
    record = scaler.record_boot()
    assert record is not None and record.is_reboot
    assert (record.previous_boot_id, record.boot_id) == (old_boot, new_boot)
    assert record.last_heartbeat_before == T0 + 510
    assert record.previous_clean_shutdown is True
    assert record.detected_at == T0 + 3600
    stored, _ = box.store.last_boot_and_daemon_run()
    assert stored is not None and stored["boot_id"] == new_boot
    assert stored["previous_clean_shutdown"] is True
    # The same boot again is a daemon restart, not a reboot.
    again = Autoscaler(box.policy, box.store, box.clock, boot_id_path=box.boot_file)
    assert again.record_boot() is None


def test_unclean_previous_run_is_recorded(make_box: Callable[..., Box]) -> None:
    box = make_box()
    run = box.store.daemon_started(pid=111, boot_id=box.boot_file.read_text().strip(), at=T0)
    box.store.daemon_heartbeat(run, T0 + 42)
    box.boot_file.write_text(str(uuid.uuid4()))
    record = Autoscaler(box.policy, box.store, box.clock, boot_id_path=box.boot_file).record_boot()
    assert record is not None
    assert (record.last_heartbeat_before, record.previous_clean_shutdown) == (T0 + 42, False)
