-- Events parked because they need state another topic has not delivered
-- yet (DESIGN invariant 4): the original message (bytes, key and headers
-- untouched, so it can be retried through the normal decode path and
-- dead-lettered as it came), the key it was parked under (later events of
-- the same key queue behind it), why, and when to try again, all on the
-- (possibly controlled) clock. A row is deleted once its event was applied
-- or dead-lettered.
CREATE TABLE parked_events (
    id               bigserial   PRIMARY KEY,
    topic            text        NOT NULL,
    park_key         text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    message_key      bytea,
    payload          bytea       NOT NULL,
    header_names     text[]      NOT NULL DEFAULT '{}',
    header_values    bytea[]     NOT NULL DEFAULT '{}',
    -- What would let it proceed (e.g. 'order:o-1'); NULL when it only
    -- queues behind an earlier parked event of its key.
    waiting_for      text,
    reason           text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    parked_at        timestamptz NOT NULL,
    next_retry_at    timestamptz NOT NULL,
    dead_letter_at   timestamptz NOT NULL,
    -- A replayed batch parks the same message once.
    UNIQUE (topic, source_partition, source_offset)
);
CREATE INDEX parked_events_key ON parked_events (topic, park_key, id);
CREATE INDEX parked_events_due ON parked_events (topic, next_retry_at);
CREATE INDEX parked_events_waiting ON parked_events (waiting_for) WHERE waiting_for IS NOT NULL;
