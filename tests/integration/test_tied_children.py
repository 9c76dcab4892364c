"""The tied children (executors, services controller) as multiprocessing processes.

Each property of the design card has a test named for it, most with a negative control
that turns the mechanism off (``disabled`` switches, or the bare ``waitpid`` that
multiprocessing cannot see) and shows the same check then fails. A "server" here is either
this test process or a small ``sys.executable -c`` script that starts tied children and is
then SIGKILLed; every PID signalled is one this test started.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from sky_mini import procs
from sky_mini.server import tied
from tests.helpers import SkyMini, pid_alive, wait_for

KILL_BOUND_SECONDS = 2.0

# A tied child's main: block until the command pipe (whose write end the server holds)
# reads EOF, then exit 0. Ignoring the parent sentinel lets a test look at it from outside.
BLOCK_ON_COMMANDS = "lambda cmd_fd, evt_fd: (os.read(cmd_fd, 1), 0)[1]"

# Reports the moment the parent sentinel reads EOF by creating a file, then exits.
WATCH_SENTINEL = """
def watch(cmd_fd, evt_fd):
    import select
    sentinel = tied.parent_sentinel()
    while not tied.parent_gone():
        select.select([sentinel], [], [], 1.0)
    open(sys.argv[1], "w").close()
    return 0
"""

SERVER_SCRIPT = """
import os, signal, sys, time
from sky_mini.server import tied
{watch}
disabled = frozenset(os.environ.get("TIED_DISABLE", "").split(",")) - {{""}}
children = [tied.start_tied("test {{}}".format(name), disabled, main)
            for name, main in {mains}]
print(" ".join(str(c.pid) for c in children), flush=True)
signal.pause()  # a server that lives until the test SIGKILLs it
"""


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def title_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def fd_targets(pid: int) -> dict[int, str]:
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            targets[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return targets


@pytest.fixture
def started() -> Iterator[list[tied.TiedChild]]:
    """Tied children this test starts in its own process; ended and reaped afterwards."""
    children: list[tied.TiedChild] = []
    yield children
    for child in children:
        for fd in (child.cmd_w, child.evt_r):
            if fd >= 0:
                os.close(fd)
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            wait_for(lambda c=child: tied.reap_tied(c.pid) is not None, 10, "child reaped")


def block(cmd_fd: int, evt_fd: int) -> int:
    """Say "ready" (descriptors are closed by now), then wait for the command pipe's EOF."""
    os.write(evt_fd, b"ready\n")
    os.read(cmd_fd, 1)
    return 0


def start(
    started: list[tied.TiedChild], disabled: str = "", main: tied.ChildMain | None = None
) -> tied.TiedChild:

    child = tied.start_tied(
        "test child", frozenset(filter(None, disabled.split(","))), main or block
    )
    started.append(child)
    return child


class FakeServer:
    """A script that starts tied children, prints their PIDs, and waits to be SIGKILLed."""

    def __init__(self, tmp: str, mains: str, disabled: str = "", watch: str = "") -> None:
        script = SERVER_SCRIPT.format(watch=textwrap.dedent(watch), mains=mains)
        env = dict(os.environ, TIED_DISABLE=disabled)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, os.path.join(tmp, "gone")],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        self.children = [int(p) for p in self.proc.stdout.readline().split()]
        self.gone_file = os.path.join(tmp, "gone")

    def wait_until_titled(self) -> None:
        """Each child set its title: it is past the fork-race check and about to run main."""
        for pid in self.children:
            wait_for(lambda pid=pid: title_of(pid).startswith("sky-mini: test"), 10, "title")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for pid in self.children:  # started by this test, in this PID namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def servers() -> Iterator[list[FakeServer]]:
    made: list[FakeServer] = []
    yield made
    for server in made:
        server.cleanup()


# -- multiprocessing, fork context ----------------------------------------------------------


def test_tied_children_are_fork_context_multiprocessing_processes(
    started: list[tied.TiedChild],
) -> None:
    child = start(started)
    assert child.process.pid == child.pid
    assert type(child.process).__name__ == "ForkProcess"
    assert child.sentinel == child.process.sentinel


def test_tied_children_are_started_from_the_main_thread_only() -> None:
    import threading

    errors: list[BaseException] = []

    def from_thread() -> None:
        try:
            tied.start_tied("test", frozenset(), lambda c, e: 0)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=from_thread)
    thread.start()
    thread.join()
    assert errors and "main thread" in str(errors[0])


# -- PDEATHSIG, first, with the getppid() race check ----------------------------------------


