-- Followers wait only for transactions that can still write to the log.
--
-- Followers read rows whose transaction id is below a horizon: nothing below it can
-- appear later. The plain horizon, the xmin of the reader's snapshot, is the oldest
-- transaction still running anywhere on the server, so any transaction that wrote
-- anything (a report's temporary table, another database's migration, a prepared
-- transaction) held every follower back. Two objects narrow it to the log's writers
-- (docs/architecture.md, "Positions, and why no reader skips an event", has the proof):
--
-- 1. log_append_guard: the log refuses an append from a transaction that already had a
--    transaction id before its first append. A transaction that is not a log writer when
--    a follower looks can therefore never become one. A writer takes its id in its
--    first append, while it holds the log's lock (an INSERT or COPY takes ROW EXCLUSIVE
--    on the table before any trigger fires, and keeps it to the end).
--
-- 2. log_writer_horizon(): the lowest transaction id in the snapshot's in-progress list
--    that is not known to be a bystander (running, listed in pg_locks without a write
--    lock on the log, and still in progress when looked up after that); the snapshot's
--    xmax when there is none.
--
-- log_horizon() is what followers use: the plain xmin while nothing committed waits
-- behind it for long (reading pg_locks costs ~0.1 ms of server time, and short writers
-- move xmin on by themselves), log_writer_horizon() once a committed row has waited
-- 10 ms. On a hot standby pg_locks shows only the standby's own locks: there both are
-- the plain xmin.

CREATE FUNCTION log_append_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    writer xid8 := pg_current_xact_id_if_assigned();
    -- Per log table: a transaction that appends to two schemas' logs is a writer of the
    -- second only from its first append there.
    marker text := 'eventkit.log_writer_' || TG_RELID::oid::text;
BEGIN
    IF writer IS NULL THEN
        -- Take the transaction id now, holding the log's lock already, and remember
        -- that it was taken here (a transaction-local setting: gone at the end, and
        -- undone with a rolled-back savepoint, which also gives the lock up).
        PERFORM set_config(marker, pg_current_xact_id()::text, true);
    ELSIF writer::text IS DISTINCT FROM current_setting(marker, true) THEN
        RAISE EXCEPTION
            'transaction % wrote elsewhere before appending to %.%', writer,
            TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'invalid_transaction_state',
            DETAIL = 'The log accepts appends only from transactions whose first write '
                || 'is to the log: followers do not wait for transactions that wrote '
                || 'elsewhere first.',
            HINT = 'Append first in the transaction, or in a transaction of its own, as '
                || 'eventkit''s recorder does.';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER log_append_guard BEFORE INSERT ON stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION log_append_guard();
-- Also for sessions with session_replication_role = replica (pg_restore, logical
-- replication), for which ordinary triggers do not fire.
ALTER TABLE stored_events ENABLE ALWAYS TRIGGER log_append_guard;

-- The transactions running now, each with whether it holds a lock that an append takes
-- (or a stronger one) on the log: one reading of pg_locks.
CREATE FUNCTION log_transactions() RETURNS TABLE (transaction_id xid, appends boolean)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    WITH locks AS MATERIALIZED (
        SELECT locktype, database, relation, transactionid, virtualtransaction, mode,
            granted
        FROM pg_locks
    )
    SELECT t.transactionid, EXISTS (
        SELECT 1 FROM locks w
        WHERE w.virtualtransaction = t.virtualtransaction AND w.locktype = 'relation'
            AND w.relation = 'stored_events'::regclass
            AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND w.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                'AccessExclusiveLock'))
    FROM locks t
    -- Every transaction holds an exclusive lock on its own id until it ends (a prepared
    -- one too); others wait for it with a share lock on it.
    WHERE t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock' AND t.granted
$$;

CREATE FUNCTION log_writer_horizon() RETURNS xid8 LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT AS $$
DECLARE
    snapshot pg_snapshot := pg_current_snapshot();
    bystanders xid[];
    horizon xid8;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN pg_snapshot_xmin(snapshot);
    END IF;
    -- A transaction is passed only when it is known not to write to the log: listed in
    -- pg_locks by the lock on its own id, without a write lock on the log, and still in
    -- progress afterwards. Anything less known holds the followers back:
    -- * a transaction shows in the snapshot a moment before the lock on its own id does;
    -- * a committing writer gives its lock on the log up before the lock on its own id,
    --   but only after it has left the running transactions: the statuses are read after
    --   the locks (two statements, in this order), so such a writer is no longer in
    --   progress there.
    SELECT coalesce(array_agg(transaction_id), '{}') INTO bystanders
    FROM log_transactions() WHERE NOT appends;
    SELECT min(x) INTO horizon FROM pg_snapshot_xip(snapshot) x
    WHERE NOT xid(x) = ANY (bystanders) OR pg_xact_status(x) <> 'in progress';
    RETURN coalesce(horizon, pg_snapshot_xmax(snapshot));
END
$$;

CREATE FUNCTION log_horizon() RETURNS xid8 LANGUAGE sql STABLE
SET search_path FROM CURRENT AS $$
    SELECT CASE
        WHEN held.recorded_at IS NULL
            OR held.recorded_at > clock_timestamp() - interval '10 milliseconds'
        THEN pg_snapshot_xmin(snapshot.s)
        ELSE log_writer_horizon()
    END
    FROM (SELECT pg_current_snapshot() AS s) snapshot
    LEFT JOIN LATERAL (  -- the first committed row that the plain xmin holds back
        SELECT e.recorded_at FROM stored_events e
        WHERE e.transaction_id >= pg_snapshot_xmin(snapshot.s)
        ORDER BY e.transaction_id, e.notification_id LIMIT 1
    ) held ON true
$$;
