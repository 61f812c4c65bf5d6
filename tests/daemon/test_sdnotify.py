"""sd_notify against a real datagram socket, and the no-op path without NOTIFY_SOCKET."""

from __future__ import annotations

import socket
from pathlib import Path

from daemon.sdnotify import Notifier, child_environment


def test_sends_datagrams_to_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        notifier = Notifier(str(path))
        assert notifier.enabled
        assert notifier.ready(status="light · 2 running\n0 fatal")
        assert server.recv(4096).decode() == "READY=1\nSTATUS=light · 2 running 0 fatal"
        assert notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        assert notifier.extend_timeout(1.5)
        assert server.recv(4096) == b"EXTEND_TIMEOUT_USEC=1500000"


def test_abstract_socket_address() -> None:
    name = f"@atari-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name[1:])
        server.settimeout(5)
        assert Notifier(name).stopping()
        assert server.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_nothing_is_sent(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False


def test_gone_socket_is_not_an_error(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "missing.sock")).watchdog() is False


def test_children_never_inherit_the_notify_socket() -> None:
    env = child_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}
