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

/// A whole debit in one autocommit statement (one round trip, one commit):
/// claims key `$1` for account `$2`'s order `$4` (as [`INSERT_ENTRY`], kind
/// `$5`) only if the account exists, and takes `$3` from the account only if
/// this statement inserted the entry. A debit that does not fit makes the
/// balance negative, which the column's CHECK refuses: the statement fails
/// and nothing of it (the entry included) is kept. Returns whether the money
/// was taken; `false` means the key or the order already had an entry, or
/// there is no such account (the caller reads back which).
///
/// The casts fix the parameters' types: in `INSERT .. SELECT` PostgreSQL
/// would otherwise take them for `text` before it sees the `UPDATE`.
pub(crate) const DEBIT: &str = "WITH entry AS ( \
       INSERT INTO entries (key, account, kind, amount_cents, merchant_order) \
       SELECT $1::text, account, $5::smallint, $3::bigint, $4::text FROM accounts WHERE account = $2::text \
       ON CONFLICT DO NOTHING RETURNING account), \
     taken AS ( \
       UPDATE accounts SET balance_cents = balance_cents - $3::bigint \
       WHERE account IN (SELECT account FROM entry) RETURNING 1) \
     SELECT EXISTS (SELECT 1 FROM taken)";

/// The CHECK on `accounts.balance_cents` (PostgreSQL's default name): its
/// violation by [`DEBIT`] is the refusal for insufficient funds.
pub(crate) const BALANCE_CHECK: &str = "accounts_balance_cents_check";

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
