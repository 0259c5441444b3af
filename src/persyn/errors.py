"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class PersynError(Exception):
    """An error caused by the user's input or environment, not by a bug."""

    exit_code = 2


class InputError(PersynError):
    """Bad input data, located by file, line and field where known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ""
        if file:
            where = f"{file}:{line}" if line is not None else str(file)
        if field:
            where = f"{where} [{field}]" if where else f"[{field}]"
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.line, self.field = file, line, field


class ConfigError(PersynError):
    """Bad configuration, located by the key's dotted path."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        prefix = f"{file}: " if file else ""
        super().__init__(f"{prefix}{key}: {message}" if key else f"{prefix}{message}")
        self.key = key


class StageFailedError(PersynError):
    """Every request of a stage failed (a server down, a key without quota): nothing was done, so the run stops
    instead of going on with empty results. What failed stays pending; the next run retries it."""

    exit_code = 1
