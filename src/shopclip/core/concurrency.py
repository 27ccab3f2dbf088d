"""A readers-writer lock and a forked background job: what in-place serving state needs.

Readers of an index must never run beside a writer that is changing it (a faiss `add` may
reallocate the storage a search is reading), yet many readers may run at once. Writes are
short (they change one product), so a writer-preferring lock keeps them from starving
behind a steady stream of searches.

`fork_job` runs work on a copy-on-write image of this process: a consistent copy of
gigabytes of in-memory indexes costs one `fork()` (page tables, tens of milliseconds),
not a copy, and the child's writing never holds a lock the parent's requests wait on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

__all__ = ["RWLock", "can_fork", "fork_job", "wait_job"]


class RWLock:
    """Many readers or one writer; a waiting writer holds back new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def can_fork() -> bool:
    return hasattr(os, "fork") and hasattr(os, "waitpid")


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this child when its parent dies, so a killed server leaves no
    orphan still writing into its folder (which a restarted server now owns)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(3)


def _single_threaded_openmp() -> None:
    """In a forked child, run the already-loaded OpenMP libraries on one thread.

    GNU OpenMP is not fork-safe: the parent's worker threads do not exist in the child, and
    the child's first parallel region waits for them forever (a 1M-row faiss compaction in a
    snapshot child hung this way). One thread needs no team. Only modules the parent had
    loaded are touched: nothing is imported here.
    """
    for name, call in (("faiss", "omp_set_num_threads"), ("torch", "set_num_threads")):
        mod = sys.modules.get(name)
        fn = getattr(mod, call, None) if mod is not None else None
        if fn is not None:
            fn(1)


def fork_job(work: Callable[[], None]) -> int:
    """Run `work()` in a forked child and return its pid; the child exits 0 on success, 1 on error.

    Call it while holding whatever lock makes the parent's state consistent (the fork is
    the snapshot); release the lock right after, then `wait_job(pid)` off the lock. The
    child must not take locks, log, or import modules (another thread may have held them
    at the fork): keep `work` to plain writes.
    """
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            _die_with_parent(parent)
            _single_threaded_openmp()
            work()
            code = 0
        except BaseException:  # noqa: BLE001 - report through the exit status, never unwind into the parent's code
            code = 1
        finally:
            os._exit(code)
    return pid


def wait_job(pid: int) -> bool:
    """Wait for a `fork_job` child; True when it finished its work."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
