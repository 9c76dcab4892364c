"""Replicas' lifecycle in the controller: setup, start, readiness deadlines, memory limits,
stop (TERM, grace, KILL), reaping, and the restart policy's verdict on each exit.

:class:`ReplicaLifecycle` is the part of the controller that runs processes; the
:class:`~sky_mini.services.controller.Controller` loop calls :meth:`~ReplicaLifecycle.step`
and :meth:`~ReplicaLifecycle.reap_children` once per pass. Each replica runs ``run`` in its
own session and process group, in a per-replica cgroup (``svc-<name>-g<generation>-<n>``)
with the service's memory limit (or under the RSS watchdog), with ``$PORT`` set and the
home's ``SKY_MINI_MARKER`` in its environment. Replicas are forked only from the
controller's main thread (``PR_SET_PDEATHSIG`` fires when the forking *thread* exits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any, NoReturn

from sky_mini import procs
from sky_mini.services.desired import (
    ReplicaState,
    facts_path,
    setup_log_path,
)
from sky_mini.services.lb import LoadBalancer
from sky_mini.services.model import (
    PROBE_FIRST_INTERVAL_SECONDS,
    ControllerConfig,
    Replica,
    ServiceRuntime,
    SetupProc,
    describe_signal,
    free_port,
)
from sky_mini.services.probes import Prober
from sky_mini.units import format_duration, format_size

log = logging.getLogger("sky_mini.services")

NOT_READY_RESTART_SECONDS = 30.0
"""A replica NOT_READY this long is restarted (counts as a failure)."""
STARTUP_TIMEOUT_SECONDS = 300.0
"""A replica not READY this long after ``initial_delay_seconds`` is restarted."""
WATCHDOG_INTERVAL_SECONDS = 0.1
REPLICA_OOM_SCORE_ADJ = 500
SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


class ReplicaLifecycle:
    """Runs the replicas of every service (a part of the controller; see the module)."""

    config: ControllerConfig
    services: dict[str, ServiceRuntime]
    retiring: list[ServiceRuntime]
    exiting: str | None
    published: dict[str, Any]
    lb: LoadBalancer
    prober: Prober

    def all_runtimes(self) -> list[ServiceRuntime]:
        return [*self.services.values(), *self.retiring]

    def step(self, now: float) -> None:
        """Advance every service: binds, setup, starts, probes, deadlines, memory limits."""
        for rt in list(self.retiring):
            self.step_kills(rt, now)
            if not rt.has_processes():
                self.retiring.remove(rt)
                self.remove_cgroups(rt)
        for rt in list(self.services.values()):
            self.step_kills(rt, now)
            if rt.stopping:
                if not rt.has_processes() and rt.stop_why == "down":
                    self.forget(rt)
                continue
            if rt.listener is None and now >= rt.next_bind_at:
                self.lb.bind(rt, now)
            if rt.setup.state == "pending":
                self.start_setup(rt, now)
            if rt.setup.state != "done":
                continue
            self.prober.expire(rt, now)
            for replica in rt.replicas:
                self.step_replica(rt, replica, now)

    def step_kills(self, rt: ServiceRuntime, now: float) -> None:
        for replica in rt.replicas:
            if replica.pid and replica.kill_at is not None and now >= replica.kill_at:
                log.warning(
                    "services-controller: %s replica %d ignored SIGTERM for %gs: SIGKILL",
                    rt.name,
                    replica.index,
                    self.config.kill_grace_seconds,
                )
                self.kill_replica(replica)
                replica.kill_at = None
            if replica.pid:
                self.enforce_memory(rt, replica, now)

    def step_replica(self, rt: ServiceRuntime, replica: Replica, now: float) -> None:
        state = replica.state
        if state is ReplicaState.BACKOFF and not replica.pid:
            if replica.next_start_at is not None and now >= replica.next_start_at:
                self.spawn_replica(rt, replica, now)
            return
        if not replica.pid or replica.stop_reason is not None:
            return
        due = replica.next_probe_at
        if replica.probe is None and due is not None and now >= due:
            self.prober.start(rt, replica, now)
        if state is ReplicaState.READY and replica.ready_since is not None:
            replica.policy.on_ready_for(now - replica.ready_since)
        probe_spec = rt.spec.readiness_probe
        delay = probe_spec.initial_delay_seconds if probe_spec is not None else 0.0
        if (
            state is ReplicaState.STARTING
            and replica.started_at is not None
            and now - replica.started_at > delay + STARTUP_TIMEOUT_SECONDS
        ):
            detail = replica.last_probe_error or "no answer"
            self.stop_replica(
                rt,
                replica,
                "startup_timeout",
                now,
                f"not READY {format_duration(delay + STARTUP_TIMEOUT_SECONDS)} after start "
                f"(readiness probe: {detail})",
            )
        elif (
            state is ReplicaState.NOT_READY
            and replica.not_ready_since is not None
            and now - replica.not_ready_since >= NOT_READY_RESTART_SECONDS
        ):
            self.stop_replica(
                rt,
                replica,
                "not_ready",
                now,
                f"NOT_READY for {NOT_READY_RESTART_SECONDS:g}s "
                f"(readiness probe: {replica.last_probe_error})",
            )

    def replica_env(self, rt: ServiceRuntime, replica: Replica) -> dict[str, str]:
        env = dict(rt.desired.env or os.environ)
        env.update(rt.spec.envs)
        env["PORT"] = str(replica.port)
        env["SKY_MINI_SERVICE"] = rt.name
        env["SKY_MINI_REPLICA"] = str(replica.index)
        env[procs.MARKER_ENV] = procs.marker_for(
            f"{self.config.home_key}:{self.config.instance_id}",
            f"svc-{rt.name}-{replica.index}",
        )
        return env

    def create_cgroup(self, rt: ServiceRuntime, group: str) -> Any:
        caps = self.config.cgroup_caps
        if caps is None or "cgroup" in self.config.disabled:
            return None
        from sky_mini.cgroups import JobCgroup

        limit = rt.spec.resources.memory_bytes
        if self.config.memory_mechanism != "cgroup":
            limit = None
        try:
            return JobCgroup.create(caps, self.config.cgroup_base, group, limit)
        except (OSError, ValueError) as exc:
            log.warning("services-controller: no cgroup for %s: %s", group, exc)
            return None

    def spawn_replica(self, rt: ServiceRuntime, replica: Replica, now: float) -> None:
        replica.port = free_port()
        group = f"svc-{rt.name}-g{rt.generation}-{replica.index}"
        replica.cgroup = self.create_cgroup(rt, group)
        log_path = rt.log_path(self.config.services_dir, replica.index)
        if replica.starts:
            replica.restarts += 1
        replica.starts += 1
        append_line(
            log_path,
            f"sky-mini: starting {rt.name} replica {replica.index} on port {replica.port} "
            f"(start {replica.starts}, restarts {replica.restarts})",
        )
        replica.vmstat_at_start = procs.read_vmstat_oom_kills()
        pid = self.spawn_process(
            rt.spec.run,
            self.replica_env(rt, replica),
            log_path,
            rt.spec.workdir,
            replica.cgroup,
        )
        replica.pid = pid
        replica.create_time = procs.process_create_time(pid)
        replica.state = ReplicaState.STARTING
        replica.started_at = now
        replica.ready_since = None
        replica.not_ready_since = None
        replica.stop_reason = None
        replica.kill_at = None
        replica.peak_bytes = 0
        replica.probe_failures = 0
        replica.probe_interval = PROBE_FIRST_INTERVAL_SECONDS
        probe_spec = rt.spec.readiness_probe
        replica.next_probe_at = now + (
            probe_spec.initial_delay_seconds if probe_spec is not None else 0.0
        )
        rt.dirty = True

    def start_setup(self, rt: ServiceRuntime, now: float) -> None:
        log_path = setup_log_path(self.config.services_dir, rt.name)
        append_line(log_path, f"sky-mini: running setup of {rt.name} (generation {rt.generation})")
        cgroup = self.create_cgroup(rt, f"svc-{rt.name}-g{rt.generation}-setup")
        env = dict(rt.desired.env or os.environ)
        env.update(rt.spec.envs)
        env[procs.MARKER_ENV] = procs.marker_for(
            f"{self.config.home_key}:{self.config.instance_id}", f"svc-{rt.name}-setup"
        )
        rt.setup = SetupProc(
            pid=self.spawn_process(rt.spec.setup, env, log_path, rt.spec.workdir, cgroup),
            cgroup=cgroup,
            state="running",
        )
        rt.dirty = True

    def spawn_process(
        self, command: str, env: dict[str, str], log_path: str, workdir: str | None, cgroup: Any
    ) -> int:
        procs_files = cgroup.procs_files() if cgroup is not None else ()
        pid = os.fork()
        if pid == 0:
            exec_replica(
                command,
                env,
                log_path,
                workdir or os.getcwd(),
                procs_files,
                oom_score="oom_score" not in self.config.disabled,
            )
        return pid

    def stop_replica(
        self, rt: ServiceRuntime, replica: Replica, why: str, now: float, detail: str = ""
    ) -> None:
        """TERM the replica's group now, KILL what is left after the grace period."""
        if not replica.pid:
            replica.next_start_at = None  # a replica waiting in BACKOFF never starts
            return
        if replica.stop_reason is not None:
            return  # already stopping; rt.stopping keeps it from being restarted
        replica.stop_reason = why
        if detail:
            replica.last_exit_reason = detail
        replica.state = ReplicaState.STOPPING
        replica.kill_at = now + max(0.0, self.config.kill_grace_seconds)
        self.signal_replica(replica, signal.SIGTERM)
        self.prober.cancel(replica)
        rt.dirty = True
        if detail:
            log.warning(
                "services-controller: %s replica %d: %s; restarting it",
                rt.name,
                replica.index,
                detail,
            )

    def stop_runtime(self, rt: ServiceRuntime, why: str, now: float) -> None:
        rt.stopping = True
        rt.stop_why = rt.stop_why or why
        rt.dirty = True
        self.lb.close(rt)
        for replica in rt.replicas:
            if replica.pid:
                self.stop_replica(rt, replica, why, now)
            else:
                replica.next_start_at = None
        if rt.setup.pid:
            procs.signal_group(rt.setup.pid, signal.SIGKILL)

    def forget(self, rt: ServiceRuntime) -> None:
        """A stopped service leaves no facts behind (clients then stop waiting)."""
        self.remove_cgroups(rt)
        del self.services[rt.name]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(facts_path(self.config.services_dir, rt.name))
        self.published.pop(rt.name, None)
        log.info("services-controller: service %s stopped", rt.name)

    def remove_cgroups(self, rt: ServiceRuntime) -> None:
        for replica in rt.replicas:
            if replica.cgroup is not None and not replica.pid:
                replica.cgroup.remove()
                replica.cgroup = None

    def signal_replica(self, replica: Replica, sig: int) -> None:
        if replica.pid:
            procs.signal_group(replica.pid, sig)
        if replica.cgroup is not None:
            for pid in replica.cgroup.pids():
                procs.signal_pid(pid, sig)

    def kill_replica(self, replica: Replica) -> None:
        if replica.cgroup is not None:
            replica.cgroup.kill()
        if replica.pid:
            procs.signal_group(replica.pid, signal.SIGKILL)

    @staticmethod
    def watchdog_limit(rt: ServiceRuntime, replica: Replica) -> int | None:
        """The memory limit the RSS watchdog enforces (None: a cgroup does it, or no limit)."""
        limit: int | None = rt.spec.resources.memory_bytes
        if limit is None or (replica.cgroup is not None and replica.cgroup.memory_limited):
            return None
        return limit

    def enforce_memory(self, rt: ServiceRuntime, replica: Replica, now: float) -> None:
        limit = self.watchdog_limit(rt, replica)
        if limit is None or now < replica.next_sample_at or replica.stop_reason is not None:
            return
        replica.next_sample_at = now + WATCHDOG_INTERVAL_SECONDS
        rss = procs.tree_rss(replica.pid)
        replica.peak_bytes = max(replica.peak_bytes, rss)
        if rss > limit:
            replica.stop_reason = "memory_limit"
            replica.state = ReplicaState.STOPPING
            self.kill_replica(replica)
            rt.dirty = True

    def reap_children(self, now: float) -> None:
        for pid, status in procs.reap_any():
            for rt in self.all_runtimes():
                if rt.setup.pid == pid:
                    self.setup_exited(rt, status, now)
                    break
                replica = next((r for r in rt.replicas if r.pid == pid), None)
                if replica is not None:
                    self.replica_exited(rt, replica, status, now)
                    break

    def setup_exited(self, rt: ServiceRuntime, status: int, now: float) -> None:
        setup = rt.setup
        if setup.cgroup is not None:
            setup.cgroup.kill()
        procs.signal_group(setup.pid, signal.SIGKILL)
        if setup.cgroup is not None:
            setup.cgroup.remove()
        setup.pid = 0
        setup.cgroup = None
        rt.dirty = True
        if rt.stopping:
            return
        returncode = procs.returncode_from_status(status)
        if returncode == 0:
            setup.state = "done"
            for replica in rt.replicas:
                replica.next_start_at = now
            return
        how = (
            f"killed by {describe_signal(-returncode)}"
            if returncode < 0
            else f"exited with code {returncode}"
        )
        setup.state = "failed"
        setup.reason = (
            f"setup {how}; see 'sky-mini services logs {rt.name} --setup', fix it and run "
            "'sky-mini services up' again"
        )
        log.warning("services-controller: service %s: %s", rt.name, setup.reason)

    def replica_exited(self, rt: ServiceRuntime, replica: Replica, status: int, now: float) -> None:
        """The replica's main process is gone: kill the rest of it, classify, maybe restart."""
        self.kill_replica(replica)
        self.prober.cancel(replica)
        returncode = procs.returncode_from_status(status)
        code, reason, exit_code = self.classify(rt, replica, returncode)
        if replica.cgroup is not None:
            replica.cgroup.remove()
            replica.cgroup = None
        stop_reason = replica.stop_reason
        replica.pid = 0
        replica.create_time = None
        replica.port = None
        replica.kill_at = None
        replica.ready_since = None
        replica.stop_reason = None
        rt.dirty = True
        log_path = rt.log_path(self.config.services_dir, replica.index)
        if stop_reason in ("down", "replace", "shutdown"):
            replica.state = ReplicaState.STOPPING
            replica.next_start_at = None
            append_line(log_path, f"sky-mini: replica {replica.index} stopped ({stop_reason})")
            return
        if stop_reason in ("not_ready", "startup_timeout") and replica.last_exit_reason:
            reason = replica.last_exit_reason
            code = stop_reason
        replica.last_exit_reason = reason
        replica.last_reason_code = code
        replica.last_exit_code = exit_code
        if rt.stopping or self.exiting is not None:
            replica.state = ReplicaState.STOPPING
            return
        delay = replica.policy.on_failure(now)
        if delay is None:
            window = format_duration(replica.policy.window)
            replica.state = ReplicaState.FAILED
            replica.next_start_at = None
            replica.failed_reason = (
                f"replica {replica.index} failed {len(replica.policy.failures)} times within "
                f"{window}; last: {reason}; see 'sky-mini services logs {rt.name} "
                f"--replica {replica.index}'"
            )
            append_line(log_path, f"sky-mini: {replica.failed_reason}; giving up")
            log.warning("services-controller: %s: %s", rt.name, replica.failed_reason)
            return
        replica.state = ReplicaState.BACKOFF
        replica.next_start_at = now + delay
        append_line(
            log_path,
            f"sky-mini: replica {replica.index} {reason}; restarting in {delay:g}s",
        )
        log.warning(
            "services-controller: %s replica %d %s; restarting in %gs",
            rt.name,
            replica.index,
            reason,
            delay,
        )

    def classify(
        self, rt: ServiceRuntime, replica: Replica, returncode: int
    ) -> tuple[str, str, int | None]:
        """(reason_code, reason, exit_code) of a replica's death."""
        from sky_mini.cgroups import classify_memory_death

        limit = rt.spec.resources.memory_bytes
        peak = replica.peak_bytes
        oom_kills = None
        if replica.cgroup is not None:
            peak = max(peak, replica.cgroup.peak_memory_bytes() or 0)
            oom_kills = replica.cgroup.oom_kills_since_start()
        killed_by = -returncode if returncode < 0 else None
        exit_code = returncode if returncode >= 0 else 128 + (killed_by or 0)
        if oom_kills is None and killed_by == signal.SIGKILL and replica.stop_reason is None:
            vmstat = procs.read_vmstat_oom_kills()
            if vmstat is not None and replica.vmstat_at_start is not None:
                oom_kills = vmstat - replica.vmstat_at_start or None
        memory = classify_memory_death(limit, peak or None, oom_kills, killed_by)
        if replica.stop_reason == "memory_limit" or memory == "memory_limit":
            return (
                "memory_limit",
                f"out of memory: used {format_size(max(peak, limit or 0))}, limit "
                f"{format_size(limit)} — raise resources.memory",
                exit_code,
            )
        if memory == "oom":
            return (
                "oom",
                "out of memory: killed by the kernel's OOM killer (the machine or container "
                f"ran out of memory; peak {format_size(peak)}); set resources.memory",
                exit_code,
            )
        if killed_by is not None:
            return "signal", f"killed by {describe_signal(killed_by)}", exit_code
        if returncode == 0:
            return (
                "exit_code",
                "exited with code 0 (a replica must keep serving until 'services down')",
                0,
            )
        return "exit_code", f"exited with code {returncode}", exit_code


