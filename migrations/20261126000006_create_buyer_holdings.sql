-- The units each buyer holds (ACCEPTED or PAID) of each product, kept by
-- every transaction that moves an order of a known buyer into or out of
-- those statuses: the deciding one (+), cancel and expiry (-); paying
-- moves units from ACCEPTED to PAID and changes nothing here. The deciding
-- transaction reads one row per buyer for `max_per_buyer` instead of
-- every order the buyer ever placed. Kept for every product, limited or
-- not, so a limit set later counts what was bought before it.
--
-- Filled from the orders here, when the first new process starts: stop
-- the older apis and workers first (OPERATIONS.md, "Upgrading"), or their
-- acceptances and cancels would not be counted in it.
CREATE TABLE IF NOT EXISTS buyer_holdings (
    product_id BIGINT UNSIGNED NOT NULL,
    buyer_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    held BIGINT NOT NULL,
    PRIMARY KEY (product_id, buyer_id),
    CONSTRAINT chk_buyer_holdings_held CHECK (held >= 0)
) ENGINE = InnoDB;

INSERT INTO buyer_holdings (product_id, buyer_id, held)
SELECT product_id, buyer_id, SUM(total) FROM orders
WHERE buyer_id IS NOT NULL AND status IN ('ACCEPTED', 'PAID')
GROUP BY product_id, buyer_id;
