//! The payment boundary as the cell calls it, measured: every debit, credit
//! and debit resolution is timed into `redcell_cell_ledger_call_duration_seconds`
//! and counted in `redcell_cell_ledger_errors_total` when it fails, inside a
//! `ledger_call` span. A decorator, so the operations and workers that call
//! [`Payments`] stay as they are. A refused debit (insufficient funds, voided)
//! is an answer, not an error.

use std::{sync::Arc, time::Instant};

use redcell_payments::{Credit, Debit, DebitOutcome, DebitResolution, Payments, PaymentsError};
use tracing::Instrument;

use crate::metrics::CellMetrics;

#[derive(Debug)]
pub struct Measured<P> {
    inner: P,
    metrics: Arc<CellMetrics>,
}

impl<P> Measured<P> {
    pub fn new(inner: P, metrics: Arc<CellMetrics>) -> Measured<P> {
        Measured { inner, metrics }
    }
}

impl<P: Payments> Payments for Measured<P> {
    async fn debit(&self, debit: Debit<'_>) -> Result<DebitOutcome, PaymentsError> {
        let started = Instant::now();
        let result = self
            .inner
            .debit(debit)
            .instrument(tracing::info_span!("ledger_call", op = "debit"))
            .await;
        self.metrics
            .observe_ledger("debit", started.elapsed(), &result);
        result
    }

    async fn credit(&self, key: &str, account: &str, cents: i64) -> Result<(), PaymentsError> {
        let started = Instant::now();
        let result = self
            .inner
            .credit(key, account, cents)
            .instrument(tracing::info_span!("ledger_call", op = "credit"))
            .await;
        self.metrics
            .observe_ledger("credit", started.elapsed(), &result);
        result
    }

    /// Timed as one call (`op="credit_batch"`); an error if any credit failed.
    async fn credit_batch(&self, credits: &[Credit<'_>]) -> Vec<Result<(), PaymentsError>> {
        let started = Instant::now();
        let results = self
            .inner
            .credit_batch(credits)
            .instrument(tracing::info_span!(
                "ledger_call",
                op = "credit_batch",
                credits = credits.len()
            ))
            .await;
        let failed = results
            .iter()
            .find(|result| result.is_err())
            .map_or(Ok(()), |_| Err(()));
        self.metrics
            .observe_ledger("credit_batch", started.elapsed(), &failed);
        results
    }

    async fn resolve_debit(&self, key: &str) -> Result<DebitResolution, PaymentsError> {
        let started = Instant::now();
        let result = self
            .inner
            .resolve_debit(key)
            .instrument(tracing::info_span!("ledger_call", op = "resolve_debit"))
            .await;
        self.metrics
            .observe_ledger("resolve_debit", started.elapsed(), &result);
        result
    }
}
