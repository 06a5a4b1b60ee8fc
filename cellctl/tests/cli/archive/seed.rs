//! A back-dated day, written as the cell and its workers write it: the cell
//! mints IDs with today's date, so a cold day's envelopes are seeded here
//! (rows with the day's ID and `created_at`; ledger entries under their
//! `LedgerKey`s through `PgLedger`, as the cell's Send, settlement and
//! recovery write them). Routing and partitions follow the ID; reconcile
//! passing on the seed is the check that it is faithful. Also for a running
//! fleet: a settled envelope is never touched by the cell's workers.

use redcell_payments::{Debit, DebitOutcome, DebitResolution, LedgerKey, Payments, PgLedger};
use tokio_postgres::Client;

/// A north (region 1), epoch-0 ID minted on `yymmdd` with `suffix`: pick
/// the suffix of the cell whose order DB the seed goes to (`cellctl route`).
pub fn north_id(yymmdd: &str, sequence: u64, suffix: u16) -> String {
    format!("{yymmdd}100{sequence:010}{suffix:03}")
}

pub fn key(key: LedgerKey) -> String {
    key.to_string()
}

/// An envelope as the cell leaves it: status, shares opened (user, cents),
/// the refund of an expiry, whether its transfers are done.
pub struct Seed<'a> {
    pub id: String,
    pub sender: &'a str,
    /// 2 ACTIVE, 3 EXHAUSTED, 4 EXPIRED, 5 CANCELLED.
    pub status: i16,
    pub total: i64,
    pub count: i32,
    pub claims: &'a [(&'a str, i64)],
    pub refund: i64,
    /// Every transfer credited and done; else all pending (a stuck
    /// settlement, retried an hour later at the earliest).
    pub settled: bool,
}

/// Writes `seed`'s rows and its ledger entries (deposit, debit or void,
/// the credits of done transfers); returns what was deposited.
pub async fn write(orders: &Client, ledger: &PgLedger, seed: &Seed<'_>) -> i64 {
    let envelope: redcell_topology::EnvelopeId = seed.id.parse().unwrap();
    let day: i16 = seed.id[4..6].parse().unwrap();
    let created = format!(
        "20{}-{}-{} 10:00:00+00",
        &seed.id[0..2],
        &seed.id[2..4],
        &seed.id[4..6]
    );
    let claimed: i64 = seed.claims.iter().map(|(_, cents)| cents).sum();
    let opened = i32::try_from(seed.claims.len()).unwrap();
    let (remaining, left) = match seed.status {
        2 => (seed.total - claimed, seed.count - opened),
        _ => (0, 0),
    };
    let order = format!("send-{}", seed.id);
    orders
        .execute(
            "INSERT INTO envelopes (day, id, sender, kind, status, total_cents, count, \
               remaining_cents, remaining_count, greeting, recipients, seed, created_at, \
               expires_at, split_rule) \
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, 'hi', '{}', decode(repeat('ab', 32), 'hex'), \
               $9::text::timestamptz, $9::text::timestamptz + interval '1 day', 2)",
            &[
                &day,
                &seed.id,
                &seed.sender,
                &seed.status,
                &seed.total,
                &seed.count,
                &remaining,
                &left,
                &created,
            ],
        )
        .await
        .unwrap();
    orders
        .execute(
            "INSERT INTO send_requests (sender, idempotency_key, envelope_id, created_at) \
             VALUES ($1, $2, $3, $4::text::timestamptz)",
            &[&seed.sender, &order, &seed.id, &created],
        )
        .await
        .unwrap();
    let send = key(LedgerKey::Send(envelope));
    if seed.status == 5 {
        let resolution = ledger.resolve_debit(&send).await.unwrap();
        assert_eq!(resolution, DebitResolution::Voided);
        return 0;
    }
    let deposit = redcell_payments::deposit_key(seed.sender, &seed.id);
    ledger
        .deposit(&deposit, seed.sender, seed.total)
        .await
        .unwrap();
    let debited = ledger
        .debit(Debit {
            key: &send,
            order: &order,
            account: seed.sender,
            cents: seed.total,
        })
        .await
        .unwrap();
    assert_eq!(debited, DebitOutcome::Debited);
    let status: i16 = if seed.settled { 2 } else { 1 };
    let mut transfers = Vec::new();
    for (index, (user, cents)) in seed.claims.iter().enumerate() {
        let sequence = u32::try_from(index + 1).unwrap();
        orders
            .execute(
                "INSERT INTO claims (day, envelope_id, user_id, seq, amount_cents, opened_at) \
                 VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz)",
                &[
                    &day,
                    &seed.id,
                    user,
                    &i32::try_from(sequence).unwrap(),
                    cents,
                    &created,
                ],
            )
            .await
            .unwrap();
        let claim = key(LedgerKey::Claim { envelope, sequence });
        transfers.push((claim, 1_i16, *user, *cents));
    }
    if seed.refund > 0 {
        transfers.push((
            key(LedgerKey::Refund(envelope)),
            2,
            seed.sender,
            seed.refund,
        ));
    }
    for (key, kind, user, cents) in transfers {
        orders
            .execute(
                "INSERT INTO transfers (key, kind, envelope_id, user_id, amount_cents, status, \
                   next_attempt_at, created_at, done_at) \
                 VALUES ($1, $2, $3, $4, $5, $6::smallint, now() + interval '1 hour', \
                   $7::text::timestamptz, CASE WHEN $6::smallint = 2 THEN now() END)",
                &[&key, &kind, &seed.id, &user, &cents, &status, &created],
            )
            .await
            .unwrap();
        if seed.settled {
            ledger.credit(&key, user, cents).await.unwrap();
        }
    }
    seed.total
}
