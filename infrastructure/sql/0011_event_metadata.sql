-- Metadata of events: what ties an event to the request, command or earlier event that
-- caused it (eventkit.metadata(...) around a command; docs/domain-guide.md).
--
-- correlation_id  one id shared by everything that follows from one request, down the
--                 chain of reactions
-- causation_id    what directly caused the event: a request or message id, or the
--                 notification id (as text) of the event whose reaction ran the command
-- headers         anything else: who, tenant, request id, trace context (a JSON object)
--
-- Nullable, and NULL for events appended without metadata (every event stored before this
-- migration), which read as before. Adding nullable columns without a default rewrites
-- nothing, however long the log.
ALTER TABLE stored_events
    ADD COLUMN correlation_id text,
    ADD COLUMN causation_id text,
    ADD COLUMN headers jsonb;

-- New columns of a view can only be added at its end.
CREATE OR REPLACE VIEW stored_events_json AS
SELECT
    notification_id,
    originator_id,
    originator_version,
    topic,
    convert_from(state, 'UTF8')::jsonb AS state,
    recorded_at,
    transaction_id,
    correlation_id,
    causation_id,
    headers
FROM stored_events;
