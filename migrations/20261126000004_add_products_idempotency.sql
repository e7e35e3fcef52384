-- A product created with an Idempotency-Key: the scoped, hashed key (unique)
-- and the hash of the request, so a retry finds the product it created and
-- a key reused with another request is refused.
ALTER TABLE products
    ADD COLUMN idempotency_key CHAR(64) NULL,
    ADD COLUMN request_hash BINARY(32) NULL,
    ADD UNIQUE KEY uq_products_idempotency_key (idempotency_key);
