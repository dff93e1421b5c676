"""Starts the project's real processes (``leadscout ...``) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LEADSCOUT = [sys.executable, "-m", "leadscout"]


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
    args: list[str], env: dict[str, str], log: Path, *, interruptible: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs ``leadscout ARGS`` in its own process group; stops the whole group after.

    ``interruptible``: SIGINT acts as Ctrl-C in a terminal even when this runner ignores it
    (a background job does, and children inherit an ignored signal across exec).
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
            _stop_group(process)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
