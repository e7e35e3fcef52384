-- One lease per partition: its owner, an epoch bumped on every change of
-- owner (the fencing token every deciding transaction checks), and expiry.
CREATE TABLE IF NOT EXISTS partition_leases (
    partition_no SMALLINT UNSIGNED NOT NULL PRIMARY KEY,
    owner VARCHAR(64) NULL,
    epoch BIGINT UNSIGNED NOT NULL DEFAULT 0,
    expires_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
