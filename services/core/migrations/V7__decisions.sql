-- One-click decisions (issue 9): what customers chose on the offer and
-- cancel pages (or any other producer of offer-responses.v1), for the OMS.

-- One decision per offer (the first answer wins) or per cancelled line.
-- `outputs` keeps the records it produced (decisions for the OMS and the
-- confirmation email), so a replay re-produces exactly them.
CREATE TABLE decisions (
    decision_id       text PRIMARY KEY,
    response_event_id text        NOT NULL,
    order_id          text        NOT NULL,
    offer_id          text,
    line_ids          text[]      NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('SWITCH', 'CREDIT', 'EXPEDITE', 'CANCEL')),
    alternative_sku   text,
    credit_minor      bigint,
    currency          text        NOT NULL,
    decided_at        timestamptz NOT NULL,
    outputs           jsonb       NOT NULL
);
CREATE INDEX decisions_order ON decisions (order_id);

-- Responses refused (forged, expired, second answers...), once per event,
-- so the metric counts each once however often the runtime retries.
CREATE TABLE response_rejections (
    event_id    text PRIMARY KEY,
    reason      text        NOT NULL,
    rejected_at timestamptz NOT NULL
);
