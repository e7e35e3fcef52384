-- The relay finds an api's unpublished orders by (recorded_by, id): the
-- orders it recorded from its watermark on. No `status` in it, so a
-- decision does not rewrite it.
CREATE INDEX idx_orders_recorded_by ON orders (recorded_by, id);
