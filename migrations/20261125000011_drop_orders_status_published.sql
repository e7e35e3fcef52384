-- The relay no longer scans orders by status and age: every index that
-- holds `status` is rewritten on each decision, so the ones nothing reads
-- go (the accepting path's database work per order).
DROP INDEX idx_orders_status_published ON orders;
