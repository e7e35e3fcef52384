-- The api that recorded an order (and so owes its publish): the relay of a
-- live api claims a dead api's unconfirmed PENDING orders by this column.
ALTER TABLE orders ADD COLUMN recorded_by VARCHAR(64) NULL;
