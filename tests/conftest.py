"""Suite-wide fixtures (the real-daemon pools of tests/support/daemon.py) and the GPU skip rule."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonPool, RealDaemon
from tests.support.postgres import PgServer, find_bindir, missing

# Two cores in CI: keep torch and OpenMP from oversubscribing them in every subprocess too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the whole session (tests/support/postgres.py)."""
    why = missing()
    bindir = find_bindir()
    if why is not None or bindir is None:
        pytest.skip(why or "no PostgreSQL binaries")
    server = PgServer(bindir).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db(request: pytest.FixtureRequest, tmp_path) -> Callable[[], Path | str]:
    """A factory of empty store targets, once per backend: an SQLite file in tmp_path, or a
    fresh database on the session's PostgreSQL server (``Store.open`` takes either)."""
    if request.param == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        return server.fresh_url
    made: list[Path] = []

    def sqlite_file() -> Path:
        d = tmp_path / f"db{len(made)}"
        d.mkdir()
        made.append(d)
        return d / "atari.db"

    return sqlite_file


@pytest.fixture
def daemons(tmp_path) -> Iterator[DaemonPool]:
    """Real daemons for one test (``daemons.start(profile)``), killed with every trainer at
    teardown; their logs are attached to a failing test's report."""
    pool = DaemonPool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def module_daemons(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[DaemonPool]:
    """The same, shared by one module's tests (a real daemon is expensive to start)."""
    pool = DaemonPool(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    try:
        yield pool
    finally:
        pool.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed:
        # The daemon's own log says why a wait timed out; pytest shows these sections.
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, DaemonPool):
                for title, text in value.logs():
                    report.sections.append((title, text))
            elif isinstance(value, RealDaemon):
                report.sections.append((f"{value.name} log ({value.log})", value.tail(6000)))
    return report
