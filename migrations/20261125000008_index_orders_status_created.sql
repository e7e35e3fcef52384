-- The relay looks for PENDING orders older than RELAY_AFTER; without this
-- index it walked every PENDING order (a whole flash-sale backlog) each round.
CREATE INDEX idx_orders_status_created ON orders (status, created_at);
