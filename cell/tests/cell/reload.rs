//! A running cell reloads cells.yaml (DESIGN.md §3 hot reload): a logic server
//! started before an expansion mints under the new epoch, with suffixes it did
//! not own before, once the file changes, without a restart; a bad file is
//! refused and counted, and the old topology keeps serving. (SIGHUP for the
//! real binary: `process.rs`.)

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redcell_lifecycle::TopologyHandle;
use redcell_proto::v1 as pb;
use redcell_topology::Topology;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, Status, transport::Channel};

use crate::stack::{Stack, StackBuilder};

/// Polls of a condition, 20 ms apart, before a test gives up (a hang guard,
/// never a performance threshold).
const POLLS: usize = 1500;
const POLL: Duration = Duration::from_millis(20);

/// The stack's topology (n1 "000-499", n2 "500-999" in epoch 0) plus epoch 1,
/// now minting, in which n1 also owns n2's "500-749" of epoch 0: what an
/// operator writes to give a cell more of the new envelopes. IDs of epoch 0
/// keep routing as before.
pub fn grown_text(stack_text: &str) -> String {
    let grown = stack_text.replace(
        "minting:\n  epoch: 0\n",
        "  - id: 1\n    ranges:\n      north: { n1: \"000-749\", n2: \"750-999\" }\n      south: { s1: \"000-999\" }\nminting:\n  epoch: 1\n",
    );
    assert_ne!(grown, stack_text);
    Topology::parse(&grown).unwrap();
    grown
}

/// A suffix n1 mints only in the grown topology.
pub const GAINED_SUFFIX: &str = "600";

/// Sends a LUCKY envelope of 4 shares of `total` (already funded) from
/// `sender` (key `key-{sender}`) through `channel`, with the router's suffix
/// when given.
pub async fn send_on(
    channel: &Channel,
    sender: &str,
    total: i64,
    suffix: Option<&str>,
) -> Result<pb::Envelope, Status> {
    let mut request = Request::new(pb::SendRequest {
        total_cents: total,
        count: 4,
        kind: pb::EnvelopeKind::Lucky.into(),
        greeting: "恭喜发财".into(),
        recipients: Vec::new(),
        idempotency_key: format!("key-{sender}"),
    });
    if let Some(suffix) = suffix {
        request
            .metadata_mut()
            .insert("x-redcell-suffix", suffix.parse().unwrap());
    }
    let envelope = Stack::client_on(channel, sender)
        .send(request)
        .await?
        .into_inner()
        .envelope
        .unwrap();
    assert_eq!(envelope.status(), pb::EnvelopeStatus::Active);
    Ok(envelope)
}

/// The `EE` digits of an envelope ID.
pub fn epoch_of(id: &str) -> &str {
    &id[7..9]
}

