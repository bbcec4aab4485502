-- stored_events_json and snapshots_json read every payload through payload_json(), which
-- never fails: a payload that is not UTF-8 JSON reads as NULL, and the new last column
-- payload_error says why (NULL for a good one). Before, one such row (written by buggy
-- code or by hand) made every query of the view that reached it fail, so operators could
-- not look at the very event a follower had parked as undecodable.
--
-- plpgsql catches the error in a subtransaction of its own, once per row read; a view's
-- columns that a query does not name are not computed, so payload_error costs nothing
-- unless asked for.
CREATE FUNCTION payload_json(payload bytea) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    RETURN convert_from(payload, 'UTF8')::jsonb;
EXCEPTION WHEN data_exception THEN  -- not UTF-8, not JSON, an escape jsonb refuses
    RETURN NULL;
END
$$;

CREATE FUNCTION payload_error(payload bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    PERFORM convert_from(payload, 'UTF8')::jsonb;
    RETURN NULL;
EXCEPTION WHEN data_exception THEN  -- not UTF-8, not JSON, an escape jsonb refuses
    RETURN SQLERRM;
END
$$;

CREATE OR REPLACE VIEW stored_events_json AS
SELECT
    notification_id,
    originator_id,
    originator_version,
    topic,
    payload_json(state) AS state,
    recorded_at,
    transaction_id,
    correlation_id,
    causation_id,
    headers,
    payload_error(state) AS payload_error
FROM stored_events;

CREATE OR REPLACE VIEW snapshots_json AS
SELECT
    originator_id,
    originator_version,
    topic,
    payload_json(state) AS state,
    recorded_at,
    payload_error(state) AS payload_error
FROM snapshots;
