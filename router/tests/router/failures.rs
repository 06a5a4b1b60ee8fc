//! Failures the router must absorb (DESIGN.md §3, §6): a cell marked failed
//! by the operator, a cell's order DB crashing under load, a logic server
//! dying, a region drained to another, and an invalid topology file.
//!
//! Every wait is a bounded poll of an observable condition; nothing asserts on
//! wall-clock time.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use redcell_proto::v1 as pb;
use redcell_router::route;
use redcell_topology::Topology;
use tonic::Code;

use crate::stack::{Builder, Client, HealthLog, POLL, POLL_ATTEMPTS, Stack, lucky, topology_text};

/// The region digit (R) of an envelope ID.
fn region_digit(id: &str) -> char {
    id.chars().nth(6).unwrap()
}

/// Polls `condition` until it holds; panics with `what` if it never does.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..POLL_ATTEMPTS {
        if condition() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("timed out waiting until {what}");
}

/// Sends a one-share envelope of 100 cents through `client`; a failure
/// panics with the router's view of the cells and its recent health changes.
async fn send_one(
    stack: &Stack,
    health: &HealthLog,
    mut client: Client,
    key: &str,
) -> pb::Envelope {
    match client.send(lucky(100, 1, key)).await {
        Ok(response) => response.into_inner().envelope.unwrap(),
        Err(status) => panic!(
            "Send failed: {status:?}\nrouter view: {}\nhealth changes: {:#?}",
            stack.router_view(),
            health.events()
        ),
    }
}

/// Waits until `counter` reaches `target`, as long as it keeps moving: fails
/// only if it makes no progress for a whole polling period.
async fn wait_for_progress(what: &str, counter: &AtomicUsize, target: usize) {
    let mut last = counter.load(Ordering::SeqCst);
    let mut still = 0;
    while last < target {
        tokio::time::sleep(POLL).await;
        let now = counter.load(Ordering::SeqCst);
        if now == last {
            still += 1;
            assert!(still < POLL_ATTEMPTS, "{what}: stuck at {now} of {target}");
        } else {
            still = 0;
            last = now;
        }
    }
}

