-- Live workers, by heartbeat (database clock). Partition ownership is
-- computed over the workers whose heartbeat is younger than the lease.
CREATE TABLE IF NOT EXISTS workers (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    started_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    heartbeat_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY idx_workers_heartbeat (heartbeat_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
