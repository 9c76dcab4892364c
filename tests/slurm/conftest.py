"""A real single-node Slurm cluster for the whole session, started by scripts/slurm-dev.

The cluster lives in a pytest temp directory; the fixture stops exactly the daemons that
``slurm-dev start`` recorded. Each test's home gets ``SLURM_CONF``; at its end every Slurm
job of that home (found by the job-name prefix) is cancelled and waited for, so no job of
one test runs into the next.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import SkyMini, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM_DEV = os.path.join(ROOT, "scripts", "slurm-dev")


@dataclass
class Cluster:
    directory: str
    conf: str

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=self.conf)

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def dev(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SLURM_DEV, *args, "--dir", self.directory],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def said(self) -> str:
        """What Slurm says now: for assertion messages."""
        queue = self.run("squeue", "-t", "all", "-o", "%i %j %T %r %e").stdout
        tail = ""
        log = os.path.join(self.directory, "log", "slurmctld.log")
        if os.path.exists(log):
            with open(log) as handle:
                tail = "".join(handle.readlines()[-15:])
        return f"\n--- squeue ---\n{queue}\n--- slurmctld.log (tail) ---\n{tail}"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        pytest.skip("no Slurm installed and not root to install it (see scripts/slurm-dev)")
    directory = str(tmp_path_factory.mktemp("slurm"))
    done = subprocess.run(
        [SLURM_DEV, "start", "--dir", directory], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        # A start that failed half-way may have left daemons: stop what it recorded.
        subprocess.run([SLURM_DEV, "stop", "--dir", directory], timeout=120)
        raise AssertionError(f"slurm-dev start failed:\n{done.stdout}\n{done.stderr}")
    conf = done.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        yield Cluster(directory, conf)
    finally:
        subprocess.run([SLURM_DEV, "stop", "--dir", directory], timeout=120)


@pytest.fixture
def slurm_sky(sky: SkyMini, slurm_cluster: Cluster) -> Iterator[SkyMini]:
    sky.extra_env.update(
        {
            "SLURM_CONF": slurm_cluster.conf,
            "SKY_MINI_SLURM_POLL_SECONDS": "0.5",
            "SKY_MINI_KILL_GRACE_SECONDS": "3",
        }
    )
    try:
        yield sky
    finally:
        cancel_home_jobs(slurm_cluster, f"sky-mini-{sky.key}-")


def dead_controller_conf(cluster: Cluster, directory: str) -> str:
    """A copy of the cluster's slurm.conf pointing at a port nobody listens on: every Slurm
    tool then fails after its own retries (9-18 s on 22.05)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bogus = os.path.join(directory, "dead-controller.conf")
    with open(cluster.conf) as src, open(bogus, "w") as dst:
        for line in src:
            dst.write(f"SlurmctldPort={port}\n" if line.startswith("SlurmctldPort=") else line)
    return bogus


def cancel_home_jobs(cluster: Cluster, prefix: str) -> None:
    def ours(states: str) -> list[str]:
        out = cluster.run("squeue", "-h", "-t", states, "-o", "%i|%j").stdout
        return [ln.split("|")[0] for ln in out.splitlines() if ln.split("|")[-1].startswith(prefix)]

    ids = ours("PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED")
    if ids:
        cluster.run("scancel", *ids)
    wait_for(
        lambda: not ours("PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED"),
        60,
        "this test's Slurm jobs to end",
    )
