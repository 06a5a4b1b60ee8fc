//! The ledger's queries, one named constant each, against the schema in
//! `migrations/sql/ledger/0001_ledger.sql`. Entry kinds are bound as
//! parameters ([`crate::EntryKind::code`]), never spelled out, except the
//! void's 3 where the query only ever writes a void.

/// Claims key `$1` (and, for a debit, account `$2`'s order `$5`) for one
/// operation; returns a row only if this call inserted it. No conflict
/// target: a conflict on either unique index (the key, or the account's
/// order) is a no-op the caller reads back.
pub(crate) const INSERT_ENTRY: &str = "INSERT INTO entries \
     (key, account, kind, amount_cents, merchant_order) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING key";

/// Voids `$1` unless it already has an entry.
pub(crate) const VOID_KEY: &str = "INSERT INTO entries (key, account, kind, amount_cents) \
     VALUES ($1, '', 3, 0) ON CONFLICT (key) DO NOTHING";

pub(crate) const SELECT_ENTRY: &str =
    "SELECT key, account, kind, amount_cents, merchant_order FROM entries WHERE key = $1";

/// The debit that paid account `$1`'s order `$2`, if any.
pub(crate) const SELECT_ORDER: &str = "SELECT key, account, kind, amount_cents, merchant_order \
     FROM entries WHERE account = $1 AND merchant_order = $2";

/// Every entry, in key order (the primary key's index): an auditor's full
/// pass, read through a portal a page at a time.
pub(crate) const ALL_ENTRIES: &str =
    "SELECT key, account, kind, amount_cents, merchant_order FROM entries ORDER BY key";

pub(crate) const SELECT_ENTRIES: &str = "SELECT key, account, kind, amount_cents, merchant_order \
     FROM entries WHERE key = ANY($1) ORDER BY key";

/// Takes `$2` from `$1` only if it fits: 0 rows means insufficient funds (or
/// no account). Under READ COMMITTED a concurrent debit holding the row lock
/// makes this wait and then re-check the condition on the new balance.
pub(crate) const DEBIT_ACCOUNT: &str = "UPDATE accounts SET balance_cents = balance_cents - $2 \
     WHERE account = $1 AND balance_cents >= $2";

pub(crate) const CREDIT_ACCOUNT: &str = "INSERT INTO accounts (account, balance_cents) \
     VALUES ($1, $2) ON CONFLICT (account) \
     DO UPDATE SET balance_cents = accounts.balance_cents + EXCLUDED.balance_cents";

pub(crate) const SELECT_BALANCE: &str = "SELECT balance_cents FROM accounts WHERE account = $1";

pub(crate) const TOTAL_BALANCE: &str =
    "SELECT COALESCE(SUM(balance_cents), 0)::bigint FROM accounts";

/// `$1` is a LIKE pattern (an escaped prefix followed by `%`).
pub(crate) const COUNT_ENTRIES_LIKE: &str = "SELECT count(*) FROM entries WHERE key LIKE $1";

/// Counts and sums per kind, in one snapshot; `$1` as above.
pub(crate) const TOTALS_LIKE: &str = "SELECT \
       count(*) FILTER (WHERE kind = 1), \
       COALESCE(SUM(amount_cents) FILTER (WHERE kind = 1), 0)::bigint, \
       count(*) FILTER (WHERE kind = 2), \
       COALESCE(SUM(amount_cents) FILTER (WHERE kind = 2), 0)::bigint, \
       count(*) FILTER (WHERE kind = 3) \
     FROM entries WHERE key LIKE $1";

/// Accounts whose balance differs from their credits minus their debits, in
/// one snapshot (a single statement).
pub(crate) const DISCREPANCIES: &str = "SELECT \
       COALESCE(a.account, e.account), \
       COALESCE(a.balance_cents, 0), \
       COALESCE(e.net_cents, 0)::bigint \
     FROM accounts a \
     FULL JOIN ( \
       SELECT account, \
              SUM(CASE kind WHEN 2 THEN amount_cents ELSE -amount_cents END) AS net_cents \
       FROM entries WHERE kind IN (1, 2) GROUP BY account \
     ) e ON e.account = a.account \
     WHERE COALESCE(a.balance_cents, 0) <> COALESCE(e.net_cents, 0) \
     ORDER BY 1";

/// Claims each key `$1[i]` for a credit of `$3[i]` cents to `$2[i]`; returns
/// the keys this statement inserted (a key that already has an entry, or
/// appears twice, is a no-op the caller reads back). The caller binds the
/// keys sorted, so two batches wait on each other's keys in one order.
pub(crate) const INSERT_CREDIT_ENTRIES: &str = "INSERT INTO entries \
     (key, account, kind, amount_cents) \
     SELECT k, a, 2, c FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(k, a, c) \
     ON CONFLICT DO NOTHING RETURNING key";

/// Adds `$2[i]` to account `$1[i]` (accounts distinct), creating it if
/// needed; rows are written in account order so two batches lock common
/// accounts in one order (no deadlock).
pub(crate) const CREDIT_ACCOUNTS: &str = "INSERT INTO accounts (account, balance_cents) \
     SELECT a, c FROM unnest($1::text[], $2::bigint[]) AS t(a, c) ORDER BY a \
     ON CONFLICT (account) \
     DO UPDATE SET balance_cents = accounts.balance_cents + EXCLUDED.balance_cents";
