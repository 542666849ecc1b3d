-- Quiet hours (services/sender/src/delivery.rs): a marketing or nurture
-- email claimed during the recipient's local night is given back with the
-- next allowed instant, measured on the service clock (the controlled
-- clock in tests and the demo), and is not claimed again before it.
ALTER TABLE email_ledger
    -- NULL: no quiet hours held this email.
    ADD COLUMN not_before timestamptz;
