//! The order DB follows the cell's `db` in the live topology, without a
//! restart (issue 11: `cellctl failover` promotes a cell DB's standby and
//! rewrites the cell's `db:` in cells.yaml).
//!
//! The server's pool ([`OrderDb::pool`]) connects through [`OrderDb`], which
//! reads the current *generation* (a DSN, and a token that retires it) at
//! every connect. [`OrderDb::follow`] switches to a new DSN by starting a new
//! generation and retiring the old one: the token ends every connection task
//! of the old DB, idle or checked out alike, and the switch waits until all
//! of them have ended; the closed clients are then dropped from the pool
//! (`Pool::retain`), and one left over is refused at recycle as closed, so a
//! connection made for an old DSN is never handed out again. A request whose
//! connection was retired under it gets `UNAVAILABLE` and retries, on the new
//! DB.
//!
//! # What `CellStatus` reports, and why failover may trust it
//!
//! `CellOps.CellStatus` reports [`OrderDb::served`], not the handle's latest
//! topology, and `served` advances only at the end of a switch: after every
//! connection task of the old generation has ended. So once a server reports
//! a fingerprint whose `db` is B, it holds no socket to the old DB and every
//! connection it makes goes to B: no transaction can start on the old DB.
//! (Requests route by the handle's topology as soon as it is swapped; only
//! the reported fingerprint waits for the DB.)
//!
//! # `--db-dsn`
//!
//! A DSN given on the command line ([`crate::CellConfig::db_dsn`]) pins the
//! server: it is there to keep credentials out of cells.yaml, and a rewrite of
//! the file cannot carry them. A pinned server serves a new topology only
//! while the cell's `db` in it is the one it started with; when the file
//! repoints the cell, it logs an error and keeps reporting the topology it
//! had, so a failover waiting on it names this server instead of counting it
//! as repointed (restart it with the new DSN).
//!
//! # The new DB's schema
//!
//! Checked once, before switching ([`db::check_schema`]): one that answers
//! with another schema is refused like a reload of an invalid file (the old
//! DB keeps serving, the old fingerprint stays reported, an error is logged,
//! and it is asked again at the next poll); one that does not answer yet is
//! switched to (the topology names it; the health probe reports
//! `NOT_SERVING` while it is down). Requests do not check it again.

