-- Tracking: the position of the last notification each projection (and partition) has
-- handled. A worker updates its row in the same transaction as its view writes, and only
-- from the position it read (compare-and-set), so a crash, a second worker or a rebuild's
-- swap can never make a view apply an event twice or skip one.
CREATE TABLE tracking (
    projection text NOT NULL,
    partition integer NOT NULL DEFAULT 0,
    transaction_id bigint NOT NULL,
    notification_id bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (projection, partition)
);
