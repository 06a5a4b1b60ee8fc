//! What must hold after every scenario, judged against the load's log (what
//! the fleet acknowledged) once the load has stopped:
//!
//! - every acknowledged Send exists: Get through the router returns the
//!   envelope with the sender, total and count it was acknowledged with;
//! - every acknowledged Open is in its envelope's claims exactly once, with
//!   the amount (and sequence) it was acknowledged with; no user holds two
//!   claims of one envelope, and no claim exists that was never acknowledged;
//! - the ledger settles to what the log says — each user's balance is what
//!   was funded, less what they sent, plus what they opened — and so is
//!   conserved: balances + what envelopes still hold = what was funded.
//!
//! `cellctl reconcile` (the fleet's own invariants) is run by the scenario.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use redcell_payments::PgLedger;
use redcell_proto::v1 as pb;

use super::load::{Log, Router};

/// How long settlement (the outbox's credits) may take to reach the ledger.
const SETTLEMENT_WAIT: Duration = Duration::from_secs(90);
/// Users the Gets are spread over (the router limits calls per user).
const AUDITORS: usize = 16;

/// What the checks saw, for the scenario's report.
#[derive(Debug)]
pub struct Audit {
    pub envelopes: usize,
    pub claims: usize,
    pub funded_cents: i64,
    pub balances_cents: i64,
    pub held_cents: i64,
    pub settled_after: Duration,
}

/// An envelope as Get shows it: the envelope and every page of its claims.
struct Shown {
    envelope: pb::Envelope,
    claims: Vec<pb::Claim>,
}

/// Every page of `id`, retried on the codes the load retries.
async fn get_all(client: &mut super::load::Client, id: &str) -> Result<Shown, String> {
    let mut claims = Vec::new();
    let mut page_token = String::new();
    let deadline = Instant::now() + super::load::RETRY_FOR;
    loop {
        let request = pb::GetRequest {
            envelope_id: id.to_owned(),
            page_token: page_token.clone(),
            page_size: 500,
        };
        match client.get(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                claims.extend(reply.claims);
                if reply.next_page_token.is_empty() {
                    let envelope = reply
                        .envelope
                        .ok_or_else(|| format!("Get {id}: no envelope in the answer"))?;
                    return Ok(Shown { envelope, claims });
                }
                page_token = reply.next_page_token;
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => return Err(format!("Get {id}: {status}")),
        }
    }
}

/// The log against what Get shows through the router.
pub struct Findings {
    /// Every disagreement, in words.
    pub problems: Vec<String>,
    /// Envelopes checked and their claims.
    pub envelopes: usize,
    pub claims: usize,
    /// What the envelopes still hold: totals less their claims.
    pub held_cents: i64,
}

