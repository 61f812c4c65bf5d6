"""The control socket server on its own, with a trivial handler: protocol, limits and attacks."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.atarictl.client import Client, DaemonUnreachable
from daemon.control_server import ControlServer, ControlServerError


def echo(request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "result": {"echo": request}}


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "atarictl.sock"


@pytest.fixture
def server(sock_path: Path) -> Iterator[ControlServer]:
    srv = ControlServer(sock_path, echo, read_timeout=2.0, max_connections=16)
    srv.start()
    yield srv
    srv.close()


def send_raw(path: Path, data: bytes, *, shut_wr: bool = False, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        if shut_wr:
            s.shutdown(socket.SHUT_WR)
        out = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)


def reply_of(data: bytes) -> dict[str, Any]:
    assert data.endswith(b"\n"), data
    return json.loads(data)


def test_request_reply_and_socket_mode(server: ControlServer, sock_path: Path) -> None:
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    result = Client(sock_path).call("status", {"games": ["Pong"]})
    assert result == {"echo": {"cmd": "status", "args": {"games": ["Pong"]}}}


def test_close_removes_socket(sock_path: Path) -> None:
    srv = ControlServer(sock_path, echo)
    srv.start()
    assert sock_path.exists()
    srv.close()
    assert not sock_path.exists()
    with pytest.raises(DaemonUnreachable, match="no socket file"):
        Client(sock_path).call("status")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"garbage\n", "not valid JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"cmd": "status", "evil": 1}\n', "unknown request field"),
        (b'{"cmd": "status; rm -rf /"}\n', "field cmd"),
        (b'{"cmd": 7}\n', "field cmd"),
        (b'{"cmd": "status", "args": [1]}\n', "field args"),
        (b"\xff\xfe\n", "not UTF-8"),
    ],
)
def test_malformed_requests_get_an_error_reply(
    server: ControlServer, sock_path: Path, payload: bytes, fragment: str
) -> None:
    reply = reply_of(send_raw(sock_path, payload))
    assert reply["ok"] is False
    assert reply["code"] == "bad_request"
    assert fragment in reply["error"]
    assert "\n" not in reply["error"]


def test_oversized_request_is_refused(server: ControlServer, sock_path: Path) -> None:
    big = b'{"cmd": "status", "args": {"x": "' + b"a" * 200_000 + b'"}}\n'
    reply = reply_of(send_raw(sock_path, big))
    assert reply == {"ok": False, "code": "too_large", "error": reply["error"]}
    assert "65536 bytes" in reply["error"]


def test_half_closed_request_without_newline_is_answered(
    server: ControlServer, sock_path: Path
) -> None:
    reply = reply_of(send_raw(sock_path, b'{"cmd": "level"}', shut_wr=True))
    assert reply["result"]["echo"]["cmd"] == "level"
    reply = reply_of(send_raw(sock_path, b'{"cmd": "lev', shut_wr=True))
    assert reply["code"] == "bad_request"


def test_silent_client_gets_a_timeout_reply(sock_path: Path) -> None:
    with ControlServer(sock_path, echo, read_timeout=0.3):
        reply = reply_of(send_raw(sock_path, b"", timeout=10))
    assert reply["code"] == "timeout"


def test_handler_exception_becomes_internal_error(sock_path: Path) -> None:
    def broken(request: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    with ControlServer(sock_path, broken):
        reply = reply_of(send_raw(sock_path, b'{"cmd": "status"}\n'))
    assert reply["ok"] is False
    assert reply["code"] == "internal"
    assert "boom" in reply["error"]


def test_pending_requests_are_capped_with_busy(sock_path: Path) -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow(request: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        release.wait(10)
        return echo(request)

    with ControlServer(sock_path, slow, workers=1, max_pending=1):
        first: list[bytes] = []
        t = threading.Thread(target=lambda: first.append(send_raw(sock_path, b'{"cmd":"a"}\n')))
        t.start()
        assert entered.wait(10)
        second = reply_of(send_raw(sock_path, b'{"cmd":"b"}\n'))
        release.set()
        t.join(10)
    assert second["code"] == "busy"
    assert reply_of(first[0])["result"]["echo"]["cmd"] == "a"


def test_connection_cap_evicts_the_oldest_idle_client(sock_path: Path) -> None:
    with ControlServer(sock_path, echo, max_connections=4, read_timeout=30):
        idle = []
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(sock_path))
            idle.append(s)
        try:
            # Over the cap: the newcomer is served, the oldest silent one is told why and dropped.
            assert Client(sock_path, timeout=5).call("status")["echo"]["cmd"] == "status"
            idle[0].settimeout(5)
            assert reply_of(idle[0].recv(4096))["code"] == "busy"
        finally:
            for s in idle:
                s.close()


def test_stale_socket_is_replaced_but_a_live_one_is_not(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # bound, never listening: what a crashed daemon leaves behind
    with ControlServer(sock_path, echo):
        assert Client(sock_path).call("x") == {"echo": {"cmd": "x", "args": {}}}
        with pytest.raises(ControlServerError, match="another daemon is listening"):
            ControlServer(sock_path, echo).start()
        # The refused second server must not have removed the live socket.
        assert Client(sock_path).call("y")["echo"]["cmd"] == "y"


def test_unknown_group_is_one_clear_error(sock_path: Path) -> None:
    with pytest.raises(ControlServerError, match=r"control.socket_group: group 'no-such-grp-x'"):
        ControlServer(sock_path, echo, group="no-such-grp-x").start()
    assert not sock_path.exists()


def test_group_is_applied(sock_path: Path) -> None:
    import grp

    # Another group than the process's own: a server that skipped the chown would show ours.
    other = next((g for g in grp.getgrall() if g.gr_gid != os.getgid()), None)
    if other is None:
        pytest.skip("this host has a single group")
    with ControlServer(sock_path, echo, group=other.gr_name):
        assert os.stat(sock_path).st_gid == other.gr_gid


def test_stays_responsive_under_attack(sock_path: Path) -> None:
    from tests.support.attacks import assert_answers_within_a_second, attack

    calls = []

    def handler(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request["cmd"])
        return echo(request)

    with ControlServer(sock_path, handler, max_connections=32), attack(sock_path):
        client = Client(sock_path, timeout=5)
        assert_answers_within_a_second(lambda: client.call("status"))
    # Only the well-formed requests ever reached the handler; no attack traffic did.
    assert calls == ["status"] * 5


# ---------------------------------------------------------------------- parser-breaking requests

HOSTILE = {
    # json.loads raises ValueError (not JSONDecodeError) past 4300 digits.
    "huge integer": b'{"cmd": "status", "args": {"n": ' + b"9" * 5000 + b"}}\n",
    # The C scanner raises RecursionError long before the request size cap.
    "deep nesting": b'{"cmd": "status", "args": {"x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}\n",
    "bad UTF-8 inside a string": b'{"cmd": "status", "args": {"g": "\xc3\x28"}}\n',
    "lone surrogate escape": b'{"cmd": "status", "args": {"g": "\\ud800"}}\n',
    "nesting past the args limit": b'{"cmd": "status", "args": {"x": '
    + b"[" * 40
    + b"]" * 40
    + b"}}\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_request_that_breaks_the_parser_is_a_bad_request_and_serving_goes_on(
    server: ControlServer, sock_path: Path, name: str
) -> None:
    for _ in range(3):  # again and again: the selector thread must survive each one
        reply = reply_of(send_raw(sock_path, HOSTILE[name]))
        assert reply["ok"] is False and reply["code"] == "bad_request", reply
        assert "\n" not in reply["error"]
    assert server.is_alive()
    assert Client(sock_path).call("status") == {"echo": {"cmd": "status", "args": {}}}


def test_one_failing_iteration_never_ends_the_selector_thread(
    server: ControlServer, sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug we do not know of yet, on the selector thread: one connection's handling raises.
    real = server._dispatch
    calls = []

    def flaky(conn: Any, line: bytes) -> None:
        calls.append(line)
        if len(calls) == 1:
            raise RuntimeError("a bug in request handling")
        real(conn, line)

    monkeypatch.setattr(server, "_dispatch", flaky)
    reply = reply_of(send_raw(sock_path, b'{"cmd": "status"}\n'))
    assert reply["code"] == "internal"
    assert server.is_alive()
    assert Client(sock_path).call("level") == {"echo": {"cmd": "level", "args": {}}}


def test_is_alive_reports_a_dead_selector_thread(sock_path: Path) -> None:
    srv = ControlServer(sock_path, echo)
    assert not srv.is_alive()  # not started
    srv.start()
    try:
        assert srv.is_alive()
        assert srv._selector is not None
        srv._selector.close()  # the selector itself breaks: nothing left to serve with
        srv._thread.join(10)  # type: ignore[union-attr]
        assert not srv.is_alive()
    finally:
        srv.close()


def test_a_dead_control_thread_fails_the_health_check() -> None:
    from daemon.checks import Checks
    from daemon.config import Checks as Intervals
    from daemon.supervisor import Check, Shutdown

    posted: list[object] = []
    alive = [True]
    checks = Checks(Intervals(), posted.append, probes={"control socket": lambda: alive[0]})
    checks._job("health")
    assert posted == [Check("health")]
    alive[0] = False
    checks._job("health")
    # No health pass (so no WATCHDOG=1), but a failing shutdown: systemd restarts the daemon.
    assert len(posted) == 2 and isinstance(posted[1], Shutdown)
    assert posted[1].exit_code != 0 and "control socket" in posted[1].reason


def test_the_real_daemon_answers_parser_breaking_requests_and_keeps_serving(
    daemons, tmp_path: Path
) -> None:
    from tests.support.profiles import daemon_profile

    profile = daemon_profile({"CartPole-v1": 10**6}, slots=1).write(tmp_path / "p.yaml")
    d = daemons.start(profile)
    d.wait_for("the control socket", d.status)
    for name, payload in HOSTILE.items():
        reply = reply_of(send_raw(d.socket, payload, timeout=15))
        assert reply["code"] == "bad_request", (name, reply)
    assert d.status()["games"][0]["game"] == "CartPole-v1"
    assert d.alive()
