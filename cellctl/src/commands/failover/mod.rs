//! `cellctl failover CELL [--apply]`: the cell's database server is replaced
//! by its synchronous standby (issue 11 item 3), on a fleet from `cellctl up
//! --standby`.
//!
//! 1. **Find** the server of CELL's `db` (its port) and the standby recorded
//!    for it ([`roles`]); refuse without one. Every cell on that server moves
//!    with it (a server is promoted whole). A server that also holds the
//!    ledger is refused: the ledger DSN is a start-up flag of every logic
//!    server and cannot be repointed live.
//! 2. **Check** that the standby is caught up ([`lag`], the exact rule), and
//!    validate the cells.yaml edit ([`repoint`]); refuse before touching
//!    anything otherwise.
//! 3. **Show** the plan: the primary and standby as seen, the steps, and the
//!    cells.yaml diff with `promote postgres-<port>` (through the change
//!    module). Without `--apply` that is all.
//! 4. **Apply**: fence the old primary ([`fence`]), promote the standby
//!    (`pg_promote(wait => true)`), then write cells.yaml through
//!    [`change::run`], which signals the fleet and waits until every logic
//!    server and router reports the new topology; the logic servers follow
//!    their `db` from it without a restart.
//!
//! A rerun after a partial apply finishes it: an old primary already fenced
//! and a standby already promoted are skipped, and the file is written.
//! `--apply` never prompts (a promotion is not undone by answering "n").

mod fence;
mod lag;
mod repoint;

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    change::{self, ChangeArgs},
    reconcile,
    state_dir::StateDir,
    up::{
        plan::{PgPlan, Plan, StandbyChoice, StandbyPlan, local_database},
        roles,
    },
};
use crate::{CommandError, load};

/// `cellctl failover`'s arguments.
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The cell whose database server is replaced by its standby (with every
    /// other cell on that server).
    pub cell: String,
    /// How long the standby may take to replay what it has before it is
    /// refused as behind.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(0..=3600)
    )]
    pub catch_up_secs: u64,
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// What is failed over.
struct Target {
    cell: String,
    server: PgPlan,
    standby: StandbyPlan,
    /// The cells on the server, in topology order.
    moves: Vec<String>,
}

impl Target {
    fn what(&self) -> String {
        format!(
            "failover {}: promote {}, fence {}",
            self.cell,
            self.standby.part(),
            self.server.part()
        )
    }
}

pub fn run(path: &Path, args: FailoverArgs, out: &mut impl Write) -> Result<(), CommandError> {
    let topology = load::topology(path)?;
    let state = StateDir::at(&args.change.state_dir)?;
    let target = find(&topology, &state, &args.cell)?;
    let (from, to) = (target.server.port, target.standby.port);
    change::plan(path, |topology| repoint::plan(topology, from, to))
        .map_err(|error| CommandError::Input(format!("cannot failover {}: {error}", args.cell)))?;

    let runtime = reconcile::runtime()?;
    let name = target.standby.name();
    let pair = lag::Pair {
        primary: from,
        standby: to,
        superuser: &target.server.superuser,
        name: &name,
    };
    let verdict = runtime
        .block_on(lag::check(&pair, Duration::from_secs(args.catch_up_secs)))
        .map_err(|error| refused(&target, &error))?;
    let fenced = roles::fenced(&state, from);
    show(&target, &verdict, fenced.as_deref(), out)?;
    let promoted = !verdict.standby.in_recovery;
    if promoted && fenced.is_none() {
        return Err(refused(
            &target,
            &format!(
                "{} is out of recovery already but {} is not fenced: two servers may take \
                 writes; stop {} by hand and check both before anything else",
                target.standby.part(),
                target.server.part(),
                target.server.part()
            ),
        ));
    }
    if !promoted && let Some(behind) = &verdict.behind {
        return Err(refused(
            &target,
            &format!(
                "{} is behind: {behind} (after waiting {}s, --catch-up-secs)",
                target.standby.part(),
                args.catch_up_secs
            ),
        ));
    }
    let make = |topology: &redcell_topology::Topology| repoint::plan(topology, from, to);
    if !args.change.apply {
        let dry = ChangeArgs {
            dry_run: true,
            ..args.change.clone()
        };
        return change::run(path, &target.what(), &dry, make, out);
    }

    let started = Instant::now();
    switch(
        &runtime,
        &state,
        &target,
        fenced.is_none(),
        !promoted,
        started,
        out,
    )?;
    drop(runtime);
    change::run(path, &target.what(), &args.change, make, out)?;
    writeln!(
        out,
        "failover {} done in {} ms: {} now on {}",
        target.cell,
        started.elapsed().as_millis(),
        target.moves.join(", "),
        target.standby.part()
    )?;
    Ok(())
}

