"""backup and restore under faults: a real crash in the middle of the restore swap, malformed
archives, and links planted in the state dir."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from daemon.atarictl import archive as backup_mod
from daemon.atarictl.archive import verify
from daemon.atarictl.backup import backup
from daemon.atarictl.restore import INTENT_NAME, recover_interrupted_restore
from daemon.paths import resolve_dirs as resolve
from tests.support.state import atarictl, populate_state

ROOT = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, bytes]:
    """Regular files under root (links not followed), without SQLite sidecars and the lock."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink() or name.endswith(("-wal", "-shm")) or name == "daemon.lock":
                continue
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


@pytest.fixture
def archive(state: Path, tmp_path: Path) -> Path:
    path = tmp_path / "b.tar.gz"
    backup(resolve(state_dir=state), path)
    return path


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A state dir whose db and runs differ from the backup's, so old and new can be told apart."""
    t = populate_state(tmp_path / "target", now=1.0e9)
    (t / "runs/Pong/progress.json").write_text('{"old": true}')
    (t / "runs/OnlyOld").mkdir()
    (t / "runs/OnlyOld/progress.json").write_text("{}")
    return t


# --------------------------------------------------------------------- A: crash during the swap

# Runs the real restore in a child process that dies (os._exit, no cleanup, no finally blocks)
# around its N-th os.rename: the swap's renames are the only os.rename calls a restore makes.
_CRASHING_RESTORE = """
import os, sys
from pathlib import Path
from daemon.atarictl import restore
from daemon.paths import resolve_dirs
state, archive, at, when = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
real, calls = os.rename, [0]
def rename(src, dst, *a, **k):
    calls[0] += 1
    if calls[0] == at and when == "before":
        os._exit(1)
    real(src, dst, *a, **k)
    if calls[0] == at and when == "after":
        os._exit(1)
os.rename = rename
restore.restore(resolve_dirs(state_dir=state), archive)
os._exit(0)
"""


def _crash_restore(state: Path, archive: Path, at: int, when: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CRASHING_RESTORE, str(state), str(archive), str(at), when],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 1, child.stdout + child.stderr  # it did crash mid-swap


def _assert_consistent_backup_state(target: Path, archive: Path, old: dict[str, bytes]) -> None:
    new = {k: v for k, v in _members(archive).items() if k.startswith(("atari.db", "runs/"))}
    now = {k: v for k, v in _tree(target).items() if k.startswith(("atari.db", "runs/"))}
    # Never a restored database with the old (or no) runs/: the daemon would start every game
    # from zero, or from checkpoints that disagree with the database.
    assert now in (new, old), sorted(set(now) ^ set(new))
    assert now == new  # the staged data was complete, so the swap is finished forward
    assert not (target / INTENT_NAME).exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".restore-")]
    # Nothing of the previous state is lost: it is whole in its pre-restore dir.
    (aside,) = [p for p in target.iterdir() if p.name.startswith("pre-restore-")]
    assert {f"{k}": v for k, v in _tree(aside).items()} == old


@pytest.mark.parametrize(
    ("at", "when"),
    [(1, "before"), (1, "after"), (2, "after"), (3, "after"), (4, "after")],
    ids=["before-any-rename", "old-db-aside", "old-runs-aside", "new-db-placed", "all-renamed"],
)
def test_crash_during_restore_swap_is_finished_on_daemon_start(
    target: Path, archive: Path, at: int, when: str
) -> None:
    old = {k: v for k, v in _tree(target).items() if k.startswith(("atari.db", "runs/"))}
    _crash_restore(target, archive, at, when)
    message = recover_interrupted_restore(target)
    assert message is not None and "\n" not in message and str(archive) in message
    _assert_consistent_backup_state(target, archive, old)
    assert recover_interrupted_restore(target) is None  # done once, nothing left to do


