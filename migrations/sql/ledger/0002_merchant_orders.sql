-- One payment per merchant order (DESIGN.md §4: "the same idempotency key returns
-- the same envelope, never a second debit").
--
-- A Send's idempotency row lives in the cell that took it, but a client's retry of
-- that Send may reach another cell (the first one went down and left the mint
-- pool). Only the payment system sees every cell's debits of one sender, so it is
-- where "one Send, one debit" is enforced, the way a real payment system refuses a
-- second payment of one merchant order number: every debit names its order (for a
-- Send, the client's idempotency key), and at most one debit per (account, order)
-- ever exists. A second envelope's debit for a paid order is refused and moves
-- nothing; its cell learns which envelope the order paid for and forgets its own.
--
-- Credits and voids name no order (NULL, and NULLs never collide). Debits written
-- before this migration have none either: the index only binds new ones.

ALTER TABLE entries ADD COLUMN merchant_order text COLLATE "C";

ALTER TABLE entries ADD CONSTRAINT entries_order_only_on_debits
    CHECK (merchant_order IS NULL OR kind = 1);

CREATE UNIQUE INDEX entries_one_debit_per_order ON entries (account, merchant_order);
