//! `cellctl demo`: a short story against a running `up`, told through the
//! router as clients would tell it, then checked.
//!
//! 1. Funds each sender with exactly what it will send (`fund`'s code path).
//! 2. Sends one envelope of every kind, in both regions: LUCKY (random
//!    shares), EQUAL, EXCLUSIVE (one named recipient), and a LUCKY one with
//!    more shares than there are guests, so that part of it is left to expire.
//! 3. Every guest opens every envelope at once (one task per guest and
//!    envelope, each with its own bearer token): shares go to the first
//!    comers, the rest hear EXHAUSTED, strangers to the EXCLUSIVE envelope
//!    NOT_ELIGIBLE.
//! 4. Waits (bounded) for envelopes left open to expire — when they expire
//!    soon, i.e. `up --demo-expiry SECS` — and for the ledger to show every
//!    share credited and every refund paid back: each account must reach the
//!    balance the claims and refunds say.
//! 5. Prints who sent what, who got how much, the refunds, and the reconcile
//!    of every cell against the ledger (`redcell_cell::reconcile::check_fleet`);
//!    any discrepancy fails the command (exit 1).
//!
//! Each run uses fresh idempotency keys (a run tag from the clock), so the
//! demo can be run again on the same fleet; balances accumulate.

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use redcell_payments::PgLedger;
use redcell_proto::token::{BearerToken, mint_hs256};
use redcell_proto::v1::{self as pb, red_envelope_client::RedEnvelopeClient};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use super::{
    fund::{self, TopUp, money},
    state_dir::StateDir,
};
use crate::{CommandError, load};

/// Guests who open envelopes (besides the EXCLUSIVE recipient).
const GUESTS: usize = 12;
/// Envelopes whose expiry is further away than this are not waited for.
const EXPIRY_WAIT_LIMIT: Duration = Duration::from_secs(120);
/// How long settlement (credits, refunds) may take to reach the ledger.
const SETTLEMENT_WAIT: Duration = Duration::from_secs(60);

/// One envelope of the story.
struct Plot {
    sender: &'static str,
    kind: pb::EnvelopeKind,
    total_cents: i64,
    count: u32,
    recipient: Option<&'static str>,
    /// Index into the topology's regions.
    region: usize,
    greeting: &'static str,
}

const EXCLUSIVE_RECIPIENT: &str = "dave";

/// The topology's first and second region (the first again when it has one).
const FIRST: usize = 0;
const SECOND: usize = 1;

fn plots() -> Vec<Plot> {
    vec![
        Plot {
            sender: "alice",
            kind: pb::EnvelopeKind::Lucky,
            total_cents: 8_888,
            count: 8,
            recipient: None,
            region: FIRST,
            greeting: "恭喜发财",
        },
        Plot {
            sender: "bob",
            kind: pb::EnvelopeKind::Equal,
            total_cents: 6_000,
            count: 6,
            recipient: None,
            region: SECOND,
            greeting: "equal shares for all",
        },
        Plot {
            sender: "carol",
            kind: pb::EnvelopeKind::Exclusive,
            total_cents: 5_200,
            count: 1,
            recipient: Some(EXCLUSIVE_RECIPIENT),
            region: FIRST,
            greeting: "just for dave",
        },
        Plot {
            sender: "erin",
            kind: pb::EnvelopeKind::Lucky,
            total_cents: 20_000,
            count: 40,
            recipient: None,
            region: SECOND,
            greeting: "more shares than guests",
        },
    ]
}

type RouterClient = RedEnvelopeClient<InterceptedService<Channel, BearerToken>>;

/// `cellctl demo --state-dir D`.
pub fn run(state_dir: &Path, out: &mut impl Write) -> Result<(), CommandError> {
    let state = StateDir::at(state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| CommandError::Input(format!("cannot start a runtime: {error}")))?;
    runtime.block_on(run_async(&state, out))
}

