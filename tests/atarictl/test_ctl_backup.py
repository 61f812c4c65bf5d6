"""backup and restore on a real store and real checkpoint files (the daemon-running variant is
in test_ctl_daemon.py)."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from daemon.atarictl.archive import BackupError, verify
from daemon.atarictl.backup import backup
from daemon.atarictl.restore import restore
from daemon.control_server import ControlServer
from daemon.paths import resolve_dirs as resolve
from tests.support.state import atarictl, populate_state


def _rows(db: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


def _tree(root: Path) -> dict[str, bytes]:
    # SQLite's -wal/-shm sidecars appear when anyone (even read-only) opens a WAL database.
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def test_backup_then_restore_into_a_fresh_state_dir(state: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    out = atarictl("--state-dir", str(state), "backup", str(archive), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["games"] == ["CartPole-v1", "Pong"] and info["warnings"] == []
    manifest = verify(archive)
    assert {
        "atari.db",
        "models.json",
        "runs/Pong/best.pt",
        "runs/Pong/checkpoints/ckpt-000000002.pt",
    } <= set(manifest["files"])
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())

    fresh = tmp_path / "fresh"
    out = atarictl("--state-dir", str(fresh), "restore", str(archive))
    assert out.returncode == 0, out.stderr
    assert "restored" in out.stdout
    for table in ("games", "boots", "decisions", "runs", "level_state", "models"):
        assert _rows(fresh / "atari.db", table) == _rows(state / "atari.db", table), table
    assert _tree(fresh / "runs") == _tree(state / "runs")
    assert not [p for p in fresh.iterdir() if p.name.startswith(".restore-")]
    assert not list(tmp_path.glob(".atari-backup-*")) and not list(tmp_path.glob("*.partial"))


def test_restore_over_existing_state_keeps_the_previous_one(state: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    backup(resolve(state_dir=state), archive)
    (state / "runs" / "Pong" / "progress.json").write_text("{}")  # newer than the backup
    result = restore(resolve(state_dir=state), archive)
    assert json.loads((state / "runs/Pong/progress.json").read_text())["episodes"] == 3
    previous = Path(result["previous"])
    assert (previous / "runs/Pong/progress.json").read_text() == "{}"
    assert (previous / "atari.db").is_file()


def test_two_restores_in_one_second_keep_both_previous_states(state: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    backup(resolve(state_dir=state), archive)
    original = (state / "atari.db").read_bytes()
    first = restore(resolve(state_dir=state), archive, now=1000.0)
    second = restore(resolve(state_dir=state), archive, now=1000.0)
    assert first["previous"] != second["previous"]
    # The state from before the first restore is still kept, whole.
    assert (Path(first["previous"]) / "atari.db").read_bytes() == original
    assert (Path(second["previous"]) / "runs" / "Pong" / "progress.json").is_file()


def _rewrite(archive: Path, dest: Path, change) -> None:
    """Copy a backup member by member, letting `change(name, data)` alter or drop members."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(dest, "w:gz") as out:
        for m in src:
            data = src.extractfile(m).read()
            got = change(m.name, data)
            if got is None:
                continue
            name, data = got
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda n, d: (
                (n, d[:-1] + bytes([d[-1] ^ 1])) if n.endswith("ckpt-000000002.pt") else (n, d)
            ),
            "does not match its manifest checksum",
        ),
        (lambda n, d: None if n == "runs/Pong/best.pt" else (n, d), "archive lacks it"),
        (lambda n, d: ("../evil" if n == "models.json" else n, d), "unsafe path"),
        (
            lambda n, d: (
                (n, d.replace(b'"version": 1', b'"version": 9')) if n == "manifest.json" else (n, d)
            ),
            "version 9",
        ),
    ],
    ids=["flipped-bit", "missing-member", "path-traversal", "wrong-version"],
)
def test_tampered_backup_is_refused_and_nothing_changes(
    state: Path, tmp_path: Path, change, message: str
) -> None:
    good = tmp_path / "good.tar.gz"
    backup(resolve(state_dir=state), good)
    bad = tmp_path / "bad.tar.gz"
    _rewrite(good, bad, change)
    target = tmp_path / "target"
    populate_state(target)
    before = _tree(target)
    out = atarictl("--state-dir", str(target), "restore", str(bad))
    assert out.returncode == 6, out.stdout + out.stderr
    assert message in out.stderr and out.stderr.count("\n") == 1
    assert _tree(target) == before


def test_truncated_archive_is_refused(state: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    backup(resolve(state_dir=state), good)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BackupError, match=r"damaged archive|not a readable"):
        verify(cut)


def test_restore_refuses_while_a_daemon_listens(state: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    backup(resolve(state_dir=state), archive)
    before = _tree(state)
    sock = state / "run" / "atarictl.sock"
    with ControlServer(sock, lambda r: {"ok": True, "result": None}):
        out = atarictl("--state-dir", str(state), "restore", str(archive))
    assert out.returncode == 6
    assert "refusing to restore while the daemon runs" in out.stderr
    assert {k: v for k, v in _tree(state).items() if not k.startswith("run/")} == before


def test_corrupt_checkpoint_is_left_out_with_a_warning(state: Path, tmp_path: Path) -> None:
    ckpt = state / "runs/Pong/checkpoints/ckpt-000000001.pt"
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    result = backup(resolve(state_dir=state), tmp_path / "b.tar.gz")
    assert result["warnings"] == [f"{ckpt}: checksum mismatch, left out of the backup"]
    assert "runs/Pong/checkpoints/ckpt-000000001.pt" not in verify(tmp_path / "b.tar.gz")["files"]


def test_backup_refuses_to_overwrite(state: Path, tmp_path: Path) -> None:
    (tmp_path / "x.tar.gz").write_text("keep me")
    out = atarictl("--state-dir", str(state), "backup", str(tmp_path / "x.tar.gz"))
    assert out.returncode == 6 and "already exists" in out.stderr
    assert (tmp_path / "x.tar.gz").read_text() == "keep me"


def test_restore_refuses_while_the_daemon_lock_is_held(state: Path, tmp_path: Path) -> None:
    # A daemon whose socket lives elsewhere (--runtime-dir) still holds its state dir's lock.
    import fcntl

    archive = tmp_path / "b.tar.gz"
    backup(resolve(state_dir=state), archive)
    before = _tree(state)
    with open(state / "daemon.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        out = atarictl("--state-dir", str(state), "restore", str(archive))
    assert out.returncode == 6
    assert "pid 4242 holds" in out.stderr
    assert {k: v for k, v in _tree(state).items() if k != "daemon.lock"} == before
