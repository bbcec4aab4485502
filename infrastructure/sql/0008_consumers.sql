-- One word for "a projection or a reaction": consumer.
--
-- The tables that hold a row per consumer named it `projection`, also where the row is a
-- reaction's (dead_letters.projection = 'charge_payments'). Renamed in place: ALTER ...
-- RENAME keeps every row, key, index and constraint (they refer to columns by number),
-- and takes effect for everyone at commit, with this file's record in schema_migrations.
ALTER TABLE tracking RENAME COLUMN projection TO consumer;
ALTER TABLE dead_letters RENAME COLUMN projection TO consumer;
ALTER TABLE leases RENAME COLUMN projection TO consumer;
ALTER TABLE partitioning RENAME COLUMN projection TO consumer;

-- What each consumer's workers are doing, per partition (eventkit status).
ALTER TABLE projection_workers RENAME COLUMN projection TO consumer;
ALTER TABLE projection_workers RENAME TO consumer_workers;

-- Constraint (and their indexes') names that say projection follow: the primary key and
-- state check of consumer_workers, dead_letters' unique key, and, from PostgreSQL 18 on,
-- the named NOT NULL constraints of the renamed columns (which older versions do not
-- name, hence a lookup rather than a fixed list).
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conrelid::regclass AS relation, conname
        FROM pg_constraint
        WHERE conrelid IN (
            'tracking'::regclass,
            'dead_letters'::regclass,
            'leases'::regclass,
            'partitioning'::regclass,
            'consumer_workers'::regclass
        )
        AND conname LIKE '%projection%'
    LOOP
        EXECUTE format(
            'ALTER TABLE %s RENAME CONSTRAINT %I TO %I',
            c.relation,
            c.conname,
            replace(c.conname, 'projection', 'consumer')
        );
    END LOOP;
END
$$;
