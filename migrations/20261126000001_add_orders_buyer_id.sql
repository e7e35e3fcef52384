-- The buyer an order belongs to: the `sub` of the buyer's verified token;
-- NULL when buyers are anonymous (no BUYER_JWT_* configured). A binary
-- collation (on MySQL 8 and MariaDB alike): `Alice` and `alice` are two
-- buyers, in ownership checks, lists and limits alike. Both pad with
-- spaces, so the api refuses a `sub` with leading or trailing spaces.
ALTER TABLE orders ADD COLUMN buyer_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