def test_next_restore_finishes_an_interrupted_one_first(target: Path, archive: Path) -> None:
    old = {k: v for k, v in _tree(target).items() if k.startswith(("atari.db", "runs/"))}
    _crash_restore(target, archive, 3, "after")  # the new db is in place, runs/ is not
    out = atarictl("--state-dir", str(target), "restore", str(archive))
    assert out.returncode == 0, out.stderr
    assert "finished an interrupted restore" in out.stderr
    assert not (target / INTENT_NAME).exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".restore-")]
    first, second = sorted(
        (p for p in target.iterdir() if p.name.startswith("pre-restore-")),
        key=lambda p: (len(p.name), p.name),
    )
    assert _tree(first) == old
    # The interrupted restore was completed before the second one set its state aside.
    new = {k: v for k, v in _members(archive).items() if k.startswith(("atari.db", "runs/"))}
    assert _tree(second) == new


def test_interrupted_restore_with_missing_staged_data_is_rolled_back(
    target: Path, archive: Path
) -> None:
    old = {k: v for k, v in _tree(target).items() if k.startswith(("atari.db", "runs/"))}
    _crash_restore(target, archive, 2, "after")  # old db and runs aside, nothing placed
    intent = json.loads((target / INTENT_NAME).read_text())
    staged_runs = target / intent["stage"] / "runs"
    os.rename(staged_runs, target / "lost-runs")  # the staged runs/ went missing
    message = recover_interrupted_restore(target)
    assert message is not None and "rolled back" in message
    now = {k: v for k, v in _tree(target).items() if k.startswith(("atari.db", "runs/"))}
    assert now == old
    assert not (target / INTENT_NAME).exists()
    assert not [p for p in target.iterdir() if p.name.startswith((".restore-", "pre-restore-"))]


def test_no_intent_means_nothing_to_recover(target: Path) -> None:
    before = _tree(target)
    assert recover_interrupted_restore(target) is None
    assert recover_interrupted_restore(target.parent / "absent") is None
    assert _tree(target) == before


def test_a_malformed_intent_file_is_one_line_naming_it(target: Path) -> None:
    (target / INTENT_NAME).write_text('{"renames": [["../../etc/passwd", "x"]]}')
    with pytest.raises(backup_mod.BackupError) as err:
        recover_interrupted_restore(target)
    assert str(target / INTENT_NAME) in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------- B: malformed archives


def _build(dest: Path, contents: dict[str, bytes], manifest: bytes | None, changes: dict) -> Path:
    """A self-consistent archive of `contents` (its manifest has their true sums) unless `manifest`
    replaces the manifest's bytes; `changes` override manifest keys."""
    doc = {
        "format": backup_mod.FORMAT,
        "version": backup_mod.VERSION,
        "created_at": 1.7e9,
        "host": "h",
        "source_state_dir": "/x",
        "games": sorted({n.split("/")[1] for n in contents if n.startswith("runs/")}),
        "files": {
            n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in contents.items()
        },
    }
    doc.update(changes)
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in [
            ("manifest.json", manifest or json.dumps(doc).encode()),
            *contents.items(),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def _good_files(archive: Path) -> dict[str, bytes]:
    return {k: v for k, v in _members(archive).items() if k != "manifest.json"}


def _entry_not_object(files: dict[str, bytes]) -> dict:
    listed = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()
    }
    listed["models.json"] = "abc"
    return {"files": listed}


def _size_is_text(files: dict[str, bytes]) -> dict:
    listed = {n: {"size": str(len(d)), "sha256": hashlib.sha256(d).hexdigest()}
              for n, d in files.items()}  # fmt: skip
    return {"files": listed}


def _sha_missing(files: dict[str, bytes]) -> dict:
    return {"files": {n: {"size": len(d)} for n, d in files.items()}}


