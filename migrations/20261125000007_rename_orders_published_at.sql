-- Marking every confirmed publish made the marking UPDATE contend with the
-- worker's locks on the same fresh rows; the api now keeps unconfirmed
-- publishes in memory, and the column only records when the relay last
-- republished an order (so a backlog is not republished every round).
ALTER TABLE orders RENAME COLUMN published_at TO relayed_at;
