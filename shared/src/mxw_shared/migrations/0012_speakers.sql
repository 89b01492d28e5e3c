-- Version 12: who said what (the diarizer stage, its turns and voices; chunks' speakers).

-- Stage names are the Stage enum's (mxw_shared.contracts), checked by every writer; a copy
-- of the list here would have to change with every stage added to the table.
ALTER TABLE job_stages DROP CONSTRAINT job_stages_stage_check;
ALTER TABLE stage_sweeps DROP CONSTRAINT stage_sweeps_stage_check;

-- diarizer: who spoke when, as found (the user's corrections edit these rows).
CREATE TABLE speaker_turns (
    job_id   uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx      integer NOT NULL,
    start_s  double precision NOT NULL,
    end_s    double precision NOT NULL,
    speaker  text NOT NULL,
    PRIMARY KEY (job_id, idx),
    CHECK (end_s >= start_s)
);

-- diarizer (label, talk time, voice embedding), gateway (the name a user gives).
CREATE TABLE job_speakers (
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    label      text NOT NULL,              -- SPEAKER_01, SPEAKER_02… by talk time
    name       text,
    talk_s     double precision NOT NULL DEFAULT 0,
    embedding  vector(192),                -- CAM++ centroid of the speaker's turns
    PRIMARY KEY (job_id, label)
);

-- chunker: the speakers (labels) a chunk contains.
ALTER TABLE chunks ADD COLUMN speakers text[] NOT NULL DEFAULT '{}';
CREATE INDEX chunks_speakers ON chunks USING gin (speakers);

-- Jobs of earlier versions never asked for speakers: their diarize stage is done as is
-- (transitions.skip_not_requested does the same for every new run).
INSERT INTO job_stages (job_id, stage, state, progress, generation, started_at, finished_at,
                        metrics)
SELECT j.id, 'diarize', 'done', 1, j.generation, now(), now(), '{"requested": false}'::jsonb
FROM jobs j WHERE EXISTS (SELECT 1 FROM job_stages s WHERE s.job_id = j.id)
ON CONFLICT (job_id, stage) DO NOTHING;
