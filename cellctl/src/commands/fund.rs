//! `cellctl fund USER CENTS`: tops up an account of the built-in ledger, the
//! documented way to give demo and test users money (the ledger stands in for
//! a real payment system, which would be topped up by its own means).
//!
//! A top-up is a ledger credit under a deposit key of its own
//! (`redcell_payments::deposit_key`: `deposit:USER:...`,
//! unique per call: two top-ups are two credits), outside the cells' key
//! space, so reconcile counts it as money that came in from outside.
//! Refused before anything is written: a user the router would not accept,
//! CENTS not a whole positive number, or more than [`MAX_FUND_CENTS`] at once.

use std::{
    io::Write,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use redcell_payments::PgLedger;

use super::state_dir::StateDir;
use crate::CommandError;

/// The most one top-up may add: 1,000,000.00. A typo that adds digits is
/// refused rather than minted.
pub const MAX_FUND_CENTS: i64 = 100_000_000;

/// Validated arguments of a top-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUp {
    pub user: String,
    pub cents: i64,
}

impl TopUp {
    /// Checks USER and CENTS as typed; every error names its argument.
    pub fn parse(user: &str, cents: &str) -> Result<TopUp, CommandError> {
        let user_ok = (1..=64).contains(&user.len())
            && user
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        if !user_ok {
            return Err(CommandError::Input(format!(
                "USER: must be 1-64 of [A-Za-z0-9_-] (a user id the router accepts), got {user:?}"
            )));
        }
        let amount: i64 = cents.trim().parse().map_err(|_| {
            CommandError::Input(format!(
                "CENTS: must be a whole number of cents (10000 is 100.00), got {cents:?}"
            ))
        })?;
        if amount < 1 {
            return Err(CommandError::Input(format!(
                "CENTS: must be at least 1, got {amount}"
            )));
        }
        if amount > MAX_FUND_CENTS {
            return Err(CommandError::Input(format!(
                "CENTS: at most {MAX_FUND_CENTS} ({}) per top-up, got {amount}",
                money(MAX_FUND_CENTS)
            )));
        }
        Ok(TopUp {
            user: user.to_owned(),
            cents: amount,
        })
    }
}

/// `cellctl fund`: the ledger from `--ledger-dsn`, or the one the `up` on
/// `state_dir` runs.
pub fn run(
    user: &str,
    cents: &str,
    state_dir: &Path,
    ledger_dsn: Option<String>,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let top_up = TopUp::parse(user, cents)?;
    let dsn = match ledger_dsn {
        Some(dsn) => dsn,
        None => {
            let state = StateDir::at(state_dir)?;
            state.read_record(&state.ledger_dsn_file())?
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CommandError::Input(format!("cannot start a runtime: {error}")))?;
    let ledger = PgLedger::connect(&dsn, 1)
        .map_err(|error| CommandError::Input(format!("ledger: {error}")))?;
    let balance = runtime.block_on(deposit(&ledger, &top_up))?;
    writeln!(
        out,
        "funded {} with {} ({} cents); balance {}",
        top_up.user,
        money(top_up.cents),
        top_up.cents,
        money(balance)
    )?;
    Ok(())
}

/// Credits the top-up under a fresh key; the account's balance after it.
pub async fn deposit(ledger: &PgLedger, top_up: &TopUp) -> Result<i64, CommandError> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let key = redcell_payments::deposit_key(
        &top_up.user,
        format_args!(
            "{nanos}:{}:{}",
            std::process::id(),
            CALLS.fetch_add(1, Ordering::Relaxed)
        ),
    );
    let failed = |error: redcell_payments::PaymentsError| {
        CommandError::Input(format!("ledger: funding {}: {error}", top_up.user))
    };
    ledger
        .deposit(&key, &top_up.user, top_up.cents)
        .await
        .map_err(failed)?;
    ledger.balance(&top_up.user).await.map_err(failed)
}

/// Cents as `1234.56` (negative with a sign).
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let magnitude = cents.unsigned_abs();
    format!("{sign}{}.{:02}", magnitude / 100, magnitude % 100)
}
