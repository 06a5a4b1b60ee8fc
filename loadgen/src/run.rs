//! One invocation: validate, then per variant a fleet, its baselines, the
//! workload, the cost, the reconcile and the checks; the report at the end.

use std::{collections::BTreeMap, io::Write as _, sync::Arc, time::SystemTime};

use crate::{
    Cli, Common, Workload, baseline,
    client::{Routers, Users},
    cost::{Cost, CostProbe},
    fleet::{Fleet, FleetSpec},
    report::{self, RunReport, VariantReport},
    workload::{self, Calls, Context, FUND_CENTS, WorkloadReport},
};

/// Default open-loop rates of the workloads that are always open loop.
const FESTIVAL_RATE: f64 = 200.0;
const BURST_RATE: f64 = 100.0;
/// `--admin-port-offset` of a fleet loadgen starts.
const DEFAULT_ADMIN_PORT_OFFSET: u16 = 1000;

/// Runs every variant; `Ok(false)` when a check failed.
pub async fn run(cli: Cli) -> Result<bool, String> {
    let common = &cli.common;
    let variants = common
        .variants
        .iter()
        .map(|name| variant_env(name).map(|env| (name.clone(), env)))
        .collect::<Result<Vec<_>, _>>()?;
    if common.fleet.is_some() && variants.len() > 1 {
        return Err("--variants: a reused --fleet runs one variant (its own settings)".into());
    }
    if let Some(rate) = common.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(format!("--rate: must be a positive number, got {rate}"));
    }
    if !(common.duration.is_finite() && common.duration > 0.0) {
        return Err(format!(
            "--duration: must be positive, got {}",
            common.duration
        ));
    }
    if common.senders == 0 {
        return Err("--senders: must be at least 1".into());
    }
    let mut reports = Vec::new();
    for (name, env) in variants {
        eprintln!("loadgen: variant {name}");
        reports.push(run_variant(&cli, &name, env).await?);
    }
    let run = RunReport {
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        workload: workload_name(&cli.workload).to_owned(),
        postgres: match (&common.fleet, common.fast) {
            (Some(_), _) => "of the reused fleet".into(),
            (None, true) => "fast (fsync off, full_page_writes off, synchronous_commit on)".into(),
            (None, false) => "durable (fsync, synchronous_commit, full_page_writes on)".into(),
        },
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        variants: reports,
    };
    print!("{}", report::text(&run));
    if let Some(path) = &common.json {
        let json = serde_json::to_string_pretty(&run).map_err(|error| error.to_string())?;
        if path.as_os_str() == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json)
                .map_err(|error| format!("--json {}: {error}", path.display()))?;
        }
    }
    let _ = std::io::stdout().flush();
    Ok(run
        .variants
        .iter()
        .all(|variant| variant.failures.is_empty()))
}

fn workload_name(workload: &Workload) -> &'static str {
    match workload {
        Workload::Hot(_) => "hot",
        Workload::Uniform(_) => "uniform",
        Workload::Festival(_) => "festival",
        Workload::Burst(_) => "burst",
        Workload::Kill(_) => "kill",
        Workload::Send => "send",
        Workload::Baseline => "baseline",
    }
}

/// `lane+merged` -> the cells' env.
fn variant_env(name: &str) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for part in name.split('+') {
        let (key, value) = match part.trim() {
            "default" => continue,
            "lane" | "rowlock" => ("REDCELL_OPEN_STRATEGY", part.trim()),
            "merged" | "per-lane" => ("REDCELL_COMMITTER", part.trim()),
            other => {
                return Err(format!(
                    "--variants: unknown {other:?} (lane, rowlock, merged, per-lane, default; join with +)"
                ));
            }
        };
        if env.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("--variants: {name:?} sets {key} twice"));
        }
    }
    Ok(env)
}

/// How many users a workload opens as (each opens an envelope at most once).
fn users_needed(workload: &Workload, common: &Common) -> Result<usize, String> {
    Ok(match workload {
        Workload::Hot(args) => args.sizes(workload::matrix::HOT)?.users,
        Workload::Uniform(args) => args.sizes(workload::matrix::UNIFORM)?.users,
        Workload::Festival(args) => {
            let rate = common.rate.unwrap_or(FESTIVAL_RATE);
            (rate * common.duration * 1.6 * f64::from(args.rounds.max(1))).ceil() as usize + 16
        }
        Workload::Burst(args) => usize::try_from(workload::burst::shares(
            args,
            common.rate.unwrap_or(BURST_RATE),
        ))
        .map_err(|_| "--rate: too high")?,
        Workload::Kill(args) => args.shares as usize,
        Workload::Send | Workload::Baseline => 1,
    })
}

