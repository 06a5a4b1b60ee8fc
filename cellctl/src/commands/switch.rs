//! `cellctl switch` / `reverse` / `complete` (issue 12 item 2): the traffic
//! steps of a parallel expansion, as Vitess operators know them from
//! resharding, but with nothing copied: only `minting.epoch` moves.
//!
//! - **switch** moves minting to the epoch `expand` added
//!   ([`plan::switch`], which records `minting.switched_from` and
//!   `switched_at`). Before anything is planned it checks every new cell
//!   (owning suffixes in that epoch and none in the minting one): each of its
//!   logic servers must answer the gRPC health check `SERVING` and its order
//!   DB must answer the status query (which reads the migrated tables). One
//!   that does not is named with its reason and nothing is written, dry run
//!   or not: new envelopes must never be sent to a cell that cannot take them.
//! - **reverse** moves minting back ([`plan::reverse`]); envelopes minted on
//!   the new cells meanwhile keep routing there, since their IDs carry the
//!   new epoch.
//! - **complete** makes the switch final ([`plan::complete`]) once the soak
//!   time (`--soak-secs`, the policy for how long a reverse may still be
//!   needed) has passed since the switch; after it, reverse is refused and
//!   the next expansion may be planned.
//!
//! Each goes through the change module: dry run by default, diff and pool,
//! `--apply` writes atomically and waits for every router and logic server.

use std::{io::Write, path::Path, time::Duration};

use redcell_topology::{Topology, UtcTimestamp, plan};

use super::{
    change::{self, ChangeArgs},
    reconcile,
    status::{Part, db_status, part_status},
};
use crate::{CommandError, load};

/// How long one health probe of a new cell's server or DB may take.
const PROBE: Duration = Duration::from_secs(2);
/// `complete`'s default soak: ten minutes of the new cells minting before a
/// reverse is ruled out.
pub const DEFAULT_SOAK_SECS: u64 = 600;

/// `cellctl switch [--apply]`.
pub fn switch(path: &Path, args: &ChangeArgs, out: &mut impl Write) -> Result<(), CommandError> {
    let topology = load::topology(path)?;
    let from = topology.minting_epoch();
    let to = topology.epochs().last().map_or(from, |epoch| epoch.id);
    check_new_cells(&topology, out)?;
    let now = now()?;
    let what = if from == to {
        "switch".to_owned()
    } else {
        format!("switch minting from epoch {from} to epoch {to}")
    };
    change::run(
        path,
        &what,
        args,
        |topology| plan::switch(topology, now),
        out,
    )
}

/// `cellctl reverse [--apply]`.
pub fn reverse(path: &Path, args: &ChangeArgs, out: &mut impl Write) -> Result<(), CommandError> {
    let topology = load::topology(path)?;
    let what = match topology.switch() {
        Some(switch) => format!(
            "reverse minting from epoch {} to epoch {}",
            topology.minting_epoch(),
            switch.from
        ),
        None => "reverse".to_owned(),
    };
    change::run(path, &what, args, plan::reverse, out)
}

/// `cellctl complete [--soak-secs N] [--apply]`.
pub fn complete(
    path: &Path,
    soak_secs: u64,
    args: &ChangeArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let topology = load::topology(path)?;
    let what = match topology.switch() {
        Some(_) => format!(
            "complete the switch to epoch {} (soak {soak_secs} s)",
            topology.minting_epoch()
        ),
        None => "complete".to_owned(),
    };
    let now = now()?;
    change::run(
        path,
        &what,
        args,
        |topology| plan::complete(topology, now, Duration::from_secs(soak_secs)),
        out,
    )
}

fn now() -> Result<UtcTimestamp, CommandError> {
    UtcTimestamp::from_system_time(std::time::SystemTime::now())
        .ok_or_else(|| CommandError::Input("the system clock is outside 1970-9999".into()))
}

/// Every new cell's servers SERVING and DB reachable, printed; an error
/// naming each that is not.
fn check_new_cells(topology: &Topology, out: &mut impl Write) -> Result<(), CommandError> {
    let pending = topology.pending_cells();
    if pending.is_empty() {
        return Ok(()); // the plan says why there is nothing to switch
    }
    let fingerprint = topology.fingerprint();
    let runtime = reconcile::runtime()?;
    let mut problems = Vec::new();
    writeln!(out, "new cells:")?;
    for cell in pending {
        let (servers, db) = runtime.block_on(async {
            let servers = cell.servers.iter().map(|address| {
                part_status(
                    Part::Server,
                    address.clone(),
                    None,
                    fingerprint.clone(),
                    PROBE,
                )
            });
            let mut probed = Vec::new();
            for server in servers {
                probed.push(server.await);
            }
            (probed, db_status(cell.db.clone(), PROBE).await)
        });
        for server in &servers {
            let reason = server
                .error
                .as_deref()
                .map_or_else(String::new, |error| format!(" ({error})"));
            writeln!(
                out,
                "  {:<8} server {} {}{reason}",
                cell.name, server.address, server.health
            )?;
            if server.health != "SERVING" {
                problems.push(format!(
                    "{} server {} is {}{reason}",
                    cell.name, server.address, server.health
                ));
            }
        }
        if db.reachable {
            writeln!(out, "  {:<8} db     {} reachable", cell.name, db.dsn)?;
        } else {
            let error = db.error.unwrap_or_default();
            writeln!(
                out,
                "  {:<8} db     {} UNREACHABLE ({error})",
                cell.name, db.dsn
            )?;
            problems.push(format!(
                "{} db {} is unreachable ({error})",
                cell.name, db.dsn
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(CommandError::Input(format!(
        "cannot switch: {} of the new cells' parts are not ready; nothing written:\n  {}\n\
         (on a `cellctl up` fleet they start after `expand --apply`; see `cellctl status`)",
        problems.len(),
        problems.join("\n  ")
    )))
}
