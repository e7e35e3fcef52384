-- The events outbox: written in the transaction that makes each
-- transition (so an event exists exactly when its transition committed),
-- published to the events stream by one worker at a time and deleted once
-- the broker confirmed it.
--
-- A row is one transition of one order (`order_id`), the transitions of
-- one outcome of a deciding transaction (`order_ids`: their 16-byte ids,
-- packed, one row for hundreds of orders), or one product's change
-- (`product_id`, `available`: the units available after it). What an order
-- event tells of its order (total, buyer, reason, expires_at) is read from
-- `orders` when it is published: none of it changes once set.
--
-- `seq` orders them: a later transition of the same order (or product)
-- takes its row locks after the earlier one committed, so its row has a
-- higher seq and is visible only after the earlier one is.
CREATE TABLE IF NOT EXISTS order_events (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    order_id BINARY(16) NULL,
    order_ids MEDIUMBLOB NULL,
    product_id BIGINT UNSIGNED NULL,
    at DATETIME(6) NOT NULL,
    available BIGINT NULL
) ENGINE = InnoDB;
