-- Version 14: custom vocabulary (hotwords), a user's names and terms the transcriber is told
-- to expect in every job of theirs (issue 21).

-- gateway: one list per user, in the user's order, normalised by
-- mxw_shared.contracts.normalize_hotwords (bounded: MAX_HOTWORDS terms, MAX_HOTWORD_CHARS
-- each, MAX_HOTWORDS_TOTAL_CHARS together). Never shared: every read is by owner_id.
CREATE TABLE vocabularies (
    owner_id    text PRIMARY KEY,               -- the user's sub, as jobs.owner_id
    terms       text[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
