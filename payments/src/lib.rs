//! The money boundary of a cell (DESIGN.md §5 "Money flow").
//!
//! A cell is a merchant of a payment system: Send debits the sender, the
//! settlement worker credits receivers and refunds senders. [`Payments`] is
//! everything the cell needs from that system, and [`PgLedger`] is the
//! built-in implementation: a PostgreSQL ledger in a database of its own.
//!
//! # The contract
//!
//! - **Money is `i64` cents**, always positive in a request; `cents <= 0` is
//!   [`PaymentsError::InvalidAmount`] before anything is sent anywhere.
//! - **Idempotent by key.** Every operation carries a key chosen by the
//!   caller (the cells' keys are [`keys::LedgerKey`]: `send:<envelope id>`,
//!   `claim:<envelope id>:<seq>`, `refund:<envelope id>`); the first call
//!   with a key decides, every later call with the same key and the same
//!   request gets the same answer and moves no money. The same key with a different request is
//!   [`PaymentsError::KeyConflict`], a bug in the caller.
//! - **One debit per merchant order.** Every debit names the merchant's order
//!   it pays for (for a Send, the client's idempotency key); at most one debit
//!   per (account, order) ever succeeds. A debit under a new key for an order
//!   already paid is refused with [`DebitOutcome::OrderPaid`], naming the key
//!   that paid it, and moves nothing. This is what keeps "one Send, one debit"
//!   true across cells: a Send's idempotency row lives in one cell, but only
//!   the payment system sees every cell's debits of a sender.
//! - **Every call may fail with [`PaymentsError::Unavailable`]**: at scale the
//!   payment system is sharded by user on its own and may be slow or down.
//!   Callers retry with the same key; an `Unavailable` debit whose outcome
//!   they cannot wait for is settled with [`Payments::resolve_debit`], which
//!   voids the key if the debit has not happened, so a late retry cannot
//!   take the money after the caller gave up on it.
//!
//! # The ledger's invariants (see [`ledger`] for why they hold)
//!
//! 1. A balance never goes negative.
//! 2. One entry per key: a key moves money at most once.
//! 3. A voided key can never be debited.
//! 4. One debit per (account, merchant order).
//! 5. Conservation: every balance equals its credits minus its debits.
//!
//! **Owns**: the [`Payments`] contract and its PostgreSQL ledger, the cells'
//! ledger keys ([`keys`]: built and parsed here only) and the SQLSTATE
//! classification shared with the order DB ([`sqlstate`]). **Never**: reads
//! a cell's order DB, lets money move twice for a key, panics on a storage
//! failure, or retries on its own (the caller retries with the same key).

mod error;
pub mod keys;
pub mod ledger;
mod sql;
pub mod sqlstate;

use std::future::Future;
use std::sync::Arc;

pub use error::PaymentsError;
pub use keys::{KeyError, KeyKind, LedgerKey, deposit_key};
pub use ledger::{
    AccountDiscrepancy, EntryKind, EntryTotals, LedgerAudit, LedgerBooks, LedgerEntry, PgLedger,
};

