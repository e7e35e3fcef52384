-- Live api processes, by heartbeat (database clock). Each heartbeat also
-- records `confirmed_below`: every order this api recorded with a smaller id
-- (ids are UUIDv7, increasing within a process) is known to be on the
-- broker. When an api stops heartbeating, a live one claims its PENDING
-- orders from that id on and republishes them, once.
CREATE TABLE IF NOT EXISTS apis (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    started_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    heartbeat_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    confirmed_below BINARY(16) NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
