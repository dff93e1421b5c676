"""Starts the project's real processes (``leadscout ...``) for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

LEADSCOUT = [sys.executable, "-m", "leadscout"]
STOP_GRACE_S = 15.0
# For a teardown that checks nothing of the stop: a Celery worker's warm shutdown and the
# reporter's blocking read take 1-2 s; whatever they would still write is not looked at.
TEARDOWN_GRACE_S = 0.5


def service_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCOUT_")}
    env.update(
        LEADSCOUT_DATABASE_URL=database_url,
        LEADSCOUT_REDIS_URL=redis_url,
        LEADSCOUT_LOG_FORMAT="json",
        **extra,
    )
    return env


@contextmanager
def running(
    args: list[str],
    env: dict[str, str],
    log: Path,
    *,
    interruptible: bool = False,
    grace_s: float = STOP_GRACE_S,
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs ``leadscout ARGS`` in its own process group; stops the whole group after.

    ``interruptible``: SIGINT acts as Ctrl-C in a terminal even when this runner ignores it
    (a background job does, and children inherit an ignored signal across exec).
    ``grace_s``: how long the group gets to stop on SIGTERM before SIGKILL.
    """
    with log.open("wb") as out:
        process = subprocess.Popen(
            LEADSCOUT + args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint if interruptible else None,
        )
        try:
            yield process
        finally:
            stop_all([process], grace_s)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_all(processes: Iterable[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to every process group at once, then waits for each; SIGKILL after ``grace_s``.

    Several processes stop in the time of the slowest, not the sum of them all.
    """
    alive = [process for process in processes if process.poll() is None]
    for process in alive:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in alive:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=5)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group exited since the poll
        os.killpg(process.pid, signum)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
