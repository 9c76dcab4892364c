"""Admission: what a job reserves (CPUs, memory) and whether it fits now or ever.

:class:`Capacity` is the machine's budget for jobs; ``dispatch_pending`` asks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sky_mini.models import JobRecord
from sky_mini.spec import effective_cpus
from sky_mini.units import format_size

JOB_RESERVATION_EPSILON = 1e-9


@dataclass
class Capacity:
    cpus: float
    memory_bytes: int
    used_cpus: float = 0.0
    used_memory: int = 0
    holders: dict[int, tuple[float, int]] = field(default_factory=dict)

    def fits_ever(self, cpus: float, memory: int) -> bool:
        return cpus <= self.cpus + JOB_RESERVATION_EPSILON and memory <= self.memory_bytes

    def fits_now(self, cpus: float, memory: int) -> bool:
        return (
            self.used_cpus + cpus <= self.cpus + JOB_RESERVATION_EPSILON
            and self.used_memory + memory <= self.memory_bytes
        )

    def reserve(self, job_id: int, cpus: float, memory: int) -> None:
        self.holders[job_id] = (cpus, memory)
        self.used_cpus += cpus
        self.used_memory += memory

    def release(self, job_id: int) -> None:
        cpus, memory = self.holders.pop(job_id, (0.0, 0))
        self.used_cpus = max(0.0, self.used_cpus - cpus)
        self.used_memory = max(0, self.used_memory - memory)

    def waiting_reason(self, cpus: float, memory: int) -> str:
        if self.used_cpus + cpus > self.cpus + JOB_RESERVATION_EPSILON:
            users = ", ".join(f"job {j}" for j, (c, _) in sorted(self.holders.items()) if c)
            return f"waiting for {cpus:g} CPU: {self.used_cpus:g}/{self.cpus:g} in use" + (
                f" by {users}" if users else ""
            )
        users = ", ".join(f"job {j}" for j, (_, m) in sorted(self.holders.items()) if m)
        return (
            f"waiting for {format_size(memory)} of memory: {format_size(self.used_memory)}/"
            f"{format_size(self.memory_bytes)} reserved" + (f" by {users}" if users else "")
        )


def job_needs(record: JobRecord, machine_cpus: float) -> tuple[float, int]:
    """What a job reserves; a default CPU request is min(1, ``machine_cpus``)."""
    resources = record.task.get("resources") or {}
    cpus = effective_cpus(
        float(resources.get("cpus") or 1.0),
        bool(resources.get("cpus_defaulted", False)),
        machine_cpus,
    )
    memory = int(resources.get("memory_bytes") or 0)
    return cpus, memory
