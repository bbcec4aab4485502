-- Data subjects' keys, for crypto-shredding (docs/operations.md, "Forgetting a person").
-- Each key encrypts the personal fields of one subject's events and snapshots; deleting
-- the row (eventkit forget SUBJECT) makes every stored copy of them unreadable for good.
-- The keys are as secret as the data they protect: a backup that holds them holds the
-- data, so let backups of this table expire (or keep it in a database of its own).
CREATE TABLE subject_keys (
    subject text PRIMARY KEY,
    key bytea NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
