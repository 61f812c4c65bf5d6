"""structlog setup for the daemon.

On a terminal: readable colored lines. Under journald: one line per event,
``<N>event key=value ...`` where ``<N>`` is the syslog priority that journald maps
(``journalctl -p warning`` works) and the fields stay greppable; journald stamps the time itself.
Anywhere else (a nohup log, a file, a pipe) the same line starts with a UTC timestamp, because
nothing else will record when it happened. Multi-line values (tracebacks) are escaped so one
event is always one line.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from typing import Any, TextIO

import structlog

PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


def _quote(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError, RecursionError):  # a tuple key, a cycle: a log call
            text = repr(value)  # must never raise into the code that logs
    if text == "" or any(c in text for c in ' "=\n\t') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)  # escapes NUL, CR and newlines
    return text


def _one_line(message: str) -> str:
    """journald ends a stdout line at a newline and at a NUL: escape every control character."""
    message = message.replace("\n", " | ")
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def journal_renderer(_logger: Any, method: str, event: dict[str, Any]) -> str:
    level = str(event.pop("level", method))
    prio = PRIORITY.get(level, 6)
    message = _one_line(str(event.pop("event", "")))
    stamp = event.pop("timestamp", None)  # set only off journald, which stamps lines itself
    fields = " ".join(f"{k}={_quote(v)}" for k, v in event.items())
    line = f"<{prio}>{message}" + (f" {fields}" if fields else "")
    return f"{stamp} {line}" if stamp else line


def is_journal_stream(stream: TextIO) -> bool:
    """True when ``stream`` is the journald connection systemd handed us.

    systemd sets ``JOURNAL_STREAM=<dev>:<inode>`` for a service whose stdout/stderr go to the
    journal; a child that redirected its output (or a shell started from the service) inherits
    the variable with another file behind it, so the variable alone is not proof: compare the
    stream's own device and inode, as sd_journal_stream_fd(3) advises.
    """
    raw = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in raw.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _ToStructlog(logging.Handler):
    """Library logs (APScheduler, SQLAlchemy) go through the same renderer."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = structlog.get_logger(record.name)
        method = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}.get(
            record.levelno, "error"
        )
        kw: dict[str, Any] = {}
        if record.exc_info:
            kw["exc_info"] = record.exc_info
        getattr(logger, method)(record.getMessage(), **kw)


def configure_logging(
    stream: TextIO | None = None,
    *,
    tty: bool | None = None,
    journal: bool | None = None,
    level: str = "info",
) -> None:
    stream = stream if stream is not None else sys.stdout
    if tty is None:
        tty = stream.isatty()
    if journal is None:
        journal = is_journal_stream(stream)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if tty:
        processors += [
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=True),
        ]
    else:
        if not journal:  # ISO 8601 UTC with milliseconds: sorts as text, no timezone guessing
            processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        processors += [structlog.processors.format_exc_info, journal_renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(logging.WARNING)
