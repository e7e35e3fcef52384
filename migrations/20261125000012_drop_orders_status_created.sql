-- See the previous migration: the age-based relay scan is gone.
DROP INDEX idx_orders_status_created ON orders;
