"""The machine's GPUs as a pool the server reserves from, like CPUs (see Capacity), and
the SkyPilot variables (with ``CUDA_VISIBLE_DEVICES``) a job gets.

A whole-GPU request takes that many free devices of the wanted type; a fractional one
(``T4:0.5``) shares a device with room left. The chosen indices become the job's
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from sky_mini.gpus import gpu_matches
from sky_mini.models import JobRecord

log = logging.getLogger("sky_mini.server")

EPSILON = 1e-9


@dataclass
class GpuPool:
    devices: list[str]
    free: list[float] = field(default_factory=list)
    holders: dict[int, tuple[list[int], float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.free:
            self.free = [1.0] * len(self.devices)

    def pick(self, wanted: str | None, count: float) -> list[int] | None:
        """The device indices a job would get now, or None if they are not free."""
        matching = [i for i, name in enumerate(self.devices) if gpu_matches(wanted, name)]
        if count < 1:
            shared = [i for i in matching if self.free[i] + EPSILON >= count]
            # Fill the fullest device first, so whole devices stay free for whole requests.
            return [min(shared, key=lambda i: self.free[i])] if shared else None
        whole = [i for i in matching if self.free[i] >= 1.0 - EPSILON]
        need = math.ceil(count)
        return whole[:need] if len(whole) >= need else None

    def reserve(self, job_id: int, indices: list[int], count: float) -> None:
        share = count if count < 1 else 1.0
        for i in indices:
            self.free[i] -= share
        self.holders[job_id] = (indices, share)

    def release(self, job_id: int) -> None:
        indices, share = self.holders.pop(job_id, ([], 0.0))
        for i in indices:
            self.free[i] = min(1.0, self.free[i] + share)

    def waiting_reason(self, wanted: str | None, count: float) -> str:
        users = ", ".join(f"job {j}" for j in sorted(self.holders))
        return f"waiting for {count:g} {wanted or 'GPU'}: in use" + (
            f" by {users}" if users else ""
        )


def detect_gpu_pool() -> GpuPool:
    from sky_mini.gpus import GpuOverrideError, detect_gpus

    try:
        devices, source = detect_gpus()
    except GpuOverrideError as exc:
        log.warning("%s; no GPU will be given to jobs", exc)
        return GpuPool([])
    if devices:
        log.info("GPUs (from %s): %s", source, ", ".join(devices))
    return GpuPool(devices)


def skypilot_env(record: JobRecord, gpu_indices: list[int] | None, pool: GpuPool) -> dict[str, str]:
    """SkyPilot's variables for a one-node job here, and ``CUDA_VISIBLE_DEVICES``."""
    resources = record.task.get("resources") or {}
    gpus = float(resources.get("gpus") or 0.0)
    env = {
        "SKYPILOT_TASK_ID": f"sky-mini-{record.id}"
        + (f"_{record.pipeline}" if record.pipeline else ""),
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NUM_NODES": "1",
        "SKYPILOT_NODE_IPS": "127.0.0.1",
        "SKYPILOT_NUM_GPUS_PER_NODE": f"{gpus:g}" if gpus else "0",
    }
    if gpu_indices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_indices)
    elif pool.devices:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a job that asked for no GPU gets none
    return env
