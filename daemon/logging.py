"""structlog setup for the daemon.

On a terminal: readable colored lines. Otherwise (systemd/journald, pipes): one line per event,
``<N>event key=value ...`` where ``<N>`` is the syslog priority that journald maps
(``journalctl -p warning`` works) and the fields stay greppable. Multi-line values (tracebacks)
are escaped so one event is always one journal entry.
"""

from __future__ import annotations

import json
import logging
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
    event.pop("timestamp", None)  # journald stamps every line itself
    fields = " ".join(f"{k}={_quote(v)}" for k, v in event.items())
    return f"<{prio}>{message}" + (f" {fields}" if fields else "")


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
    stream: TextIO | None = None, *, tty: bool | None = None, level: str = "info"
) -> None:
    stream = stream if stream is not None else sys.stdout
    if tty is None:
        tty = stream.isatty()
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