/// Opens every remaining share of `envelope` with fresh users `{prefix}-{n}`
/// and returns the amounts taken now.
async fn open_all(stack: &Stack, envelope_id: &str, prefix: &str, shares: u32) -> Vec<i64> {
    let mut amounts = Vec::new();
    for index in 0..shares {
        let opened = stack
            .open_as(&format!("{prefix}-{index}"), envelope_id)
            .await
            .unwrap();
        assert_eq!(opened.status(), pb::ShareStatus::Available, "{opened:?}");
        assert!(opened.amount_cents >= 1, "{opened:?}");
        amounts.push(opened.amount_cents);
    }
    amounts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cell_gets_no_new_envelopes_and_still_serves_its_old_ones() {
    let mut stack = Builder::default().start().await;
    let health = stack.record_health();
    let old = stack.send_until_in("n2", "before", 1_000, 4).await;
    let early = stack.open_as("early-opener", &old.id).await.unwrap();
    assert_eq!(early.status(), pb::ShareStatus::Available);

    let text = topology_text(&stack.layout(), &[("n2", "failed")], "{}", "{}");
    stack.rewrite_topology(&text).await;
    let in_n2_before = stack.envelope_ids_in("n2").await;
    assert!(in_n2_before.contains(&old.id));

    let mut per_cell = std::collections::BTreeMap::<String, usize>::new();
    for index in 0..60 {
        let sender = format!("after-{index}");
        stack.fund(&sender, 100).await;
        let envelope = send_one(
            &stack,
            &health,
            stack.client(&sender),
            &format!("key-{index}"),
        )
        .await;
        assert_eq!(region_digit(&envelope.id), '1', "{}", envelope.id);
        let cell = stack.cell_of(&envelope.id);
        assert_ne!(cell, "n2", "envelope {} minted in failed n2", envelope.id);
        *per_cell.entry(cell).or_default() += 1;
    }
    assert_eq!(
        stack.envelope_ids_in("n2").await,
        in_n2_before,
        "n2's order DB got new envelopes after it was marked failed"
    );
    // The remaining active cells share the load.
    assert!(
        per_cell.get("n1").is_some_and(|n| *n > 0) && per_cell.get("n3").is_some_and(|n| *n > 0),
        "{per_cell:?}"
    );

    // The envelope of the failed cell still routes there and opens.
    let mut amounts = open_all(&stack, &old.id, "late-opener", 3).await;
    amounts.push(early.amount_cents);
    assert_eq!(amounts.iter().sum::<i64>(), 1_000, "{amounts:?}");
    let again = stack.open_as("early-opener", &old.id).await.unwrap();
    assert_eq!(again, early, "a replayed Open changed its answer");
    let exhausted = stack.open_as("too-late", &old.id).await.unwrap();
    assert_eq!(exhausted.status(), pb::ShareStatus::Exhausted);
    stack.check_money().await;
}

/// The cell the router prefers for a new envelope of `sender` with `key` in
/// the north under the current topology, when every cell it keeps in the
/// mint pool is healthy (the router's draw, DESIGN §6).
fn preferred_cell(stack: &Stack, sender: &str, key: &str) -> String {
    let topology = stack.router.topology.load();
    let north = topology.region_digit("north").unwrap();
    let draw = route::stable_hash(&[sender.as_bytes(), key.as_bytes()]);
    let (_, index) = route::mint_suffix(&topology, north, draw, |_| true).unwrap();
    topology.cells()[index].name.clone()
}

/// Results of the Send load: (index, n2 unusable for new envelopes when the
/// Send started, the outcome).
type LoadResults = Vec<(usize, bool, Result<String, tonic::Status>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_database_crash_under_send_load_loses_no_send_and_no_money() {
    const LOAD: usize = 150;
    /// Sends done before the DB is killed.
    const KILL_AFTER: usize = 20;
    /// Sends from here on start only after the router detected n2 down.
    const DETECTED_FROM: usize = 40;
    /// Sends from here on start only after n2's DB is back.
    const RESTARTED_FROM: usize = 120;

    let mut stack = Builder {
        own_database: vec!["n2"],
        ..Builder::default()
    }
    .start()
    .await;
    let health = stack.record_health();
    let victim = stack.send_until_in("n2", "victim", 5_000, 5).await;
    let first = stack.open_as("victim-opener-0", &victim.id).await.unwrap();
    assert_eq!(first.status(), pb::ShareStatus::Available);

    let mut clients = Vec::new();
    for index in 0..LOAD {
        let sender = format!("load-{index}");
        stack.fund(&sender, 100).await;
        clients.push(stack.client(&sender));
    }
    // 0 = running, 1 = n2 detected down, 2 = n2's DB restarted.
    let (phase, phases) = tokio::sync::watch::channel(0_u8);
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let router = stack.router.clone();
        let done = done.clone();
        let mut phases = phases.clone();
        async move {
            let mut results: LoadResults = Vec::new();
            for (index, mut client) in clients.into_iter().enumerate() {
                if index == DETECTED_FROM {
                    phases.wait_for(|phase| *phase >= 1).await.unwrap();
                }
                if index == RESTARTED_FROM {
                    phases.wait_for(|phase| *phase >= 2).await.unwrap();
                }
                let detected = !router
                    .directory
                    .usable_for_new(&router.topology.load(), "n2");
                let outcome = client
                    .send(lucky(100, 1, &format!("load-key-{index}")))
                    .await
                    .map(|response| response.into_inner().envelope.unwrap().id);
                results.push((index, detected, outcome));
                done.fetch_add(1, Ordering::SeqCst);
            }
            results
        }
    });

    let probe_sender = (0..1000)
        .map(|index| format!("probe-{index}"))
        .find(|sender| preferred_cell(&stack, sender, "probe") == "n2")
        .unwrap();
    stack.fund(&probe_sender, 100).await;
    let mut probe_client = stack.client(&probe_sender);
    wait_for_progress("the load before the crash", &done, KILL_AFTER).await;
    let in_n2_at_kill = stack.envelope_ids_in("n2").await;
    stack
        .cell_mut("n2")
        .database_server
        .as_mut()
        .unwrap()
        .kill9()
        .unwrap();
    // A Send the router would put in n2, right after the crash: if the router
    // has not noticed yet, n2 answers "nothing written" and the router sends
    // it to another cell once (and marks n2 suspect). Either way it succeeds
    // elsewhere, and n2 takes no new envelopes afterwards.
    let undetected = stack.usable_for_new("n2");
    let probe = probe_client
        .send(lucky(100, 1, "probe"))
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    assert_ne!(stack.cell_of(&probe.id), "n2");
    assert!(!stack.usable_for_new("n2"));
    eprintln!("probe send: n2 still usable for the router when it started: {undetected}");
    let n2_servers: Vec<String> = stack
        .cell("n2")
        .servers
        .iter()
        .map(|server| server.address.to_string())
        .collect();
    // Detected: n2's servers report NOT_SERVING to the router's health checks.
    wait_until("the router sees n2's servers NOT_SERVING", || {
        n2_servers
            .iter()
            .all(|server| !stack.router.directory.is_serving(server))
    })
    .await;
    assert!(!stack.usable_for_new("n2"));
    phase.send(1).unwrap();

    // While the DB is down, an Open that needs a commit cannot succeed: the
    // caller is told to retry.
    for index in 1..3 {
        let status = stack
            .open_as(&format!("victim-opener-{index}"), &victim.id)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    wait_for_progress("the sends of the down phase", &done, RESTARTED_FROM).await;
    // Still down: the Sends of the down phase went elsewhere.
    assert!(!stack.usable_for_new("n2"));
    stack
        .cell_mut("n2")
        .database_server
        .as_mut()
        .unwrap()
        .restart()
        .await
        .unwrap();
    phase.send(2).unwrap();

    // After the restart the envelope opens again (the cell's pool reconnects).
    let mut second = None;
    for _ in 0..POLL_ATTEMPTS {
        match stack.open_as("victim-opener-1", &victim.id).await {
            Ok(opened) => {
                second = Some(opened);
                break;
            }
            Err(status) if status.code() == Code::Unavailable => {
                tokio::time::sleep(POLL).await;
            }
            Err(status) => panic!("open after the restart: {status:?}"),
        }
    }
    let second = second.expect("the n2 envelope never opened after its DB restarted");
    assert_eq!(second.status(), pb::ShareStatus::Available, "{second:?}");
    let mut amounts = open_all(&stack, &victim.id, "victim-late", 3).await;
    amounts.extend([first.amount_cents, second.amount_cents]);
    assert_eq!(amounts.iter().sum::<i64>(), 5_000, "{amounts:?}");

    let results = load.await.unwrap();
    assert_eq!(results.len(), LOAD);
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, _, outcome)| outcome.is_err())
        .collect();
    // Every Send succeeded, except possibly the one Send that was inside n2
    // at the instant of the crash *after* its debit: the router must not send
    // it elsewhere (a second debit), so it answers UNAVAILABLE, honestly.
    // Nothing else may fail: not a Send that reached n2 after the crash (n2
    // answers "nothing written" and the router retries in another cell), and
    // certainly no Send that started once the router knew n2 was down.
    assert!(
        failed.len() <= 1
            && failed.iter().all(|(_, detected, outcome)| {
                !detected
                    && outcome
                        .as_ref()
                        .is_err_and(|status| status.code() == Code::Unavailable)
            }),
        "{} of {LOAD} Sends failed (index, n2 detected down, outcome): {failed:#?}\n\
         router view now: {}\nhealth changes: {:#?}",
        failed.len(),
        stack.router_view(),
        health.events()
    );
    // Such a Send's envelope is in n2, paid once, and the client's retry with
    // the same key (once n2 takes envelopes again) returns that very envelope.
    for (index, _, outcome) in &failed {
        eprintln!("send {index}, in flight in n2 at the crash, answered {outcome:?}");
        let sender = format!("load-{index}");
        let key = format!("load-key-{index}");
        assert_eq!(preferred_cell(&stack, &sender, &key), "n2");
        resolve_pending_of(&stack, &sender).await;
        let orders = stack.cell("n2").orders.connect().await.unwrap();
        let rows = orders
            .query(
                "SELECT id, status FROM envelopes WHERE sender = $1",
                &[&sender],
            )
            .await
            .unwrap();
        let in_n2: Vec<(String, i16)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        assert_eq!(in_n2.len(), 1, "send {index}: {in_n2:?}");
        let (id, status) = in_n2[0].clone();
        assert_eq!(status, 2, "send {index}: envelope {id} is not ACTIVE");
        assert_eq!(debits_of(&stack, &sender).await, [format!("send:{id}")]);
        wait_until("n2 takes new envelopes again", || {
            stack.usable_for_new("n2")
        })
        .await;
        let retry = stack
            .client(&sender)
            .send(lucky(100, 1, &key))
            .await
            .unwrap()
            .into_inner()
            .envelope
            .unwrap();
        assert_eq!(
            retry.id, id,
            "send {index}: the retry made another envelope"
        );
        assert_eq!(debits_of(&stack, &sender).await, [format!("send:{id}")]);
    }
    // No Send of the down phase reached n2 (it could not have committed there),
    // and every Send's envelope exists in the cell its ID routes to.
    let in_n2_after = stack.envelope_ids_in("n2").await;
    let mut per_cell = std::collections::BTreeMap::<String, Vec<String>>::new();
    for cell in ["n1", "n2", "n3"] {
        per_cell.insert(cell.to_owned(), stack.envelope_ids_in(cell).await);
    }
    for (index, detected, outcome) in &results {
        let Ok(id) = outcome else { continue };
        let cell = stack.cell_of(id);
        assert!(
            per_cell[&cell].contains(id),
            "send {index}: envelope {id} not in its cell {cell}"
        );
        if (DETECTED_FROM..RESTARTED_FROM).contains(index) {
            assert!(*detected, "send {index} started before detection");
            assert_ne!(
                cell, "n2",
                "send {index} landed in n2 while its DB was down"
            );
            assert!(!in_n2_after.contains(id));
        }
    }
    // Everything that was in n2 before the crash survived it (committed =
    // durable).
    for id in &in_n2_at_kill {
        assert!(in_n2_after.contains(id), "{id} lost in the crash");
    }
    // Evidence of the self-healing retry: Sends started before detection
    // whose preferred cell was n2 but that landed elsewhere.
    let window: Vec<_> = results
        .iter()
        .filter(|(index, _, _)| (KILL_AFTER..DETECTED_FROM).contains(index))
        .map(|(index, detected, outcome)| {
            let preferred = preferred_cell(
                &stack,
                &format!("load-{index}"),
                &format!("load-key-{index}"),
            );
            (
                *index,
                *detected,
                preferred,
                outcome.as_ref().map_or_else(
                    |status| format!("{:?}", status.code()),
                    |id| stack.cell_of(id),
                ),
            )
        })
        .collect();
    eprintln!("sends around the crash (index, n2 detected, preferred, cell): {window:?}");
    stack.check_money().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_logic_server_is_replaced_by_another_of_its_cell() {
    const SHARES: u32 = 10;
    const TOTAL: i64 = 10_000;
    let mut stack = Builder {
        servers_per_cell: 2,
        ..Builder::default()
    }
    .start()
    .await;
    let envelope = stack.send("sender", "key", TOTAL, SHARES).await;
    let cell = stack.cell_of(&envelope.id);
    let before = stack.envelope_requests(&cell);
    let mut early = Vec::new();
    for index in 0..3 {
        let opened = stack
            .open_as(&format!("opener-{index}"), &envelope.id)
            .await
            .unwrap();
        assert_eq!(opened.status(), pb::ShareStatus::Available);
        early.push(opened);
    }
    let served: Vec<u64> = stack
        .envelope_requests(&cell)
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    let sticky = served.iter().position(|n| *n == 3).unwrap_or_else(|| {
        panic!("one server serves the envelope: {served:?}");
    });
    let other = 1 - sticky;
    stack.kill_cell_server(&cell, sticky).await;
    let killed_requests = stack.envelope_requests(&cell)[sticky];
    let other_before = stack.envelope_requests(&cell)[other];
    let killed = stack.cell(&cell).servers[sticky].address.to_string();
    // Whether the first Open below meets the dead server (the router retrying
    // on UNAVAILABLE) or the health check removed it first depends on timing.
    eprintln!(
        "dead server still SERVING for the router at the first Open: {}",
        stack.router.directory.is_serving(&killed)
    );

    // The first users open again (now through the other server, which reads
    // their claims from the database): the same share.
    for (index, first) in early.iter().enumerate() {
        let again = stack
            .open_as(&format!("opener-{index}"), &envelope.id)
            .await
            .unwrap();
        // DESIGN §4: opening twice returns the first result.
        assert_eq!(&again, first, "a replayed Open changed its answer");
    }
    let mut amounts: Vec<i64> = early.iter().map(|opened| opened.amount_cents).collect();
    for index in 3..SHARES {
        let opened = stack
            .open_as(&format!("opener-{index}"), &envelope.id)
            .await
            .unwrap();
        assert_eq!(opened.status(), pb::ShareStatus::Available, "{opened:?}");
        amounts.push(opened.amount_cents);
    }
    assert_eq!(amounts.iter().sum::<i64>(), TOTAL, "{amounts:?}");
    let exhausted = stack.open_as("one-too-many", &envelope.id).await.unwrap();
    assert_eq!(exhausted.status(), pb::ShareStatus::Exhausted);

    let now = stack.envelope_requests(&cell);
    assert_eq!(now[sticky], killed_requests, "the killed server served");
    // 3 replays, 7 new shares and the EXHAUSTED answer.
    assert_eq!(
        now[other] - other_before,
        u64::from(SHARES) + 1,
        "the other server served the opens: {now:?}"
    );
    // Every opener holds exactly one share, by the envelope's own record.
    let got = stack
        .client("sender")
        .get(pb::GetRequest {
            envelope_id: envelope.id.clone(),
            page_token: String::new(),
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut users: Vec<&str> = got.claims.iter().map(|c| c.user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    assert_eq!(users.len(), got.claims.len(), "a user holds two shares");
    assert!(got.next_page_token.is_empty());
    assert_eq!(got.claims.len(), SHARES as usize);
    assert_eq!(
        got.claims.iter().map(|c| c.amount_cents).sum::<i64>(),
        TOTAL
    );
    stack.check_money().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_override_mints_north_envelopes_in_the_south_until_removed() {
    let mut stack = Builder::default().start().await;
    let health = stack.record_health();
    let drained = topology_text(&stack.layout(), &[], "{north: south}", "{}");
    stack.rewrite_topology(&drained).await;
    let mut minted = Vec::new();
    for index in 0..30 {
        let sender = format!("northerner-{index}");
        stack.fund(&sender, 100).await;
        // Half name their region, half rely on the router's own (north).
        let client = if index % 2 == 0 {
            stack.client_in(&sender, "north")
        } else {
            stack.client(&sender)
        };
        let envelope = send_one(&stack, &health, client, "key").await;
        assert_eq!(region_digit(&envelope.id), '2', "{}", envelope.id);
        let cell = stack.cell_of(&envelope.id);
        assert!(cell == "s1" || cell == "s2", "{} in {cell}", envelope.id);
        minted.push(envelope.id);
    }
    let south: Vec<String> = [
        stack.envelope_ids_in("s1").await,
        stack.envelope_ids_in("s2").await,
    ]
    .concat();
    for id in &minted {
        assert!(south.contains(id), "{id} not in a south order DB");
    }
    for cell in ["n1", "n2", "n3"] {
        assert!(stack.envelope_ids_in(cell).await.is_empty(), "{cell}");
    }
    // The drained envelopes work as any other.
    let opened = stack.open_as("someone", &minted[0]).await.unwrap();
    assert_eq!(opened.status(), pb::ShareStatus::Available);
    assert_eq!(opened.amount_cents, 100);

    let restored = topology_text(&stack.layout(), &[], "{}", "{}");
    stack.rewrite_topology(&restored).await;
    for index in 0..30 {
        let sender = format!("back-home-{index}");
        stack.fund(&sender, 100).await;
        let client = if index % 2 == 0 {
            stack.client_in(&sender, "north")
        } else {
            stack.client(&sender)
        };
        let envelope = send_one(&stack, &health, client, "key").await;
        assert_eq!(region_digit(&envelope.id), '1', "{}", envelope.id);
        let cell = stack.cell_of(&envelope.id);
        assert!(cell.starts_with('n'), "{} in {cell}", envelope.id);
    }
    // The envelopes minted south during the drain still route south.
    assert!(stack.cell_of(&minted[1]).starts_with('s'));
    let opened = stack.open_as("someone", &minted[1]).await.unwrap();
    assert_eq!(opened.status(), pb::ShareStatus::Available);
    stack.check_money().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_topology_file_is_refused_and_the_old_one_keeps_serving() {
    let mut stack = Builder::default().start().await;
    let health = stack.record_health();
    let good = stack.topology_text.clone();
    let serving = Topology::parse(&good).unwrap();
    let before = stack.send("early", "key", 1_000, 5).await;
    let reloads = stack.router.topology.reloads();

    // A gap in north's ranges (suffix 666 belongs to no cell), then a file
    // that is not YAML at all.
    let gap = good.replace("n3: \"666-999\"", "n3: \"667-999\"");
    assert_ne!(gap, good);
    assert!(Topology::parse(&gap).is_err());
    for (round, broken) in [gap.as_str(), "cells: [this is: not: a topology"]
        .into_iter()
        .enumerate()
    {
        let refused = stack.router.topology.refused();
        stack.write_topology_file(broken);
        wait_until(&format!("broken file {round} is refused"), || {
            stack.router.topology.refused() > refused
        })
        .await;
        assert_eq!(stack.router.topology.reloads(), reloads);
        assert_eq!(*stack.router.topology.load(), serving);

        // Sends and Opens go on under the old topology, in every north cell.
        let mut cells = std::collections::BTreeSet::new();
        for index in 0..30 {
            let sender = format!("during-{round}-{index}");
            stack.fund(&sender, 100).await;
            let envelope = send_one(&stack, &health, stack.client(&sender), "key").await;
            assert_eq!(region_digit(&envelope.id), '1');
            cells.insert(stack.cell_of(&envelope.id));
        }
        assert_eq!(
            cells.into_iter().collect::<Vec<_>>(),
            ["n1", "n2", "n3"],
            "the old pool (all north cells) keeps minting"
        );
        let opened = stack
            .open_as(&format!("opener-{round}"), &before.id)
            .await
            .unwrap();
        assert_eq!(opened.status(), pb::ShareStatus::Available);
    }

    // A later valid file applies: n2 marked failed leaves the pool.
    let failed = topology_text(&stack.layout(), &[("n2", "failed")], "{}", "{}");
    stack.rewrite_topology(&failed).await;
    assert_eq!(stack.router.topology.reloads(), reloads + 1);
    let in_n2 = stack.envelope_ids_in("n2").await;
    for index in 0..40 {
        let sender = format!("after-{index}");
        stack.fund(&sender, 100).await;
        let envelope = send_one(&stack, &health, stack.client(&sender), "key").await;
        assert_ne!(stack.cell_of(&envelope.id), "n2", "{}", envelope.id);
    }
    assert_eq!(stack.envelope_ids_in("n2").await, in_n2);
    let opened = stack.open_as("opener-late", &before.id).await.unwrap();
    assert_eq!(opened.status(), pb::ShareStatus::Available);
    stack.check_money().await;
}

/// Sends `lucky(1_000, 2, key)` from a fresh sender whose Send the router
/// puts in n2, and kills n2's order DB *after* the envelope was written
/// PENDING_PAYMENT there and *while* its debit is in progress (held on the
/// sender's ledger row lock, so the window is deterministic), then lets the
/// debit finish. Returns the sender and the Send's answer. n2's DB stays down.
async fn send_debited_in_a_crashing_cell(
    stack: &mut Stack,
    key: &str,
) -> (String, Result<pb::SendResponse, tonic::Status>) {
    let sender = (0..1000)
        .map(|index| format!("payer-{index}"))
        .find(|sender| preferred_cell(stack, sender, key) == "n2")
        .unwrap();
    // Enough for two envelopes, to see a second debit if one happens.
    stack.fund(&sender, 2_000).await;

    let mut ledger = stack.ledger_db.connect().await.unwrap();
    let lock = ledger.transaction().await.unwrap();
    lock.query_one(
        "SELECT balance_cents FROM accounts WHERE account = $1 FOR UPDATE",
        &[&sender],
    )
    .await
    .unwrap();
    let send = tokio::spawn({
        let mut client = stack.client(&sender);
        let key = key.to_owned();
        async move {
            client
                .send(lucky(1_000, 2, &key))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    // The envelope is written PENDING_PAYMENT in n2 and its debit waits for
    // the row lock.
    let orders = stack.cell("n2").orders.connect().await.unwrap();
    let mut pending = false;
    for _ in 0..POLL_ATTEMPTS {
        let count: i64 = orders
            .query_one(
                "SELECT count(*) FROM envelopes WHERE sender = $1 AND status = 1",
                &[&sender],
            )
            .await
            .unwrap()
            .get(0);
        if count == 1 {
            pending = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(pending, "the Send never wrote its pending envelope in n2");
    drop(orders);
    let observer = stack.ledger_db.connect().await.unwrap();
    let mut waiting = false;
    for _ in 0..POLL_ATTEMPTS {
        let count: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if count >= 1 {
            waiting = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(waiting, "the debit never waited for the ledger row");
    stack
        .cell_mut("n2")
        .database_server
        .as_mut()
        .unwrap()
        .kill9()
        .unwrap();
    lock.commit().await.unwrap();
    (sender, send.await.unwrap())
}

/// Restarts n2's order DB and waits until its recovery worker resolved every
/// pending envelope of `sender` (by the ledger's answer: debited -> ACTIVE).
async fn restart_n2_and_resolve(stack: &mut Stack, sender: &str) {
    stack
        .cell_mut("n2")
        .database_server
        .as_mut()
        .unwrap()
        .restart()
        .await
        .unwrap();
    resolve_pending_of(stack, sender).await;
}

/// Waits until n2 holds no PENDING_PAYMENT envelope of `sender` (its
/// recovery worker resolved them).
async fn resolve_pending_of(stack: &Stack, sender: &str) {
    for _ in 0..POLL_ATTEMPTS {
        if let Ok(orders) = stack.cell("n2").orders.connect().await {
            let count: i64 = orders
                .query_one(
                    "SELECT count(*) FROM envelopes WHERE sender = $1 AND status = 1",
                    &[&sender],
                )
                .await
                .unwrap()
                .get(0);
            if count == 0 {
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("n2's pending envelope of {sender} was never resolved");
}

/// The sender's debit entries in the ledger (one per paid envelope).
async fn debits_of(stack: &Stack, sender: &str) -> Vec<String> {
    stack
        .ledger_db
        .connect()
        .await
        .unwrap()
        .query(
            "SELECT key FROM entries WHERE account = $1 AND kind = 1 ORDER BY key",
            &[&sender],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn describe(stack: &Stack, outcome: &Result<pb::SendResponse, tonic::Status>) -> String {
    match outcome {
        Ok(response) => {
            let id = &response.envelope.as_ref().unwrap().id;
            format!("Ok(envelope {id} in {})", stack.cell_of(id))
        }
        Err(status) => format!("Err({:?}: {})", status.code(), status.message()),
    }
}

/// A Send whose cell loses its order DB *after* the sender was debited must
/// not be sent again to another cell by the router: that would debit the
/// sender a second time for one Send (DESIGN §4: "never a second debit").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_failed_after_its_debit_is_not_retried_in_another_cell() {
    let mut stack = Builder {
        own_database: vec!["n2"],
        ..Builder::default()
    }
    .start()
    .await;
    let (sender, outcome) = send_debited_in_a_crashing_cell(&mut stack, "once").await;
    let answer = describe(&stack, &outcome);
    restart_n2_and_resolve(&mut stack, &sender).await;
    let debits = debits_of(&stack, &sender).await;
    eprintln!("the Send answered {answer}; debits {debits:?}");
    assert_eq!(
        debits.len(),
        1,
        "one Send call (answered {answer}) debited the sender {} times: {debits:?}",
        debits.len()
    );
    // The one debit paid for the envelope in n2, which opens.
    let paid = debits[0].strip_prefix("send:").unwrap();
    assert_eq!(stack.cell_of(paid), "n2");
    // Once n2 takes envelopes again, the client's retry with the same key
    // returns that envelope, without a second debit.
    wait_until("n2 takes new envelopes again", || {
        stack.usable_for_new("n2")
    })
    .await;
    retry_returns_the_paid_envelope(&stack, &sender, "once", paid, &debits).await;
    stack.check_money().await;
}

/// The client's retry of `lucky(1_000, 2, key)` returns the envelope `paid`
/// without debiting the sender again, and that envelope opens.
async fn retry_returns_the_paid_envelope(
    stack: &Stack,
    sender: &str,
    key: &str,
    paid: &str,
    debits: &[String],
) {
    let retry = sent_envelope(stack, sender, lucky(1_000, 2, key)).await;
    assert_eq!(retry.id, paid);
    assert_eq!(debits_of(stack, sender).await, debits);
    let opened = stack.open_as("receiver", paid).await.unwrap();
    assert_eq!(opened.status(), pb::ShareStatus::Available);
}

/// The envelope a Send through the router returned (panics on an error).
async fn sent_envelope(stack: &Stack, sender: &str, request: pb::SendRequest) -> pb::Envelope {
    stack
        .client(sender)
        .send(request)
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap()
}

/// DESIGN §4: "The same idempotency key returns the same envelope, never a
/// second debit", and UNAVAILABLE is retryable. A client that retries the
/// Send above with the same key while n2 is down reaches another cell (n2
/// left the pool), whose debit the ledger refuses: the order is paid. The
/// retry is `UNAVAILABLE` until n2 is back, then returns n2's envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_is_not_debited_twice_while_its_first_cell_is_down() {
    let mut stack = Builder {
        own_database: vec!["n2"],
        ..Builder::default()
    }
    .start()
    .await;
    let (sender, first) = send_debited_in_a_crashing_cell(&mut stack, "twice").await;
    let first = describe(&stack, &first);
    // The client retries, as UNAVAILABLE invites, once the router knows n2
    // is down.
    wait_until("the router takes n2 out of the pool", || {
        !stack.usable_for_new("n2")
    })
    .await;
    let retry = stack
        .client(&sender)
        .send(lucky(1_000, 2, "twice"))
        .await
        .map(tonic::Response::into_inner);
    let retry_answer = describe(&stack, &retry);
    let status = retry.expect_err("n2 holds the paid envelope and is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    restart_n2_and_resolve(&mut stack, &sender).await;
    let debits = debits_of(&stack, &sender).await;
    eprintln!("first answer {first}; retry answered {retry_answer}; debits {debits:?}");
    assert_eq!(
        debits.len(),
        1,
        "one idempotency key debited the sender {} times (first answer {first}, \
         retry with the same key {retry_answer}): {debits:?}",
        debits.len()
    );
    let paid = debits[0].strip_prefix("send:").unwrap().to_owned();
    assert_eq!(stack.cell_of(&paid), "n2");
    // The cell that took the retry kept nothing of it.
    for cell in ["n1", "n3"] {
        assert_eq!(
            stack.envelope_ids_in(cell).await,
            Vec::<String>::new(),
            "{cell}"
        );
    }
    // Once n2 is back, the retry is answered with n2's envelope, even while
    // n2 is not the cell the router would mint the key in.
    retry_returns_the_paid_envelope(&stack, &sender, "twice", &paid, &debits).await;
    stack.check_money().await;
}

/// The same guard without a crash: an operator fails the cell holding a
/// Send's envelope, and the client's retry with the same key (a lost answer)
/// is minted in another cell. That cell's debit is refused by the ledger (the
/// order is paid), it keeps nothing, and the router answers from the
/// envelope's own cell: the same envelope, one debit. A reuse of the key
/// with other contents is refused there, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_minted_in_another_cell_returns_the_envelope_its_key_paid_for() {
    let mut stack = Builder::default().start().await;
    let sender = (0..1000)
        .map(|index| format!("retrier-{index}"))
        .find(|sender| preferred_cell(&stack, sender, "lost-answer") == "n2")
        .unwrap();
    stack.fund(&sender, 3_000).await;
    let first = sent_envelope(&stack, &sender, lucky(1_000, 4, "lost-answer")).await;
    assert_eq!(stack.cell_of(&first.id), "n2");
    let failed = topology_text(&stack.layout(), &[("n2", "failed")], "{}", "{}");
    stack.rewrite_topology(&failed).await;
    let elsewhere = preferred_cell(&stack, &sender, "lost-answer");
    assert_ne!(elsewhere, "n2");
    let before = stack.envelope_ids_in(&elsewhere).await;

    for _ in 0..3 {
        let retry = sent_envelope(&stack, &sender, lucky(1_000, 4, "lost-answer")).await;
        assert_eq!(retry.id, first.id);
        assert_eq!(retry.total_cents, 1_000);
    }
    let reused = stack
        .client(&sender)
        .send(lucky(999, 4, "lost-answer"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");
    assert!(
        reused.message().starts_with("idempotency_key: "),
        "{reused:?}"
    );
    assert_eq!(stack.envelope_ids_in(&elsewhere).await, before);
    assert_eq!(
        debits_of(&stack, &sender).await,
        vec![format!("send:{}", first.id)]
    );
    let amounts = open_all(&stack, &first.id, "opener", 4).await;
    assert_eq!(amounts.iter().sum::<i64>(), 1_000);
    stack.check_money().await;
}
