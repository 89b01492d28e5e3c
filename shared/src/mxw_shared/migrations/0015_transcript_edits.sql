-- Version 15: a person's corrections of the transcript, with their history (issue 22).

-- gateway: the transcript's current revision (0: as transcribed; +1 per edit or revert).
-- The segments table has two writers from here on: the transcriber writes the machine
-- transcript, the gateway applies a person's edits to it (as it does to the diarizer's
-- speaker_turns), one revision per transaction under the job's lock.
ALTER TABLE transcripts ADD COLUMN revision integer NOT NULL DEFAULT 0 CHECK (revision >= 0);

-- gateway: one row per revision: who, when, what. `change` holds the segments (and speaker
-- turns) before and after, so any earlier revision, the machine transcript (revision 0)
-- among them, is the current one with the later changes undone.
CREATE TABLE transcript_revisions (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    revision    integer NOT NULL CHECK (revision >= 1),
    author      text NOT NULL,                    -- the editor's sub
    created_at  timestamptz NOT NULL DEFAULT now(),
    operation   text NOT NULL,                    -- mxw_shared.contracts.EditOperation
    summary     text NOT NULL,                    -- what changed, in words
    start_s     double precision NOT NULL,        -- the audio it touched
    end_s       double precision NOT NULL,
    change      jsonb NOT NULL,
    PRIMARY KEY (job_id, revision),
    CHECK (end_s >= start_s)
);

-- chunker: the transcript revision a chunk was cut from (an edit re-cuts only the chunks
-- over the audio that the revisions after it touched).
ALTER TABLE chunks ADD COLUMN revision integer NOT NULL DEFAULT 0;
