//! Send: pay once, create an envelope (DESIGN.md §4, §5 money flow).
//!
//! 1. an existing (sender, idempotency key) returns its envelope: never a
//!    second envelope, never a second debit;
//! 2. the envelope is written `PENDING_PAYMENT` with its idempotency row;
//! 3. the sender is debited through [`Payments`] under the key `send:<id>`,
//!    for the merchant order named by the idempotency key;
//! 4. debited -> `ACTIVE`; refused for balance -> the debit key is voided in
//!    the payment system *first* (so a concurrent retry's debit of the same
//!    key, racing a credit that would let it fit, answers `Voided` instead of
//!    taking money for an envelope about to vanish), then the pending rows are
//!    deleted (nothing stays written) and the caller gets
//!    `FAILED_PRECONDITION` — unless the void finds that such a retry's debit
//!    already landed, and then the envelope is paid and goes `ACTIVE`; the
//!    order already paid for another envelope (the client's retry of a Send
//!    that another cell took) -> the pending rows are deleted and the caller
//!    gets `ALREADY_EXISTS` naming that envelope, which the router asks its
//!    own cell for; the payment system unreachable -> the envelope stays
//!    pending, the caller gets `UNAVAILABLE`, and a retry with the same key
//!    (or the recovery worker) finishes it.

use std::time::SystemTime;

use redcell_payments::{Debit, DebitOutcome, DebitResolution, Payments, keys::LedgerKey};
use redcell_topology::Suffix;
use tracing::Instrument;

use crate::{
    allocation::{self, SplitVersion},
    context::CellContext,
    envelope::{Envelope, Status},
    error::CellError,
    request::{self, SendCommand, UserId},
    store::{self, Inserted, Unpaid},
};

/// `command` was validated at the service edge ([`SendCommand::parse`]).
pub async fn send<P: Payments>(
    cell: &CellContext<P>,
    command: SendCommand,
    suffix: Option<Suffix>,
) -> Result<Envelope, CellError> {
    // A known idempotency key is found by the insert below (one statement
    // for a new Send, not a lookup first); it is looked up here only when
    // this server cannot mint, so a retry is still answered from its
    // envelope while a topology change reaches the fleet.
    let id = match cell.minter.mint(&cell.topology.load(), suffix).await {
        Ok(id) => id,
        Err(refused) => {
            let known = store::find_send_request(
                &cell.pool,
                command.sender.as_str(),
                &command.idempotency_key,
            )
            .await
            .map_err(|error| before_writing(error.into()))?;
            return match known {
                Some(existing) => replay(cell, &command, &existing).await,
                None => Err(before_writing(refused)),
            };
        }
    };
    let now = SystemTime::now();
    let mut envelope = Envelope {
        id,
        sender: command.sender.to_string(),
        kind: command.kind,
        status: Status::PendingPayment,
        total_cents: command.total_cents,
        count: command.count,
        remaining_cents: command.total_cents,
        remaining_count: command.count,
        greeting: command.greeting.clone(),
        recipients: command.recipients.iter().map(ToString::to_string).collect(),
        seed: allocation::new_seed(),
        split_version: SplitVersion::CURRENT,
        version: 0,
        // Placeholders: the database's clock stamps the row, and its stamps
        // replace these below.
        created_at: now,
        expires_at: now + cell.envelope_ttl,
    };
    // A failure here may even have committed the pending row, but no money
    // moved: the debit comes after. Recovery cancels such a row (its debit
    // key is voided), so a retry in another cell charges the sender once.
    let started = std::time::Instant::now();
    let inserted = store::insert_pending(
        &cell.pool,
        &envelope,
        cell.envelope_ttl,
        &command.idempotency_key,
    )
    .instrument(tracing::info_span!("db_transaction", kind = "send_insert"))
    .await;
    cell.metrics
        .observe_transaction("send_insert", started.elapsed());
    let inserted = inserted.map_err(|error| before_writing(error.into()))?;
    match inserted {
        Inserted::New {
            created_at,
            expires_at,
        } => {
            envelope.created_at = created_at;
            envelope.expires_at = expires_at;
            pay(cell, envelope, &command.idempotency_key).await
        }
        Inserted::Existing(existing) => replay(cell, &command, &existing).await,
    }
}

/// Marks an unavailability before any money moved as safe to retry elsewhere.
fn before_writing(error: CellError) -> CellError {
    match error {
        CellError::Unavailable(_) => CellError::NothingWritten(Box::new(error)),
        other => other,
    }
}