MALFORMED = {
    "db-not-sqlite": (lambda f: ({**f, "atari.db": b"not a database at all\n" * 40}, None, {}),
                      "atari.db is not an SQLite database"),
    "db-without-schema": (lambda f: ({**f, "atari.db": _empty_sqlite()}, None, {}),
                          "not an atari-supervisor database"),
    "manifest-entry-not-object": (lambda f: (f, None, _entry_not_object(f)),
                                  "manifest.json: files['models.json'] is not an object"),
    "manifest-not-json": (lambda f: (f, b"{nope", {}), "manifest.json is not JSON"),
    "manifest-a-list": (lambda f: (f, b"[1, 2]", {}), "manifest.json is a JSON list"),
    "manifest-deep": (lambda f: (f, b"[" * 100_000 + b"]" * 100_000, {}),
                      "manifest.json is not JSON"),
    "games-a-number": (lambda f: (f, None, {"games": 5}), "manifest.json: games is not a list"),
    "created-at-text": (lambda f: (f, None, {"created_at": "yesterday"}),
                        "manifest.json: created_at is not a number"),
    "created-at-missing": (lambda f: (f, None, {"created_at": None}),
                           "manifest.json: created_at is not a number"),
    "size-as-text": (lambda f: (f, None, _size_is_text(f)), "size is not a whole number"),
    "sha256-missing": (lambda f: (f, None, _sha_missing(f)), "sha256 is not a sha256"),
    "version-true": (lambda f: (f, None, {"version": True}), "version True"),
}  # fmt: skip


def _empty_sqlite() -> bytes:
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        conn = sqlite3.connect(Path(d) / "x.db")
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
        return (Path(d) / "x.db").read_bytes()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_archive_is_refused_in_one_line_with_exit_6(
    archive: Path, target: Path, tmp_path: Path, case: str
) -> None:
    make, message = MALFORMED[case]
    files, manifest, changes = make(_good_files(archive))
    bad = _build(tmp_path / "bad.tar.gz", files, manifest, changes)
    before = _tree(target)
    out = atarictl("--state-dir", str(target), "restore", str(bad))
    assert out.returncode == 6, out.stdout + out.stderr
    assert out.stderr.startswith("atarictl: ") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr
    assert _tree(target) == before
    assert not [p for p in target.iterdir() if p.name.startswith((".restore-", "pre-restore-"))]


# ------------------------------------------------------------------- C: links in the state dir


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    s = tmp_path / "outside" / "shadow"
    s.parent.mkdir()
    s.write_bytes(b"root:$6$secret-hash-that-must-not-leave:19000:0:99999:7:::\n")
    return s


def _archive_has(archive: Path, data: bytes) -> bool:
    return any(data in v for v in _members(archive).values())


@pytest.mark.parametrize(
    "rel",
    ["runs/Pong/best.pt", "runs/Pong/progress.json", "runs/Pong/checkpoints/ckpt-000000003.pt"],
)
def test_backup_skips_a_symlink_in_a_run_dir_with_a_warning(
    state: Path, tmp_path: Path, secret: Path, rel: str
) -> None:
    link = state / rel
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    out = tmp_path / "b.tar.gz"
    result = backup(resolve(state_dir=state), out)
    assert [w for w in result["warnings"] if str(link) in w] == [
        f"{link}: a symlink, not a regular file; left out of the backup (replace it with a "
        "regular file if it belongs in the backup)"
    ]
    assert rel not in verify(out)["files"] and not _archive_has(out, secret.read_bytes())


def test_backup_skips_a_hard_link_in_a_run_dir_with_a_warning(
    state: Path, tmp_path: Path, secret: Path
) -> None:
    link = state / "runs/Pong/progress.json"
    link.unlink()
    os.link(secret, link)
    out = tmp_path / "b.tar.gz"
    result = backup(resolve(state_dir=state), out)
    assert result["warnings"] == [
        f"{link}: has 2 hard links, so it may be a file from outside the state dir; left out of "
        "the backup (replace it with a copy of its own)"
    ]
    assert "runs/Pong/progress.json" not in verify(out)["files"]
    assert not _archive_has(out, secret.read_bytes())


