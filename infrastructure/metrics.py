"""Prometheus metrics of eventkit's processes (``prometheus-client``, default registry).

Names follow Prometheus conventions: the ``eventkit_`` prefix, base units (seconds),
``_total`` for counters. Labels: ``kind`` (``projection`` or ``reaction``; ``group`` for a
worker group's own errors), ``consumer`` (the projection's or reaction's name, as in
``eventkit status``), ``partition`` (0 for a consumer of one partition), ``event_type``
(the event's topic).

One word per concept, as in the code and docs: an event is *processed* by a projection
(applied to its view) or by a reaction's follower (handed to the broker); a reaction
*message* is executed by an actor; *lag* is what a consumer has not processed yet; a
*dead letter* is parked.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: Buckets that resolve 1 ms to 5 min (commit-to-processed latency, appends): a consumer
#: catching up after a pause or an outage shows how far behind it was.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

EVENTS_PROCESSED = Counter(
    "eventkit_events_processed_total",
    "Events a consumer processed (a projection applied them, a reaction's follower handed "
    "them to the broker), by event type",
    ["kind", "consumer", "partition", "event_type"],
)
BATCHES = Counter(
    "eventkit_batches_total",
    "Batches a consumer committed (each with its position)",
    ["kind", "consumer", "partition"],
)
BATCH_EVENTS = Histogram(
    "eventkit_batch_events",
    "Events per committed batch",
    ["kind", "consumer"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
PROCESSED_LATENCY = Histogram(
    "eventkit_commit_to_processed_seconds",
    "From an event's commit (its recorded time) to the commit of the batch that processed it",
    ["kind", "consumer"],
    buckets=LATENCY_BUCKETS,
)
LAG_EVENTS = Gauge(
    "eventkit_lag_events",
    "Events of the types a consumer reads that it has not processed yet",
    ["kind", "consumer", "partition"],
)
LAG_SECONDS = Gauge(
    "eventkit_lag_seconds",
    "Now minus the recorded time of the oldest event a consumer has not processed yet",
    ["kind", "consumer", "partition"],
)
RETRIES = Counter(
    "eventkit_retries_total",
    "Tries of a failing event or reaction message after the first",
    ["kind", "consumer"],
)
DEAD_LETTERS_PARKED = Counter(
    "eventkit_dead_letters_parked_total",
    "Events or reaction messages parked as dead letters by this process, by reason",
    ["kind", "consumer", "reason"],
)
DEAD_LETTERS_OPEN = Gauge(
    "eventkit_dead_letters_open",
    "Dead letters parked or waiting for a retry, per consumer (read from the database)",
    ["kind", "consumer"],
)
ERRORS = Counter(
    "eventkit_errors_total",
    "Errors met while processing, by exception class",
    ["kind", "consumer", "error_class"],
)
WAKEUPS = Counter(
    "eventkit_follower_wakeups_total",
    "Times an idle follower looked at the log again, by cause (notification or poll)",
    ["kind", "consumer", "cause"],
)
LEASE_OWNED = Gauge(
    "eventkit_lease_owned",
    "1 while this process owns the consumer's lease (partition), 0 while it lost it and "
    "tries again; the series goes when the partition is handed over",
    ["kind", "consumer", "partition"],
)
LEASE_TAKEOVERS = Counter(
    "eventkit_lease_takeovers_total",
    "Leases this process took after waiting for another owner to stop or die",
    ["kind", "consumer"],
)
LOOP_HEARTBEAT = Gauge(
    "eventkit_loop_heartbeat_timestamp_seconds",
    "Unix time a consumer's loop last turned for a partition this process works on "
    "(health: a stalled loop stops moving it; the series goes when the partition is handed "
    "over)",
    ["kind", "consumer", "partition"],
)
STANDBY_REPLAY_LAG = Gauge(
    "eventkit_standby_replay_lag_seconds",
    "For a partition whose follower reads the log from a hot standby (EVENTKIT_READ_URL): "
    "the standby's replay lag as the follower last read it (0 once it has replayed all it "
    "received); the series goes when the partition is handed over",
    ["kind", "consumer", "partition"],
)
CONSUMER_RUNNING = Gauge(
    "eventkit_consumer_running",
    "1 while a live worker process works on the consumer's partition (its heartbeat in the "
    "database is fresh), 0 while none does (read from the database, for every declared "
    "consumer)",
    ["kind", "consumer", "partition"],
)
REACTION_QUEUE = Gauge(
    "eventkit_reaction_queue_messages",
    "A reaction's messages not executed yet, by state: queued, in_flight (claimed by a "
    "worker), retrying (tried before); with RabbitMQ or Redis, queued counts the outbox "
    "(read from the database)",
    ["consumer", "state"],
)
REACTION_OLDEST = Gauge(
    "eventkit_reaction_oldest_message_age_seconds",
    "Age of a reaction's oldest message not executed yet (0 when none waits; read from the "
    "database)",
    ["consumer"],
)
DATABASE_UP = Gauge(
    "eventkit_database_up",
    "1 when this process's last status query answered, else 0 (then the gauges read from "
    "the database are withdrawn, not frozen)",
)
READY = Gauge(
    "eventkit_ready",
    "1 while this process's /readyz is green, else 0",
)
REACTION_MESSAGES = Counter(
    "eventkit_reaction_messages_total",
    "Reaction messages by outcome: executed, duplicate (skipped by the ledger), retried, parked",
    ["consumer", "outcome"],
)
POOL_CONNECTIONS = Gauge(
    "eventkit_pool_connections",
    "Database pool connections by state: in_use, idle, waiting (requests queued for one)",
    ["pool", "state"],
)
EVENTS_APPENDED = Counter(
    "eventkit_events_appended_total", "Events appended to the log by this process"
)
APPEND_LATENCY = Histogram(
    "eventkit_append_seconds",
    "Time of one append (a save of one or more events), including retries",
    buckets=LATENCY_BUCKETS,
)
APPEND_CONFLICTS = Counter(
    "eventkit_append_conflicts_total",
    "Appends refused because another writer had recorded one of their stream versions",
)

#: Every metric family eventkit exports (the dashboard's queries may name only these).
EXPORTED: tuple[str, ...] = (
    "eventkit_events_processed_total",
    "eventkit_batches_total",
    "eventkit_batch_events",
    "eventkit_commit_to_processed_seconds",
    "eventkit_lag_events",
    "eventkit_lag_seconds",
    "eventkit_retries_total",
    "eventkit_dead_letters_parked_total",
    "eventkit_dead_letters_open",
    "eventkit_errors_total",
    "eventkit_follower_wakeups_total",
    "eventkit_lease_owned",
    "eventkit_lease_takeovers_total",
    "eventkit_loop_heartbeat_timestamp_seconds",
    "eventkit_standby_replay_lag_seconds",
    "eventkit_reaction_messages_total",
    "eventkit_consumer_running",
    "eventkit_reaction_queue_messages",
    "eventkit_reaction_oldest_message_age_seconds",
    "eventkit_database_up",
    "eventkit_ready",
    "eventkit_pool_connections",
    "eventkit_events_appended_total",
    "eventkit_append_seconds",
    "eventkit_append_conflicts_total",
)
