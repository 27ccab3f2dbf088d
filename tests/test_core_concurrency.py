"""The readers-writer lock and forked jobs that the server's in-place state relies on."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from shopclip.core.concurrency import RWLock, can_fork, fork_job, wait_job


def test_readers_share_and_a_writer_excludes_everyone():
    lock = RWLock()
    inside: list[str] = []
    peak = {"readers": 0}
    state = {"readers": 0, "writer": False}
    guard = threading.Lock()
    bad: list[str] = []

    def reader() -> None:
        for _ in range(200):
            with lock.read():
                with guard:
                    state["readers"] += 1
                    peak["readers"] = max(peak["readers"], state["readers"])
                    if state["writer"]:
                        bad.append("reader beside writer")
                time.sleep(0.0005)
                with guard:
                    state["readers"] -= 1

    def writer() -> None:
        for _ in range(50):
            with lock.write():
                with guard:
                    if state["writer"] or state["readers"]:
                        bad.append("writer beside others")
                    state["writer"] = True
                time.sleep(0.0005)
                with guard:
                    state["writer"] = False
                inside.append("w")

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not bad
    assert peak["readers"] >= 2  # readers really ran together
    assert len(inside) == 100


def test_a_waiting_writer_is_not_starved_by_a_stream_of_readers():
    lock = RWLock()
    stop = threading.Event()
    got = threading.Event()

    def readers() -> None:
        while not stop.is_set():
            with lock.read():
                time.sleep(0.001)

    pool = [threading.Thread(target=readers) for _ in range(4)]
    for t in pool:
        t.start()
    time.sleep(0.02)
    t0 = time.monotonic()
    with lock.write():
        got.set()
    waited = time.monotonic() - t0
    stop.set()
    for t in pool:
        t.join()
    assert got.is_set() and waited < 1.0


@pytest.mark.skipif(not can_fork(), reason="needs fork")
def test_fork_job_reports_success_and_failure_and_sees_a_copy(tmp_path):
    data = {"x": 1}
    out = tmp_path / "out.txt"

    def work() -> None:
        out.write_text(str(data["x"]))

    pid = fork_job(work)
    data["x"] = 2  # the child works on the state as it was at the fork
    assert wait_job(pid) and out.read_text() == "1"

    def fail() -> None:
        raise RuntimeError("boom")

    assert not wait_job(fork_job(fail))
    assert os.getpid() == os.getpid()  # still the parent: the child never unwound into here


@pytest.mark.skipif(not can_fork(), reason="needs fork")
def test_fork_job_child_runs_openmp_work_after_the_parent_used_threads():
    """GNU OpenMP is not fork-safe: a child's parallel region waits forever for the parent's pool
    threads, which it does not have (a snapshot child compacting a large faiss index hung so)."""
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)  # a team of two in the parent, even on a one-core runner
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((30_000, 64)).astype(np.float32)
        index = faiss.IndexFlatIP(64)
        index.add(x)
        index.search(x[:2_000], 5)  # the parent's OpenMP team now exists
        pid = fork_job(lambda: index.reconstruct_batch(np.arange(20_000)) is not None and index.search(x[:500], 5))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in OpenMP")
    finally:
        faiss.omp_set_num_threads(before)
