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

-- Every email a service decided to request, with the (controlled) clock's
-- time of the decision. The ledger's own times are wall-clock; rules like
-- "skip nurture when any email about the order went out in the last 3
-- days" are measured here, on the same clock as the timers.
CREATE TABLE email_decisions (
    dedup_key  text PRIMARY KEY,
    order_id   text,
    line_id    text,
    template   text        NOT NULL,
    decided_at timestamptz NOT NULL
);
CREATE INDEX email_decisions_order ON email_decisions (order_id, decided_at);
