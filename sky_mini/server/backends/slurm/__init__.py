"""The Slurm backend: one ``sbatch`` allocation per job, polled with one ``squeue`` for all.

Parts: ``submit`` (the sbatch command, job name, environment, wrapper spec),
``batch_wrapper`` (what runs on the node), ``states`` (parsing and the status mapping),
``tools`` (running Slurm's commands), ``poller`` (when to ask again), ``backend`` (the
``Backend`` the server's tick loop drives).
"""

from __future__ import annotations

from sky_mini.server.backends.slurm.backend import SlurmBackend
from sky_mini.server.backends.slurm.submit import SlurmOptions

__all__ = ["SlurmBackend", "SlurmOptions"]
