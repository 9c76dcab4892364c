"""The native job launcher (``sky_mini/native/joblaunch.c``): found, or built once.

An executor that has it starts each job process with ``posix_spawn`` of this small
program instead of forking itself. The fork of a ~20 MB Python executor, its copy-on-write
faults and the unmapping at ``exec`` cost ~5 ms of CPU per job here, against ~2.4 ms for
the launcher and ``bash -c true`` together (``jobproc`` has both paths).

It is compiled with the machine's C compiler (``$CC``, else ``cc``) the first time a server
needs it, into a cache shared by this user's homes (``$XDG_CACHE_HOME/sky-mini`` or
``~/.cache/sky-mini``; where that is not writable, the home's own ``cache/``), under a name
holding the source's hash, so an upgrade builds anew and a half-written file is never run
(temporary name, then rename). Only a regular file owned by this user, in a directory of
this user's, neither writable by anyone else, is run, and only once it has answered a run
by hand as it must (each server start: a cache shared with another machine, or a libc
upgrade, then gets a fresh build instead of failing every job). Without a compiler, or with
``SKY_MINI_DISABLE=launcher``, jobs start through the Python fork as before; the server
logs why, and ``api status --json`` shows it as ``job_launcher``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import stat
import subprocess

import sky_mini

log = logging.getLogger("sky_mini.server")

SOURCE = os.path.join(os.path.dirname(sky_mini.__file__), "native", "joblaunch.c")
BUILD_TIMEOUT_SECONDS = 60.0
USAGE_EXIT_CODE = 2  # what the launcher returns when started by hand (the build's self-test)


class BuildError(Exception):
    def __init__(self, message: str, *, no_compiler: bool = False) -> None:
        super().__init__(message)
        self.no_compiler = no_compiler


def find_launcher(home_cache_dir: str, disabled: frozenset[str]) -> tuple[str | None, str]:
    """(path of a usable launcher or None, what to tell the user about it)."""
    if "launcher" in disabled:
        return None, "python fork (SKY_MINI_DISABLE=launcher)"
    try:
        with open(SOURCE, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        return None, f"python fork (the launcher's source {SOURCE} is unreadable: {exc})"
    name = f"joblaunch-{hashlib.sha256(source).hexdigest()[:16]}-{os.uname().machine}"
    places = [d for d in (user_cache_dir(), home_cache_dir) if d]
    for place in places:
        path = os.path.join(place, name)
        if is_trusted_executable(path) and runs_by_hand(path):
            return path, f"native ({path})"
    problems = []
    for place in places:
        try:
            path = build_launcher(os.path.join(place, name))
        except BuildError as exc:
            problems.append(str(exc))
            if exc.no_compiler:
                break
            continue
        log.info("built the job launcher: %s", path)
        return path, f"native ({path}, built now)"
    why = "; ".join(problems)
    note = f"python fork: cannot build the native job launcher ({why}); each job costs "
    note += "a few ms more CPU to start. Install a C compiler (cc) for the faster path."
    log.warning("%s", note)
    return None, note


def user_cache_dir() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sky-mini") if os.path.isabs(base) else None


def is_trusted_executable(path: str) -> bool:
    """A regular file of ours, in a directory of ours, that nobody else can change or
    replace, and that we may execute."""
    try:
        info = os.stat(path, follow_symlinks=False)
        parent = os.stat(os.path.dirname(path))
    except OSError:
        return False
    others_write = stat.S_IWGRP | stat.S_IWOTH
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == parent.st_uid == os.geteuid()
        and not info.st_mode & others_write
        and not parent.st_mode & others_write
        and os.access(path, os.X_OK)
    )


def runs_by_hand(path: str) -> bool:
    """Started with no arguments the launcher refuses with exit 2: proof that it loads and
    runs here (a cache shared with another machine, a libc upgrade). ~2 ms, once a start."""
    try:
        check = subprocess.run(
            [path], capture_output=True, timeout=10, stdin=subprocess.DEVNULL, env={}
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return check.returncode == USAGE_EXIT_CODE and b"sky-mini executor" in check.stderr


def build_launcher(path: str) -> str:
    """Compile the launcher to ``path`` (atomically) and check that it runs."""
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or "cc"]
    if shutil.which(compiler[0]) is None:
        raise BuildError(f"no C compiler: {compiler[0]!r} not found", no_compiler=True)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create {directory}: {exc.strerror}") from exc
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        try:
            built = subprocess.run(
                [*compiler, "-O2", "-o", temporary, SOURCE],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_SECONDS,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"{compiler[0]} failed: {exc}") from exc
        if built.returncode != 0:
            first = (built.stderr.strip().splitlines() or ["no output"])[0]
            raise BuildError(f"{compiler[0]} exited {built.returncode}: {first}")
        os.chmod(temporary, 0o755)
        if not runs_by_hand(temporary):
            raise BuildError("the built launcher does not run (by hand it must exit 2)")
        os.replace(temporary, path)
    except OSError as exc:
        raise BuildError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path
