"""Running jobs in threads at once, with failures and hangs reported as such."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

T = TypeVar("T")

JOIN_TIMEOUT_S = 120


def run_at_once(jobs: Sequence[Callable[[], T]], timeout_s: float = JOIN_TIMEOUT_S) -> list[T]:
    """Runs every job in its own thread, all released by one barrier; their outcomes in order.

    A job that raised fails the test with its own exception; a job still running after
    ``timeout_s`` fails it naming the job and showing where it hangs.
    """
    barrier = threading.Barrier(len(jobs))
    outcomes: dict[int, T] = {}
    failures: dict[int, BaseException] = {}

    def run(index: int) -> None:
        barrier.wait(timeout=timeout_s)
        try:
            outcomes[index] = jobs[index]()
        except BaseException as exc:
            failures[index] = exc

    threads = [
        threading.Thread(target=run, args=(i,), name=f"job {i}", daemon=True)
        for i in range(len(jobs))
    ]
    for thread in threads:
        thread.start()
    _join_all(threads, timeout_s)
    if failures:
        index = min(failures)
        raise AssertionError(f"job {index} of {len(jobs)} raised") from failures[index]
    return [outcomes[i] for i in range(len(jobs))]


def _join_all(threads: list[threading.Thread], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if hung := [t for t in threads if t.is_alive()]:
        pytest.fail(
            f"{len(hung)} job(s) still running after {timeout_s}s; {hung[0].name} is at:\n"
            + "".join(traceback.format_stack(sys._current_frames()[hung[0].ident])),
            pytrace=False,
        )
