-- Campaigns (issue 8): significant delays routed into time-limited offers,
-- the co-purchase counts that rank alternatives, and reason codes of
-- supplier ETA changes.

-- SupplierEtaChanged version 2: a coded reason and the language of the
-- free texts.
ALTER TABLE eta_changes
    ADD COLUMN reason_code   text,
    ADD COLUMN reason_locale text;
ALTER TABLE sku_eta
    ADD COLUMN reason_code   text,
    ADD COLUMN reason_locale text;

-- Which SKUs each customer bought (first order that had it), so a new
-- purchase updates co_purchases incrementally: only pairs that are new for
-- this customer count, and a replayed order counts nothing.
CREATE TABLE customer_skus (
    customer_id text NOT NULL,
    sku         text NOT NULL,
    order_id    text NOT NULL,
    PRIMARY KEY (customer_id, sku)
);

-- How many customers who bought `sku` also bought `other_sku` (both
-- directions are stored): alternatives rank by it.
CREATE TABLE co_purchases (
    sku       text   NOT NULL,
    other_sku text   NOT NULL,
    customers bigint NOT NULL CHECK (customers > 0),
    PRIMARY KEY (sku, other_sku)
);

-- One campaign per order at a time: the significant slips of its lines,
-- the series of offers sent for them, and how it ended.
CREATE TABLE campaigns (
    campaign_id   text PRIMARY KEY,
    order_id      text        NOT NULL REFERENCES orders (order_id),
    customer_id   text        NOT NULL,
    -- alternative: at least one in-stock alternative qualified; else store_credit.
    kind          text        NOT NULL CHECK (kind IN ('alternative', 'store_credit')),
    -- open -> decided (the customer chose) | ended (see end_reason).
    state         text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'decided', 'ended')),
    -- decided, cancelled, shipped, allocated, expired (series exhausted).
    end_reason    text,
    currency      text        NOT NULL,
    -- The latest window of the slipped lines (NULL/NULL: unknown) and why;
    -- a new slip of a line in an open campaign updates them, and the next
    -- offer email says so.
    window_from   date,
    window_to     date,
    reason_code   text,
    reason        text        NOT NULL DEFAULT '',
    remedy        text        NOT NULL DEFAULT '',
    reason_locale text        NOT NULL DEFAULT 'en',
    offers_sent   integer     NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE UNIQUE INDEX campaigns_one_open_per_order ON campaigns (order_id) WHERE state = 'open';
CREATE INDEX campaigns_state ON campaigns (state, started_at);

-- The slipped lines of a campaign, with what the customer had been told.
CREATE TABLE campaign_lines (
    campaign_id      text    NOT NULL REFERENCES campaigns (campaign_id),
    order_id         text    NOT NULL,
    line_id          text    NOT NULL,
    sku              text    NOT NULL,
    product_name     text    NOT NULL,
    quantity         integer NOT NULL,
    unit_price_minor bigint  NOT NULL,
    old_promise_from date,
    old_promise_to   date,
    PRIMARY KEY (campaign_id, line_id)
);
CREATE INDEX campaign_lines_line ON campaign_lines (order_id, line_id);

-- Every BackorderDelayed applied (a replay changes nothing and re-requests
-- the same email), and the offer it started, if any.
CREATE TABLE campaign_slips (
    event_id    text PRIMARY KEY,
    campaign_id text        NOT NULL REFERENCES campaigns (campaign_id),
    offer_id    text,
    received_at timestamptz NOT NULL
);

-- The offers of a campaign's series: what was offered, until when, and the
-- answer. `email` is the request as decided, re-produced on replay.
CREATE TABLE offers (
    offer_id        text PRIMARY KEY,
    campaign_id     text        NOT NULL REFERENCES campaigns (campaign_id),
    seq             integer     NOT NULL CHECK (seq >= 1),
    customer_id     text        NOT NULL,
    credit_minor    bigint      NOT NULL CHECK (credit_minor >= 0),
    currency        text        NOT NULL,
    -- [{line_id, sku, product_name, price_minor}] shown, best first.
    alternatives    jsonb       NOT NULL DEFAULT '[]',
    sent_at         timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    -- open -> answered | expired | closed (the campaign ended otherwise).
    state           text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'answered', 'expired', 'closed')),
    answered_at     timestamptz,
    choice          text,
    alternative_sku text,
    email           jsonb       NOT NULL,
    UNIQUE (campaign_id, seq)
);
