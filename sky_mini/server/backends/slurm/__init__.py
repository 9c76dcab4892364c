"""The Slurm backend: one ``sbatch`` allocation per job, polled with one ``squeue`` for all.

Parts: ``submit`` (the sbatch command, job name, environment, wrapper spec),
``batch_wrapper`` (what runs on the node), ``states`` (parsing and the status mapping),
``tools`` (running Slurm's commands), ``poller`` (when to ask again), ``backend`` (the
``Backend`` the server's tick loop drives), ``capacity`` (what a partition can ever give,
asked by ``jobs launch``). The backend loads on first use, so the CLI's submit-time check
imports only ``capacity``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sky_mini.server.backends.slurm.backend import SlurmBackend
    from sky_mini.server.backends.slurm.submit import SlurmOptions

__all__ = ["SlurmBackend", "SlurmOptions"]


def __getattr__(name: str) -> Any:
    if name == "SlurmBackend":
        from sky_mini.server.backends.slurm.backend import SlurmBackend

        return SlurmBackend
    if name == "SlurmOptions":
        from sky_mini.server.backends.slurm.submit import SlurmOptions

        return SlurmOptions
    raise AttributeError(name)
