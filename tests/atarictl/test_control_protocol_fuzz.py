"""Fuzz the control protocol's request parser with hypothesis: random bytes and hostile JSON
never produce anything but a request or a one-line ``ProtocolError`` (which the server sends as
its reply). A last test feeds the same kinds of input to a real server, which must answer each
one and keep serving.

The example counts are bounded (``FUZZ_EXAMPLES``, default 150 per test) and the runs
derandomized, so CI stays fast and a failure reproduces.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.control_server import ControlServer
from daemon.control_server.protocol import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    ReplyCode,
    encode,
    error,
    parse_request,
)

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    derandomize=True,
    database=None,  # nothing written outside tmp; derandomized runs reproduce anyway
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Any JSON value, including the parser's hard cases: big and non-finite numbers, odd text.
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_leaves,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=40,
)


def _hostile_line(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["digits", "nesting", "surrogate", "value", "bytes_in_json"]))
    if kind == "digits":
        n = draw(st.integers(4000, 20_000))
        return b'{"cmd": "status", "args": {"n": ' + b"7" * n + b"}}"
    if kind == "nesting":
        n = draw(st.integers(1, 30_000))
        open_, close = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return b'{"cmd": "status", "args": {"x": ' + open_ * n + b"1" + close * n + b"}}"
    if kind == "surrogate":
        code = draw(st.integers(0xD800, 0xDFFF))
        return b'{"cmd": "status", "args": {"g": "\\u%04x"}}' % code
    if kind == "value":
        cmd = draw(st.text(max_size=12) | st.sampled_from(["status", "stop", "level"]))
        obj: Any = {"cmd": cmd, "args": draw(json_values)}
        if draw(st.booleans()):
            obj = draw(json_values)
        return json.dumps(obj).encode()
    raw = draw(st.binary(min_size=1, max_size=40))
    return b'{"cmd": "status", "args": {"g": "' + raw + b'"}}'


hostile_lines = st.composite(_hostile_line)()


def _assert_parses_or_refuses(line: bytes) -> None:
    try:
        request = parse_request(line)
    except ProtocolError as exc:
        reply = json.loads(encode(error(exc.code, str(exc))))
        assert reply["ok"] is False and reply["code"] in {c.value for c in ReplyCode}
        assert "\n" not in reply["error"] and reply["error"]
        return
    # Accepted: the shape the handlers rely on, and it survives the trip back as a reply.
    assert set(request) == {"cmd", "args"}
    assert isinstance(request["cmd"], str) and isinstance(request["args"], dict)
    encode({"ok": True, "result": request}).decode("utf-8")


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_are_a_request_or_a_one_line_refusal(data: bytes) -> None:
    _assert_parses_or_refuses(data)


@FUZZ
@given(line=hostile_lines)
def test_hostile_json_is_a_request_or_a_one_line_refusal(line: bytes) -> None:
    _assert_parses_or_refuses(line)


def _exchange(path: Path, line: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(line + b"\n")
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
    assert out.endswith(b"\n"), bytes(out[:200])
    return json.loads(out)


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 3))
@given(line=hostile_lines | st.binary(max_size=500).filter(lambda b: b"\n" not in b))
def test_a_real_server_answers_every_hostile_line_and_keeps_serving(
    tmp_path_factory: Any, line: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "atarictl.sock"
    with ControlServer(path, lambda req: {"ok": True, "result": req}, read_timeout=5) as srv:
        if line.strip() and len(line) <= MAX_REQUEST_BYTES:
            reply = _exchange(path, line)
            assert isinstance(reply["ok"], bool)
        assert srv.is_alive()
        assert _exchange(path, b'{"cmd": "status"}') == {
            "ok": True,
            "result": {"cmd": "status", "args": {}},
        }
