//! The storage contracts the cell shares with the ledger and the router
//! (issue 9 item 5): one SQLSTATE table (`redcell_payments::sqlstate`), the
//! history reads going through the store's one column list and decoders,
//! and the ledger keys of `redcell_payments::keys` on the rows the cell
//! writes.

use redcell_cell::{db::DbError, error::CellError};
use redcell_payments::{LedgerKey, PaymentsError, sqlstate::SqlFailure};
use redcell_proto::v1::{self as pb, cell_internal_client::CellInternalClient};
use tonic::{Code, Status};

use crate::stack::{Stack, StackBuilder};

/// What a client of the cell is answered for an order-DB failure.
fn answer(error: tokio_postgres::Error) -> Code {
    Status::from(CellError::from(DbError::from(error))).code()
}

/// A statement the order DB cancels for `statement_timeout` (57014) or
/// `lock_timeout` (55P03) is retryable, UNAVAILABLE, like the same failure
/// of the ledger; the cell's own table made both INTERNAL (not retried, and
/// logged as a bug). The errors are real ones from PostgreSQL; nothing here
/// depends on how long anything takes (a 1 ms timeout against a 60 s sleep
/// and a lock held until the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_db_timeout_is_unavailable_as_it_is_for_the_ledger() {
    let (orders, _ledger) = crate::stack::databases().await;
    let client = orders.connect().await.unwrap();
    let sleep = "SET statement_timeout = '1ms'; SELECT pg_sleep(60)";

    let timed_out = client.batch_execute(sleep).await.unwrap_err();
    assert_eq!(SqlFailure::of(&timed_out), SqlFailure::TimedOut);
    assert_eq!(answer(timed_out), Code::Unavailable);
    let ledger_side = PaymentsError::from(client.batch_execute(sleep).await.unwrap_err());
    assert!(ledger_side.is_retryable(), "{ledger_side:?}");
    client
        .batch_execute("RESET statement_timeout")
        .await
        .unwrap();

    let holder = orders.connect().await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE envelopes IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked = client
        .batch_execute("SET lock_timeout = '1ms'; SELECT count(*) FROM envelopes")
        .await
        .unwrap_err();
    assert_eq!(SqlFailure::of(&locked), SqlFailure::TimedOut);
    assert_eq!(answer(locked), Code::Unavailable);
    holder.batch_execute("ROLLBACK").await.unwrap();

    // What stays a bug is still INTERNAL.
    let typo = client
        .batch_execute("SELECT no_such_column FROM envelopes")
        .await
        .unwrap_err();
    assert_eq!(answer(typo), Code::Internal);
}

/// CellHistory reads through the store: a Send shows in its sender's SENT
/// slice as the envelope, an Open in its receiver's RECEIVED slice with the
/// share; a slice over 500 is refused naming `limit`; the share's transfer
/// carries its `LedgerKey::Claim` key, and the money reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_history_serves_sends_and_opens_from_the_store() {
    let mut stack = StackBuilder::default().start().await;
    let envelope = stack.send("alice", pb::EnvelopeKind::Equal, 900, 3).await;
    let share = stack
        .client(0, "bob")
        .open(pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let channel = Stack::channel_to(stack.address(0));
    let mut client = CellInternalClient::with_interceptor(channel, crate::stack::as_user("router"));
    let history = |user: &str, direction: pb::HistoryDirection| pb::CellHistoryRequest {
        user: user.into(),
        direction: direction.into(),
        before: None,
        before_id: String::new(),
        limit: 0,
    };
    let sent = client
        .cell_history(history("alice", pb::HistoryDirection::Sent))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.entries.len(), 1);
    let entry = &sent.entries[0];
    let stored = entry.envelope.as_ref().unwrap();
    assert_eq!(
        (stored.id.as_str(), stored.sender.as_str()),
        (envelope.id.as_str(), "alice")
    );
    assert_eq!(stored.total_cents, 900);
    assert_eq!(entry.claim, None);
    assert_eq!(entry.at, stored.created_at);

    let received = client
        .cell_history(history("bob", pb::HistoryDirection::Received))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(received.entries.len(), 1);
    let entry = &received.entries[0];
    assert_eq!(entry.envelope.as_ref().unwrap().id, envelope.id);
    let claim = entry.claim.as_ref().unwrap();
    assert_eq!((claim.user.as_str(), claim.sequence), ("bob", 1));
    assert_eq!(claim.amount_cents, 300);
    assert_eq!(claim.amount_cents, share.amount_cents);
    assert_eq!(entry.at, claim.opened_at);
    let nothing = client
        .cell_history(history("alice", pb::HistoryDirection::Received))
        .await
        .unwrap()
        .into_inner();
    assert!(nothing.entries.is_empty());
    // The slice size follows the wire's one page-size rule.
    let too_many = pb::CellHistoryRequest {
        limit: 501,
        ..history("bob", pb::HistoryDirection::Received)
    };
    let refused = client.cell_history(too_many).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "limit: must be at most 500, got 501");

    let orders = stack.orders.connect().await.unwrap();
    let key: String = orders
        .query_one(
            "SELECT key FROM transfers WHERE envelope_id = $1 AND kind = 1",
            &[&envelope.id],
        )
        .await
        .unwrap()
        .get(0);
    let expected = LedgerKey::Claim {
        envelope: envelope.id.parse().unwrap(),
        sequence: 1,
    };
    assert_eq!(key.parse::<LedgerKey>().unwrap(), expected);

    stack.drain_settlement().await;
    stack.check_money().await;
}
