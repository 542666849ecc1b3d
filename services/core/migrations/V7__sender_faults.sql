-- Sender: throttling is not the email's fault, so it is counted apart
-- from the attempts (which count SES calls that could have succeeded).
ALTER TABLE email_ledger
    -- How many times SES throttled this email's sends; they do not count
    -- as attempts, only towards the backoff.
    ADD COLUMN throttles integer NOT NULL DEFAULT 0;
