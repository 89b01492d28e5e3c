-- MxWhisper schema, version 1. Each table has one writing service (named per table).
CREATE EXTENSION IF NOT EXISTS vector;

-- gateway: users seen in a token, created on first sight.
CREATE TABLE users (
    id          text PRIMARY KEY,              -- the token's `sub`
    name        text,
    email       text,
    role        text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    disabled    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

-- gateway: stored audio, content addressed per owner.
CREATE TABLE blobs (
    id            uuid PRIMARY KEY,
    owner_id      text NOT NULL,
    sha256        text NOT NULL,
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    content_type  text,
    uri           text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX blobs_owner_sha ON blobs (owner_id, sha256);

-- gateway (create, cancel): one row per job. Stage progress lives in job_stages.
CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    owner_id      text NOT NULL,
    filename      text,
    audio_uri     text NOT NULL,
    sha256        text NOT NULL,
    size_bytes    bigint,
    content_type  text,
    options       jsonb NOT NULL DEFAULT '{}'::jsonb,
    source        text NOT NULL DEFAULT 'gateway',   -- who announced the audio
    cancelled_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at DESC);
CREATE INDEX jobs_owner_sha ON jobs (owner_id, sha256);

-- each stage's service writes its own rows (stage = transcribe | chunk | embed).
CREATE TABLE job_stages (
    job_id            uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    stage             text NOT NULL CHECK (stage IN ('transcribe', 'chunk', 'embed')),
    state             text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    progress          real NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    attempts          integer NOT NULL DEFAULT 0,
    error             text,
    lease_owner       text,
    lease_expires_at  timestamptz,
    queued_at         timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    metrics           jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (job_id, stage)
);
CREATE INDEX job_stages_lease ON job_stages (stage, lease_expires_at) WHERE state = 'running';

-- every stage appends; the status history for WebSocket resume and audit.
CREATE TABLE job_events (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event_id    text NOT NULL UNIQUE,        -- ce_id of the job.status event
    stage       text NOT NULL,
    state       text NOT NULL,
    progress    real NOT NULL,
    message     text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job ON job_events (job_id, id);

-- transcriber
CREATE TABLE transcripts (
    job_id               uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    language             text,
    language_probability real,
    duration_s           double precision NOT NULL,
    model                text NOT NULL,
    text                 text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE segments (
    job_id   uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx      integer NOT NULL,
    start_s  double precision NOT NULL,
    end_s    double precision NOT NULL,
    text     text NOT NULL,
    avg_logprob real,
    no_speech_prob real,
    words    jsonb,
    PRIMARY KEY (job_id, idx),
    CHECK (end_s >= start_s)
);

-- chunker
CREATE TABLE chunks (
    id        bigserial PRIMARY KEY,
    job_id    uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    owner_id  text NOT NULL,
    idx       integer NOT NULL,
    text      text NOT NULL,
    topic     text,
    keywords  text[] NOT NULL DEFAULT '{}',
    start_s   double precision NOT NULL,
    end_s     double precision NOT NULL,
    method    text NOT NULL,
    tsv       tsvector GENERATED ALWAYS AS (
                  setweight(to_tsvector('english', coalesce(topic, '')), 'A') ||
                  setweight(to_tsvector('english', text), 'B')) STORED,
    UNIQUE (job_id, idx),
    CHECK (end_s >= start_s)
);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
CREATE INDEX chunks_owner ON chunks (owner_id);

-- embedder: one vector per chunk (own table so a single service writes it).
CREATE TABLE chunk_embeddings (
    chunk_id   bigint PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    owner_id   text NOT NULL,
    model      text NOT NULL,
    embedding  vector(384) NOT NULL
);
CREATE INDEX chunk_embeddings_hnsw ON chunk_embeddings USING hnsw (embedding vector_cosine_ops);
CREATE INDEX chunk_embeddings_owner ON chunk_embeddings (owner_id);
CREATE INDEX chunk_embeddings_job ON chunk_embeddings (job_id);

-- every service: events waiting to be relayed to Kafka, written in the same
-- transaction as the state change they announce.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         text NOT NULL,
    headers     jsonb NOT NULL,
    payload     bytea NOT NULL,          -- the record value, as sent
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', NEW.topic);
    RETURN NEW;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_notify();

-- every consumer: events already handled, keyed by consumer group and ce_id.
CREATE TABLE processed_events (
    consumer      text NOT NULL,
    event_id      text NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
