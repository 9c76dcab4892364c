"""A job's secret values, kept out of its record (a leaf module).

The CLI writes ``secrets/<id>.json`` (0600, in a 0700 directory) before the job's record
exists; the server reads it when the job starts, hands the values to the job's environment
only, and removes the file when the job ends (or never starts). Records, ``--json``,
``jobs queue``, ``api status`` and the server log carry the secret *names* only.
"""

from __future__ import annotations

import contextlib
import json
import os


def write_secrets(path: str, values: dict[str, str]) -> None:
    """Write ``values`` to ``path`` readable by the owner only (atomically, fsynced)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(values).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_secrets(path: str) -> dict[str, str]:
    """The values written by :func:`write_secrets`; empty if the file is gone or damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as handle:
        try:
            data = json.loads(handle.read(1024 * 1024))
        except ValueError:
            return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def discard_secrets(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
