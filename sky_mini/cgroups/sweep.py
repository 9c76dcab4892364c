"""A home's base dirs: sweep leftovers at start, remove at shutdown, discard a dead home."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable

from sky_mini.cgroups.detect import CgroupCapabilities, _read_mounts
from sky_mini.cgroups.files import GROUP_PREFIX, _check_name, _child_dirs
from sky_mini.cgroups.groups import _remove_tree

log = logging.getLogger("sky_mini.cgroups")


def sweep_base(
    caps: CgroupCapabilities, base_name: str, extra_dirs: Iterable[str] = ()
) -> list[str]:
    """Kill and remove leftover groups from an earlier server instance; return removed dirs.

    Empties ``<v1_memory_root>/<base_name>`` and ``<v2_root>/<base_name>`` (the base dirs
    stay) and removes each of ``extra_dirs`` (group dirs recorded in state, possibly below
    another parent cgroup), then its parent base dir if that is left empty. Only directories
    on a cgroup filesystem whose last component starts with ``sky-mini-``, or that lie below
    such a directory, are ever touched.
    """
    _check_name(base_name, must_have_prefix=True)
    removed: list[str] = []
    for own_root in (caps.v1_memory_root, caps.v2_root):
        if own_root is None:
            continue
        base = os.path.join(own_root, base_name)
        if _is_sweepable(base):
            removed += _remove_tree(base, keep_top=True)
    for directory in extra_dirs:
        directory = os.path.normpath(directory)
        if not _is_sweepable(directory):
            if os.path.isdir(directory):
                log.warning("not sweeping %s: not a sky-mini cgroup", directory)
            continue
        removed += _remove_tree(directory, keep_top=False)
        parent = os.path.dirname(directory)
        if (
            os.path.basename(parent).startswith(GROUP_PREFIX)
            and _is_sweepable(parent)
            and not _child_dirs(parent)
        ):
            with contextlib.suppress(OSError):
                os.rmdir(parent)
                removed.append(parent)
    return removed


def remove_base(caps: CgroupCapabilities, base_name: str) -> None:
    """Remove the (empty) base dirs at clean shutdown; warn, never raise, if one is in use."""
    _check_name(base_name, must_have_prefix=True)
    for own_root in (caps.v1_memory_root, caps.v2_root):
        if own_root is None:
            continue
        base = os.path.join(own_root, base_name)
        try:
            os.rmdir(base)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", base, exc)


def discard_base(caps: CgroupCapabilities, base_name: str) -> None:
    """Kill and remove every group of a home that is going away, and its base dirs.

    For a home no server will start again (a test's, a benchmark's): after a SIGKILLed
    server, only the next start of the same home would sweep them.
    """
    with contextlib.suppress(OSError):
        sweep_base(caps, base_name)
    remove_base(caps, base_name)


def _is_sweepable_name(path: str) -> bool:
    """True if the path's last component, or a component above it, starts with sky-mini-."""
    parts = [p for p in os.path.normpath(path).split("/") if p]
    if not os.path.isabs(path) or ".." in parts:
        return False
    return any(p.startswith(GROUP_PREFIX) for p in parts)


def _is_sweepable(path: str) -> bool:
    return (
        _is_sweepable_name(path)
        and os.path.isdir(path)
        and not os.path.islink(path)
        and _on_cgroup_fs(path)
    )


def _on_cgroup_fs(path: str) -> bool:
    """True if ``path`` lies strictly below a cgroup mount point of this process."""
    real = os.path.realpath(path)
    for mount in _read_mounts("/"):
        point = mount.mount_point.rstrip("/")
        if real.startswith(point + "/"):
            return True
    return False