/// A Send whose idempotency key is known: the same envelope, finishing its
/// payment if that is still open.
async fn replay<P: Payments>(
    cell: &CellContext<P>,
    command: &SendCommand,
    id: &str,
) -> Result<Envelope, CellError> {
    let id = request::parse_envelope_id(id)?;
    let client = cell.pool.get().await.map_err(crate::db::DbError::from)?;
    let envelope = store::load_envelope(&**client, &id)
        .await?
        .ok_or_else(|| CellError::Unavailable(format!("envelope {id} is being created; retry")))?;
    drop(client);
    let same = envelope.total_cents == command.total_cents
        && envelope.count == command.count
        && envelope.kind == command.kind
        && envelope.greeting == command.greeting
        && envelope
            .recipients
            .iter()
            .eq(command.recipients.iter().map(UserId::as_str));
    if !same {
        return Err(CellError::invalid(
            "idempotency_key",
            format!("already used for envelope {id} with different contents"),
        ));
    }
    match envelope.status {
        // A cancelled envelope's debit key is void, so asking again moves no
        // money; it tells whether its order was paid for another envelope
        // meanwhile (then that one is the answer) or not at all.
        Status::PendingPayment | Status::Cancelled => {
            pay(cell, envelope, &command.idempotency_key).await
        }
        Status::Active | Status::Exhausted | Status::Expired => Ok(envelope),
    }
}

/// Debits the sender for `envelope`, as the payment of the merchant order
/// `order` (the Send's idempotency key), and records the outcome.
async fn pay<P: Payments>(
    cell: &CellContext<P>,
    envelope: Envelope,
    order: &str,
) -> Result<Envelope, CellError> {
    let key = LedgerKey::Send(envelope.id).to_string();
    let outcome = cell
        .payments
        .debit(Debit {
            key: &key,
            order,
            account: &envelope.sender,
            cents: envelope.total_cents,
        })
        .await?;
    // Tests crash the cell here: the sender is debited, the envelope still
    // pending (recovery must activate it, never cancel or debit it again).
    fail::fail_point!("send::after_debit");
    match outcome {
        DebitOutcome::Debited => activate(cell, envelope).await,
        DebitOutcome::InsufficientFunds { balance_cents } => {
            // Make the refusal final before forgetting the envelope: void the
            // key. A retry of this Send that found the envelope meanwhile
            // (double click, client timeout) may be about to debit the same
            // key, and a credit landing first would let it fit; after the
            // void it is refused, so no debit can outlive the envelope. If
            // the void finds that such a debit already landed, the envelope
            // is paid after all.
            match cell.payments.resolve_debit(&key).await? {
                DebitResolution::Debited => activate(cell, envelope).await,
                DebitResolution::Voided => {
                    store::delete_unpaid(&cell.pool, &envelope.id, Unpaid::RefusedForBalance)
                        .await?;
                    Err(CellError::FailedPrecondition(format!(
                        "insufficient balance: {} cents needed, {balance_cents} available",
                        envelope.total_cents
                    )))
                }
            }
        }
        DebitOutcome::OrderPaid { key: paid_by } => {
            // The ledger wrote nothing for this envelope, and never will (its
            // order is paid): like a refusal for balance, nothing stays.
            store::delete_unpaid(&cell.pool, &envelope.id, Unpaid::OrderPaidElsewhere).await?;
            // The key names the debit that paid the order: a cell's Send.
            match paid_by.parse::<LedgerKey>() {
                Ok(LedgerKey::Send(paid)) => Err(CellError::AlreadyPaid {
                    envelope_id: paid.to_string(),
                }),
                _ => Err(CellError::Internal(format!(
                    "order {order} paid by unknown key {paid_by}"
                ))),
            }
        }
        DebitOutcome::Voided => {
            let client = cell.pool.get().await.map_err(crate::db::DbError::from)?;
            store::resolve_pending(&client, &envelope.id, Status::Cancelled).await?;
            Err(CellError::FailedPrecondition(format!(
                "envelope {} was cancelled: its payment did not go through",
                envelope.id
            )))
        }
    }
}

/// The sender paid for `envelope`: it goes `ACTIVE` (or is what recovery made
/// of it meanwhile).
async fn activate<P: Payments>(
    cell: &CellContext<P>,
    mut envelope: Envelope,
) -> Result<Envelope, CellError> {
    let client = cell.pool.get().await.map_err(crate::db::DbError::from)?;
    let started = std::time::Instant::now();
    let activated = store::resolve_pending(&client, &envelope.id, Status::Active)
        .instrument(tracing::info_span!(
            "db_transaction",
            kind = "send_activate"
        ))
        .await;
    cell.metrics
        .observe_transaction("send_activate", started.elapsed());
    match activated? {
        Some(version) => {
            envelope.status = Status::Active;
            envelope.version = version;
            cell.lanes.warm(envelope.clone());
            Ok(envelope)
        }
        // The recovery worker settled it meanwhile: report what it decided.
        None => store::load_envelope(&**client, &envelope.id)
            .await?
            .ok_or_else(|| CellError::Internal(format!("envelope {} vanished", envelope.id))),
    }
}
