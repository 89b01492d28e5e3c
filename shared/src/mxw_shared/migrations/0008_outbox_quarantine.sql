-- Version 8: outbox rows the broker can never take (a record over its size limit, an invalid
-- topic) are set aside instead of blocking their lane: failed_at and the producer's error.
-- The relay skips them; mxw_outbox_quarantined_rows counts them (docs/operations.md).
ALTER TABLE outbox ADD COLUMN failed_at timestamptz, ADD COLUMN error text;
CREATE INDEX outbox_quarantined ON outbox (id) WHERE failed_at IS NOT NULL;
