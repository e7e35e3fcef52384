-- The events a webhook endpoint never acknowledged within its retry
-- period, kept for an operator to look at or replay by hand.
CREATE TABLE IF NOT EXISTS webhook_failures (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    endpoint VARCHAR(64) NOT NULL,
    event_id VARCHAR(128) NOT NULL,
    event_type VARCHAR(64) NOT NULL,
    event LONGTEXT NOT NULL,
    attempts INT UNSIGNED NOT NULL,
    last_error VARCHAR(512) NOT NULL,
    gave_up_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY idx_webhook_failures_endpoint (endpoint, id)
) ENGINE = InnoDB;
