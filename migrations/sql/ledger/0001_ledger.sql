-- The built-in ledger (DESIGN.md §5 "Money flow"): the stand-in for the payment
-- system a cell is a merchant of, in a database of its own. Money is bigint cents.
--
-- Invariants, and what holds each one (redcell_payments::ledger does the rest):
--   * A balance never goes negative: the CHECK on accounts.balance_cents. A debit's
--     UPDATE only matches a row that can afford it, so the CHECK is the backstop,
--     not the path.
--   * At most one entry per idempotency key: the PRIMARY KEY on entries.key. Every
--     operation inserts its entry and moves the balance in ONE transaction, so a
--     balance has moved for a key iff the key's entry exists.
--   * A voided key can never be debited: the void is itself the key's entry.
--   * Conservation: for every account, balance = its credits - its debits (voids
--     carry no money); `PgLedger::discrepancies` checks it.

CREATE TABLE accounts (
    account        text   PRIMARY KEY,
    -- The one number a payment system must never get wrong; never negative.
    balance_cents  bigint NOT NULL CHECK (balance_cents >= 0)
);

-- Append-only: rows are never updated or deleted, so "the entry of a key" is a
-- stable fact callers may resolve their uncertainty against.
CREATE TABLE entries (
    -- Chosen by the caller ("send:<envelope id>", "claim:<envelope id>:<seq>",
    -- "refund:<envelope id>"). Byte order (COLLATE "C") so that prefix scans
    -- (`LIKE 'claim:%'`) can use the primary-key index during reconciliation.
    key           text COLLATE "C" PRIMARY KEY,
    -- '' for a void: a void belongs to no account.
    account       text        NOT NULL,
    -- 1 debit, 2 credit, 3 void (see redcell_payments::EntryKind).
    kind          smallint    NOT NULL CHECK (kind IN (1, 2, 3)),
    -- Positive for money-moving entries; 0 for a void, which moves nothing.
    amount_cents  bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind IN (1, 2) AND amount_cents > 0)
        OR (kind = 3 AND amount_cents = 0 AND account = ''))
);
