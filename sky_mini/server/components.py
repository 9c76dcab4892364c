"""The server's components: the job backend, the services supervisor, the http component,
and the selector registrations that wake the loop when any of them has news.

Functions of the server (``server`` is :class:`sky_mini.server.main.Server`), called from
its ``prepare`` and tick steps.
"""

from __future__ import annotations

import os
import selectors
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sky_mini.server.main import Server


def create_backend(server: Server) -> None:
    """Build the backend (nothing runs yet: ``reattach`` comes before ``start``)."""
    from sky_mini.server.backends.local import LocalBackend
    from sky_mini.server.backends.local.launcher import find_launcher

    disabled = server.settings.disabled
    launcher, note = find_launcher(os.path.join(server.paths.home, "cache", "bin"), disabled)
    server.details["job_launcher"] = note
    backend = LocalBackend(
        server.pool.job_executors,
        cgroup_caps=server.cgroup_caps,
        cgroup_base=f"sky-mini-{server.key}",
        memory_mechanism=server.memory_mechanism,
        disabled=disabled,
        launcher=launcher,
    )
    backend.on_close = server.forget_fd
    server.backend = backend


def start_backend(server: Server) -> None:
    assert server.backend is not None
    server.backend.start()
    register_backend_fds(server)


def register_backend_fds(server: Server) -> None:
    """Wait on the backend's descriptors and on every tied child's sentinel."""
    assert server.backend is not None
    registered = {key.fd for key in server.selector.get_map().values()}
    for fd in [*server.backend.filenos(), *server.remote.filenos()]:
        if fd not in registered:
            server.selector.register(fd, selectors.EVENT_READ, "backend")
    register_child_sentinels(server, registered)


def register_child_sentinels(server: Server, registered: set[int] | None = None) -> None:
    """Wait on every tied child's ``Process.sentinel``: readable the moment it exits."""
    from sky_mini.server import tied

    if registered is None:
        registered = {key.fd for key in server.selector.get_map().values()}
    for fd in tied.child_sentinels():
        if fd not in registered:
            server.selector.register(fd, selectors.EVENT_READ, "child")


def start_services(server: Server) -> None:
    """The services supervisor; it forks the services-controller when a service is up."""
    from sky_mini.services.supervisor import ServicesSupervisor

    server.services = ServicesSupervisor(
        server.paths,
        server.settings,
        selector=server.selector,  # it registers and unregisters its own event pipe
        key=server.key,
        instance_id=server.instance_id,
        cgroup_caps=server.cgroup_caps,
        cgroup_base=f"sky-mini-{server.key}",
        memory_mechanism=server.memory_mechanism,
        clock=server.clock,
    )


def start_http(server: Server) -> None:
    """The ``sky-mini: http`` component, when ``--http`` / ``http.listen`` asks for it."""
    if not server.settings.http_listen:
        return
    from sky_mini.server.http_component import HttpSupervisor

    server.http = HttpSupervisor(
        server.paths.home,
        server.settings.http_listen,
        server.settings.disabled,
        selector=server.selector,
    )
    server.http.maintain(server.clock())
