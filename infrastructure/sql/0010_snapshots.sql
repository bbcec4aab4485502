-- Snapshots: an aggregate's state at one version of its stream, so that loading it reads
-- the latest snapshot and the events after it instead of the whole stream. Derived data:
-- any snapshot can be deleted, and the aggregate is then rebuilt from its events.
--
-- topic  the snapshot class's declared type name (eventkit.Snapshot); the state names the
--        aggregate by its declared type name, never by a module path.
-- state  UTF-8 JSON, as in stored_events; snapshots_json shows it as jsonb.
CREATE TABLE snapshots (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text NOT NULL,
    state bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (originator_id, originator_version)
);

CREATE VIEW snapshots_json AS
SELECT
    originator_id,
    originator_version,
    topic,
    convert_from(state, 'UTF8')::jsonb AS state,
    recorded_at
FROM snapshots;
