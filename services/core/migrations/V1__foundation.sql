-- Foundation schema: the shared clock, customers, orders and their lines,
-- the supplier ETA per SKU, abandoned carts, and the sender's ledger.

-- The controlled clock (DESIGN invariant 5): one row, an offset from the
-- system time that `backorderctl clock` moves. Ignored unless enabled.
CREATE TABLE clock (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    offset_ms  bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO clock (id, offset_ms) VALUES (true, 0);

CREATE TABLE customers (
    customer_id   text PRIMARY KEY,
    email         text        NOT NULL,
    name          text        NOT NULL,
    locale        text        NOT NULL,
    country       text,
    -- PLAYBOOK: customers who bought backordered goods carry their own tag.
    tags          text[]      NOT NULL DEFAULT '{}',
    first_seen_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    order_id     text PRIMARY KEY,
    customer_id  text        NOT NULL REFERENCES customers (customer_id),
    placed_at    timestamptz NOT NULL,
    currency     text        NOT NULL,
    total_minor  bigint      NOT NULL,
    -- PLAYBOOK: orders containing backordered items carry their own tag.
    tags         text[]      NOT NULL DEFAULT '{}',
    event_id     text        NOT NULL,
    cancelled_at timestamptz
);
CREATE INDEX orders_customer ON orders (customer_id);

CREATE TABLE order_lines (
    order_id         text    NOT NULL REFERENCES orders (order_id),
    line_id          text    NOT NULL,
    sku              text    NOT NULL,
    product_name     text    NOT NULL,
    category         text,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price_minor bigint  NOT NULL CHECK (unit_price_minor >= 0),
    availability     text    NOT NULL CHECK (availability IN ('IN_STOCK', 'BACKORDERED')),
    -- open: waiting (in stock: to ship; backordered: for stock);
    -- allocated: stock reserved; shipped; cancelled.
    status           text    NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'allocated', 'shipped', 'cancelled')),
    -- The promise: the ship window this customer was last told. Later
    -- delays are measured against it. NULL/NULL with promise_told = true
    -- means we honestly said "not known yet".
    promised_from    date,
    promised_to      date,
    promise_told     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (order_id, line_id)
);
CREATE INDEX order_lines_open_backorders ON order_lines (sku, order_id)
    WHERE availability = 'BACKORDERED' AND status = 'open';

-- The supplier's current ETA per SKU, kept from stock.v1. Both dates NULL
-- with a row present means "unknown"; no row means nobody said anything.
CREATE TABLE sku_eta (
    sku        text PRIMARY KEY,
    eta_from   date,
    eta_to     date,
    reason     text,
    remedy     text,
    version    bigint      NOT NULL DEFAULT 1,
    changed_at timestamptz NOT NULL
);

CREATE TABLE carts (
    cart_id      text PRIMARY KEY,
    customer_id  text        NOT NULL REFERENCES customers (customer_id),
    skus         text[]      NOT NULL,
    abandoned_at timestamptz NOT NULL
);

-- The sender's ledger: one row per dedup key, ever (DESIGN invariant 1),
-- and the durable queue the send workers drain.
CREATE TABLE email_ledger (
    -- Valid as an SES EmailTag value ([A-Za-z0-9_-], at most 256).
    dedup_key         text PRIMARY KEY
                      CHECK (length(dedup_key) BETWEEN 1 AND 256 AND dedup_key ~ '^[A-Za-z0-9_-]+$'),
    template          text        NOT NULL,
    locale            text        NOT NULL,
    recipient         text        NOT NULL,
    recipient_name    text        NOT NULL,
    customer_id       text        NOT NULL,
    order_id          text,
    category          text        NOT NULL CHECK (category IN ('TRANSACTIONAL', 'MARKETING')),
    campaign          text,
    data              jsonb       NOT NULL,
    -- When the input event that led to this email happened.
    event_occurred_at timestamptz NOT NULL,
    -- queued -> sending -> sent | failed | suppressed; sending with an
    -- expired lease means a sender died mid-call (ambiguous).
    state             text        NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'suppressed')),
    attempts          integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    lease_until       timestamptz,
    last_error        text,
    subject           text,
    ses_message_id    text,
    requested_at      timestamptz NOT NULL DEFAULT now(),
    sent_at           timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX email_ledger_due ON email_ledger (next_attempt_at)
    WHERE state IN ('queued', 'sending');
CREATE INDEX email_ledger_order ON email_ledger (order_id, requested_at);