/// Replaces the file's contents at once (write aside, rename over), as an
/// operator's tooling should: a watch that polls mid-write would otherwise
/// read, and refuse, a half-written file.
pub fn replace_file(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("yaml.new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// One in-process logic server of n1 whose topology is a file it watches.
struct ReloadingCell {
    stack: Stack,
    file: PathBuf,
    handle: Arc<TopologyHandle>,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), redcell_cell::RunError>>>,
}

impl ReloadingCell {
    async fn start() -> ReloadingCell {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let stack = StackBuilder::default().start_external(&[address]).await;
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!(
            "redcell-cell-reload-{}-{n}-cells.yaml",
            std::process::id()
        ));
        std::fs::write(&file, &stack.topology_text).unwrap();
        let handle = Arc::new(TopologyHandle::new(file.clone(), stack.topology.clone()));
        let mut config = stack.config.clone();
        config.topology = handle.clone();
        config.topology_reload = POLL;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(redcell_cell::run(
            listener,
            config,
            stack.ledger.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        ReloadingCell {
            stack,
            file,
            handle,
            channel: Stack::channel_to(address),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Funds `sender` with `total` and sends a LUCKY envelope of 4 shares, with
    /// the router's suffix when given.
    async fn send(
        &mut self,
        sender: &str,
        total: i64,
        suffix: Option<&str>,
    ) -> Result<pb::Envelope, Status> {
        self.stack.fund(sender, total).await;
        self.send_funded(sender, total, suffix).await
    }

    async fn send_funded(
        &self,
        sender: &str,
        total: i64,
        suffix: Option<&str>,
    ) -> Result<pb::Envelope, Status> {
        send_on(&self.channel, sender, total, suffix).await
    }

    /// Opens one share of `envelope` as `user`: its amount.
    async fn open(&self, envelope: &str, user: &str) -> i64 {
        let reply = Stack::client_on(&self.channel, user)
            .open(pb::OpenRequest {
                envelope_id: envelope.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status(), pb::ShareStatus::Available, "{reply:?}");
        reply.amount_cents
    }

    /// Waits until `done` holds of the handle (the watch has acted).
    async fn wait_until(&self, what: &str, done: impl Fn(&TopologyHandle) -> bool) {
        for _ in 0..POLLS {
            if done(&self.handle) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "the cell never {what} (reloads {}, refused {})",
            self.handle.reloads(),
            self.handle.refused()
        );
    }

    /// Settles, checks the money invariants against `topology` (the one the
    /// envelopes were minted under), stops the server.
    async fn finish(mut self, topology: &str) {
        self.stack.topology = Arc::new(Topology::parse(topology).unwrap());
        self.stack.drain_settlement().await;
        let report = self.stack.check_money().await;
        assert_eq!(report.pending_payments, 0);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for ReloadingCell {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cell_mints_under_the_new_epoch_once_its_file_changes() {
    let mut cell = ReloadingCell::start().await;

    // Before: suffix 600 is n2's; n1 refuses to mint it and writes nothing.
    cell.stack.fund("gained", 1_000).await;
    let before = cell.stack.snapshot().await;
    let refused = cell
        .send_funded("gained", 1_000, Some(GAINED_SUFFIX))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(cell.stack.snapshot().await, before);
    let old = cell.send("old", 1_000, None).await.unwrap();
    assert_eq!(epoch_of(&old.id), "00", "{}", old.id);

    // The operator writes the new topology; no restart, no signal.
    let grown = grown_text(&cell.stack.topology_text);
    replace_file(&cell.file, &grown);
    cell.wait_until("reloaded", |handle| handle.reloads() == 1)
        .await;
    assert_eq!(*cell.handle.load(), Topology::parse(&grown).unwrap());

    // The same Send (same key, already funded) is now minted with suffix 600
    // under epoch 1, and the cell serves Opens of it (the ID's epoch exists
    // only in the new file).
    let gained = cell
        .send_funded("gained", 1_000, Some(GAINED_SUFFIX))
        .await
        .unwrap();
    assert_eq!(epoch_of(&gained.id), "01", "{}", gained.id);
    assert!(gained.id.ends_with(GAINED_SUFFIX), "{}", gained.id);
    let drawn = cell.send("drawn", 1_000, None).await.unwrap();
    assert_eq!(epoch_of(&drawn.id), "01", "{}", drawn.id);
    for envelope in [&gained.id, &drawn.id, &old.id] {
        assert!(cell.open(envelope, "opener").await > 0);
    }
    assert_eq!(cell.handle.refused(), 0);
    cell.finish(&grown).await;
}

/// A router still on the old topology during a switch hands the cell a
/// suffix the cell owns only in the older epoch: the cell mints under that
/// epoch (the ID routes to it for good) instead of refusing; a suffix it owns
/// in no epoch is still refused, retryable, with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suffix_owned_only_in_an_older_epoch_is_minted_under_that_epoch() {
    let mut cell = ReloadingCell::start().await;
    // Epoch 1 shrinks n1 to 000-249: 400 is n1's in epoch 0 only.
    let shrunk = cell.stack.topology_text.replace(
        "minting:\n  epoch: 0\n",
        "  - id: 1\n    ranges:\n      north: { n1: \"000-249\", n2: \"250-999\" }\n      south: { s1: \"000-999\" }\nminting:\n  epoch: 1\n",
    );
    let topology = Topology::parse(&shrunk).unwrap();
    replace_file(&cell.file, &shrunk);
    cell.wait_until("reloaded", |handle| handle.reloads() == 1)
        .await;

    // 800 is n2's in every epoch: refused, retryable, nothing written
    // (before any Open, so no settlement moves the snapshot meanwhile).
    cell.stack.fund("foreign", 1_000).await;
    let before = cell.stack.snapshot().await;
    let refused = cell
        .send_funded("foreign", 1_000, Some("800"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(cell.stack.snapshot().await, before);

    let lagging = cell.send("lagging", 1_000, Some("400")).await.unwrap();
    assert_eq!(epoch_of(&lagging.id), "00", "{}", lagging.id);
    assert!(lagging.id.ends_with("400"), "{}", lagging.id);
    let id: redcell_topology::EnvelopeId = lagging.id.parse().unwrap();
    assert_eq!(topology.route(&id).unwrap().name, "n1");
    let current = cell.send("current", 1_000, Some("100")).await.unwrap();
    assert_eq!(epoch_of(&current.id), "01", "{}", current.id);
    for envelope in [&lagging.id, &current.id] {
        assert!(cell.open(envelope, "opener").await > 0);
    }
    cell.finish(&shrunk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_counted_and_the_old_topology_keeps_serving() {
    let mut cell = ReloadingCell::start().await;
    let serving = cell.handle.load();
    let original = cell.stack.topology_text.clone();

    // Not YAML, then valid YAML that breaks a rule (suffixes 500-749 of the
    // new epoch belong to no cell): each refused once, counted once.
    replace_file(&cell.file, "version: 1\ncells: [");
    cell.wait_until("refused the broken file", |handle| handle.refused() == 1)
        .await;
    let gap = grown_text(&original).replace("n1: \"000-749\"", "n1: \"000-499\"");
    assert!(Topology::parse(&gap).is_err());
    replace_file(&cell.file, &gap);
    cell.wait_until("refused the uncovered epoch", |handle| {
        handle.refused() == 2
    })
    .await;
    assert_eq!(cell.handle.reloads(), 0);
    assert_eq!(cell.handle.load(), serving);

    // Still serving the old topology: epoch 0, 600 is not n1's.
    let refused = cell
        .send("gained", 1_000, Some(GAINED_SUFFIX))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let old = cell.send("old", 1_000, None).await.unwrap();
    assert_eq!(epoch_of(&old.id), "00", "{}", old.id);
    assert!(cell.open(&old.id, "opener").await > 0);
    assert_eq!(
        cell.handle.refused(),
        2,
        "an unchanged bad file is not recounted"
    );

    // A good file after the bad ones is taken.
    let grown = grown_text(&original);
    replace_file(&cell.file, &grown);
    cell.wait_until("reloaded", |handle| handle.reloads() == 1)
        .await;
    let gained = cell
        .send_funded("gained", 1_000, Some(GAINED_SUFFIX))
        .await
        .unwrap();
    assert_eq!(epoch_of(&gained.id), "01", "{}", gained.id);
    cell.finish(&grown).await;
}

/// Get of `envelope` as `user` on the cell, one page of `page_size` claims.
async fn get(cell: &ReloadingCell, user: &str, envelope: &str, page_size: u32) -> pb::GetResponse {
    Stack::client_on(&cell.channel, user)
        .get(pb::GetRequest {
            envelope_id: envelope.to_owned(),
            page_token: String::new(),
            page_size,
        })
        .await
        .unwrap()
        .into_inner()
}

/// `degrade.claims: off` is read per request from the reloaded snapshot: the
/// cell answers Get with the envelope only, marked degraded (the claims query
/// is not run), and lists the claims again once the switch is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_switch_sheds_gets_claim_list_on_reload() {
    let mut cell = ReloadingCell::start().await;
    let original = cell.stack.topology_text.clone();
    let envelope = cell.send("sender", 1_000, None).await.unwrap();
    let mut opened = 0;
    for user in ["bob", "carol"] {
        opened += cell.open(&envelope.id, user).await;
    }
    let whole = get(&cell, "sender", &envelope.id, 0).await;
    assert_eq!(whole.claims.len(), 2);
    assert!(!whole.degraded);
    assert!(
        !get(&cell, "sender", &envelope.id, 1)
            .await
            .next_page_token
            .is_empty()
    );

    let shed = format!("{original}degrade: {{claims: off}}\n");
    replace_file(&cell.file, &shed);
    cell.wait_until("reloaded", |handle| handle.reloads() == 1)
        .await;
    for page_size in [0, 1] {
        let reply = get(&cell, "sender", &envelope.id, page_size).await;
        assert!(reply.claims.is_empty(), "{reply:?}");
        assert!(reply.next_page_token.is_empty(), "{reply:?}");
        assert!(reply.degraded, "{reply:?}");
        assert_eq!(reply.envelope, whole.envelope);
    }
    // Opens are not shed.
    opened += cell.open(&envelope.id, "dave").await;

    replace_file(&cell.file, &original);
    cell.wait_until("reloaded again", |handle| handle.reloads() == 2)
        .await;
    let back = get(&cell, "sender", &envelope.id, 0).await;
    assert_eq!(back.claims.len(), 3);
    assert!(!back.degraded);
    assert_eq!(
        back.claims.iter().map(|c| c.amount_cents).sum::<i64>(),
        opened
    );
    cell.finish(&original).await;
}
