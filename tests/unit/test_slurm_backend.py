"""The Slurm backend driven with a fake Slurm: sbatch arguments, one query per poll,
backoff, re-attach by name, cancel and the lost-job grace."""

from __future__ import annotations

import os
from collections.abc import Sequence

from sky_mini.models import JobRecord, JobStatus
from sky_mini.server.backends.slurm import SlurmBackend, SlurmOptions, submit
from sky_mini.server.backends.slurm.poller import POLL_MAX_SECONDS, POLL_MIN_SECONDS
from sky_mini.server.backends.slurm.tools import SlurmTools, ToolResult
from tests.helpers import FakeClock


class FakeSlurm:
    """Answers sbatch/squeue/scancel/sinfo like 22.05 does, from an in-memory table."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[str, str, str, int]] = {}  # id -> (name, state, reason, st)
        self.calls: list[list[str]] = []
        self.next_id = 100
        self.fail_squeue = False
        self.start_times: dict[str, str] = {}  # id -> StartTime as squeue prints it

    def __call__(self, argv: Sequence[str], stdin: str | None) -> ToolResult:
        argv = list(argv)
        self.calls.append(argv)
        tool = argv[0]
        if tool == "sbatch":
            name = next(a.split("=", 1)[1] for a in argv if a.startswith("--job-name="))
            if "--cpus-per-task=64" in argv:
                message = "sbatch: error: Batch job submission failed: "
                message += "Requested node configuration is not available"
                return ToolResult(1, "", message)
            self.next_id += 1
            self.jobs[str(self.next_id)] = (name, "PENDING", "Resources", 0)
            return ToolResult(0, f"{self.next_id}\n", "")
        if tool == "squeue":
            if self.fail_squeue:
                return ToolResult(1, "", "squeue: error: Unable to contact slurm controller")
            if "-j" in argv:
                wanted = argv[argv.index("-j") + 1].split(",")
                rows = [(i, self.jobs[i]) for i in wanted if i in self.jobs]
            else:
                names = argv[argv.index("-n") + 1].split(",")
                rows = [(i, j) for i, j in self.jobs.items() if j[0] in names]
            if not rows and "-j" in argv:
                return ToolResult(1, "", "slurm_load_jobs error: Invalid job id specified")
            out = "".join(
                f"{i}|{s}|{r}|{st}|{n}|{self.start_times.get(i, 'N/A')}|\n"
                for i, (n, s, r, st) in rows
            )
            return ToolResult(0, out, "")
        if tool == "scontrol":
            return ToolResult(1, "", "slurm_load_jobs error: Invalid job id specified")
        if tool == "scancel":
            return ToolResult(0, "", "")
        if tool == "sinfo":
            if "--version" in argv:
                return ToolResult(0, "slurm-wlm 22.05.8\n", "")
            return ToolResult(0, "skynode|debug*|idle\n", "")
        return ToolResult(127, "", f"{tool}: not found")

    def count(self, tool: str) -> int:
        return sum(1 for c in self.calls if c[0] == tool)


def make_record(home: str, job_id: int, **task: object) -> JobRecord:
    resources = dict(task.pop("resources", {}) or {})  # type: ignore[call-overload]
    return JobRecord(
        id=job_id,
        task={"run": "echo hi", "resources": resources, **task},
        name=f"job{job_id}",
        log_path=os.path.join(home, "logs", f"{job_id}.log"),
        submitted_at=0.0,
        infra="slurm",
        env={"PATH": "/usr/bin:/bin"},
    )


def make_backend(home: str, fake: FakeSlurm, clock: FakeClock, **kw: object) -> SlurmBackend:
    os.makedirs(os.path.join(home, "logs"), exist_ok=True)
    backend = SlurmBackend(
        home,
        "abc",
        options=SlurmOptions(),
        grace_seconds=3.0,
        tools=SlurmTools(fake),
        clock=clock,
        **{"threaded": False, **kw},  # type: ignore[arg-type]
    )
    backend.start()
    return backend


def test_sbatch_argv_has_every_option(tmp_path: os.PathLike[str]) -> None:
    home = str(tmp_path)
    files = submit.JobFiles.for_log(f"{home}/logs/3.log", f"{home}/slurm", 3)
    task = {
        "run": "x",
        "workdir": "/srv/w",
        "num_nodes": 2,
        "resources": {"cpus": 1.5, "memory_bytes": 512 * 1024 * 1024, "timeout_seconds": 5,
                      "accelerator": "A100", "gpus": 2.0},
    }  # fmt: skip
    argv = submit.build_sbatch_argv(
        job_id=3,
        home_key="abc",
        task=task,
        infra="slurm/gpu",
        files=files,
        options=SlurmOptions(partition="debug", account="acct", qos="hi", sbatch_args=("-x",)),
        grace_seconds=10,
    )
    for expected in (
        "--parsable",
        "--no-requeue",
        "--job-name=sky-mini-abc-3",
        "--cpus-per-task=2",
        "--nodes=2",
        "--mem=512M",
        "--time=2",  # 5 s + 10 s grace + 60 s backstop margin, in whole minutes
        "--gres=gpu:a100:2",
        "--partition=gpu",  # slurm/<partition> wins over the config's
        "--account=acct",
        "--qos=hi",
        "--chdir=/srv/w",
        f"--output={home}/logs/3.log",
        "--export=NONE",
        "-x",
    ):
        assert expected in argv, (expected, argv)
    assert argv[-1] == files.script_path
    assert submit.gres_for({"gpus": 0.5}) == "gpu:1"  # Slurm shares no device: a whole one
    assert submit.gres_for({"cpus": 1}) is None
    assert submit.parse_job_name("sky-mini-abc-3", "abc") == 3
    assert submit.parse_sbatch_answer("Submitted\n42;cluster\n") == "42"


def test_gres_comes_from_the_task_yaml_accelerators(tmp_path: os.PathLike[str]) -> None:
    from sky_mini import spec

    path = os.path.join(str(tmp_path), "t.yaml")
    with open(path, "w") as handle:
        handle.write("run: x\nresources: {infra: slurm, accelerators: H100:4}\n")
    resources = spec.load_task(path).to_json()["resources"]
    assert submit.gres_for(resources) == "gpu:h100:4"


def test_job_env_is_explicit() -> None:
    env = submit.build_job_env(
        {"SKY_MINI_MARKER": "x", "FOO": "1"}, {"DATE": "today"}, job_id=5, num_nodes=1
    )
    assert "SKY_MINI_MARKER" not in env  # the next server's sweep must not kill Slurm's job
    assert env["PATH"] and env["SKY_MINI_JOB_ID"] == "5" and env["DATE"] == "today"
    assert env["SKYPILOT_NUM_NODES"] == "1" and env["FOO"] == "1"


def test_one_squeue_per_poll_for_twenty_jobs(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    for job_id in range(1, 21):
        backend.launch(make_record(home, job_id), {})
    assert fake.count("sbatch") == 20
    for _ in range(5):
        clock.now += POLL_MAX_SECONDS
        before = fake.count("squeue")
        backend.poll()
        assert fake.count("squeue") - before == 1


def test_poll_backs_off_and_hurries(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    backend.launch(make_record(home, 1), {})
    intervals = []
    for _ in range(8):
        clock.now = backend.schedule.next_at
        backend.poll()
        intervals.append(backend.schedule.interval)
    assert intervals[-1] == POLL_MAX_SECONDS and intervals[1] > intervals[0]
    backend.stop(1, "cancel", 3.0)
    assert backend.schedule.interval == POLL_MIN_SECONDS


def test_pending_reason_then_running_then_finished(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    record = make_record(home, 1)
    assert backend.launch(record, {}) == "slurm:101" and record.slurm_job_id == "101"
    clock.now += POLL_MAX_SECONDS
    events = backend.poll()
    assert [(e.kind, e.data.get("reason")) for e in events] == [("pending", "Slurm: Resources")]
    fake.jobs["101"] = ("sky-mini-abc-1", "RUNNING", "None", 0)
    clock.now += POLL_MAX_SECONDS
    assert [e.kind for e in backend.poll()] == ["started"]
    fake.jobs["101"] = ("sky-mini-abc-1", "COMPLETED", "None", 0)
    clock.now += POLL_MAX_SECONDS
    (event,) = backend.poll()
    assert event.kind == "finished" and event.data["status"] == "SUCCEEDED"
    assert not backend.has_unfinished()


def test_failed_query_changes_nothing_and_backs_off(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    backend.launch(make_record(home, 1), {})
    fake.fail_squeue = True
    clock.now += POLL_MAX_SECONDS
    assert backend.poll() == []
    assert backend.components()[0]["healthy"] is False
    assert backend.schedule.interval >= 2 * POLL_MIN_SECONDS


def test_brief_absence_changes_nothing_then_lost(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    backend.launch(make_record(home, 1), {})
    del fake.jobs["101"]  # Slurm forgot it and the wrapper left no record
    clock.now += POLL_MAX_SECONDS
    assert backend.poll() == []
    clock.now += 30
    assert backend.poll() == []
    clock.now += 60
    (event,) = backend.poll()
    assert event.data["status"] == "KILLED" and event.data["reason_code"] == "supervisor_lost"


def test_refused_submission_fails_setup_with_sbatch_message(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    backend.launch(make_record(home, 1, resources={"cpus": 64}), {})
    (event,) = backend.poll()
    assert event.data["status"] == JobStatus.FAILED_SETUP.value
    assert "Requested node configuration is not available" in event.data["reason"]


def test_adopt_finds_by_name_and_never_submits_twice(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    first = make_backend(home, fake, clock)
    record = make_record(home, 1)
    first.launch(record, {})
    record.slurm_job_id = None  # the server died before recording sbatch's answer
    second = make_backend(home, fake, clock)
    assert second.adopt(record) is True and record.slurm_job_id == "101"
    assert fake.count("sbatch") == 1


def test_adopt_without_intent_is_new(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    assert backend.adopt(make_record(home, 1)) is False
    assert fake.count("squeue") == 0


def test_cancel_is_recorded_then_scancel_once(tmp_path: os.PathLike[str]) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    backend.launch(make_record(home, 1), {})
    backend.stop(1, "cancel", 3.0)
    backend.stop(1, "cancel", 3.0)
    assert fake.count("scancel") == 1
    backend.stop(1, "shutdown", 3.0)  # a server shutdown leaves Slurm's work alone
    assert fake.count("scancel") == 1
    fake.jobs["101"] = ("sky-mini-abc-1", "CANCELLED", "None", 0)
    clock.now += POLL_MAX_SECONDS
    (event,) = backend.poll()
    assert event.data["status"] == "CANCELLED" and event.data["reason"] == "cancelled by user"


def test_server_routes_by_infra_and_keeps_slurm_jobs_through_idle_and_shutdown(
    tmp_path: os.PathLike[str],
) -> None:
    """The tick loop: a Slurm job stays PENDING with Slurm's reason, takes no local
    capacity, keeps an auto-started server from idling out, and a graceful stop leaves it
    unfinished for the next server (no KILLED shutdown)."""
    from sky_mini.config import Settings
    from sky_mini.paths import Paths, ensure_dirs
    from sky_mini.server.main import Capacity, Server
    from sky_mini.state import Store
    from tests.unit.test_server_tick import FakeBackend

    fake, clock = FakeSlurm(), FakeClock()
    paths = Paths(os.path.join(str(tmp_path), "home"))
    ensure_dirs(paths)
    server = Server(paths, Settings(), idle_minutes=0.1, clock=clock)
    server.capacity = Capacity(cpus=1, memory_bytes=1)  # a Slurm job must not need any
    server.backend = FakeBackend(0)
    server.cgroup_caps = None  # configure_host is not run here
    server.remote.by_kind["slurm"] = make_backend(paths.home, fake, clock)
    store = Store(paths)

    def build(job_id: int) -> JobRecord:
        record = make_record(paths.home, job_id, resources={"cpus": 2, "memory_bytes": 1 << 30})
        record.log_path = paths.job_log(job_id)
        return record

    job = store.create_job(build)
    server.load_new_jobs()
    server.dispatch_pending(clock())
    assert fake.count("sbatch") == 1
    server.dispatch_pending(clock())
    assert fake.count("sbatch") == 1  # handed over once
    clock.now += POLL_MAX_SECONDS
    server.handle_backend_events(clock())
    record = store.load_job(job.id)
    assert record is not None and record.status is JobStatus.PENDING
    assert record.reason == "Slurm: Resources" and record.slurm_job_id == "101"
    clock.now += 3600
    server.check_autostop(clock())
    assert server.stop_requested is None  # unfinished Slurm work: no idle stop
    server.initiate_shutdown("signal SIGTERM")
    server.cleanup()
    after = store.load_job(job.id)
    assert after is not None and after.status is JobStatus.PENDING
    assert fake.count("scancel") == 0


def test_unreachable_controller_at_submit_is_retried_not_failed(
    tmp_path: os.PathLike[str],
) -> None:
    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    real = fake.__call__

    def down(argv: Sequence[str], stdin: str | None) -> ToolResult:
        if argv[0] == "sbatch":
            fake.calls.append(list(argv))
            return ToolResult(1, "", "sbatch: error: Unable to contact slurm controller")
        return real(argv, stdin)

    backend.tools.runner = down
    assert backend.launch(make_record(home, 1), {}) == ""
    assert backend.poll() == [] and backend.free_slots() == 0
    assert backend.components()[0]["healthy"] is False
    clock.now += 60
    backend.tools.runner = real
    assert backend.free_slots() > 0
    assert backend.launch(make_record(home, 1), {}) == "slurm:101"


def test_threaded_backend_never_blocks_the_caller(tmp_path: os.PathLike[str]) -> None:
    """A Slurm tool that hangs (an unreachable controller) holds up only the worker: launch,
    stop and poll return at once; the answers arrive later as events, with a wake byte."""
    import select
    import threading
    import time

    from tests.helpers import wait_for

    home, fake = str(tmp_path), FakeSlurm()
    release = threading.Event()

    def slow(argv: Sequence[str], stdin: str | None) -> ToolResult:
        if argv[0] == "sbatch":
            release.wait(60)
        return fake(argv, stdin)

    backend = make_backend(home, fake, FakeClock(), threaded=True)
    backend.tools = SlurmTools(slow)
    began = time.monotonic()
    assert backend.poll() == []  # starts the worker
    assert backend.launch(make_record(home, 1), {}) == "slurm:submitting"
    backend.stop(1, "cancel", 3.0)
    assert backend.poll() == []
    assert time.monotonic() - began < 5  # sbatch is still blocked in the worker
    assert fake.count("sbatch") == 0
    release.set()
    wait_for(lambda: select.select([backend.filenos()[0]], [], [], 0)[0], 30, "a wake byte")
    events: list[object] = []
    wait_for(lambda: events.extend(backend.poll()) or any(  # type: ignore[func-returns-value]
        getattr(e, "kind", "") == "submitted" for e in events
    ), 30, "the submitted event")  # fmt: skip
    submitted = next(e for e in events if getattr(e, "kind", "") == "submitted")
    assert submitted.data["slurm_job_id"] == "101"  # type: ignore[attr-defined]
    wait_for(lambda: fake.count("scancel") == 1, 30, "the queued cancel to reach scancel")


def test_started_at_is_slurms_start_time(tmp_path: os.PathLike[str]) -> None:
    import time

    home, fake, clock = str(tmp_path), FakeSlurm(), FakeClock()
    backend = make_backend(home, fake, clock)
    backend.launch(make_record(home, 1), {})
    backend.launch(make_record(home, 2), {})
    fake.jobs["101"] = ("sky-mini-abc-1", "RUNNING", "None", 0)
    fake.jobs["102"] = ("sky-mini-abc-2", "COMPLETED", "None", 0)  # never seen running
    fake.start_times.update({"101": "2026-12-01T21:42:02", "102": "2026-12-01T21:43:00"})
    clock.now += POLL_MAX_SECONDS
    events = {e.job_id: e for e in backend.poll()}
    expected = time.mktime(time.strptime("2026-12-01T21:42:02", "%Y-%m-%dT%H:%M:%S"))
    assert events[1].kind == "started" and events[1].data["started_at"] == expected
    assert events[2].kind == "finished" and events[2].data["started_at"] == expected + 58


def test_cancel_while_sbatch_cannot_reach_the_controller(tmp_path: os.PathLike[str]) -> None:
    """The cancel that arrives while the failing sbatch is in flight is not lost: the job,
    sent back PENDING, ends CANCELLED (the loop would otherwise dispatch it again)."""
    home = str(tmp_path)

    def unreachable(argv: Sequence[str], stdin: str | None) -> ToolResult:
        return ToolResult(1, "", "sbatch: error: Unable to contact slurm controller")

    backend = make_backend(home, FakeSlurm(), FakeClock(), threaded=True)
    backend.tools = SlurmTools(unreachable)
    backend.launch(make_record(home, 1), {})
    backend.stop(1, "cancel", 3.0)
    backend.work()  # the worker's round, run here to see both in order
    kinds = [(e.kind, e.data.get("status")) for e in backend.poll()]
    assert kinds == [("unsubmitted", None), ("finished", "CANCELLED")], kinds
    assert [n for n in os.listdir(os.path.join(home, "slurm")) if n.startswith("job-")] == []
