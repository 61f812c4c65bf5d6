"""Reading an `atarictl backup` archive: its manifest, checked, and every member walked against
it (`verify`, and `restore`'s extraction). Paths are relative, no links; a member outside the
manifest, a size or sum that differs, or an unsafe name refuses the whole archive."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any

from daemon.atarictl.client import CtlError
from daemon.paths import DB_NAME

FORMAT = "atari-supervisor-backup"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a backup's manifest is a few KiB; anything this big is not ours
SQLITE_MAGIC = b"SQLite format 3\x00"
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BackupError(CtlError):
    """An archive that cannot be trusted, or a restore that must not proceed."""

    exit_code = 6


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts or not p.parts or name.startswith("./")


def _safe_name(name: str) -> str:
    if _unsafe(name):
        raise BackupError(f"archive member {name!r} has an unsafe path; refusing the archive")
    return PurePosixPath(name).as_posix()


def _open(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:gz")
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such file; give the path atarictl backup printed",
                          "not_found") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{archive}: not a readable tar.gz ({exc}); give an archive "
                          "made by atarictl backup", "bad_archive") from None


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    try:
        member = tar.getmember(MANIFEST)
        if not member.isfile():
            raise BackupError(f"{archive}: {MANIFEST} is not a regular file; refusing the archive")
        if member.size > MAX_MANIFEST_BYTES:
            raise BackupError(
                f"{archive}: {MANIFEST} is {member.size} bytes, more than any backup's; "
                "not an atarictl backup",
                "bad_archive",
            )
        f = tar.extractfile(member)
        assert f is not None
        manifest = json.loads(f.read(MAX_MANIFEST_BYTES + 1))
    except (KeyError, AssertionError):
        raise BackupError(
            f"{archive}: no {MANIFEST}; not an atarictl backup", "bad_archive"
        ) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BackupError(f"{archive}: damaged archive ({exc})", "bad_archive") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BackupError(
            f"{archive}: {MANIFEST} is not JSON ({str(exc)[:80]})", "bad_archive"
        ) from None
    _check_manifest(manifest, archive)
    return manifest


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_manifest(manifest: object, archive: Path) -> None:
    """The manifest is self-declared: check its shape so nothing below trips over a value."""
    if not isinstance(manifest, dict):
        raise BackupError(
            f"{archive}: {MANIFEST} is a JSON {type(manifest).__name__}, not an object; "
            "not an atarictl backup",
            "bad_archive",
        )
    fmt_, version = manifest.get("format"), manifest.get("version")
    if fmt_ != FORMAT or type(version) is not int or version != VERSION:
        raise BackupError(
            f"{archive}: manifest format {fmt_!r:.60} version {version!r:.20}; this atarictl "
            f"reads {FORMAT} version {VERSION}",
            "bad_archive",
        )

    def bad(what: str) -> BackupError:
        return BackupError(
            f"{archive}: {MANIFEST}: {what}; not a manifest atarictl wrote, refusing the archive",
            "bad_archive",
        )

    if not _number(manifest.get("created_at")):
        raise bad(f"created_at is not a number ({manifest.get('created_at')!r:.40})")
    games = manifest.get("games")
    if not isinstance(games, list) or not all(isinstance(g, str) for g in games):
        raise bad(f"games is not a list of names ({games!r:.40})")
    files = manifest.get("files")
    if not isinstance(files, dict) or DB_NAME not in files:
        raise BackupError(f"{archive}: manifest lists no {DB_NAME}", "bad_archive")
    for name, entry in files.items():
        if not isinstance(name, str) or _unsafe(name) or PurePosixPath(name).as_posix() != name:
            raise bad(f"files has an unsafe path {name!r:.80}")
        if not isinstance(entry, dict):
            raise bad(f"files[{name!r}] is not an object")
        size, digest = entry.get("size"), entry.get("sha256")
        if type(size) is not int or size < 0:
            raise bad(f"files[{name!r}]: size is not a whole number ({size!r:.40})")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise bad(f"files[{name!r}]: sha256 is not a sha256 hex digest ({digest!r:.70})")


def _hash_stream(f: IO[bytes], sink: IO[bytes] | None = None) -> tuple[str, int, bytes]:
    """(sha256, size, first bytes) of a stream, copying it to `sink` when given."""
    h = hashlib.sha256()
    n = 0
    head = b""
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        if len(head) < len(SQLITE_MAGIC):
            head += chunk[: len(SQLITE_MAGIC) - len(head)]
        n += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return h.hexdigest(), n, head


def _walk(archive: Path, dest: Path | None) -> dict[str, Any]:
    """Check every member against the manifest; with `dest`, also write the members there."""
    with _open(archive) as tar:
        manifest = _read_manifest(tar, archive)
        expected: dict[str, dict[str, Any]] = manifest["files"]
        seen: set[str] = set()
        manifests = 0
        try:
            for member in tar:
                name = _safe_name(member.name)
                if not member.isfile():
                    raise BackupError(
                        f"{archive}: member {name!r} is not a regular file; refusing the archive"
                    )
                if name == MANIFEST:
                    manifests += 1
                    if manifests > 1:
                        raise BackupError(f"{archive}: member {name!r} appears twice")
                    continue
                if name not in expected:
                    raise BackupError(f"{archive}: member {name!r} is not in the manifest")
                if name in seen:
                    raise BackupError(f"{archive}: member {name!r} appears twice")
                seen.add(name)
                f = tar.extractfile(member)
                assert f is not None
                if dest is None:
                    digest, size, head = _hash_stream(f)
                else:
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # A new file in our own fresh stage dir: never through a link, never over one.
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o666)  # fmt: skip
                    with os.fdopen(fd, "wb") as out:
                        digest, size, head = _hash_stream(f, out)
                        out.flush()
                        os.fsync(out.fileno())
                want = expected[name]
                if size != want["size"] or digest != want["sha256"]:
                    raise BackupError(
                        f"{archive}: {name} does not match its manifest checksum "
                        "(tampered or corrupt); refusing the archive",
                        "checksum",
                    )
                if name == DB_NAME and head != SQLITE_MAGIC:
                    raise BackupError(
                        f"{archive}: {DB_NAME} is not an SQLite database; not a backup atarictl "
                        "wrote, refusing the archive",
                        "bad_archive",
                    )
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BackupError(f"{archive}: damaged archive ({exc})", "bad_archive") from None
        missing = sorted(set(expected) - seen)
        if missing:
            raise BackupError(f"{archive}: manifest lists {missing[0]} but the archive lacks it")
    return manifest


def verify(archive: Path) -> dict[str, Any]:
    """Raise BackupError unless every file matches the manifest; returns the manifest."""
    return _walk(Path(archive), None)


# --------------------------------------------------------------------------------- restore
