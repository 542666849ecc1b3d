-- Sender: the suppression list, and what the ledger needs to prove
-- DESIGN invariant 1 across crashes and replicas.

-- Addresses that must not receive (some) email. Fed by SES bounce and
-- complaint events (Amazon SNS notifications on the sender's /sns
-- endpoint) and by one-click unsubscribes (RFC 8058). A hard bounce or a
-- complaint stops every email; an unsubscribe stops marketing email only.
CREATE TABLE email_suppression (
    -- Lower-cased, trimmed.
    address    text        NOT NULL CHECK (address = lower(btrim(address)) AND address <> ''),
    reason     text        NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'unsubscribe')),
    -- 'ses' (an SNS notification) or 'one_click' (the unsubscribe link).
    source     text        NOT NULL,
    -- What the notification said (SES feedback id, bounce subtype, the
    -- dedup key of the email that carried the unsubscribe link, ...).
    detail     jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (address, reason)
);

ALTER TABLE email_ledger
    -- How many times this email was sent again after an attempt whose
    -- outcome at SES is unknown (a sender died mid-call, or the call timed
    -- out). The only duplicates invariant 1 allows; also a metric.
    ADD COLUMN ambiguous_resends integer NOT NULL DEFAULT 0,
    -- Set when the SES call of the current claim starts; cleared when its
    -- answer is recorded. Found set by the next claim: that attempt's
    -- outcome is unknown, so the next send is an ambiguous resend.
    ADD COLUMN in_flight_since   timestamptz,
    -- Fences a claim: only the claimant holding this token may send the
    -- row or record its outcome, so a claim whose lease was taken over by
    -- another replica can neither send nor overwrite.
    ADD COLUMN claim_token       bigint,
    -- Why a suppressed email was not attempted (hard_bounce, complaint,
    -- unsubscribe).
    ADD COLUMN suppressed_reason text;

-- The daily quota counts what was sent in the last 24 hours.
CREATE INDEX email_ledger_sent_at ON email_ledger (sent_at) WHERE state = 'sent';
