-- See the previous migration.
UPDATE orders SET recorded_by = 'legacy' WHERE status = 'PENDING' AND recorded_by IS NULL;
