-- Version 13: voice profiles (a voice named once, suggested in later recordings).

-- gateway: a user's named voices. Never shared: every read is scoped by owner_id.
CREATE TABLE voice_profiles (
    id          uuid PRIMARY KEY,
    owner_id    text NOT NULL,                 -- the user's sub, as jobs.owner_id
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX voice_profiles_owner_name ON voice_profiles (owner_id, lower(name));
CREATE INDEX voice_profiles_owner_created ON voice_profiles (owner_id, created_at DESC, id DESC);

-- gateway: the voices a profile was named from or confirmed in (copies of job_speakers'
-- embeddings: a rediarized job keeps its samples). Its centroid is their mean.
CREATE TABLE voice_samples (
    profile_id  uuid NOT NULL REFERENCES voice_profiles (id) ON DELETE CASCADE,
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    label       text NOT NULL,
    embedding   vector(192) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, job_id, label)
);
CREATE INDEX voice_samples_job ON voice_samples (job_id, label);

-- gateway: the profile a user confirmed for a job's speaker (its name is the profile's).
ALTER TABLE job_speakers
    ADD COLUMN profile_id uuid REFERENCES voice_profiles (id) ON DELETE SET NULL;
CREATE INDEX job_speakers_profile ON job_speakers (profile_id) WHERE profile_id IS NOT NULL;

-- gateway: a suggestion the user turned down, not made again for that speaker (gone with
-- the speaker, e.g. when the job is diarized again, and with the profile).
CREATE TABLE voice_rejections (
    job_id      uuid NOT NULL,
    label       text NOT NULL,
    profile_id  uuid NOT NULL REFERENCES voice_profiles (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, label, profile_id),
    FOREIGN KEY (job_id, label) REFERENCES job_speakers (job_id, label)
        ON DELETE CASCADE ON UPDATE CASCADE
);