/// What a cell needs from the payment system it is a merchant of.
///
/// Idempotency keys are chosen by the caller (the cells build theirs with
/// [`LedgerKey`]: a `send:` key for a debit, `claim:` or `refund:` keys for
/// credits). A key names one operation forever: debits and credits share one
/// key space.
///
/// Implementations are generic-friendly (`async fn` in trait, futures are
/// `Send`), not object-safe; hold an `Arc<P>` or a cheap `Clone` like
/// [`PgLedger`] to share one.
pub trait Payments: Send + Sync + 'static {
    /// Takes `debit.cents` from `debit.account` once per key, and at most
    /// once per (account, order). The balance never goes negative: a debit
    /// that does not fit is refused with [`DebitOutcome::InsufficientFunds`]
    /// and leaves the key and the order unused.
    fn debit(
        &self,
        debit: Debit<'_>,
    ) -> impl Future<Output = Result<DebitOutcome, PaymentsError>> + Send;

    /// Credits `cents` to `account` once per key (creates the account if
    /// needed). Replaying the same key returns `Ok` without a second credit.
    fn credit(
        &self,
        key: &str,
        account: &str,
        cents: i64,
    ) -> impl Future<Output = Result<(), PaymentsError>> + Send;

    /// Credits many at once, each exactly as [`Payments::credit`] would:
    /// once per key, a replayed key answers `Ok` without a second credit, a
    /// key used for another operation is [`PaymentsError::KeyConflict`] for
    /// that credit only. One outcome per credit, in order. An implementation
    /// may write them in one transaction (then an unreachable system fails
    /// them all with `Unavailable`, and nothing moved); this default makes
    /// one call per credit, so a wrapper that only overrides `credit` sees
    /// every credit.
    fn credit_batch(
        &self,
        credits: &[Credit<'_>],
    ) -> impl Future<Output = Vec<Result<(), PaymentsError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(credits.len());
            for credit in credits {
                outcomes.push(self.credit(credit.key, credit.account, credit.cents).await);
            }
            outcomes
        }
    }

    /// For a debit whose outcome is unknown (the caller crashed or timed
    /// out): did it happen? If no entry exists under `key`, the key is voided
    /// first, so a late-arriving debit with it is refused
    /// ([`DebitOutcome::Voided`]); then the answer is final. Idempotent.
    fn resolve_debit(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<DebitResolution, PaymentsError>> + Send;
}

/// What [`Payments::debit`] is asked to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debit<'a> {
    /// The idempotency key of this debit (`send:<envelope id>`): a retry
    /// with it is answered from the first call.
    pub key: &'a str,
    /// The merchant's order the debit pays for (a Send's idempotency key):
    /// the payment system pays one order of an account once, whatever the
    /// key, so two envelopes can never be paid by one Send.
    pub order: &'a str,
    /// The payer.
    pub account: &'a str,
    /// Positive cents.
    pub cents: i64,
}

/// One credit of [`Payments::credit_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit<'a> {
    /// The idempotency key (`claim:..` or `refund:..`).
    pub key: &'a str,
    /// The payee.
    pub account: &'a str,
    /// Positive cents.
    pub cents: i64,
}

/// The answer to [`Payments::debit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebitOutcome {
    /// The money was taken, by this call or an earlier one with the same key.
    Debited,
    /// The account cannot afford the debit; nothing was written and the key
    /// stays unused (a later debit with it may succeed).
    InsufficientFunds {
        /// The balance when the debit was refused (0 for an unknown account).
        balance_cents: i64,
    },
    /// The key was voided by [`Payments::resolve_debit`]: refused, for good.
    Voided,
    /// The order was already paid by the debit under `key`: refused, nothing
    /// was written, and this call's key stays unused.
    OrderPaid {
        /// The key of the debit that paid the order (`send:<envelope id>`).
        key: String,
    },
}

/// The answer to [`Payments::resolve_debit`]; final for the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebitResolution {
    /// The debit happened.
    Debited,
    /// The debit did not happen and never will: the key is void.
    Voided,
}

/// Shares one implementation between tasks without cloning it.
impl<P: Payments> Payments for Arc<P> {
    fn debit(
        &self,
        debit: Debit<'_>,
    ) -> impl Future<Output = Result<DebitOutcome, PaymentsError>> + Send {
        P::debit(self, debit)
    }

    fn credit(
        &self,
        key: &str,
        account: &str,
        cents: i64,
    ) -> impl Future<Output = Result<(), PaymentsError>> + Send {
        P::credit(self, key, account, cents)
    }

    fn credit_batch(
        &self,
        credits: &[Credit<'_>],
    ) -> impl Future<Output = Vec<Result<(), PaymentsError>>> + Send {
        P::credit_batch(self, credits)
    }

    fn resolve_debit(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<DebitResolution, PaymentsError>> + Send {
        P::resolve_debit(self, key)
    }
}
