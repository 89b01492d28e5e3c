-- Version 4: a per-job sequence number on status events (notifier resume) and webhooks.

-- every service (through jobs.record_status): each job's status history is numbered 1, 2,
-- 3… in commit order (record_status takes a per-job lock), so a client that saw n has seen
-- everything up to n and can resume after it.
ALTER TABLE job_events ADD COLUMN seq integer;
UPDATE job_events e SET seq = n.seq
FROM (SELECT id, row_number() OVER (PARTITION BY job_id ORDER BY id) AS seq FROM job_events) n
WHERE e.id = n.id;
ALTER TABLE job_events ALTER COLUMN seq SET NOT NULL;
ALTER TABLE job_events ADD CONSTRAINT job_events_seq_positive CHECK (seq > 0);
CREATE UNIQUE INDEX job_events_job_seq ON job_events (job_id, seq);

-- gateway: the webhook endpoints users register.
CREATE TABLE webhook_endpoints (
    id                 uuid PRIMARY KEY,
    owner_id           text NOT NULL,
    url                text NOT NULL,
    description        text,
    event_types        text[] NOT NULL,
    -- Standard Webhooks signing secret (whsec_ + base64); after a rotation the previous one
    -- still signs (a second signature) until previous_secret_until.
    secret             text NOT NULL,
    previous_secret    text,
    previous_secret_until timestamptz,
    enabled            boolean NOT NULL DEFAULT true,
    -- the latest (re-)enabling: failures and an automatic disabling before it do not count
    enabled_at         timestamptz NOT NULL DEFAULT now(),
    -- a test delivery the user asked for (its webhook-id); the notifier sends it
    test_message_id    text,
    test_requested_at  timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, created_at);
CREATE INDEX webhook_endpoints_test ON webhook_endpoints (test_requested_at)
    WHERE test_message_id IS NOT NULL;

-- notifier: one delivery per endpoint and event (webhook-id = msg_id, the same on every
-- retry); replicas claim due rows with SKIP LOCKED and a lease.
CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    owner_id         text NOT NULL,
    msg_id           text NOT NULL,
    event_type       text NOT NULL,
    job_id           uuid REFERENCES jobs (id) ON DELETE CASCADE,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    UNIQUE (endpoint_id, msg_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';

-- notifier: every attempt, as the gateway lists it.
CREATE TABLE webhook_attempts (
    id            bigserial PRIMARY KEY,
    delivery_id   bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id   uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms   real,
    status_code   integer,
    outcome       text NOT NULL CHECK (outcome IN ('delivered', 'failed', 'refused')),
    error         text,
    response_excerpt text
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id DESC);

-- notifier: how deliveries to an endpoint are going; an endpoint failing for long enough
-- is disabled here (the gateway shows it; re-enabling there moves enabled_at past it).
CREATE TABLE webhook_endpoint_health (
    endpoint_id          uuid PRIMARY KEY REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    disabled_at          timestamptz,
    disabled_reason      text
);
