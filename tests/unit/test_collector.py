"""Long-running processes hide their start-up objects from the collector."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: the test process's own collector stays as it is.
_PROBE = """
import gc
from core import collector
import worker.celery_app
before = gc.get_freeze_count()
collector.after_start_up()
print(before, gc.get_freeze_count() > 10_000, gc.get_threshold()[0], len(gc.garbage))
"""


def test_start_up_objects_are_frozen_and_young_ones_collected_less_often() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )

    assert done.stdout.split() == ["0", "True", "50000", "0"]
