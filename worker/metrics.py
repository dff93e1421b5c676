"""Prometheus metrics shared by every process."""

from prometheus_client import Counter, Histogram

COMMANDS = Counter("leadscout_commands_total", "Commands finished, by outcome code.", ["outcome"])
LOCK_WAIT = Histogram(
    "leadscout_lock_wait_seconds",
    "Time spent waiting for a channel lock.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
