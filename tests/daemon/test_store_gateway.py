"""The store is the only gateway to the database: every failure is a one-line StoreError.

A second real process-level connection holds SQLite's write lock while the daemon's start-up
steps run; each must fail with the store's own error (which ``app.run_daemon`` reports as one
line and exit 1), never with a raw SQLAlchemy exception that escapes ``except StoreError``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.app import make_level_source
from daemon.clock import FakeClock
from daemon.config import load_profile
from daemon.store import Store, StoreError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"


@pytest.fixture
def profile(tmp_path: Path):
    boot = tmp_path / "boot_id"
    boot.write_text("boot-a\n")
    prof = tmp_path / "p.yaml"
    prof.write_text((FIXTURES / "valid-minimal.yaml").read_text()
                    + f"paths: {{boot_id_file: {boot}}}\n")  # fmt: skip
    return load_profile(prof)


@pytest.fixture
def write_locked(tmp_path: Path) -> Iterator[Store]:
    """A store whose database another connection holds the write lock of."""
    store = Store.open(tmp_path / "atari.db", busy_timeout_s=0.2)
    other = sqlite3.connect(tmp_path / "atari.db", timeout=0.1)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield store
    finally:
        other.rollback()
        other.close()
        store.close()


def test_a_locked_database_at_start_up_is_a_one_line_store_error(
    profile, write_locked: Store
) -> None:
    with pytest.raises(StoreError) as caught:
        make_level_source(profile, write_locked, FakeClock(1_000_000.0))
    msg = str(caught.value)
    assert "\n" not in msg
    assert str(write_locked.path) in msg and "locked" in msg
