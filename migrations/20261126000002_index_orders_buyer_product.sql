-- A buyer's orders: listed by buyer, and counted per (buyer, product) for
-- `max_per_buyer` in the deciding transaction. No `status` in it, so a
-- decision does not rewrite it.
CREATE INDEX idx_orders_buyer_product ON orders (buyer_id, product_id);
