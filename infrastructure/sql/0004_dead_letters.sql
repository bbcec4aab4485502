-- Dead letters: events a projection could not handle, parked with their error. Later
-- events of the same stream are parked behind the first one (reason 'behind'), so each
-- stream's order holds, while other streams go on.
CREATE TABLE dead_letters (
    dead_letter_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection text NOT NULL,
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    notification_id bigint NOT NULL,
    transaction_id bigint NOT NULL,
    topic text NOT NULL,
    reason text NOT NULL CHECK (reason IN ('failed', 'undecodable', 'behind')),
    status text NOT NULL CHECK (status IN ('parked', 'retry_requested', 'retried', 'discarded')),
    attempts integer NOT NULL DEFAULT 0,
    error_class text,
    error text,
    traceback text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (projection, originator_id, originator_version)
);

CREATE INDEX dead_letters_open_idx ON dead_letters (projection, originator_id, originator_version)
    WHERE status IN ('parked', 'retry_requested');
