"""Wire format of the control socket, shared by the server and atarictl.

One request per connection: the client sends one JSON object on one line
(`{"cmd": "status", "args": {...}}\\n`), the server answers with one JSON object on one line
(`{"ok": true, "result": ...}` or `{"ok": false, "error": "one line", "code": "..."}`) and closes.
One request per connection keeps the server free of per-client session state, so a misbehaving
client can only ever hold one small buffer until its deadline.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any

MAX_REQUEST_BYTES = 64 * 1024
# No command takes more than a list of names; deeper args are an attack or a bug.
MAX_ARGS_DEPTH = 8
# Replies can carry a whole history listing; the cap only protects the client from a runaway.
MAX_REPLY_BYTES = 16 * 1024 * 1024

_CMD_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class ReplyCode(StrEnum):
    """Every ``code`` an error reply may carry; atarictl maps some of them to exit codes."""

    BAD_REQUEST = "bad_request"  # breaks the wire format, or a command's args are wrong
    TOO_LARGE = "too_large"  # request longer than MAX_REQUEST_BYTES
    TIMEOUT = "timeout"  # request incomplete within the read deadline, or no answer in time
    BUSY = "busy"  # too many connections or queued requests; retry
    SHUTTING_DOWN = "shutting_down"  # the daemon is stopping and takes no new work
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_GAME = "unknown_game"
    BAD_PROFILE = "bad_profile"  # reload refused: the new profile is invalid, the old one stays
    INTERNAL = "internal"  # a handler raised; the daemon logged the traceback
    BAD_REPLY = "bad_reply"  # client side: the daemon's reply breaks the wire format


class ProtocolError(ValueError):
    """A request or reply that does not follow the wire format; `code` is the reply code."""

    def __init__(self, message: str, code: ReplyCode = ReplyCode.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


def error(code: ReplyCode, message: str) -> dict[str, Any]:
    """An error reply. ``code`` must be a ReplyCode (a plain string is checked against it)."""
    # Error text must stay one line: atarictl prints it as is.
    return {"ok": False, "code": ReplyCode(code).value, "error": " ".join(str(message).split())}


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def parse_request(line: bytes) -> dict[str, Any]:
    """Validate one request line; returns `{"cmd": str, "args": dict}` or raises ProtocolError.

    Nothing else ever leaves: whatever the parser chokes on (an integer past Python's 4300-digit
    limit is a ValueError, deep nesting a RecursionError) is a ``bad_request``, so no request can
    end the thread that reads it.
    """
    try:
        return _parse_request(line)
    except ProtocolError:
        raise
    except (ValueError, RecursionError, MemoryError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ProtocolError(
            f"request cannot be parsed ({type(exc).__name__}: {reason}); "
            'send {"cmd": "...", "args": {...}} with plain values'
        ) from None


def _parse_request(line: bytes) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("request is not UTF-8; send one JSON object per line") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            f"request is not valid JSON ({exc.msg} at column {exc.colno}); "
            'send {"cmd": "...", "args": {...}}'
        ) from exc
    if not isinstance(obj, dict):
        raise ProtocolError('request must be a JSON object like {"cmd": "status", "args": {}}')
    extra = set(obj) - {"cmd", "args"}
    if extra:
        raise ProtocolError(f"unknown request field(s) {sorted(extra)}; only cmd and args exist")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not _CMD_RE.match(cmd):
        raise ProtocolError("field cmd must be a short lowercase command name such as 'status'")
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError("field args must be a JSON object")
    _check_plain(args)
    return {"cmd": cmd, "args": args}


def _check_plain(args: dict[str, Any]) -> None:
    """Args are shallow, and every string is real text: handlers, logs and replies then never
    meet a structure deeper than they expect or a lone surrogate (``"\\ud800"`` is valid JSON
    but cannot be written to a UTF-8 journal)."""
    stack: list[tuple[Any, int]] = [(args, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_ARGS_DEPTH:
            raise ProtocolError(f"field args is nested deeper than {MAX_ARGS_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((k, depth) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ProtocolError(
                    "request holds a lone surrogate escape (\\udXXX); send real UTF-8 text"
                ) from None


def parse_reply(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"daemon sent an unreadable reply: {exc}", ReplyCode.BAD_REPLY) from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ProtocolError("daemon sent a reply without a boolean 'ok' field", ReplyCode.BAD_REPLY)
    return obj