/// Every acknowledged Send and Open of `log` against the envelopes and
/// claims the fleet shows; the unresolved operations count as problems too.
pub async fn against_the_fleet(router: &Router, log: &Log) -> Findings {
    let mut problems: Vec<String> = log.unresolved.clone();

    // Every acknowledged Send, by Get through the router.
    let mut clients: Vec<_> = (0..AUDITORS)
        .map(|n| router.client(&format!("live-audit{n}")))
        .collect();
    let mut shown: HashMap<String, Shown> = HashMap::new();
    for (index, sent) in log.sends.iter().enumerate() {
        if shown.contains_key(&sent.id) {
            problems.push(format!("envelope {} acknowledged to two Sends", sent.id));
            continue;
        }
        match get_all(&mut clients[index % AUDITORS], &sent.id).await {
            Ok(got) => {
                let envelope = &got.envelope;
                if (
                    envelope.sender.as_str(),
                    envelope.total_cents,
                    envelope.count,
                ) != (sent.sender.as_str(), sent.total_cents, sent.count)
                {
                    problems.push(format!(
                        "envelope {}: acknowledged as {} {} in {} shares, Get shows {} {} in {}",
                        sent.id,
                        sent.sender,
                        sent.total_cents,
                        sent.count,
                        envelope.sender,
                        envelope.total_cents,
                        envelope.count
                    ));
                }
                shown.insert(sent.id.clone(), got);
            }
            Err(problem) => problems.push(format!("acknowledged Send lost: {problem}")),
        }
    }

    // Claims against acknowledged Opens, both ways.
    let acked = acked_opens(log);
    let mut claims = 0;
    let mut held = 0;
    for (id, got) in &shown {
        let mut seen: HashMap<&str, &pb::Claim> = HashMap::new();
        for claim in &got.claims {
            claims += 1;
            if seen.insert(claim.user.as_str(), claim).is_some() {
                problems.push(format!("envelope {id}: {} holds two claims", claim.user));
            }
            if !acked.contains_key(&(id.as_str(), claim.user.as_str())) {
                problems.push(format!(
                    "envelope {id}: claim of {} ({} cents) was never acknowledged",
                    claim.user, claim.amount_cents
                ));
            }
        }
        let opened: i64 = got.claims.iter().map(|claim| claim.amount_cents).sum();
        held += got.envelope.total_cents - opened;
        if opened > got.envelope.total_cents || got.claims.len() > got.envelope.count as usize {
            problems.push(format!(
                "envelope {id}: {} claims of {opened} cents exceed its {} shares of {}",
                got.claims.len(),
                got.envelope.count,
                got.envelope.total_cents
            ));
        }
    }
    for ((id, user), opens) in &acked {
        let Some(got) = shown.get(*id) else {
            problems.push(format!(
                "Open of {id} by {user}: no acknowledged Send of it"
            ));
            continue;
        };
        let found: Vec<&pb::Claim> = got.claims.iter().filter(|c| c.user == *user).collect();
        match found.as_slice() {
            [claim] => {
                for opened in opens {
                    if (opened.amount_cents, opened.sequence)
                        != (claim.amount_cents, claim.sequence)
                    {
                        problems.push(format!(
                            "envelope {id}: {user} was acknowledged {} cents (share {}), the claim says {} (share {})",
                            opened.amount_cents,
                            opened.sequence,
                            claim.amount_cents,
                            claim.sequence
                        ));
                    }
                }
            }
            [] => problems.push(format!(
                "envelope {id}: acknowledged Open by {user} ({} cents) is not among its claims",
                opens[0].amount_cents
            )),
            _ => {} // two claims of one user: reported above
        }
    }

    Findings {
        problems,
        envelopes: shown.len(),
        claims,
        held_cents: held,
    }
}

/// The acknowledged Opens by (envelope, user).
fn acked_opens(log: &Log) -> HashMap<(&str, &str), Vec<&super::load::Opened>> {
    let mut acked: HashMap<(&str, &str), Vec<&super::load::Opened>> = HashMap::new();
    for opened in &log.opens {
        acked
            .entry((opened.envelope.as_str(), opened.user.as_str()))
            .or_default()
            .push(opened);
    }
    acked
}

/// Checks the whole log against the fleet ([`against_the_fleet`]) and the
/// ledger; panics listing every problem found.
pub async fn verify(
    router: &Router,
    log: &Log,
    funded: &BTreeMap<String, i64>,
    ledger: &PgLedger,
) -> Audit {
    let Findings {
        mut problems,
        envelopes,
        claims,
        held_cents: held,
    } = against_the_fleet(router, log).await;
    let acked = acked_opens(log);

    // The ledger: each user's balance as the log says, once settled.
    let mut expected: BTreeMap<String, i64> = funded.clone();
    for sent in &log.sends {
        *expected.entry(sent.sender.clone()).or_default() -= sent.total_cents;
    }
    for ((_, user), opens) in &acked {
        *expected.entry((*user).to_owned()).or_default() += opens[0].amount_cents;
    }
    let started = Instant::now();
    let mut balances = BTreeMap::new();
    loop {
        balances.clear();
        for user in expected.keys() {
            match ledger.balance(user).await {
                Ok(cents) => balances.insert(user.clone(), cents),
                Err(error) => panic!("ledger balance of {user}: {error}"),
            };
        }
        if balances == expected || started.elapsed() > SETTLEMENT_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled_after = started.elapsed();
    for (user, want) in &expected {
        let have = balances.get(user).copied().unwrap_or_default();
        if have != *want {
            problems.push(format!(
                "ledger: {user} has {have} cents, the log says {want} (after {settled_after:?})"
            ));
        }
    }
    let funded_cents: i64 = funded.values().sum();
    let balances_cents: i64 = balances.values().sum();
    if balances_cents + held != funded_cents {
        problems.push(format!(
            "conservation: balances {balances_cents} + held {held} != funded {funded_cents}"
        ));
    }

    assert!(
        problems.is_empty(),
        "{} problems (first 30):\n{}",
        problems.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Audit {
        envelopes,
        claims,
        funded_cents,
        balances_cents,
        held_cents: held,
        settled_after,
    }
}
