-- Version 6: the stage sweeper (re-sends work lost with a crashed worker or an emptied broker).

-- each worker service writes the rows of its own stage: when it last re-sent a job's stage
-- input for a run, and how often, so re-sends back off and end in a clear failure.
CREATE TABLE stage_sweeps (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    stage       text NOT NULL CHECK (stage IN ('transcribe', 'chunk', 'embed')),
    generation  integer NOT NULL,
    resends     integer NOT NULL DEFAULT 0,
    swept_at    timestamptz NOT NULL DEFAULT now(),
    reason      text,
    PRIMARY KEY (job_id, stage, generation)
);

-- The sweeper looks only at jobs with recent activity.
CREATE INDEX job_events_created ON job_events (created_at);

-- gateway: "is this stored file still referenced?" (upload clean-up and the blob janitor).
CREATE INDEX blobs_uri ON blobs (uri);
CREATE INDEX jobs_audio_uri ON jobs (audio_uri);

-- every service: the outbox relay claims unsent rows per lane (hash of the key, see outbox.py).
CREATE INDEX outbox_unsent_lane ON outbox ((hashtext(key) & 7), id) WHERE sent_at IS NULL;
