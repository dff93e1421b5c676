"""Prometheus metrics shared by every process."""

from prometheus_client import Counter, Gauge, Histogram

COMMANDS = Counter("leadscout_commands_total", "Commands finished, by outcome code.", ["outcome"])
LOCK_WAIT = Histogram(
    "leadscout_lock_wait_seconds",
    "Time spent waiting for a channel lock.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_LAG = Histogram(
    "leadscout_outbox_lag_seconds",
    "Age of the oldest outbox row in each relayed batch when it was picked up.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
EVENTS_RELAYED = Counter(
    "leadscout_events_relayed_total",
    "Outbox events sent to the stream, by path: direct (worker fast path) or sweep (relay).",
    ["path"],
)
HTTP_REQUESTS = Counter(
    "leadscout_http_requests_total",
    "HTTP requests by route and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "leadscout_http_request_seconds", "HTTP request latency by route.", ["method", "route"]
)
REPORTER_EVENTS = Counter(
    "leadscout_reporter_events_total",
    "Stream entries the reporter handled, by result: counted, duplicate (event id counted"
    " before), ignored (an uncounted type, or no campaign), malformed (acknowledged, logged).",
    ["result"],
)
REPORTER_LAG = Gauge(
    "leadscout_reporter_lag",
    "Stream entries the reporter's consumer group has not acknowledged: undelivered + pending.",
    ["group"],
)
STREAM_LENGTH = Gauge(
    "leadscout_stream_length",
    "Entries in the event stream (XLEN), set by the reporter.",
    ["stream"],
)
STREAM_OLDEST_AGE = Gauge(
    "leadscout_stream_oldest_age_seconds",
    "Age of the event stream's oldest entry by Redis's clock (0 when empty), set by the reporter.",
    ["stream"],
)
COMMANDS_SWEPT = Counter(
    "leadscout_commands_swept_total",
    "Unfinished commands the sweeper published again after LEADSCOUT_SWEEP_AFTER_S untouched.",
)
BACKLOG_TAKEN = Counter(
    "leadscout_commands_taken_from_backlog_total",
    "Single commands a worker took into its chunk because they waited in the queue too long.",
)
