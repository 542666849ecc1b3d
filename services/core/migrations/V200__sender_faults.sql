-- Sender: throttling is not the email's fault, so it is counted apart
-- from the attempts (which count SES calls that could have succeeded).
ALTER TABLE email_ledger
    -- How many times SES throttled this email's sends; they do not count
    -- as attempts, only towards the backoff.
    ADD COLUMN throttles integer NOT NULL DEFAULT 0;

-- The SES account's send rate and daily quota, shared by every sender
-- replica: SES limits the account, so N replicas pacing themselves each at
-- the full rate would send N times too fast. See services/sender/src/pace.rs.
CREATE TABLE ses_send_pace (
    id       boolean     PRIMARY KEY DEFAULT true CHECK (id),
    -- The start of the next free send slot; each reservation takes it
    -- (or now, if it has passed) and moves it on by the reserver's spacing.
    next_at  timestamptz NOT NULL,
    -- Slots reserved in the minutes kept in ses_send_minutes.
    day_used bigint      NOT NULL CHECK (day_used >= 0)
);

-- Reserved sends per minute, kept for 24 hours (plus the minute in
-- progress, so the rolling window is never undercounted).
CREATE TABLE ses_send_minutes (
    minute timestamptz PRIMARY KEY,
    sends  integer     NOT NULL CHECK (sends >= 0)
);

-- What the ledger already sent counts from the start.
INSERT INTO ses_send_minutes (minute, sends)
SELECT date_trunc('minute', sent_at), count(*)
  FROM email_ledger
 WHERE state = 'sent' AND sent_at > now() - interval '24 hours'
 GROUP BY 1;
INSERT INTO ses_send_pace (id, next_at, day_used)
SELECT true, now(), COALESCE(sum(sends), 0) FROM ses_send_minutes;

-- Reserves the next send slot, under the pace row's lock:
--   'slot'  r_slot is when to send, r_wait_ms from now;
--   'wait'  the schedule is full up to horizon_ms ahead: ask again in r_wait_ms;
--   'quota' the last 24 hours hold daily_limit sends (of this service, or
--           outside_used, what SES reported for the whole account).
-- r_day_used: the sends of the last 24 hours, this one included.
CREATE FUNCTION reserve_ses_send(spacing_ms double precision, horizon_ms double precision,
                                 daily_limit bigint, outside_used bigint)
RETURNS TABLE (r_outcome text, r_slot timestamptz, r_wait_ms double precision, r_day_used bigint)
LANGUAGE plpgsql AS $$
DECLARE
    t        timestamptz := clock_timestamp();
    pace     ses_send_pace%ROWTYPE;
    expired  bigint;
    start_at timestamptz;
BEGIN
    SELECT * INTO pace FROM ses_send_pace WHERE id FOR UPDATE;
    WITH gone AS (
        DELETE FROM ses_send_minutes WHERE minute < t - interval '24 hours 1 minute' RETURNING sends
    )
    SELECT COALESCE(sum(sends), 0) INTO expired FROM gone;
    pace.day_used := greatest(pace.day_used - expired, 0);
    IF daily_limit IS NOT NULL AND greatest(pace.day_used, COALESCE(outside_used, 0)) >= daily_limit THEN
        UPDATE ses_send_pace SET day_used = pace.day_used WHERE id;
        RETURN QUERY SELECT 'quota'::text, NULL::timestamptz, NULL::double precision, pace.day_used;
        RETURN;
    END IF;
    IF pace.next_at > t + horizon_ms * interval '1 millisecond' THEN
        UPDATE ses_send_pace SET day_used = pace.day_used WHERE id;
        RETURN QUERY SELECT 'wait'::text, NULL::timestamptz,
            (EXTRACT(EPOCH FROM pace.next_at - t) * 1000)::double precision - horizon_ms, pace.day_used;
        RETURN;
    END IF;
    start_at := greatest(pace.next_at, t);
    UPDATE ses_send_pace
       SET next_at = start_at + spacing_ms * interval '1 millisecond', day_used = pace.day_used + 1
     WHERE id;
    INSERT INTO ses_send_minutes (minute, sends) VALUES (date_trunc('minute', start_at), 1)
        ON CONFLICT (minute) DO UPDATE SET sends = ses_send_minutes.sends + 1;
    RETURN QUERY SELECT 'slot'::text, start_at,
        (EXTRACT(EPOCH FROM start_at - t) * 1000)::double precision, pace.day_used + 1;
END
$$;

-- A reserved slot whose send did not happen gives its quota back.
CREATE FUNCTION unreserve_ses_send(slot_at timestamptz) RETURNS void
LANGUAGE sql AS $$
    WITH one AS (
        UPDATE ses_send_minutes SET sends = sends - 1
         WHERE minute = date_trunc('minute', slot_at) AND sends > 0
        RETURNING 1
    )
    UPDATE ses_send_pace SET day_used = greatest(day_used - 1, 0)
     WHERE id AND EXISTS (SELECT 1 FROM one);
$$;

-- The sends of the last 24 hours (read only).
CREATE FUNCTION ses_day_used() RETURNS bigint
LANGUAGE sql AS $$
    SELECT greatest(p.day_used - COALESCE((SELECT sum(sends) FROM ses_send_minutes
                                            WHERE minute < clock_timestamp() - interval '24 hours 1 minute'), 0), 0)
      FROM ses_send_pace p WHERE p.id;
$$;
