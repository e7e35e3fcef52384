-- Which worker decided the order, under which lease epoch: an audit trail,
-- and how the tests prove a fenced-off worker committed nothing with a
-- lease it had lost.
ALTER TABLE orders
    ADD COLUMN decided_by VARCHAR(64) NULL AFTER decided_at,
    ADD COLUMN decided_epoch BIGINT UNSIGNED NULL AFTER decided_by;
