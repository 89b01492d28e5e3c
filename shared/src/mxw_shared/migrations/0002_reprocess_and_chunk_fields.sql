-- Version 2: reprocessing a job from a stage, partial transcripts, richer chunks.

-- gateway: a job can be run again from a stage (re-chunk with another method without
-- transcribing again). Each run is a generation; events carry it; a stage row records
-- the generation it was produced for, so a stage finished in an older generation runs
-- again while a redelivered event of the current generation is still skipped.
ALTER TABLE jobs ADD COLUMN generation integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN rerun_from text CHECK (rerun_from IN ('transcribe', 'chunk', 'embed'));
ALTER TABLE job_stages ADD COLUMN generation integer NOT NULL DEFAULT 0;

-- transcriber: a cancelled (or not yet finished) transcription keeps what it has, marked.
ALTER TABLE transcripts ADD COLUMN complete boolean NOT NULL DEFAULT true;

-- chunker: a title, a one-line summary and a confidence per chunk.
ALTER TABLE chunks ADD COLUMN title text;
ALTER TABLE chunks ADD COLUMN summary text;
ALTER TABLE chunks ADD COLUMN confidence real CHECK (confidence >= 0 AND confidence <= 1);
