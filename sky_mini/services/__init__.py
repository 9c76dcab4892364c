"""Services: desired state and facts on disk, and the services-controller's parts.

Shared with the CLI (light, imported by ``services up/down/status``):
  ``desired``     the files under ``$SKY_MINI_HOME/services``: desired state (clients write),
                  facts (the controller writes), the status the CLI shows.
Server side (the server process and the ``sky-mini: services-controller`` child):
  ``supervisor``  in the server: starts, restarts and stops the controller;
  ``controller``  the controller's selector loop, commands, reload and published facts;
  ``replicas``    replicas' lifecycle: setup, start, stop, reap, restart policy verdicts;
  ``model``       runtime records and the restart policy (pure);
  ``lb``          the TCP load balancer (owns its sockets and connections);
  ``probes``      readiness probes (own their sockets).

This package re-exports ``desired``'s names, so ``from sky_mini import services`` keeps
working; importing it loads nothing of the server side.
"""

from __future__ import annotations

from sky_mini.services.desired import (
    CONTROLLER_FACTS,
    CONTROLLER_INTENT,
    CONTROLLER_NAME,
    DESIRED_SUFFIX,
    FACTS_SUFFIX,
    LB_HOST,
    LOCK_NAME,
    SCHEMA_VERSION,
    DesiredService,
    ReplicaState,
    ServiceStatus,
    build_status,
    controller_alive,
    controller_facts_path,
    controller_intent_path,
    controller_row,
    desired_path,
    desired_signature,
    facts_path,
    is_desired_file,
    lock_path,
    read_all_desired,
    read_controller_facts,
    read_desired,
    read_service_facts,
    record_down,
    record_up,
    replica_log_path,
    service_dir,
    setup_log_path,
    take_controller_intent,
    up_services,
    validate_for_service,
    wait_for_controller_stopped,
    wait_for_services_stopped,
    write_controller_intent,
)

__all__ = [
    "SCHEMA_VERSION",
    "CONTROLLER_FACTS",
    "CONTROLLER_INTENT",
    "LOCK_NAME",
    "DESIRED_SUFFIX",
    "FACTS_SUFFIX",
    "LB_HOST",
    "CONTROLLER_NAME",
    "ServiceStatus",
    "ReplicaState",
    "desired_path",
    "facts_path",
    "controller_facts_path",
    "controller_intent_path",
    "service_dir",
    "replica_log_path",
    "setup_log_path",
    "is_desired_file",
    "DesiredService",
    "read_desired",
    "read_all_desired",
    "desired_signature",
    "up_services",
    "lock_path",
    "validate_for_service",
    "record_up",
    "record_down",
    "write_controller_intent",
    "take_controller_intent",
    "read_controller_facts",
    "controller_alive",
    "read_service_facts",
    "controller_row",
    "build_status",
    "wait_for_services_stopped",
    "wait_for_controller_stopped",
]
