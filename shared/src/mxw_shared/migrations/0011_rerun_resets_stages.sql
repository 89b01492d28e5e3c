-- Version 11: a rerun from a stage removes the rows of the stages it does again and carries
-- the others into its generation (mxw_shared.transitions.rerun), so every stage row belongs
-- to the job's current run and no reader needs jobs.rerun_from to tell old rows apart. Rows
-- earlier reruns left are removed once here, by the rule readers used until now (the stage
-- order of that time).
DELETE FROM job_stages s USING jobs j
WHERE s.job_id = j.id
  AND j.rerun_from IS NOT NULL
  AND s.generation < j.generation
  AND array_position(ARRAY['transcribe', 'chunk', 'embed'], s.stage)
      >= array_position(ARRAY['transcribe', 'chunk', 'embed'], j.rerun_from);
-- The stages a rerun kept belong to its generation (transitions.rerun carries them over).
UPDATE job_stages s SET generation = j.generation FROM jobs j
WHERE s.job_id = j.id AND s.generation < j.generation;
ALTER TABLE jobs DROP COLUMN rerun_from;