@pytest.mark.parametrize("disabled", ["", "pdeathsig"])
def test_pdeathsig_kills_a_tied_child_when_the_server_dies(
    tmp_path: os.PathLike[str], servers: list[FakeServer], disabled: str
) -> None:
    # The child blocks on a pipe nobody closes but the server's death; only PDEATHSIG
    # (SIGTERM, default action) can end it. Negative control: pdeathsig off, it survives.
    mains = "[('a', lambda c, e: (signal_pause(), 0)[1])]"
    pause = "import signal\ndef signal_pause():\n    while True:\n        signal.pause()\n"
    server = FakeServer(str(tmp_path), mains, disabled, watch=pause)
    servers.append(server)
    (pid,) = server.children
    server.wait_until_titled()
    server.kill()
    if "pdeathsig" in disabled:
        with pytest.raises(AssertionError):
            wait_for(lambda: not pid_alive(pid), KILL_BOUND_SECONDS)
    else:
        wait_for(lambda: not pid_alive(pid), KILL_BOUND_SECONDS, "the child to die")


def test_a_tied_child_exits_if_its_server_died_before_prctl() -> None:
    # The race: the parent dies between fork and prctl. The child compares getppid() with
    # the PID recorded before the fork; here it is told a PID that is not its parent.
    not_the_parent = os.getpid() + 1_000_000
    args = ("test", not_the_parent, frozenset(), 0, 1, block, frozenset())
    process = tied._FORK.Process(target=tied.run_tied_child, args=args)
    process.start()
    process.join(10)
    assert process.exitcode == 1  # before main ran: block() would wait on stdin forever


# -- the parent sentinel as the pipe-based liveness check ----------------------------------


@pytest.mark.parametrize("disabled", ["pdeathsig", "pdeathsig,fds"])
def test_the_parent_sentinel_reads_eof_when_the_server_dies(
    tmp_path: os.PathLike[str], servers: list[FakeServer], disabled: str
) -> None:
    # Child "watch" polls only its parent sentinel; child "later" is a sibling started after
    # it that just blocks. With descriptors closed, the server's death is EOF on watch's
    # sentinel within the bound. Negative control ("fds" off): "later" inherited the server's
    # end of watch's sentinel pipe, so watch never hears of the death.
    mains = f"[('watch', watch), ('later', {BLOCK_ON_COMMANDS})]"
    server = FakeServer(str(tmp_path), mains, disabled, watch=WATCH_SENTINEL)
    servers.append(server)
    server.wait_until_titled()
    server.kill()
    if "fds" in disabled:
        with pytest.raises(AssertionError):
            wait_for(lambda: os.path.exists(server.gone_file), KILL_BOUND_SECONDS)
    else:
        wait_for(lambda: os.path.exists(server.gone_file), KILL_BOUND_SECONDS, "sentinel EOF")


# -- every inherited descriptor closed but the child's own ----------------------------------


@pytest.mark.parametrize("disabled", ["", "fds"])
def test_a_tied_child_holds_no_descriptor_but_its_own(
    tmp_path: os.PathLike[str], started: list[tied.TiedChild], disabled: str
) -> None:
    lock_path = os.path.join(str(tmp_path), "lock")
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        first = start(started)
        second = start(started, disabled)
        assert os.read(second.evt_r, 64) == b"ready\n"
        ours = fd_targets(os.getpid())
        first_pipes = {ours[fd] for fd in (first.cmd_w, first.evt_r, first.sentinel)}
        held = fd_targets(second.pid)
        leaked = set(held.values()) & (first_pipes | {lock_path})
        if disabled:
            assert leaked, "without closing, the later child holds the earlier one's pipes"
            return
        assert not leaked
        # Its own: stdio, the command and event pipes, the two sentinel pipes (and the
        # /dev/null multiprocessing opens as stdin when fd 0 is not a real file, as here).
        own = {fd: t for fd, t in held.items() if fd > 2 and t != os.devnull}
        assert len(own) == 4 and all(t.startswith("pipe:") for t in own.values()), held
    finally:
        os.close(lock_fd)


# -- child subreaper and titles ---------------------------------------------------------------


@pytest.mark.parametrize("disabled", ["", "subreaper"])
def test_a_tied_child_is_a_subreaper_of_its_orphans(
    started: list[tied.TiedChild], disabled: str
) -> None:
    def orphan_maker(cmd_fd: int, evt_fd: int) -> int:
        # A shell that backgrounds a sleep and exits: the sleep is orphaned at once.
        argv = ["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"]
        os.write(evt_fd, subprocess.run(argv, capture_output=True, check=True).stdout)
        os.read(cmd_fd, 1)
        return 0

    child = start(started, disabled, orphan_maker)
    orphan = int(os.read(child.evt_r, 64).split()[0])  # the shell has exited by now
    try:
        with open(f"/proc/{orphan}/stat") as handle:
            ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        assert (ppid == child.pid) is not bool(disabled), (ppid, child.pid)
    finally:
        os.kill(orphan, signal.SIGKILL)  # started by this test


