-- Durable timers (nurture cadence, delivered follow-up, win-back, offer
-- expiry, delay-notice debounce): one row per deterministic key, due at an
-- instant of the (possibly controlled) clock, claimed with
-- FOR UPDATE SKIP LOCKED so two replicas never fire the same timer.
CREATE TABLE timers (
    timer_key  text PRIMARY KEY,
    -- Which handler fires it (e.g. 'delivered-followup').
    kind       text        NOT NULL,
    due_at     timestamptz NOT NULL,
    payload    jsonb       NOT NULL DEFAULT '{}',
    state      text        NOT NULL DEFAULT 'pending'
               CHECK (state IN ('pending', 'fired', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    fired_at   timestamptz
);
CREATE INDEX timers_due ON timers (kind, due_at) WHERE state = 'pending';
