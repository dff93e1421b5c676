"""The garbage collector of a long-running process."""

from __future__ import annotations

import gc

# Young objects are collected every YOUNG_COLLECTION_EVERY allocations (Python's default:
# 700). A campaign chunk or a 10,000-item batch allocates a few hundred thousand objects that
# live until it ends; at 700, each was walked by several collections before it died.
YOUNG_COLLECTION_EVERY = 50_000


def after_start_up() -> None:
    """What a process built at start (modules, settings, engines) lives as long as it:
    frozen out of the collector's sight, a full collection walks only what the work
    allocates. And young objects are collected less often.

    Measured in process, CPU per item: batch intake 32 µs before, 19 µs frozen, 17 µs with
    the threshold; a campaign chunk's command 157 µs before, 112 µs frozen, and its time
    in the collector from 9 µs to under 1 µs with the threshold.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)
