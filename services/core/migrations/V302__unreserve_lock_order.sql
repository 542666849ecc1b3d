-- Giving a send slot back takes its locks in the order reserving one does
-- (the pace row, then the minute's row). V200's version updated the
-- minute first, so a replica giving a slot back while another reserved
-- one could deadlock (seen in the chaos run: PostgreSQL aborted one of
-- them, and that email waited for its lease to run out).
CREATE OR REPLACE FUNCTION unreserve_ses_send(slot_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    given_back integer;
BEGIN
    PERFORM 1 FROM ses_send_pace WHERE id FOR UPDATE;
    UPDATE ses_send_minutes SET sends = sends - 1
     WHERE minute = date_trunc('minute', slot_at) AND sends > 0;
    GET DIAGNOSTICS given_back = ROW_COUNT;
    IF given_back > 0 THEN
        UPDATE ses_send_pace SET day_used = greatest(day_used - 1, 0) WHERE id;
    END IF;
END
$$;