async fn run_variant(
    cli: &Cli,
    name: &str,
    env: BTreeMap<String, String>,
) -> Result<VariantReport, String> {
    let common = &cli.common;
    let mut fleet = match &common.fleet {
        Some(state_dir) => Fleet::attach(state_dir, common.admin_port_offset)?,
        None => Fleet::start(&FleetSpec {
            cells: common.cells,
            // `kill` needs a cell's second server to fail over to.
            servers_per_cell: common.servers_per_cell.unwrap_or(
                if let Workload::Kill(_) = cli.workload {
                    2
                } else {
                    1
                },
            ),
            restart_crashed: matches!(&cli.workload, Workload::Kill(args) if args.restart_crashed),
            routers: common.routers,
            fast: common.fast,
            admin_port_offset: common
                .admin_port_offset
                .unwrap_or(DEFAULT_ADMIN_PORT_OFFSET),
            env: env.clone().into_iter().collect(),
            keep_state: common.keep_state,
        })?,
    };
    let mut report = VariantReport {
        variant: name.to_owned(),
        env,
        cells: fleet.topology.cells().len(),
        routers: fleet.routers.len(),
        db_pool: fleet.db_pool,
        baselines: Vec::new(),
        workload: None,
        ratios: BTreeMap::new(),
        cost: None,
        reconcile: None,
        claims_added: None,
        failures: Vec::new(),
    };
    let is_baseline = matches!(cli.workload, Workload::Baseline);
    if !common.no_baseline || is_baseline {
        report.baselines = baseline::run(&fleet, common.baseline_secs).await?;
    }
    if !is_baseline {
        let before = fleet.reconcile()?;
        let outcome = workload(cli, &fleet).await;
        let after = fleet.reconcile()?;
        let (workload, cost) = outcome?;
        check(&mut report, &workload, &before, &after);
        report.ratios = report::ratios(&workload, &report.baselines);
        report.cost = cost;
        report.workload = Some(workload);
        report.reconcile = Some(after);
    }
    fleet.down()?;
    Ok(report)
}

/// The money and the counts: reconcile clean, conservation holds, the claims
/// the run added are the shares it was told it took (and all of them, when
/// the workload knows how many).
fn check(
    report: &mut VariantReport,
    workload: &WorkloadReport,
    before: &crate::fleet::Reconciled,
    after: &crate::fleet::Reconciled,
) {
    if after.discrepancies != 0 {
        report.failures.push(format!(
            "cellctl reconcile: {} discrepancies:\n{}",
            after.discrepancies, after.output
        ));
    }
    if !after.conservation_holds {
        report
            .failures
            .push(format!("conservation broken:\n{}", after.output));
    }
    let added = after.claims.saturating_sub(before.claims);
    report.claims_added = Some(added);
    if added != workload.acknowledged_shares {
        report.failures.push(format!(
            "the cells hold {added} new claims but {} Opens were answered AVAILABLE",
            workload.acknowledged_shares
        ));
    }
    if let Some(expected) = workload.expected_shares
        && expected != workload.acknowledged_shares
    {
        report.failures.push(format!(
            "{} shares taken, expected {expected} (every share of every envelope)",
            workload.acknowledged_shares
        ));
    }
}

/// Users, senders, funds, then the workload; its cost over the measured phase.
async fn workload(cli: &Cli, fleet: &Fleet) -> Result<(WorkloadReport, Option<Cost>), String> {
    let common = &cli.common;
    let users = Users::mint(&fleet.hs256_key, "u", users_needed(&cli.workload, common)?)?;
    let senders = Users::mint(&fleet.hs256_key, "s", common.senders)?;
    workload::fund_senders(fleet, common.senders, FUND_CENTS)?;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let mut context = Context {
        ops: Calls {
            routers: Arc::new(Routers::connect(&fleet.routers)?),
            users: Arc::new(users),
            senders: Arc::new(senders),
            unresolved: Arc::default(),
        },
        run_id: format!("lg{nanos}"),
        cost: CostProbe::new(&fleet.part_pids()),
        measured: None,
        cell_metrics: fleet.cell_metrics.clone(),
    };
    let report = match &cli.workload {
        Workload::Hot(args) => {
            let sizes = args.sizes(workload::matrix::HOT)?;
            workload::matrix::run(
                &mut context,
                "hot",
                sizes,
                args.at_half,
                common.rate,
                common.concurrency,
            )
            .await?
        }
        Workload::Uniform(args) => {
            let sizes = args.sizes(workload::matrix::UNIFORM)?;
            workload::matrix::run(
                &mut context,
                "uniform",
                sizes,
                args.at_half,
                common.rate,
                common.concurrency,
            )
            .await?
        }
        Workload::Festival(args) => {
            let rate = common.rate.unwrap_or(FESTIVAL_RATE);
            workload::festival::run(&mut context, args, rate, common.duration).await?
        }
        Workload::Burst(args) => {
            workload::burst::run(&mut context, args, common.rate.unwrap_or(BURST_RATE)).await?
        }
        Workload::Kill(args) => workload::kill::run(&mut context, args, fleet, common).await?,
        Workload::Send => {
            workload::send::run(
                &mut context,
                common.senders,
                common.rate,
                common.concurrency,
                common.duration,
            )
            .await?
        }
        Workload::Baseline => return Err("baseline runs no workload".into()),
    };
    let mut report = report;
    let found = workload::resolve_unknown_opens(&context.ops).await?;
    report.shares_found_on_replay = found;
    report.acknowledged_shares += found;
    let cost = context.measured.as_ref().map(|(before, after)| {
        let (per, calls) = if report.measured_opens > 0 {
            ("open", report.measured_opens)
        } else {
            ("send", report.measured_sends)
        };
        Cost::between(before, after, per, calls)
    });
    Ok((report, cost))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::variant_env;

    #[test]
    fn variants_name_the_cells_env_and_refuse_unknowns() {
        assert!(variant_env("default").unwrap().is_empty());
        let env = variant_env("rowlock+per-lane").unwrap();
        assert_eq!(env["REDCELL_OPEN_STRATEGY"], "rowlock");
        assert_eq!(env["REDCELL_COMMITTER"], "per-lane");
        assert!(variant_env("lane+rowlock").unwrap_err().contains("twice"));
        assert!(variant_env("fast").unwrap_err().contains("--variants"));
    }
}
