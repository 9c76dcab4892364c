"""Where jobs run: the seam (:mod:`.base`) and one subpackage per backend.

``local`` runs jobs in this machine's executor processes; ``slurm`` hands each job to a
Slurm cluster. :class:`RemoteBackends` holds the cluster backends, created on first use, so
a home that never names ``infra: slurm`` never runs a Slurm tool.
"""

from __future__ import annotations

from typing import Any

from sky_mini.config import Settings
from sky_mini.server.backends.base import BackendEvent


def infra_kind(infra: str | None) -> str:
    """``slurm/debug`` → ``slurm``; ``None`` → ``local``."""
    return (infra or "local").split("/", 1)[0]


class RemoteBackends:
    def __init__(self, home: str, key: str, settings: Settings) -> None:
        self.home = home
        self.key = key
        self.settings = settings
        self.by_kind: dict[str, Any] = {}

    def for_infra(self, infra: str) -> Any:
        kind = infra_kind(infra)
        backend = self.by_kind.get(kind)
        if backend is None:
            if kind != "slurm":
                raise ValueError(f"no backend for infra {infra!r}")
            from sky_mini.server.backends.slurm import SlurmBackend, SlurmOptions

            settings = self.settings
            backend = SlurmBackend(
                self.home,
                self.key,
                options=SlurmOptions(
                    partition=settings.slurm_partition,
                    account=settings.slurm_account,
                    qos=settings.slurm_qos,
                    sbatch_args=settings.slurm_sbatch_args,
                ),
                grace_seconds=settings.kill_grace_seconds,
                disabled=settings.disabled,
            )
            backend.start()
            self.by_kind[kind] = backend
        return backend

    def poll(self) -> list[BackendEvent]:
        events: list[BackendEvent] = []
        for backend in self.by_kind.values():
            events.extend(backend.poll())
        return events

    def filenos(self) -> list[int]:
        return [fd for backend in self.by_kind.values() for fd in backend.filenos()]

    def components(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for backend in self.by_kind.values():
            rows.extend(backend.components())
        return rows