def test_backup_skips_symlinked_run_and_checkpoint_dirs(
    state: Path, tmp_path: Path, secret: Path
) -> None:
    (state / "runs/Evil").symlink_to(secret.parent, target_is_directory=True)
    (secret.parent / "progress.json").write_bytes(secret.read_bytes())
    ckpts = state / "runs/CartPole-v1/checkpoints"
    os.rename(ckpts, tmp_path / "moved-ckpts")
    ckpts.symlink_to(tmp_path / "moved-ckpts", target_is_directory=True)
    out = tmp_path / "b.tar.gz"
    result = backup(resolve(state_dir=state), out)
    assert len(result["warnings"]) == 2 and all("a symlink" in w for w in result["warnings"])
    assert "Evil" not in result["games"]
    files = verify(out)["files"]
    assert not [f for f in files if f.startswith(("runs/Evil", "runs/CartPole-v1/checkpoints/"))]
    assert not _archive_has(out, secret.read_bytes())


def test_backup_does_not_write_through_a_planted_partial_symlink(
    state: Path, tmp_path: Path, secret: Path
) -> None:
    before = secret.read_bytes()
    out = tmp_path / "b.tar.gz"
    out.with_name("b.tar.gz.partial").symlink_to(secret)
    got = atarictl("--state-dir", str(state), "backup", str(out))
    assert got.returncode == 6 and got.stderr.count("\n") == 1, got.stderr
    assert "b.tar.gz.partial exists" in got.stderr
    assert secret.read_bytes() == before and not out.exists()
    assert out.with_name("b.tar.gz.partial").is_symlink()  # not ours to remove


def _with_member(archive: Path, dest: Path, info: tarfile.TarInfo) -> Path:
    with tarfile.open(archive, "r:gz") as src, tarfile.open(dest, "w:gz") as out:
        for m in src:
            out.addfile(m, src.extractfile(m))
        out.addfile(info)
    return dest


def _link_member(name: str, kind: bytes, to: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, to
    return info


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (_link_member("runs/Pong/evil.pt", tarfile.SYMTYPE, "/etc/shadow"), "not a regular file"),
        (_link_member("runs/Pong/hard.pt", tarfile.LNKTYPE, "atari.db"), "not a regular file"),
        (_link_member("runs", tarfile.SYMTYPE, "/etc"), "not a regular file"),
        (tarfile.TarInfo("../../escape"), "unsafe path"),
        (tarfile.TarInfo("/abs/escape"), "unsafe path"),
    ],
    ids=["symlink", "hardlink", "symlinked-runs", "dotdot", "absolute"],
)
def test_link_and_escaping_members_are_refused(
    archive: Path, target: Path, tmp_path: Path, info: tarfile.TarInfo, message: str
) -> None:
    bad = _with_member(archive, tmp_path / "bad.tar.gz", info)
    before = _tree(target)
    out = atarictl("--state-dir", str(target), "restore", str(bad))
    assert out.returncode == 6 and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr
    assert _tree(target) == before


def test_restore_moves_symlinks_planted_in_the_state_dir_aside(
    archive: Path, target: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    os.rename(target / "runs", tmp_path / "old-runs")
    (target / "runs").symlink_to(elsewhere, target_is_directory=True)
    # Dangling: SQLite would create the restored database's WAL through it, outside the dir.
    (target / "atari.db-wal").symlink_to(elsewhere / "wal")
    out = atarictl("--state-dir", str(target), "restore", str(archive))
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(elsewhere)) == ["keep"] and (elsewhere / "keep").read_text() == "keep"
    assert not (target / "runs").is_symlink() and (target / "runs/Pong/best.pt").is_file()
    assert not os.path.lexists(target / "atari.db-wal")  # moved aside with the old database
