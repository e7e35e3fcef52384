-- The buyer an order belongs to: the `sub` of the buyer's verified token;
-- NULL when buyers are anonymous (no BUYER_JWT_* configured). Compared
-- byte for byte (a no-pad binary collation): `Alice`, `alice` and
-- `alice ` are three buyers, in ownership checks, lists and limits alike.
ALTER TABLE orders ADD COLUMN buyer_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL;
