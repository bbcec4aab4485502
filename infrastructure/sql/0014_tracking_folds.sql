-- The completeness audit's folds (eventkit audit NAME; docs/operations.md).
--
-- Each batch's transaction folds the notification ids it applied into its partition's
-- tracking row: applied_count counts them, applied_checksum adds up a 64-bit hash of each
-- (hashint8extended(notification_id, 0) shifted to be non-negative), a sum, so the order
-- of the batches does not matter and an event applied twice counts twice. The audit
-- recomputes both from the log for the events after audited_from and up to the position,
-- and names what differs.
--
-- audited_from is where the fold starts: the origin for a consumer that followed the log
-- from its start, the position at which an operator moved the consumer (eventkit reset,
-- a partition split), and, for rows that existed before this migration, the position they
-- held then (nothing before it was folded).
ALTER TABLE tracking
    ADD COLUMN applied_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN applied_checksum numeric NOT NULL DEFAULT 0,
    ADD COLUMN audited_from_transaction_id bigint NOT NULL DEFAULT 0,
    ADD COLUMN audited_from_notification_id bigint NOT NULL DEFAULT 0;

UPDATE tracking
SET audited_from_transaction_id = transaction_id,
    audited_from_notification_id = notification_id;
