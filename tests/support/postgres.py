"""A real PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` in a temp dir.

The server runs as the invoking user, or as ``postgres`` when the tests run as root (initdb
refuses root; CI runs as root). It listens on 127.0.0.1 on a free port and on a unix socket in
its own dir, trusts local connections, and is stopped (``pg_ctl stop -m fast``) at the end.
``fsync`` is off: the tests check what the store does, not the disk's durability, and two shared
cores must not wait on flushes. ``fresh_url()`` makes an empty database per test (CREATE
DATABASE from template0 is cheap), so tests never see each other's rows.

``find_bindir()`` returns None when no PostgreSQL binaries are installed; fixtures then skip.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $PG_BINDIR, PATH, or the newest /usr/lib/postgresql/*/bin."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).resolve().parent))  # /usr/local/bin holds symlinks
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                         else 0, reverse=True)  # fmt: skip
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def missing() -> str | None:
    """Why no test server can be started here (the fixtures' skip reason), or None."""
    if find_bindir() is None:
        return ("no PostgreSQL binaries (initdb, pg_ctl) on this machine: set PG_BINDIR or "
                "install postgresql to run the PostgreSQL store tests")  # fmt: skip
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return (f"running as root and there is no {SERVER_USER!r} user to run the server "
                    "as (initdb refuses root)")  # fmt: skip
        if shutil.which("runuser") is None:
            return "running as root and there is no runuser to start the server as postgres"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One server; ``url(db)`` is a SQLAlchemy URL, ``fresh_url()`` a new empty database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="atari-pg-"))
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        self._counter = itertools.count()
        self.sockdir.mkdir()
        if self._as_root:
            pw = pwd.getpwnam(SERVER_USER)
            for p in (self.root, self.sockdir):
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> PgServer:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync", "--locale=C")  # fmt: skip
        self.pg_ctl_start()
        return self

    def pg_ctl_start(self) -> None:
        opts = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=300")  # fmt: skip
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w",
                  "-t", "60", "start")  # fmt: skip

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every client connection is cut."""
        self.stop()
        self.pg_ctl_start()

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def execute(self, sql: str, db: str = "postgres") -> list[tuple[object, ...]]:
        """One statement in autocommit (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db,
                             autocommit=True) as conn:  # fmt: skip
            cur = conn.execute(sql)
            return list(cur.fetchall()) if cur.description else []

    def fresh_url(self, prefix: str = "t") -> str:
        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)