/// Fences the old primary and promotes the standby, each unless done by an
/// earlier run; says what it did.
fn switch(
    runtime: &tokio::runtime::Runtime,
    state: &StateDir,
    target: &Target,
    fence: bool,
    promote: bool,
    started: Instant,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    if fence {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let why = format!(
            "failed over to {} by `cellctl failover {}` at unix time {at}",
            target.standby.part(),
            target.cell
        );
        writeln!(out, "{}", fence::fence(state, target.server.port, &why)?)?;
    }
    if promote {
        runtime
            .block_on(lag::promote(target.standby.port, &target.server.superuser))
            .map_err(|error| {
                CommandError::Input(format!(
                    "{} is fenced, but promoting {} failed: {error}; run failover again",
                    target.server.part(),
                    target.standby.part()
                ))
            })?;
        writeln!(
            out,
            "promoted {}: it takes writes ({} ms after --apply)",
            target.standby.part(),
            started.elapsed().as_millis()
        )?;
    }
    Ok(())
}

/// The server of `cell`, its standby, and every cell that moves with it.
fn find(
    topology: &redcell_topology::Topology,
    state: &StateDir,
    cell: &str,
) -> Result<Target, CommandError> {
    let Some(found) = topology.cell(cell) else {
        let known: Vec<&str> = topology.cells().iter().map(|c| c.name.as_str()).collect();
        return Err(CommandError::Input(format!(
            "CELL: unknown cell {cell:?} (cells: {})",
            known.join(", ")
        )));
    };
    let (port, _, _) = local_database(&found.db).map_err(|reason| {
        CommandError::Input(format!(
            "cannot failover {cell}: its db {reason}; failover promotes standbys `cellctl up` runs"
        ))
    })?;
    let pairs: Vec<(u16, u16)> = roles::pairs(state)?
        .into_iter()
        .map(|pair| (pair.primary, pair.standby))
        .collect();
    if !pairs.iter().any(|(primary, _)| *primary == port) {
        return Err(CommandError::Input(format!(
            "cannot failover {cell}: its database server postgres-{port} has no standby in {} \
             (start the fleet with `cellctl up --standby`)",
            state.root().display()
        )));
    }
    let ledger_dsn = state.read_record(&state.ledger_dsn_file())?;
    let standbys = StandbyChoice {
        offset: None,
        recorded: pairs,
        ..StandbyChoice::default()
    };
    let plan = Plan::new(
        topology,
        &ledger_dsn,
        1,
        ([127, 0, 0, 1], 0).into(),
        &standbys,
    )
    .map_err(|errors| {
        CommandError::Input(format!(
            "cannot failover {cell}: the fleet cannot be planned:\n  {}",
            errors.join("\n  ")
        ))
    })?;
    let Some((server, standby)) = plan
        .postgres
        .into_iter()
        .find(|pg| pg.port == port)
        .and_then(|pg| Some((pg.clone(), pg.standby?)))
    else {
        return Err(CommandError::Input(format!(
            "cannot failover {cell}: postgres-{port} is not in the plan of {}",
            state.root().display()
        )));
    };
    if server.databases.iter().any(|db| db.label == "ledger") {
        return Err(CommandError::Input(format!(
            "cannot failover {cell}: {} also holds the ledger ({}), whose DSN every logic \
             server takes as a start-up flag and cannot follow live; give the ledger its own \
             server",
            server.part(),
            redcell_migrations::display_dsn(&ledger_dsn)
        )));
    }
    let moves = topology
        .cells()
        .iter()
        .filter(|c| local_database(&c.db).is_ok_and(|(p, _, _)| p == port))
        .map(|c| c.name.clone())
        .collect();
    Ok(Target {
        cell: cell.to_owned(),
        server,
        standby,
        moves,
    })
}

fn refused(target: &Target, why: &str) -> CommandError {
    CommandError::Input(format!(
        "cannot failover {}: {why}; nothing was changed",
        target.cell
    ))
}

/// The pair as seen and the steps, before the change module's diff.
fn show(
    target: &Target,
    verdict: &lag::Verdict,
    fenced: Option<&str>,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let lsn = |lsn: Option<lag::Lsn>| lsn.map_or_else(|| "-".to_owned(), |lsn| lsn.to_string());
    writeln!(
        out,
        "failover {}: {} -> its synchronous standby {}",
        target.cell,
        target.server.part(),
        target.standby.part()
    )?;
    let primary = match (&verdict.primary, fenced) {
        (_, Some(why)) => format!("fenced ({why})"),
        (lag::Primary::Running { flush, .. }, None) => format!("running, flushed {flush}"),
        (lag::Primary::Down(why), None) => format!("down ({why})"),
    };
    writeln!(out, "  primary  {}: {primary}", target.server.part())?;
    let standby = &verdict.standby;
    let state = if !standby.in_recovery {
        "promoted already".to_owned()
    } else if verdict.behind.is_none() {
        "caught up".to_owned()
    } else {
        "BEHIND".to_owned()
    };
    writeln!(
        out,
        "  standby  {}: received {}, replayed {}: {state}",
        target.standby.part(),
        lsn(standby.receive),
        lsn(standby.replay)
    )?;
    let databases: Vec<String> = target
        .server
        .databases
        .iter()
        .map(|db| format!("{} ({})", db.label, db.name))
        .collect();
    writeln!(out, "  moves    {}", databases.join(", "))?;
    writeln!(
        out,
        "  steps    fence {}, promote {}, point {} at port {} in cells.yaml",
        target.server.part(),
        target.standby.part(),
        target.moves.join(", "),
        target.standby.port
    )?;
    Ok(())
}
