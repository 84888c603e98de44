-- The commit notification names the process that appended (its append connections set
-- `ledger.origin`; empty for any other writer), so a process's listener skips its own
-- commits: they already woke its consumers at once, and the notification arriving a
-- moment later only sent them on a second pass that found nothing.
CREATE OR REPLACE FUNCTION ledger_events_appended() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('ledger_events', coalesce(current_setting('ledger.origin', true), ''));
    RETURN NULL;
END
$$;
