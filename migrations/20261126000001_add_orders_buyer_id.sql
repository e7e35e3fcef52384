-- The buyer an order belongs to: the `sub` of the buyer's verified token;
-- NULL when buyers are anonymous (no BUYER_JWT_* configured).
ALTER TABLE orders ADD COLUMN buyer_id VARCHAR(255) NULL;
