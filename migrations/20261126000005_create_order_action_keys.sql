-- Idempotency-Key on pay and cancel: the scoped, hashed key (hex SHA-256)
-- and a hash of the request it came with (the action and the order), kept
-- in the transaction that pays or cancels. A retry with the same key and
-- request repeats the transition (which answers what the order is now);
-- the same key with another request is refused.
CREATE TABLE IF NOT EXISTS order_action_keys (
    idempotency_key VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    request_hash BINARY(32) NOT NULL,
    order_id BINARY(16) NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB;
