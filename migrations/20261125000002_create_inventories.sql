-- available_stock = stored_stock - reserved_stock is derived, never stored.
-- The CHECK constraints make the database refuse any oversell outright.
CREATE TABLE IF NOT EXISTS inventories (
    product_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    stored_stock BIGINT NOT NULL DEFAULT 0,
    reserved_stock BIGINT NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    CONSTRAINT fk_inventories_product FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE,
    CONSTRAINT chk_inventories_reserved_nonnegative CHECK (reserved_stock >= 0),
    CONSTRAINT chk_inventories_reserved_within_stored CHECK (reserved_stock <= stored_stock)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
