-- An older api may have recorded an order between the two previous
-- migrations (a rolling upgrade): the 'legacy' api is listed whenever it
-- has PENDING orders, so they are claimed.
INSERT IGNORE INTO apis (id, heartbeat_at, confirmed_below)
SELECT 'legacy', '1970-01-02', NULL FROM DUAL
WHERE EXISTS (SELECT 1 FROM orders WHERE status = 'PENDING' AND recorded_by = 'legacy');
