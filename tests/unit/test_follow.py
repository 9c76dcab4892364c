"""sky_mini.follow: the inotify watcher, its poll fallback, streaming a growing file, tail."""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from sky_mini import client, follow

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux")


def replace_atomically(path: Path, text: str) -> None:
    """Write like the store does: a temp file in the same directory, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the inotify watcher ------------------------------------------------------------------


@linux_only
def test_inotify_wakes_on_the_watched_record_only(tmp_path: Path) -> None:
    with follow.open_watcher(use_inotify=True) as watcher:
        assert isinstance(watcher, follow.InotifyWatcher)
        watcher.watch_dir(str(tmp_path), ["7.json"])
        assert watcher.wait(0) is False
        replace_atomically(tmp_path / "8.json", "{}")  # another job's record
        assert watcher.wait(0.05) is False
        replace_atomically(tmp_path / "7.json", "{}")
        assert watcher.wait(10) is True
        assert watcher.wait(0) is False  # the events were consumed


@linux_only
def test_inotify_sees_a_plain_write_and_a_creation(tmp_path: Path) -> None:
    with follow.open_watcher(use_inotify=True) as watcher:
        watcher.watch_dir(str(tmp_path), ["7.json", "7.log"])
        (tmp_path / "7.json").write_text("{}")  # IN_CLOSE_WRITE
        assert watcher.wait(10) is True
        fd = os.open(tmp_path / "7.log", os.O_WRONLY | os.O_CREAT, 0o600)  # IN_CREATE
        try:
            assert watcher.wait(10) is True
        finally:
            os.close(fd)


@linux_only
def test_inotify_wakes_on_append_to_a_watched_file(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    log.write_bytes(b"")
    with follow.open_watcher(use_inotify=True) as watcher:
        watcher.watch_file(str(log))
        assert watcher.wait(0) is False
        with open(log, "ab") as handle:
            handle.write(b"more\n")
        assert watcher.wait(10) is True
        log.unlink()  # IN_DELETE_SELF, then IN_IGNORED: a follower must look again
        assert watcher.wait(10) is True


@linux_only
def test_inotify_watch_of_a_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with follow.open_watcher(use_inotify=True) as watcher:
        with pytest.raises(FileNotFoundError):
            watcher.watch_file(str(tmp_path / "nope.log"))
        with pytest.raises(FileNotFoundError):
            watcher.watch_dir(str(tmp_path / "nodir"), ["x"])


@linux_only
def test_close_releases_the_inotify_descriptor(tmp_path: Path) -> None:
    watcher = follow.open_watcher(use_inotify=True)
    assert isinstance(watcher, follow.InotifyWatcher)
    fd = watcher.fd
    assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    watcher.close()
    watcher.close()  # idempotent
    assert watcher.fd == -1


# -- falling back to polling --------------------------------------------------------------


def test_forced_fallback_polls_and_always_says_look_again(tmp_path: Path) -> None:
    with follow.open_watcher(use_inotify=False) as watcher:
        assert type(watcher) is follow.PollWatcher
        watcher.watch_dir(str(tmp_path), ["7.json"])  # accepted, does nothing
        watcher.watch_file(str(tmp_path / "missing.log"))
        assert watcher.wait(0) is True
        assert watcher.wait(None) is True  # at most one poll interval


def test_sky_mini_disable_inotify_forces_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKY_MINI_DISABLE", "cgroup, inotify")
    assert follow.inotify_disabled()
    assert type(follow.open_watcher()) is follow.PollWatcher
    monkeypatch.setenv("SKY_MINI_DISABLE", "cgroup")
    assert not follow.inotify_disabled()


class FakeLibc:
    """A libc whose inotify calls fail like the kernel does when limits are reached."""

    def __init__(self, init_result: int = -1, watch_result: int = -1) -> None:
        self.init_result = init_result
        self.watch_result = watch_result

    def inotify_init1(self, flags: int) -> int:
        return self.init_result

    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
        return self.watch_result


def test_no_inotify_instance_left_falls_back_to_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "_load_libc", lambda: FakeLibc(init_result=-1))  # EMFILE
    assert type(follow.open_watcher(use_inotify=True)) is follow.PollWatcher

    def broken() -> Any:
        raise OSError("no libc")

    monkeypatch.setattr(follow, "_load_libc", broken)
    assert type(follow.open_watcher(use_inotify=True)) is follow.PollWatcher


def test_a_watch_that_cannot_be_added_degrades_to_polling(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()  # stands in for the inotify descriptor
    os.set_blocking(read_fd, False)
    watcher = follow.InotifyWatcher(FakeLibc(watch_result=-1), read_fd, poll_seconds=0.01)
    watcher._libc_errno = lambda: 28  # type: ignore[method-assign]  # ENOSPC
    try:
        watcher.watch_file(str(tmp_path / "x.log"))
        assert watcher.degraded
        assert watcher.wait(None) is False  # capped at the poll interval, not forever
    finally:
        watcher.close()
        os.close(write_fd)


# -- streaming ----------------------------------------------------------------------------


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "poll"])
def test_stream_follows_a_file_created_later_until_finished(
    tmp_path: Path, use_inotify: bool
) -> None:
    if use_inotify and not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux")
    log = tmp_path / "logs" / "3.log"
    log.parent.mkdir()
    out = io.BytesIO()
    done = threading.Event()
    lines = [f"line {i}\n".encode() for i in range(50)]

    def writer() -> None:
        with open(log, "ab", buffering=0) as handle:
            for line in lines:
                handle.write(line)
        done.set()

    with follow.open_watcher(use_inotify=use_inotify) as watcher:
        stream = follow.FileStream(str(log), out, watcher)
        assert stream.pump() == 0  # no file yet
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            follow.stream_until(stream, watcher, done.is_set, safety_seconds=5)
        finally:
            thread.join()
            stream.close()
    assert out.getvalue() == b"".join(lines)


def test_stream_starts_at_the_given_position(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    log.write_bytes(b"old\nnew\n")
    out = io.BytesIO()
    with follow.open_watcher(use_inotify=False) as watcher:
        stream = follow.FileStream(str(log), out, watcher, position=4)
        assert stream.pump() == 4
        stream.close()
    assert out.getvalue() == b"new\n"


def test_stream_until_returns_when_finished_even_if_the_writer_never_stops(
    tmp_path: Path,
) -> None:
    log = tmp_path / "1.log"
    log.write_bytes(b"x\n")
    calls = []

    def finished() -> bool:
        with open(log, "ab") as handle:  # a daemon that keeps writing after the job ended
            handle.write(b"y\n")
        calls.append(1)
        return len(calls) >= 3

    out = io.BytesIO()
    with follow.open_watcher() as watcher:
        stream = follow.FileStream(str(log), out, watcher)
        follow.stream_until(stream, watcher, finished)
        stream.close()
    assert out.getvalue() == b"x\n" + b"y\n" * 3


# -- tail ---------------------------------------------------------------------------------


def write(tmp_path: Path, data: bytes, name: str = "t.log") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_tail_of_a_large_file_reads_only_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"line {i:07d}\n".encode() for i in range(400_000)]  # ~5 MB
    path = write(tmp_path, b"".join(lines))
    read_total = 0
    real_fdopen = os.fdopen

    class Counting(io.BufferedReader):
        def read(self, size: int | None = -1) -> bytes:
            nonlocal read_total
            data = super().read(size)
            read_total += len(data)
            return data

    def counting_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "rb":
            return Counting(io.FileIO(fd, "rb"))
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(follow.os, "fdopen", counting_fdopen)
    got, end = follow.read_tail(path, 10)
    assert got == lines[-10:]
    assert end == os.path.getsize(path)
    assert read_total <= 2 * follow.TAIL_BLOCK_BYTES


@pytest.mark.parametrize("block", [3, 8, 65536])
def test_tail_edge_cases(tmp_path: Path, block: int) -> None:
    def tail(data: bytes, count: int) -> list[bytes]:
        return follow.read_tail(write(tmp_path, data), count, block=block)[0]

    assert tail(b"a\nb\nc", 1) == [b"c"]  # no trailing newline
    assert tail(b"a\nb\nc", 2) == [b"b\n", b"c"]
    assert tail(b"a\nb\nc\n", 2) == [b"b\n", b"c\n"]
    assert tail(b"a\nb\n", 10) == [b"a\n", b"b\n"]  # N > lines
    assert tail(b"a\nb\n", 0) == []
    assert tail(b"", 5) == []  # empty file
    assert tail(b"\n\n\n", 2) == [b"\n", b"\n"]  # blank lines are lines
    assert tail(b"long line without end", 1) == [b"long line without end"]
    assert tail(b"x\n10%\r50%\r100%\n", 1) == [b"10%\r50%\r100%\n"]  # \r is not a line end
    assert tail(b"first\r\nsecond\r\n", 1) == [b"second\r\n"]


def test_tail_of_a_missing_file_and_its_end_offset(tmp_path: Path) -> None:
    assert follow.read_tail(str(tmp_path / "missing.log"), 3) == ([], 0)
    path = write(tmp_path, b"a\nb\n")
    assert follow.read_tail(path, 0) == ([], 4)
    assert client.tail_lines(path, 1) == [b"b\n"]
    assert client.tail_lines(path, 0) == []
