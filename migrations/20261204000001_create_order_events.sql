-- The events outbox: one row per transition, written in the transaction
-- that makes it (so an event exists exactly when its transition
-- committed), published to the events stream by one worker at a time and
-- deleted once the broker confirmed it. Order events name the order; its
-- other fields (total, buyer, reason, expires_at) are read from `orders`
-- when published, since they never change once set. Product events
-- (sold_out, available) carry the units available after the change.
-- `seq` orders them: a later transition of the same order (or product)
-- takes its row locks after the earlier one committed, so its row has a
-- higher seq and is visible only after the earlier one is.
CREATE TABLE IF NOT EXISTS order_events (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    order_id BINARY(16) NULL,
    product_id BIGINT UNSIGNED NOT NULL,
    at DATETIME(6) NOT NULL,
    available BIGINT NULL
) ENGINE = InnoDB;