/// The demo against the fleet recorded in `state`.
pub async fn run_async(state: &StateDir, out: &mut impl Write) -> Result<(), CommandError> {
    let routers = state.routers()?;
    let router = routers.first().cloned().unwrap_or_default();
    let key = std::fs::read(state.hs256_key_file()).map_err(|error| {
        CommandError::Input(format!(
            "cannot read {}: {error}",
            state.hs256_key_file().display()
        ))
    })?;
    let ledger_dsn = state.read_record(&state.ledger_dsn_file())?;
    let topology_path = state.read_record(&state.topology_file())?;
    let topology = load::topology(Path::new(&topology_path))?;
    let ledger = PgLedger::connect(&ledger_dsn, 4)
        .map_err(|error| CommandError::Input(format!("ledger: {error}")))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{router}"))
        .map_err(|error| CommandError::Input(format!("router address {router}: {error}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|error| {
            CommandError::Input(format!("cannot reach the router at {router}: {error}"))
        })?;
    let client = |user: &str| -> Result<RouterClient, CommandError> {
        let token = mint_hs256(&key, user, 3600)
            .map_err(|error| CommandError::Input(format!("cannot mint a token: {error}")))?;
        let bearer = BearerToken::new(&token)
            .ok_or_else(|| CommandError::Input("the token is not valid metadata".to_owned()))?;
        Ok(RedEnvelopeClient::with_interceptor(channel.clone(), bearer))
    };
    let tag = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let regions = topology.regions().to_vec();
    let plots = plots();
    let mut guests: Vec<String> = (1..=GUESTS).map(|n| format!("guest{n:02}")).collect();
    guests.push(EXCLUSIVE_RECIPIENT.to_owned());

    writeln!(out, "demo through router {router}")?;
    let mut everyone: Vec<String> = plots.iter().map(|p| p.sender.to_owned()).collect();
    everyone.extend(guests.iter().cloned());
    let mut before = BTreeMap::new();
    for user in &everyone {
        before.insert(user.clone(), balance(&ledger, user).await?);
    }

    // 1 + 2: fund and send.
    let mut sent = Vec::new();
    for (index, plot) in plots.iter().enumerate() {
        let top_up = TopUp {
            user: plot.sender.to_owned(),
            cents: plot.total_cents,
        };
        fund::deposit(&ledger, &top_up).await?;
        let region = regions
            .get(plot.region)
            .or(regions.first())
            .cloned()
            .unwrap_or_default();
        let mut request = tonic::Request::new(pb::SendRequest {
            total_cents: plot.total_cents,
            count: plot.count,
            kind: plot.kind.into(),
            greeting: plot.greeting.to_owned(),
            recipients: plot.recipient.iter().map(|r| (*r).to_owned()).collect(),
            idempotency_key: format!("demo-{tag}-{index}"),
        });
        if let Ok(value) = region.parse() {
            request
                .metadata_mut()
                .insert(redcell_proto::internal::REGION_METADATA, value);
        }
        let envelope = client(plot.sender)?
            .send(request)
            .await
            .map_err(|status| {
                CommandError::Input(format!("{} could not send: {status}", plot.sender))
            })?
            .into_inner()
            .envelope
            .ok_or_else(|| CommandError::Input("a Send answered no envelope".to_owned()))?;
        let cell = envelope
            .id
            .parse::<redcell_topology::EnvelopeId>()
            .ok()
            .and_then(|id| topology.route(&id).ok().map(|cell| cell.name.clone()))
            .unwrap_or_else(|| "?".to_owned());
        writeln!(
            out,
            "  {:<6} funded {:>8}, sent {:<9} {:>8} in {:>2} shares ({region}, cell {cell}): {}",
            plot.sender,
            money(plot.total_cents),
            kind_name(plot.kind),
            money(plot.total_cents),
            plot.count,
            envelope.id
        )?;
        sent.push(envelope);
    }

    // 3: every guest opens every envelope, all at once.
    let mut opens = tokio::task::JoinSet::new();
    for envelope in &sent {
        for guest in &guests {
            let mut guest_client = client(guest)?;
            let request = pb::OpenRequest {
                envelope_id: envelope.id.clone(),
            };
            opens.spawn(async move { guest_client.open(request).await.map(|r| r.into_inner()) });
        }
    }
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    while let Some(joined) = opens.join_next().await {
        match joined {
            Ok(Ok(opened)) => *outcomes.entry(share_name(opened.status())).or_default() += 1,
            Ok(Err(status)) => failed.push(status.to_string()),
            Err(error) => failed.push(error.to_string()),
        }
    }
    let said: Vec<String> = outcomes
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    writeln!(
        out,
        "  {} users opened {} envelopes at once: {}",
        guests.len(),
        sent.len(),
        said.join(", ")
    )?;
    if !failed.is_empty() {
        return Err(CommandError::Input(format!(
            "{} opens failed, e.g. {}",
            failed.len(),
            failed[0]
        )));
    }

    // 4: expiry, then settlement.
    let mut finals = Vec::new();
    for envelope in &sent {
        finals.push(settle_envelope(&client(&envelope.sender)?, envelope).await?);
    }
    let mut expected = before.clone();
    for (plot, (envelope, claims)) in plots.iter().zip(&finals) {
        // funded total, debited total: the sender nets the refund only.
        *expected.entry(plot.sender.to_owned()).or_default() += refund(envelope, claims);
        for claim in claims {
            *expected.entry(claim.user.clone()).or_default() += claim.amount_cents;
        }
    }
    let unsettled = wait_for_balances(&ledger, &expected).await?;

    // 5: the summary and the reconcile.
    writeln!(out, "envelopes:")?;
    for (plot, (envelope, claims)) in plots.iter().zip(&finals) {
        let opened: i64 = claims.iter().map(|claim| claim.amount_cents).sum();
        let fate = match envelope.status() {
            pb::EnvelopeStatus::Exhausted => "all opened".to_owned(),
            pb::EnvelopeStatus::Expired => {
                format!(
                    "expired, {} refunded to {}",
                    money(refund(envelope, claims)),
                    plot.sender
                )
            }
            pb::EnvelopeStatus::Active => format!(
                "still open until {} ({} left; run `up --demo-expiry SECS` to see refunds)",
                envelope
                    .expires_at
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), |at| at.seconds.to_string() + " (unix s)"),
                money(envelope.remaining_cents)
            ),
            other => format!("{other:?}"),
        };
        writeln!(
            out,
            "  {} {:<9} from {:<6} {:>8}: {} of {} shares opened ({}); {fate}",
            envelope.id,
            kind_name(plot.kind),
            plot.sender,
            money(plot.total_cents),
            claims.len(),
            plot.count,
            money(opened)
        )?;
        let mut takers: Vec<String> = claims
            .iter()
            .map(|claim| format!("{} {}", claim.user, money(claim.amount_cents)))
            .collect();
        takers.sort();
        if !takers.is_empty() {
            writeln!(out, "      {}", takers.join(", "))?;
        }
    }
    writeln!(out, "balances (change this run):")?;
    for user in &everyone {
        let now = balance(&ledger, user).await?;
        let change = now - before.get(user).copied().unwrap_or(0);
        if change != 0 || plots.iter().any(|plot| plot.sender == user.as_str()) {
            writeln!(
                out,
                "  {user:<8} {:>10}  ({}{})",
                money(now),
                if change >= 0 { "+" } else { "" },
                money(change)
            )?;
        }
    }
    if !unsettled.is_empty() {
        writeln!(
            out,
            "  not settled within {SETTLEMENT_WAIT:?}: {}",
            unsettled.join(", ")
        )?;
    }
    let report = reconcile(&topology, &ledger).await?;
    writeln!(
        out,
        "reconcile: {} cells, {} discrepancies; held in cells {}, ledger balances {}, deposited {}",
        report.cells.len(),
        report.discrepancies.len(),
        money(report.held_cents),
        money(report.ledger_balance_cents),
        money(report.deposited_cents)
    )?;
    for discrepancy in &report.discrepancies {
        writeln!(out, "  {discrepancy}")?;
    }
    if !report.discrepancies.is_empty() {
        return Err(CommandError::Input(format!(
            "reconcile found {} discrepancies",
            report.discrepancies.len()
        )));
    }
    if !unsettled.is_empty() {
        return Err(CommandError::Input(format!(
            "settlement did not reach the ledger within {SETTLEMENT_WAIT:?}"
        )));
    }
    Ok(())
}

