-- How far each webhook endpoint has been served: the offset of the next
-- events stream entry to deliver. Written by the one worker delivering to
-- the endpoint, after every entry it finished (delivered, or given up on),
-- so a restart resumes there; the events of the entry in hand when it
-- stopped are delivered again (the same webhook-id). A new endpoint that
-- starts "from now" has its start time saved first (`start_at`, database
-- clock), so a restart before its first entry misses nothing.
CREATE TABLE IF NOT EXISTS webhook_progress (
    endpoint VARCHAR(64) NOT NULL PRIMARY KEY,
    next_offset BIGINT UNSIGNED NULL,
    start_at DATETIME(6) NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB;
