"""The one user-facing error type and the named exit codes.

Every error a user can cause is raised as :class:`SkyMiniError` and caught once, at the top
of the CLI, where its message is printed without a traceback and its exit code returned.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_SERVER = 3
EXIT_DEGRADED = 4


class SkyMiniError(Exception):
    """An error to show a person: what went wrong, where, and what to do next."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SkyMiniError):
    """Bad usage or a bad input file (exit 2). Nothing has been recorded."""

    exit_code = EXIT_USAGE


class SpecError(UsageError):
    """A task or service file that cannot be accepted; names the file and the key."""

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        where = f"{path}: key '{key}'" if key else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class NoServerError(SkyMiniError):
    """No server is running where one is needed (exit 3)."""

    exit_code = EXIT_NO_SERVER