def test_a_tied_child_is_titled(started: list[tied.TiedChild]) -> None:
    child = start(started)

    wait_for(lambda: title_of(child.pid) == "sky-mini: test child", 10, "the title")


def test_an_error_in_a_tied_child_never_unwinds_into_the_server(
    started: list[tied.TiedChild],
) -> None:
    def crash(cmd_fd: int, evt_fd: int) -> int:
        raise RuntimeError("boom")

    child = start(started, main=crash)
    wait_for(lambda: tied.reap_tied(child.pid) is not None, 10, "child exit")
    assert child.returncode == 1  # os._exit(1) after the traceback, not pytest's own exit


# -- reaping: each Process reaps its own, waitpid the rest ------------------------------------


def test_reap_children_lets_each_process_reap_its_own_and_waitpids_the_rest(
    started: list[tied.TiedChild],
) -> None:
    child = start(started, main=lambda cmd_fd, evt_fd: 3)
    plain = os.fork()
    if plain == 0:
        os._exit(5)
    wait_for(lambda: zombie(child.pid) and zombie(plain), 10, "both exited")
    forgotten: list[int] = []
    sentinel = child.sentinel
    reaped = dict(tied.reap_children(forgotten.append))
    assert procs.returncode_from_status(reaped[child.pid]) == 3
    assert procs.returncode_from_status(reaped[plain]) == 5
    # The Process reaped it (its exitcode was read, then it was closed), not waitpid.
    assert child.returncode == 3 and " closed " in repr(child.process)
    assert forgotten == [sentinel]
    assert sentinel not in tied.child_sentinels()


def test_negative_control_a_bare_waitpid_leaves_the_process_exitcode_none(
    started: list[tied.TiedChild],
) -> None:
    child = start(started, main=lambda cmd_fd, evt_fd: 3)
    wait_for(lambda: zombie(child.pid), 10, "child exited")
    assert os.waitpid(child.pid, 0)[0] == child.pid  # what waitpid(-1) alone would do
    assert child.process.exitcode is None  # multiprocessing can no longer tell
    # Forget it everywhere, so nothing ever signals that PID again (it may be reused).
    child.returncode = -1
    del tied._children[child.pid]
    multiprocessing.process._children.discard(child.process)  # type: ignore[attr-defined]


def test_a_child_reaped_by_a_later_start_is_still_reported(
    started: list[tied.TiedChild],
) -> None:
    first = start(started, main=lambda cmd_fd, evt_fd: 4)
    wait_for(lambda: zombie(first.pid), 10, "first exited")
    start(started)  # Process.start() polls, and so reaps, every earlier child
    assert not zombie(first.pid)
    reaped = dict(tied.reap_children(lambda fd: None))
    assert procs.returncode_from_status(reaped[first.pid]) == 4


def test_the_server_sees_a_dead_childs_sentinel_readable(started: list[tied.TiedChild]) -> None:
    import select

    child = start(started)
    assert select.select([child.sentinel], [], [], 0)[0] == []
    os.close(child.cmd_w)  # EOF: the child exits
    child.cmd_w = -1
    assert select.select([child.sentinel], [], [], 10)[0] == [child.sentinel]


# -- through the real CLI ----------------------------------------------------------------------


def test_a_dead_executor_is_replaced_and_its_job_ends_killed(sky: SkyMini) -> None:
    sky.serve_foreground("--executors", "1")
    job = int(sky.run("jobs", "launch", "--async", "--", "sleep", "1000", check=True).out)
    sky.wait_job(job, ("RUNNING",))
    old = executor_row(sky)["pid"]
    os.kill(old, signal.SIGKILL)  # the executor this test's server forked
    record = sky.wait_job(job, ("KILLED",))
    assert record["reason_code"] == "supervisor_lost" and "job-0" in record["reason"]

    def replaced() -> bool:
        row = executor_row(sky)
        return row["pid"] not in (None, old) and row["state"] == "idle"

    wait_for(replaced, 10, "a replacement executor")
    second = int(sky.run("jobs", "launch", "--async", "--", "true", check=True).out)
    assert sky.wait_job(second, ("SUCCEEDED",))["exit_code"] == 0


def executor_row(sky: SkyMini) -> dict[str, Any]:
    rows = sky.run("api", "status", "--json").json()["components"]
    (row,) = [r for r in rows if r["name"] == "executor job-0"]
    return row
