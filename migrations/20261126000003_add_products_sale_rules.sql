-- Per product, optional: the most units one buyer may hold (ACCEPTED and
-- PAID), and the sale's window (database clock). NULL: no limit, always open.
ALTER TABLE products
    ADD COLUMN max_per_buyer INT UNSIGNED NULL,
    ADD COLUMN sale_starts_at DATETIME(6) NULL,
    ADD COLUMN sale_ends_at DATETIME(6) NULL;
