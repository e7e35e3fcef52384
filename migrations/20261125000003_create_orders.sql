-- seq gives arrival order and cheap pagination; id is the public UUID.
-- published_at is the outbox mark: NULL until the broker confirmed the message.
-- idempotency_key / request_hash serve retried submissions.
CREATE TABLE IF NOT EXISTS orders (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id BINARY(16) NOT NULL,
    product_id BIGINT UNSIGNED NOT NULL,
    total INT UNSIGNED NOT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'PENDING',
    reason VARCHAR(64) NULL,
    idempotency_key VARCHAR(255) NULL,
    request_hash BINARY(32) NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    published_at DATETIME(6) NULL,
    decided_at DATETIME(6) NULL,
    expires_at DATETIME(6) NULL,
    closed_at DATETIME(6) NULL,
    UNIQUE KEY uq_orders_id (id),
    UNIQUE KEY uq_orders_idempotency_key (idempotency_key),
    KEY idx_orders_product_status (product_id, status, seq),
    KEY idx_orders_status_published (status, published_at, seq),
    KEY idx_orders_status_expires (status, expires_at),
    CONSTRAINT fk_orders_product FOREIGN KEY (product_id) REFERENCES products (id),
    CONSTRAINT chk_orders_total CHECK (total > 0),
    CONSTRAINT chk_orders_status CHECK (status IN ('PENDING', 'ACCEPTED', 'REJECTED', 'PAID', 'CANCELLED', 'EXPIRED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
