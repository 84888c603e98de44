-- Where open holds (reservations) can be after a restart: the hold sweeper reads the
-- `QuotaReserved` events written within the longest hold's time to live. Partial, so
-- it costs nothing on the writes of every other event.
CREATE INDEX events_holds ON events (recorded_at) WHERE event_type = 'QuotaReserved';
