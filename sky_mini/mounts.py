"""``file_mounts`` with local sources, made real just before a job's first phase (a leaf).

Each destination becomes a symbolic link to its source: nothing is copied, so a large
dataset costs nothing and the job sees the source as it is now (writes through the link
change the source). A link left by an earlier run is replaced; a real file or directory at
the destination is never touched (the job fails its setup with the path named).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def link_file_mounts(mounts: Mapping[str, str]) -> None:
    """Create ``dest -> src`` links; raise OSError naming the path that failed."""
    for dest, src in mounts.items():
        if os.path.islink(dest):
            os.unlink(dest)
        elif os.path.lexists(dest):
            raise FileExistsError(
                f"file_mounts: {dest} exists and is not a link; sky-mini will not replace it"
            )
        parent = os.path.dirname(dest)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if not os.path.exists(src):
            raise FileNotFoundError(f"file_mounts: the source {src} no longer exists")
        os.symlink(src, dest)