use std::{
    future::Future,
    pin::Pin,
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use deadpool_postgres::{Connect, Manager, ManagerConfig, Pool, RecyclingMethod};
use redcell_lifecycle::TopologyHandle;
use redcell_migrations::display_dsn;
use redcell_topology::Topology;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::db::{self, SchemaCheck};

/// Connects of one pool slot that may meet a switch before their connection
/// is handed out (each then connects again, to the new DB).
const CONNECT_ATTEMPTS: usize = 3;

/// The order DB of one logic server: the DSN it connects to now, and the
/// topology it has caught up with.
#[derive(Debug)]
pub struct OrderDb {
    cell: String,
    /// The DSN came from `--db-dsn`: never switched (see the module docs).
    pinned: bool,
    /// The cell's `db` in the topology the server started with (what a
    /// pinned server compares a new topology against).
    started_db: Option<String>,
    current: Mutex<Generation>,
    served: Mutex<Arc<Topology>>,
    /// One [`OrderDb::follow`] at a time; holds the last problem logged, so
    /// a refusal repeated at every poll is logged once.
    following: tokio::sync::Mutex<Option<String>>,
}

/// The connections to one DSN.
#[derive(Debug, Clone)]
struct Generation {
    dsn: String,
    config: tokio_postgres::Config,
    /// Cancelled when this DSN is left: ends the connection tasks.
    retired: CancellationToken,
    /// Every connection task of this generation, to wait for their end.
    connections: TaskTracker,
}

impl Generation {
    fn new(dsn: &str) -> Result<Generation, String> {
        let mut config = tokio_postgres::Config::from_str(dsn)
            .map_err(|error| format!("malformed DSN: {error}"))?;
        config.connect_timeout(Duration::from_secs(2));
        Ok(Generation {
            dsn: dsn.to_owned(),
            config,
            retired: CancellationToken::new(),
            connections: TaskTracker::new(),
        })
    }
}

/// What a new topology asks of the order DB.
enum Step {
    /// Nothing to switch: serve it.
    Serve,
    /// Switch to this DSN, then serve it.
    Switch(String),
    /// Cannot serve it: the old topology stays reported.
    Refuse(String),
}

impl OrderDb {
    /// Starts on `dsn` for `cell`, serving `topology`; `pinned` when the DSN
    /// came from `--db-dsn` rather than from the topology.
    pub fn new(
        cell: &str,
        dsn: &str,
        pinned: bool,
        topology: Arc<Topology>,
    ) -> Result<Arc<OrderDb>, String> {
        Ok(Arc::new(OrderDb {
            cell: cell.to_owned(),
            pinned,
            started_db: topology.cell(cell).map(|found| found.db.clone()),
            current: Mutex::new(Generation::new(dsn)?),
            served: Mutex::new(topology),
            following: tokio::sync::Mutex::new(None),
        }))
    }

    /// A lazy pool of `size` connections to whichever DSN is current at each
    /// connect, with a wait timeout so a dead DB answers `UNAVAILABLE`
    /// instead of hanging requests.
    pub fn pool(self: &Arc<Self>, size: usize) -> Result<Pool, String> {
        let config = lock(&self.current).config.clone();
        let manager = Manager::from_connect(
            config,
            Following(self.clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        db::build_pool(manager, size)
    }

    /// The topology whose `db` this server's connections follow: what
    /// `CellStatus` reports (see the module docs).
    pub fn served(&self) -> Arc<Topology> {
        lock(&self.served).clone()
    }

    /// The DSN new connections go to.
    pub fn dsn(&self) -> String {
        lock(&self.current).dsn.clone()
    }

    /// Catches up with `topology`: switches `pool` to the cell's `db` in it
    /// if that changed, then serves it (see the module docs).
    pub async fn follow(&self, topology: Arc<Topology>, pool: &Pool) {
        let mut logged = self.following.lock().await;
        if Arc::ptr_eq(&self.served(), &topology) {
            return;
        }
        let outcome = match self.step(&topology) {
            Step::Serve => Ok(()),
            Step::Switch(dsn) => self.switch(&dsn, pool).await,
            Step::Refuse(problem) => Err(problem),
        };
        match outcome {
            Ok(()) => {
                *logged = None;
                *lock(&self.served) = topology;
            }
            Err(problem) => {
                if logged.as_ref() != Some(&problem) {
                    tracing::error!(
                        cell = %self.cell,
                        %problem,
                        "the order DB does not follow the new topology; CellStatus keeps reporting the previous one"
                    );
                    *logged = Some(problem);
                }
            }
        }
    }

    fn step(&self, topology: &Topology) -> Step {
        // A topology without this cell routes nothing to it: keep the DB.
        let Some(cell) = topology.cell(&self.cell) else {
            return Step::Serve;
        };
        if self.pinned {
            return if self.started_db.as_deref() == Some(cell.db.as_str()) {
                Step::Serve
            } else {
                Step::Refuse(format!(
                    "cells.yaml names {} for cell {}, but --db-dsn pins this server to {}: restart it with the new DSN to follow",
                    display_dsn(&cell.db),
                    self.cell,
                    display_dsn(&self.dsn()),
                ))
            };
        }
        if cell.db == self.dsn() {
            Step::Serve
        } else {
            Step::Switch(cell.db.clone())
        }
    }

    /// Checks the schema of the DB at `dsn`, then makes it current and waits
    /// until every connection to the old one has ended.
    async fn switch(&self, dsn: &str, pool: &Pool) -> Result<(), String> {
        let shown = display_dsn(dsn);
        let next = Generation::new(dsn).map_err(|error| format!("order DB {shown}: {error}"))?;
        let probe = db::pool(dsn, 1).map_err(|error| format!("order DB {shown}: {error}"))?;
        let verified = match db::check_schema(&probe).await {
            SchemaCheck::Current => true,
            SchemaCheck::Mismatch(problem) => {
                return Err(format!(
                    "order DB {shown}: {problem}; run `cellctl migrate --cell {}`",
                    self.cell
                ));
            }
            SchemaCheck::Unreachable(reason) => {
                tracing::warn!(
                    cell = %self.cell,
                    db = %shown,
                    %reason,
                    "switching to an order DB that does not answer yet (the topology names it); its schema is not verified"
                );
                false
            }
        };
        drop(probe);

        let started = Instant::now();
        let old = std::mem::replace(&mut *lock(&self.current), next);
        old.retired.cancel();
        old.connections.close();
        let retired = old.connections.len();
        old.connections.wait().await;
        let dropped = pool.retain(|client, _| !client.is_closed()).removed.len();
        tracing::info!(
            cell = %self.cell,
            from = %display_dsn(&old.dsn),
            to = %shown,
            schema_verified = verified,
            retired_connections = retired,
            idle_dropped = dropped,
            took = ?started.elapsed(),
            "order DB switched: every connection to the old DB is closed; new transactions run on the new one"
        );
        Ok(())
    }

    /// One connection to the current DSN, its task tied to the generation's
    /// token (so retiring the generation closes it).
    async fn connect(&self) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let generation = lock(&self.current).clone();
            let (client, connection) = generation.config.connect(NoTls).await?;
            // Retired while connecting: that is the old DB; connect again.
            // (Past the last attempt it is handed out closed: its first
            // statement fails as UNAVAILABLE, and never reaches the old DB.)
            if generation.retired.is_cancelled() && attempt < CONNECT_ATTEMPTS {
                continue;
            }
            let retired = generation.retired.clone();
            let task = generation.connections.spawn(async move {
                // Biased: once retired, the connection is dropped before it
                // writes anything more to the old DB.
                tokio::select! {
                    biased;
                    () = retired.cancelled() => {}
                    result = connection => {
                        if let Err(error) = result {
                            tracing::warn!(%error, "order DB connection failed");
                        }
                    }
                }
            });
            return Ok((client, task));
        }
    }
}

/// The pool's [`Connect`]: every new connection asks [`OrderDb`] where to go.
struct Following(Arc<OrderDb>);

type Connecting<'a> = Pin<
    Box<dyn Future<Output = Result<(Client, JoinHandle<()>), tokio_postgres::Error>> + Send + 'a>,
>;

impl Connect for Following {
    fn connect(&self, _initial: &tokio_postgres::Config) -> Connecting<'_> {
        Box::pin(self.0.connect())
    }
}

/// Rereads the topology file every `interval` and on SIGHUP, as
/// [`TopologyHandle::watch`] does, and after each reread lets `db` follow
/// the topology now serving, until cancelled.
///
/// The SIGHUP handler is installed when this is called (before the server
/// serves), not when the future first runs. Call it inside the runtime, for
/// a handle with a file.
pub fn watch(
    handle: Arc<TopologyHandle>,
    db: Arc<OrderDb>,
    pool: Pool,
    interval: Duration,
    cancel: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler: cells.yaml is reread by the file watch only");
            None
        }
    };
    async move {
        loop {
            let forced = tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            handle.reload(forced);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = db.follow(handle.load(), &pool) => {}
            }
        }
    }
}

/// The guarded value even if a holder panicked (every value here is whole
/// between statements).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
