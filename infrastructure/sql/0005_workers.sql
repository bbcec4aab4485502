-- What each projection's worker is doing, for `eventkit status`: refreshed by the worker
-- that owns the projection (running, failing) or rebuilds it (rebuilding).
CREATE TABLE projection_workers (
    projection text PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('running', 'stopped', 'rebuilding', 'failing')),
    worker_id text NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail text
);
