"""Pure pieces of the services-controller: backoff, failure window, status, probe parsing."""

from __future__ import annotations

import pytest

from sky_mini.services import ReplicaState, ServiceStatus
from sky_mini.services.model import (
    BACKOFF_ENV,
    RestartPolicy,
    backoff_initial_from_env,
    service_status,
)
from sky_mini.services.probes import parse_http_status
from sky_mini.services.supervisor import crash_delay


def test_backoff_doubles_from_one_second_and_fails_at_five_in_the_window() -> None:
    policy = RestartPolicy()
    delays = [policy.on_failure(t) for t in (0.0, 10.0, 20.0, 30.0)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert policy.on_failure(40.0) is None  # fifth failure within five minutes


def test_backoff_is_capped_at_sixty_seconds_and_old_failures_leave_the_window() -> None:
    policy = RestartPolicy()
    delays = [policy.on_failure(t * 100.0) for t in range(12)]  # at most 3 in any 300 s
    assert None not in delays
    assert delays[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert set(delays[6:]) == {60.0}


def test_backoff_resets_after_sixty_seconds_ready() -> None:
    policy = RestartPolicy()
    for t in (0.0, 1.0, 2.0):
        policy.on_failure(t)
    assert policy.next_delay == 8.0
    policy.on_ready_for(59.9)
    assert policy.next_delay == 8.0
    policy.on_ready_for(60.0)
    assert policy.next_delay == 1.0


def test_backoff_env_knob() -> None:
    assert backoff_initial_from_env({}) == 1.0
    assert backoff_initial_from_env({BACKOFF_ENV: "0.2"}) == 0.2
    assert backoff_initial_from_env({BACKOFF_ENV: "nonsense"}) == 1.0


def test_controller_crash_delay_first_restart_is_immediate() -> None:
    assert [crash_delay(n) for n in (1, 2, 3, 4)] == [0.0, 1.0, 2.0, 4.0]
    assert crash_delay(50) == 60.0


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"HTTP/1.0 200 OK\r\n", 200),
        (b"HTTP/1.1 204 No Content\r\nServer: x\r\n", 204),
        (b"HTTP/1.1 503 Service Unavailable\n", 503),
        (b"SSH-2.0-OpenSSH\r\n", None),
        (b"", None),
        (b"HTTP/1.1 abc\r\n", None),
    ],
)
def test_parse_http_status(raw: bytes, code: int | None) -> None:
    assert parse_http_status(raw) == code


R = ReplicaState


def status_of(states: list[ReplicaState], **kw: object) -> tuple[ServiceStatus, str | None]:
    args: dict[str, object] = {
        "stopping": False,
        "ever_ready": False,
        "blocking_problem": None,
        "failed_reasons": ["replica 1 failed 5 times; last: exited with code 1"],
        "setup_running": False,
    }
    args.update(kw)
    return service_status(states, **args)  # type: ignore[arg-type]


def test_service_status_from_replicas() -> None:
    assert status_of([R.STARTING, R.STARTING])[0] is ServiceStatus.REPLICA_INIT
    assert status_of([R.READY, R.BACKOFF])[0] is ServiceStatus.READY
    assert status_of([R.BACKOFF, R.NOT_READY], ever_ready=True)[0] is ServiceStatus.NO_REPLICA
    failed, reason = status_of([R.FAILED, R.FAILED])
    assert failed is ServiceStatus.FAILED and reason and "exited with code 1" in reason
    ready, note = status_of([R.READY, R.FAILED])
    assert ready is ServiceStatus.READY and note and note.startswith("1 of 2 replica(s) FAILED")
    assert status_of([R.READY], stopping=True)[0] is ServiceStatus.SHUTTING_DOWN
    lb, why = status_of([R.READY], blocking_problem="port in use")
    assert lb is ServiceStatus.FAILED and why == "port in use"
    assert status_of([R.BACKOFF], setup_running=True) == (
        ServiceStatus.REPLICA_INIT,
        "running setup",
    )