/// The envelope once it is final (exhausted or expired) if that happens
/// soon, else as it is now; with every claim.
async fn settle_envelope(
    client: &RouterClient,
    envelope: &pb::Envelope,
) -> Result<(pb::Envelope, Vec<pb::Claim>), CommandError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let expires = envelope
        .expires_at
        .as_ref()
        .and_then(|at| u64::try_from(at.seconds).ok())
        .unwrap_or(u64::MAX);
    let wait = Duration::from_secs(expires.saturating_sub(now));
    let deadline = (wait <= EXPIRY_WAIT_LIMIT).then(|| Instant::now() + wait + SETTLEMENT_WAIT);
    loop {
        let (current, claims) = get(client, &envelope.id).await?;
        let open = current.status() == pb::EnvelopeStatus::Active
            || current.status() == pb::EnvelopeStatus::PendingPayment;
        if !open || deadline.is_none_or(|deadline| Instant::now() >= deadline) {
            return Ok((current, claims));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What goes back to the sender: an expired envelope's unopened cents (its
/// `remaining_cents` reads 0 once the refund is recorded).
fn refund(envelope: &pb::Envelope, claims: &[pb::Claim]) -> i64 {
    if envelope.status() != pb::EnvelopeStatus::Expired {
        return 0;
    }
    let opened: i64 = claims.iter().map(|claim| claim.amount_cents).sum();
    envelope.total_cents - opened
}

async fn get(
    client: &RouterClient,
    id: &str,
) -> Result<(pb::Envelope, Vec<pb::Claim>), CommandError> {
    let mut client = client.clone();
    let mut claims = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .get(pb::GetRequest {
                envelope_id: id.to_owned(),
                page_token: page_token.clone(),
                page_size: 100,
            })
            .await
            .map_err(|status| CommandError::Input(format!("Get {id}: {status}")))?
            .into_inner();
        claims.extend(page.claims);
        if page.next_page_token.is_empty() {
            let envelope = page
                .envelope
                .ok_or_else(|| CommandError::Input(format!("Get {id} answered no envelope")))?;
            return Ok((envelope, claims));
        }
        page_token = page.next_page_token;
    }
}

/// Waits until every account holds what the claims and refunds say; the
/// accounts that still do not when the wait ends.
async fn wait_for_balances(
    ledger: &PgLedger,
    expected: &BTreeMap<String, i64>,
) -> Result<Vec<String>, CommandError> {
    let deadline = Instant::now() + SETTLEMENT_WAIT;
    loop {
        let mut behind = Vec::new();
        for (user, want) in expected {
            let have = balance(ledger, user).await?;
            if have != *want {
                behind.push(format!("{user} has {} of {}", money(have), money(*want)));
            }
        }
        if behind.is_empty() || Instant::now() >= deadline {
            return Ok(behind);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn balance(ledger: &PgLedger, user: &str) -> Result<i64, CommandError> {
    ledger
        .balance(user)
        .await
        .map_err(|error| CommandError::Input(format!("ledger: balance of {user}: {error}")))
}

/// Every cell's order DB against the ledger, in one fleet check.
async fn reconcile(
    topology: &redcell_topology::Topology,
    ledger: &PgLedger,
) -> Result<redcell_cell::reconcile::FleetReport, CommandError> {
    super::reconcile::check_fleet(topology, ledger).await
}

fn kind_name(kind: pb::EnvelopeKind) -> &'static str {
    match kind {
        pb::EnvelopeKind::Lucky => "LUCKY",
        pb::EnvelopeKind::Equal => "EQUAL",
        pb::EnvelopeKind::Exclusive => "EXCLUSIVE",
        pb::EnvelopeKind::Unspecified => "?",
    }
}

fn share_name(status: pb::ShareStatus) -> &'static str {
    match status {
        pb::ShareStatus::Available => "shares taken",
        pb::ShareStatus::Exhausted => "too late (EXHAUSTED)",
        pb::ShareStatus::Expired => "EXPIRED",
        pb::ShareStatus::AlreadyOpened => "ALREADY_OPENED",
        pb::ShareStatus::NotEligible => "not the recipient (NOT_ELIGIBLE)",
        pb::ShareStatus::Unspecified => "UNSPECIFIED",
    }
}