def exec_replica(
    command: str,
    env: dict[str, str],
    log_path: str,
    workdir: str,
    procs_files: tuple[str, ...],
    *,
    oom_score: bool,
) -> NoReturn:
    """In the forked child: become the replica and exec its shell. Never returns."""
    try:
        parent = os.getppid()
        os.setsid()
        if procs_files:
            from sky_mini.cgroups import join_cgroup_files

            join_cgroup_files(procs_files)
        if oom_score:
            procs.set_oom_score_adj(REPLICA_OOM_SCORE_ADJ)
        procs.set_parent_death_signal(signal.SIGKILL, parent)
        procs.reset_signals_for_exec()
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        log_fd = os.open(log_path, flags, 0o600)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        procs.close_fds_except((0, 1, 2))
        try:
            os.chdir(workdir)
        except OSError as exc:
            os.write(2, f"sky-mini: cannot enter workdir {workdir}: {exc}\n".encode())
            os._exit(127)
        os.execve(SHELL, [SHELL, "-c", command], env)
    except BaseException as exc:  # noqa: BLE001 - the child must never return into Python
        with contextlib.suppress(BaseException):
            os.write(2, f"sky-mini: cannot start the replica: {exc}\n".encode())
    os._exit(127)


def append_line(path: str, line: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"{stamp} {line}\n".encode())
        finally:
            os.close(fd)
