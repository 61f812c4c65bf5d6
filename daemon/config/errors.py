"""The one error type of profile loading."""

from __future__ import annotations


class ProfileError(ValueError):
    """A profile problem; ``str()`` is one line ``FILE:LINE: FIELD: problem; fix``."""

    def __init__(self, file: str, line: int | None, fieldname: str, problem: str, fix: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {fieldname}: {problem}; {fix}")
        self.file, self.line, self.field = file, line, fieldname
