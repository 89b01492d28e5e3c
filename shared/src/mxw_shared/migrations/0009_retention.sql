-- Version 9: indexes for retention (shared/retention.py): each service deletes its old rows
-- in batches, and each batch finds them without scanning the table.

-- stage services: their own dedupe marks by age.
CREATE INDEX processed_events_consumer_age ON processed_events (consumer, processed_at);

-- stage services: their own sweep rows by age.
CREATE INDEX stage_sweeps_stage_age ON stage_sweeps (stage, swept_at);

-- notifier: finished deliveries by age (their attempts go by cascade).
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at)
    WHERE state <> 'pending';

-- notifier: the cascade from a delivery to its attempts.
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);

-- gateway: job_events by age uses job_events_created (0006); each job's latest event comes
-- from job_events_job_seq (0004).
