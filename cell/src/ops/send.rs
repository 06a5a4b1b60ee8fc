//! Send: pay once, create an envelope (DESIGN.md §4, §5 money flow).
//!
//! 1. an existing (sender, idempotency key) returns its envelope: never a
//!    second envelope, never a second debit;
//! 2. the envelope is written `PENDING_PAYMENT` with its idempotency row;
//! 3. the sender is debited through [`Payments`] under the key `send:<id>`,
//!    for the merchant order named by the idempotency key;
//! 4. debited -> `ACTIVE`; refused for balance -> the pending rows are deleted
//!    (nothing stays written) and the caller gets `FAILED_PRECONDITION`; the
//!    order already paid for another envelope (the client's retry of a Send
//!    that another cell took) -> the pending rows are deleted and the caller
//!    gets `ALREADY_EXISTS` naming that envelope, which the router asks its
//!    own cell for; the payment system unreachable -> the envelope stays
//!    pending, the caller gets `UNAVAILABLE`, and a retry with the same key
//!    (or the recovery worker) finishes it.

use std::time::SystemTime;

use redcell_payments::{Debit, DebitOutcome, Payments};
use redcell_proto::v1 as pb;
use redcell_topology::Suffix;

use crate::{
    allocation,
    context::CellContext,
    envelope::{Envelope, Status, debit_key, envelope_of_debit_key},
    error::CellError,
    request::{self, SendCommand, UserId},
    store::{self, Inserted},
};

pub async fn send<P: Payments>(
    cell: &CellContext<P>,
    sender: UserId,
    suffix: Option<Suffix>,
    request: pb::SendRequest,
) -> Result<Envelope, CellError> {
    let command = SendCommand::parse(sender, request, &cell.limits)?;
    let known = store::find_send_request(
        &cell.pool,
        command.sender.as_str(),
        &command.idempotency_key,
    )
    .await
    .map_err(|error| before_writing(error.into()))?;
    if let Some(existing) = known {
        return replay(cell, &command, &existing).await;
    }
    let id = cell
        .minter
        .mint(&cell.topology, suffix)
        .await
        .map_err(before_writing)?;
    let now = SystemTime::now();
    let envelope = Envelope {
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
        version: 0,
        created_at: now,
        expires_at: now + cell.envelope_ttl,
    };
    // A failure here may even have committed the pending row, but no money
    // moved: the debit comes after. Recovery cancels such a row (its debit
    // key is voided), so a retry in another cell charges the sender once.
    let inserted = store::insert_pending(&cell.pool, &envelope, &command.idempotency_key)
        .await
        .map_err(|error| before_writing(error.into()))?;
    match inserted {
        Inserted::New => pay(cell, envelope, &command.idempotency_key).await,
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
    mut envelope: Envelope,
    order: &str,
) -> Result<Envelope, CellError> {
    let outcome = cell
        .payments
        .debit(Debit {
            key: &debit_key(&envelope.id),
            order,
            account: &envelope.sender,
            cents: envelope.total_cents,
        })
        .await?;
    let client = cell.pool.get().await.map_err(crate::db::DbError::from)?;
    match outcome {
        DebitOutcome::Debited => {
            match store::resolve_pending(&**client, &envelope.id, Status::Active).await? {
                Some(version) => {
                    envelope.status = Status::Active;
                    envelope.version = version;
                    cell.lanes.warm(envelope.clone());
                    Ok(envelope)
                }
                // The recovery worker settled it meanwhile: report what it decided.
                None => store::load_envelope(&**client, &envelope.id)
                    .await?
                    .ok_or_else(|| {
                        CellError::Internal(format!("envelope {} vanished", envelope.id))
                    }),
            }
        }
        DebitOutcome::InsufficientFunds { balance_cents } => {
            drop(client);
            store::delete_pending(&cell.pool, &envelope.id).await?;
            Err(CellError::FailedPrecondition(format!(
                "insufficient balance: {} cents needed, {balance_cents} available",
                envelope.total_cents
            )))
        }
        DebitOutcome::OrderPaid { key } => {
            // The ledger wrote nothing for this envelope, and never will (its
            // order is paid): like a refusal for balance, nothing stays.
            drop(client);
            store::delete_pending(&cell.pool, &envelope.id).await?;
            let paid = envelope_of_debit_key(&key).ok_or_else(|| {
                CellError::Internal(format!("order {order} paid by unknown key {key}"))
            })?;
            Err(CellError::AlreadyPaid {
                envelope_id: paid.to_owned(),
            })
        }
        DebitOutcome::Voided => {
            store::resolve_pending(&**client, &envelope.id, Status::Cancelled).await?;
            Err(CellError::FailedPrecondition(format!(
                "envelope {} was cancelled: its payment did not go through",
                envelope.id
            )))
        }
    }
}
