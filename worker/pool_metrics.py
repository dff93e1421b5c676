"""The worker's metrics across its Celery pool (prometheus-client's multiprocess mode).

Every pool process writes its samples to files in one directory; the worker's main process
adds them up and serves the sum on ``LEADSCOUT_METRICS_PORT`` (SPEC 4.6). prometheus-client
picks the mode when it is first imported, so this module imports it only inside functions.
See https://prometheus.github.io/client_python/multiprocess/
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from celery.signals import worker_process_shutdown

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


class MetricsImportedTooEarly(RuntimeError):
    """prometheus_client is already loaded, in single-process mode."""


def share_between_processes() -> Path:
    """A fresh, empty samples directory for this worker run, removed when the run ends."""
    if "prometheus_client" in sys.modules:
        raise MetricsImportedTooEarly("set up worker metrics before importing prometheus_client")
    directory = Path(tempfile.mkdtemp(prefix="leadscout-metrics-"))
    os.environ[MULTIPROC_DIR] = str(directory)
    atexit.register(_remove, directory, os.getpid())
    worker_process_shutdown.connect(_forget_process)
    return directory


def serve(port: int) -> None:
    """Serves the sum of every pool process's samples; call it in the worker's main process."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
    start_http_server(port, registry=registry)


def _forget_process(pid: int, **_: Any) -> None:
    """A pool process exited: its live gauges go; its counters stay in the sum."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid)  # type: ignore[no-untyped-call]  # unannotated upstream


def _remove(directory: Path, owner_pid: int) -> None:
    # Forked pool processes inherit atexit hooks; only the process that made it removes it.
    if os.getpid() == owner_pid:
        shutil.rmtree(directory, ignore_errors=True)
