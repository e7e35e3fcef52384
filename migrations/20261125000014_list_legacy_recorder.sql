-- PENDING orders recorded before apis had ids have no recorded_by, and the
-- age-based relay that covered them is gone: they are handed to a 'legacy'
-- api, long dead, so a live api's relay claims and republishes them once.
INSERT IGNORE INTO apis (id, heartbeat_at, confirmed_below)
SELECT 'legacy', '1970-01-02', NULL FROM DUAL
WHERE EXISTS (SELECT 1 FROM orders WHERE status = 'PENDING' AND recorded_by IS NULL);
