-- Version 3: deleting jobs. gateway: ids of deleted jobs, so that a late or replayed event
-- for one (e.g. audio.uploaded published again by another system) cannot bring it back.
CREATE TABLE deleted_jobs (
    id          uuid PRIMARY KEY,
    owner_id    text NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
