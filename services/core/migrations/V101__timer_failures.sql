-- A timer whose handler fails for good is set aside as 'failed' with the
-- reason, instead of rolling back every timer claimed with it (one bad
-- timer must not stop all timers of its kind).
ALTER TABLE timers DROP CONSTRAINT timers_state_check;
ALTER TABLE timers ADD CONSTRAINT timers_state_check
    CHECK (state IN ('pending', 'fired', 'cancelled', 'failed'));
ALTER TABLE timers ADD COLUMN last_error text;
