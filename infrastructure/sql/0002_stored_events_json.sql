-- The log with payloads as jsonb, for people reading events in SQL:
--   SELECT topic, state->>'customer_id' FROM eventkit.stored_events_json
--   WHERE originator_id = '...' ORDER BY originator_version;
CREATE VIEW stored_events_json AS
SELECT
    notification_id,
    originator_id,
    originator_version,
    topic,
    convert_from(state, 'UTF8')::jsonb AS state,
    recorded_at,
    transaction_id
FROM stored_events;
