-- Idempotency keys of appends: a command retried with the key it was first sent with (after
-- a timeout or a lost connection) finds its key here and gets the notification ids of the
-- events it appended then, instead of appending them again. A key is written by the
-- append's own statement, so the key and the events commit together or not at all.
--
-- Keys are only needed for as long as a client may retry; delete old ones as suits you:
--   DELETE FROM eventkit.idempotency_keys WHERE recorded_at < now() - interval '7 days';
CREATE TABLE idempotency_keys (
    idempotency_key text PRIMARY KEY,
    notification_ids bigint[] NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
