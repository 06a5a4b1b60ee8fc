//! Is the standby caught up? The rule `failover` applies before it fences
//! anything:
//!
//! - **Primary running** (it answers SQL): it must list the standby as
//!   `streaming` and `sync` in `pg_stat_replication`, and the standby must
//!   have *replayed* up to the primary's flush LSN as first seen
//!   (`pg_current_wal_flush_lsn()` vs the standby's
//!   `pg_last_wal_replay_lsn()`). The target is fixed when first seen, so a
//!   primary that keeps writing does not move the goal.
//! - **Primary down**: the standby must still be in recovery, must have
//!   received WAL from it (`pg_last_wal_receive_lsn()` is not NULL: a standby
//!   restarted after its primary died cannot say what it had), and must have
//!   replayed all it received (`pg_last_wal_replay_lsn()` = receive LSN). What
//!   it received is every commit the primary acknowledged, because `up`
//!   keeps a primary with a recorded standby synchronous on every start
//!   (`synchronous_standby_names`, `synchronous_commit=on`): a commit is
//!   acknowledged only once the standby flushed it.
//!
//! Both are polled for up to `--catch-up-secs` (replay trails receipt by
//! milliseconds); a standby still behind then is refused, naming both LSNs.

use std::{
    fmt,
    time::{Duration, Instant},
};

use crate::commands::{
    migrate::chain,
    up::postgres::{admin_config, connect},
};

/// A WAL position (`X/Y` in PostgreSQL's text form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(u64);

impl Lsn {
    pub fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.split_once('/')?;
        let high = u64::from_str_radix(high, 16).ok()?;
        let low = u64::from_str_radix(low, 16).ok()?;
        if high > u64::from(u32::MAX) || low > u64::from(u32::MAX) {
            return None;
        }
        Some(Lsn((high << 32) | low))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The old primary, as seen.
#[derive(Debug, Clone)]
pub enum Primary {
    Running {
        flush: Lsn,
        /// `(state, sync_state)` of the standby in `pg_stat_replication`.
        replication: Option<(String, String)>,
    },
    /// Why it does not answer.
    Down(String),
}

/// The standby, as seen.
#[derive(Debug, Clone)]
pub struct Standby {
    pub in_recovery: bool,
    pub receive: Option<Lsn>,
    pub replay: Option<Lsn>,
}

/// Where the two stand: what to print, and whether to go on.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub primary: Primary,
    pub standby: Standby,
    /// `None` when caught up; otherwise why it is behind.
    pub behind: Option<String>,
}

/// Who to ask: the ports and the superuser of the pair, the standby's name.
pub struct Pair<'a> {
    pub primary: u16,
    pub standby: u16,
    pub superuser: &'a str,
    pub name: &'a str,
}

/// Polls until the standby is caught up by [the rule](self) or `wait` ends.
pub async fn check(pair: &Pair<'_>, wait: Duration) -> Result<Verdict, String> {
    let deadline = Instant::now() + wait;
    let mut target: Option<Lsn> = None;
    loop {
        let primary = primary(pair).await;
        let standby = standby(pair).await?;
        if let Primary::Running { flush, .. } = &primary {
            target.get_or_insert(*flush);
        }
        let behind = behind(&primary, target, &standby, pair);
        if behind.is_none() || !standby.in_recovery || Instant::now() >= deadline {
            return Ok(Verdict {
                primary,
                standby,
                behind,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [The rule](self): `None` when the standby may be promoted.
fn behind(
    primary: &Primary,
    target: Option<Lsn>,
    standby: &Standby,
    pair: &Pair<'_>,
) -> Option<String> {
    let replay = match standby.replay {
        Some(replay) => replay,
        None => return Some("it has replayed nothing".to_owned()),
    };
    match primary {
        Primary::Running { flush, replication } => {
            match replication.as_ref().map(|(a, b)| (a.as_str(), b.as_str())) {
                Some(("streaming", "sync")) => {}
                Some((state, sync)) => {
                    return Some(format!(
                        "postgres-{} lists it as {state}, {sync} (not streaming, sync)",
                        pair.primary
                    ));
                }
                None => {
                    return Some(format!(
                        "postgres-{} runs but {} is not connected to it",
                        pair.primary, pair.name
                    ));
                }
            }
            let target = target.unwrap_or(*flush);
            (replay < target).then(|| {
                format!(
                    "it replayed {replay}, postgres-{} flushed {target}",
                    pair.primary
                )
            })
        }
        Primary::Down(_) => match standby.receive {
            None => Some(format!(
                "it received nothing from postgres-{} since it started, so it cannot tell \
                 whether it has all its primary acknowledged",
                pair.primary
            )),
            Some(receive) => (replay < receive)
                .then(|| format!("it received {receive} but replayed only {replay}")),
        },
    }
}

async fn primary(pair: &Pair<'_>) -> Primary {
    let mut config = admin_config(pair.primary, "postgres", pair.superuser);
    config.connect_timeout(Duration::from_secs(1));
    let client = match connect(&config).await {
        Ok(client) => client,
        Err(error) => return Primary::Down(chain(&error)),
    };
    let flush = match client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
    {
        Ok(row) => Lsn::parse(&row.get::<_, String>(0)),
        Err(error) => return Primary::Down(format!("answers but: {}", chain(&error))),
    };
    let Some(flush) = flush else {
        return Primary::Down("answers with an unreadable flush LSN".to_owned());
    };
    let replication = client
        .query_opt(
            "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1",
            &[&pair.name],
        )
        .await
        .ok()
        .flatten()
        .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)));
    Primary::Running { flush, replication }
}

async fn standby(pair: &Pair<'_>) -> Result<Standby, String> {
    let mut config = admin_config(pair.standby, "postgres", pair.superuser);
    config.connect_timeout(Duration::from_secs(2));
    let client = connect(&config).await.map_err(|error| {
        format!(
            "the standby postgres-{} does not answer: {}",
            pair.standby,
            chain(&error)
        )
    })?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
            &[],
        )
        .await
        .map_err(|error| format!("the standby postgres-{}: {}", pair.standby, chain(&error)))?;
    let lsn = |index: usize| {
        row.get::<_, Option<String>>(index)
            .as_deref()
            .and_then(Lsn::parse)
    };
    Ok(Standby {
        in_recovery: row.get(0),
        receive: lsn(1),
        replay: lsn(2),
    })
}

/// Promotes the standby on `port` and waits until it is out of recovery.
pub async fn promote(port: u16, superuser: &str) -> Result<(), String> {
    let client = connect(&admin_config(port, "postgres", superuser))
        .await
        .map_err(|error| format!("cannot connect as {superuser}: {}", chain(&error)))?;
    let promoted: bool = client
        .query_one("SELECT pg_promote(wait => true, wait_seconds => 60)", &[])
        .await
        .map_err(|error| format!("pg_promote: {}", chain(&error)))?
        .get(0);
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|error| chain(&error))?
        .get(0);
    if !promoted || in_recovery {
        return Err("pg_promote did not end recovery within 60 s".to_owned());
    }
    Ok(())
}
