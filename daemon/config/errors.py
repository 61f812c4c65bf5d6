"""The one error type of profile loading."""

from __future__ import annotations

MAX_PART = 400  # a 100 kB key still makes a readable line


def _one_line(text: str, limit: int | None = MAX_PART) -> str:
    """``text`` with line breaks and other control characters escaped, cut to ``limit``: the
    message is one line whatever the profile holds (a quoted key may contain a newline)."""
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return flat if limit is None or len(flat) <= limit else flat[: limit - 3] + "..."


class ProfileError(ValueError):
    """A profile problem; ``str()`` is one line ``FILE:LINE: FIELD: problem; fix``."""

    def __init__(self, file: str, line: int | None, fieldname: str, problem: str, fix: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        parts = (_one_line(where, None), _one_line(fieldname), _one_line(problem), _one_line(fix))
        super().__init__("{}: {}: {}; {}".format(*parts))
        self.file, self.line, self.field = file, line, fieldname
