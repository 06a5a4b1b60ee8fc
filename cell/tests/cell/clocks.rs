//! Clocks (issue 16 item 5): a logic server whose clock is ten minutes off
//! its order DB's (`REDCELL_CLOCK_SKEW_SECS`, failpoints builds only) makes
//! every money decision by the DB's clock: no early refund, no share after a
//! refund, no fresh Send resolved (cancelled, when its debit has not landed)
//! before its grace, and no stuck one left waiting. The servers are the real
//! `cell` binary with its clock moved; the DB is the shared PostgreSQL.

use redcell_proto::v1::{self as pb};

use crate::{failpoints::Crash, process::send_via, stack};

const AHEAD: &str = "600";
const BEHIND: &str = "-600";

/// A server ten minutes fast with a five-minute TTL would, by its own clock,
/// see every fresh envelope as expired. The DB's clock decides: the expiry
/// worker refunds only an envelope past its time by the DB's clock, and a
/// fresh envelope opens (its lane reads the DB's time, not the server's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_clock_neither_refunds_early_nor_refuses_a_fresh_envelope() {
    let mut cell = Crash::start_with(
        &[("REDCELL_CLOCK_SKEW_SECS", AHEAD)],
        &[("--envelope-ttl-secs", "300")],
    )
    .await;
    let channel = cell.channel.clone();
    let fresh = send_via(&mut cell.stack, &channel, "alice", 10_000, 5).await;
    let due = send_via(&mut cell.stack, &channel, "dave", 4_000, 5).await;
    // `due` is past its time by the DB's clock: the worker, which does run
    // on this server, expires it; once it did, it has looked at `fresh` too.
    let client = cell.stack.orders.connect().await.unwrap();
    client
        .execute(
            "UPDATE envelopes SET expires_at = now() - interval '1 second' WHERE id = $1",
            &[&due],
        )
        .await
        .unwrap();
    cell.wait_status(&due, 4).await;
    assert_eq!(
        cell.status(&fresh).await,
        2,
        "the fresh envelope stays ACTIVE"
    );
    let refunds = cell
        .value(
            "SELECT count(*) FROM transfers WHERE envelope_id = $1 AND kind = 2",
            &fresh,
        )
        .await;
    assert_eq!(refunds, 0, "no early refund");

    let share = stack::open_retrying(&mut cell.client("bob"), &fresh).await;
    assert_eq!(
        share.status(),
        pb::ShareStatus::Available,
        "a fresh envelope opens on a fast server: {share:?}"
    );
    let late = stack::open_retrying(&mut cell.client("bob"), &due).await;
    assert_eq!(late.status(), pb::ShareStatus::Expired);
    cell.stack.drain_settlement().await;
    let report = cell.stack.check_money().await;
    assert_eq!(report.claims, 1);
    assert_eq!(report.held_cents, 10_000 - share.amount_cents);
    assert_eq!(cell.stack.ledger.balance("dave").await.unwrap(), 4_000);
    cell.assert_alive();
}

/// A server ten minutes slow believes an expired envelope is still open: the
/// DB expires and refunds it on time, and an Open after that takes nothing
/// (the commit's guard and the reload say EXPIRED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_clock_takes_no_share_after_the_refund() {
    let mut cell = Crash::start_with(
        &[("REDCELL_CLOCK_SKEW_SECS", BEHIND)],
        &[("--envelope-ttl-secs", "2")],
    )
    .await;
    let channel = cell.channel.clone();
    let id = send_via(&mut cell.stack, &channel, "alice", 10_000, 5).await;
    let share = stack::open_retrying(&mut cell.client("bob"), &id).await;
    assert_eq!(share.status(), pb::ShareStatus::Available);
    cell.wait_status(&id, 4).await;
    let refunded = cell
        .value(
            "SELECT amount_cents FROM transfers WHERE envelope_id = $1 AND kind = 2",
            &id,
        )
        .await;
    assert_eq!(refunded, 10_000 - share.amount_cents);
    let late = stack::open_retrying(&mut cell.client("carol"), &id).await;
    assert_eq!(late.status(), pb::ShareStatus::Expired, "{late:?}");
    assert_eq!(
        cell.stack.claims(&id).await.len(),
        1,
        "no share after the refund"
    );
    cell.stack.drain_settlement().await;
    let report = cell.stack.check_money().await;
    assert_eq!(report.held_cents, 0);
    assert_eq!(cell.stack.ledger.balance("alice").await.unwrap(), refunded);
    assert_eq!(cell.stack.ledger.balance("carol").await.unwrap(), 0);
    cell.assert_alive();
}

/// Recovery's grace (five minutes here) is measured by the DB's clock on a
/// server ten minutes fast and on one ten minutes slow: a Send pending for a
/// moment is left alone (a fast clock would call it ten minutes old, and
/// cancel it if its debit had not landed yet), and one pending past its
/// grace by the DB's clock is resolved (a slow clock would still wait).
///
/// The two Sends are real and debited; the test puts them back to
/// PENDING_PAYMENT with `created_at` set by the DB, as a Send looks whose
/// debit answer has not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_counts_its_grace_by_the_db_clock() {
    for skew in [AHEAD, BEHIND] {
        let mut cell = Crash::start_with(
            &[("REDCELL_CLOCK_SKEW_SECS", skew)],
            &[("--recovery-grace-secs", "300")],
        )
        .await;
        let channel = cell.channel.clone();
        let fresh = send_via(&mut cell.stack, &channel, "alice", 10_000, 5).await;
        let stuck = send_via(&mut cell.stack, &channel, "dave", 4_000, 5).await;
        let client = cell.stack.orders.connect().await.unwrap();
        for (id, age) in [(&fresh, 0.0_f64), (&stuck, 400.0)] {
            client
                .execute(
                    "UPDATE envelopes SET status = 1, created_at = now() - make_interval(secs => $2) \
                     WHERE id = $1",
                    &[id, &age],
                )
                .await
                .unwrap();
        }
        // Recovery resolves the stuck one (its debit landed: ACTIVE); by then
        // it has seen the fresh one and left it pending.
        cell.wait_status(&stuck, 2).await;
        assert_eq!(
            cell.status(&fresh).await,
            1,
            "clock {skew} s: a Send pending for a moment is left to finish"
        );
        let report = cell.stack.check_money().await;
        assert_eq!(report.pending_payments, 1, "clock {skew} s");
        assert_eq!(cell.stack.ledger.balance("alice").await.unwrap(), 0);
        cell.assert_alive();
    }
}
