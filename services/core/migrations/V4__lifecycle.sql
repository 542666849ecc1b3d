-- Order lifecycle (issue 3): shipments and deliveries, and per-line facts
-- the lifecycle emails need (when a line left us, when its cancellation was
-- asked for). Timers (nurture, delivered follow-up, win-back) live in the
-- `timers` table of V2; decisions in `email_decisions`.

-- One row per ShipmentDispatched; the delivery is filled in by
-- ShipmentDelivered. Times are the events' own `occurred_at`, so
-- order-to-delivery is measured between business events.
CREATE TABLE shipments (
    shipment_id     text PRIMARY KEY,
    order_id        text        NOT NULL REFERENCES orders (order_id),
    line_ids        text[]      NOT NULL,
    carrier         text        NOT NULL,
    tracking_number text        NOT NULL,
    tracking_url    text        NOT NULL,
    dispatched_at   timestamptz NOT NULL,
    delivered_at    timestamptz,
    -- Whether every backordered line of the shipment left by the end of the
    -- window the customer was told; NULL when no line carried a promise.
    promise_kept    boolean,
    event_id        text        NOT NULL
);
CREATE INDEX shipments_order ON shipments (order_id);

ALTER TABLE order_lines
    -- The shipment that carried the line, and when it left.
    ADD COLUMN shipment_id         text,
    ADD COLUMN shipped_at          timestamptz,
    -- When a cancellation of this line was asked for, whatever its status
    -- then (a delivered line cancelled later is a return: no follow-up).
    ADD COLUMN cancel_requested_at timestamptz;

-- The first promise of a backordered line (what the order confirmation
-- said), kept when later delay notices move promised_from/to: on-time
-- delivery is measured against it (PLAYBOOK: promise dates are commitments).
ALTER TABLE order_lines
    ADD COLUMN first_promised_from date,
    ADD COLUMN first_promised_to   date;
