//! The gauges a scrape reads, sampled every worker interval: how much money
//! is waiting (outbox backlog and the age of its oldest transfer: settlement
//! lag), Sends whose debit is not yet known (count and oldest age: the
//! recovery worker's backlog), lanes and their queues, the order-DB pool, and
//! the topology this server serves. Sampled rather than computed per scrape
//! so a scraper cannot load the order DB; both counts use the partial indexes
//! of `status = 1` rows, so a sample reads only what is waiting.

use std::sync::Arc;

use redcell_payments::Payments;

use crate::{context::CellContext, db::DbError};

const SAMPLE: &str = "SELECT \
     (SELECT count(*) FROM transfers WHERE status = 1), \
     (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM transfers WHERE status = 1), \
     (SELECT count(*) FROM envelopes WHERE status = 1), \
     (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM envelopes WHERE status = 1)";

/// One sample; returns 0 (the worker loop then waits its interval).
pub async fn sample<P: Payments>(context: &Arc<CellContext<P>>) -> Result<usize, String> {
    let metrics = &context.metrics;
    metrics.lanes_open.set(gauge(context.lanes.len()));
    metrics.lane_queue_depth.set(gauge(context.lanes.queued()));
    let status = context.pool.status();
    metrics.db_pool_connections.set(gauge(status.size));
    metrics.db_pool_idle.set(gauge(status.available));
    metrics.db_pool_waiting.set(gauge(status.waiting));
    metrics.topology.observe(&context.topology);

    let client = context
        .pool
        .get()
        .await
        .map_err(|error| DbError::from(error).to_string())?;
    let row = client
        .query_one(SAMPLE, &[])
        .await
        .map_err(|error| DbError::from(error).to_string())?;
    let read = |index: usize| -> Result<f64, String> {
        row.try_get::<_, f64>(index)
            .or_else(|_| row.try_get::<_, i64>(index).map(|value| value as f64))
            .map_err(|error| error.to_string())
    };
    metrics.outbox_backlog.set(read(0)? as i64);
    metrics.settlement_lag.set(read(1)?);
    metrics.pending_sends.set(read(2)? as i64);
    metrics.pending_send_age.set(read(3)?);
    Ok(0)
}

fn gauge(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
