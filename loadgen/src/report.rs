//! The run's report: a table per variant on stdout at the end, and with
//! `--json FILE` every figure (phases, latencies by label, errors by gRPC
//! code, baselines, ratios, cost, the reconcile) as one JSON document.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{baseline::Baseline, cost::Cost, fleet::Reconciled, workload::WorkloadReport};

/// The whole invocation.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunReport {
    /// loadgen's arguments, as typed.
    pub command: String,
    pub workload: String,
    /// "durable (fsync, synchronous_commit, full_page_writes on)" or "fast (fsync off)";
    /// "reused fleet" with --fleet.
    pub postgres: String,
    pub cpus: usize,
    pub variants: Vec<VariantReport>,
}

/// One fleet of one variant.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VariantReport {
    pub variant: String,
    /// Env the fleet was started with for this variant.
    pub env: BTreeMap<String, String>,
    pub cells: usize,
    pub routers: usize,
    pub db_pool: usize,
    pub baselines: Vec<Baseline>,
    pub workload: Option<WorkloadReport>,
    /// target / baseline, by name (`shares_per_sec / hot_claim32 claims/s`).
    pub ratios: BTreeMap<String, f64>,
    pub cost: Option<Cost>,
    pub reconcile: Option<Reconciled>,
    /// Claims `cellctl reconcile` counted that this run added (after − before).
    pub claims_added: Option<u64>,
    /// Every check that failed (empty: the run's money and counts add up).
    pub failures: Vec<String>,
}

/// target figure, baseline, baseline field ("tps" or "rows"), ratio name.
const RATIOS: &[(&str, &str, bool, &str)] = &[
    (
        "shares_per_sec",
        "hot_claim32",
        true,
        "shares_per_sec / hot_claim32 claims/s",
    ),
    (
        "shares_per_sec",
        "hot_claim",
        false,
        "shares_per_sec / hot_claim tps",
    ),
    (
        "opens_per_sec",
        "random_update",
        false,
        "opens_per_sec / random_update tps",
    ),
    (
        "max_sends_per_sec",
        "random_update",
        false,
        "max_sends_per_sec / random_update tps",
    ),
];

/// The target/baseline ratios that apply to a workload's figures.
pub fn ratios(workload: &WorkloadReport, baselines: &[Baseline]) -> BTreeMap<String, f64> {
    let mut ratios = BTreeMap::new();
    for &(figure, baseline, rows, name) in RATIOS {
        let (Some(value), Some(base)) = (
            workload.figures.get(figure),
            baselines.iter().find(|b| b.name == baseline),
        ) else {
            continue;
        };
        let denominator = if rows { base.rows_per_sec } else { base.tps };
        if denominator > 0.0 {
            ratios.insert(name.to_owned(), value / denominator);
        }
    }
    ratios
}

/// The end-of-run tables.
pub fn text(run: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nloadgen {} — PostgreSQL {} — {} CPUs",
        run.workload, run.postgres, run.cpus
    );
    for variant in &run.variants {
        let _ = writeln!(
            out,
            "\n## variant {} ({} cells, {} router(s), db pool {}){}",
            variant.variant,
            variant.cells,
            variant.routers,
            variant.db_pool,
            if variant.failures.is_empty() {
                ""
            } else {
                " — FAILED"
            }
        );
        if let Some(workload) = &variant.workload {
            let _ = writeln!(
                out,
                "\n| phase | call | calls | ok | errors | calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
            for phase in &workload.phases {
                for (label, op) in &phase.ops {
                    let errors: Vec<String> = op
                        .errors
                        .iter()
                        .map(|(code, n)| format!("{code} {n}"))
                        .collect();
                    let _ = writeln!(
                        out,
                        "| {} | {label} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                        phase.name,
                        op.calls,
                        op.ok,
                        if errors.is_empty() {
                            "0".to_owned()
                        } else {
                            errors.join(", ")
                        },
                        op.per_sec,
                        op.p50_ms,
                        op.p90_ms,
                        op.p99_ms,
                        op.p999_ms,
                        op.max_ms
                    );
                }
            }
            let _ = writeln!(out);
            for (name, value) in &workload.figures {
                let _ = writeln!(out, "  {name:<28} {value:.2}");
            }
            let _ = writeln!(
                out,
                "  {:<28} {}{}{}",
                "acknowledged_shares",
                workload.acknowledged_shares,
                if workload.shares_found_on_replay > 0 {
                    format!(
                        " ({} found by replaying Opens that failed)",
                        workload.shares_found_on_replay
                    )
                } else {
                    String::new()
                },
                workload
                    .expected_shares
                    .map(|e| format!(" (expected {e})"))
                    .unwrap_or_default()
            );
        }
        if !variant.baselines.is_empty() {
            let _ = writeln!(
                out,
                "\n| baseline (pgbench, same server) | clients | tps | rows/s |"
            );
            let _ = writeln!(out, "|---|---|---|---|");
            for b in &variant.baselines {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.0} |",
                    b.name, b.clients, b.tps, b.rows_per_sec
                );
            }
        }
        for (name, ratio) in &variant.ratios {
            let _ = writeln!(out, "  ratio {name:<40} {ratio:.2}");
        }
        if let Some(cost) = &variant.cost {
            let parts: Vec<String> = cost
                .us_per_call
                .iter()
                .map(|(component, us)| format!("{component} {us:.0}"))
                .collect();
            let _ = writeln!(
                out,
                "  cost: µs CPU per {} ({} calls): {} = {:.0} total; {:.1} cores per 100k/s; {:.0} cores at WeChat's 760k/s",
                cost.per,
                cost.calls,
                parts.join(", "),
                cost.total_us_per_call,
                cost.cores_per_100k,
                cost.cores_at_wechat_peak
            );
        }
        if let Some(reconcile) = &variant.reconcile {
            let _ = writeln!(
                out,
                "  reconcile: {} discrepancies, {} claims ({} added by this run), conservation {}",
                reconcile.discrepancies,
                reconcile.claims,
                variant
                    .claims_added
                    .map_or("?".to_owned(), |n| n.to_string()),
                if reconcile.conservation_holds {
                    "holds"
                } else {
                    "BROKEN"
                }
            );
        }
        for failure in &variant.failures {
            let _ = writeln!(out, "  FAILED: {failure}");
        }
    }
    if run.variants.len() > 1 {
        comparison(run, &mut out);
    }
    out
}

/// Every figure side by side, with the first variant over each other one.
fn comparison(run: &RunReport, out: &mut String) {
    let names: Vec<&str> = run.variants.iter().map(|v| v.variant.as_str()).collect();
    let _ = writeln!(
        out,
        "\n## variants side by side\n\n| figure | {} | {} |",
        names.join(" | "),
        names
            .iter()
            .skip(1)
            .map(|n| format!("{} / {n}", names[0]))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---|".repeat(names.len() * 2 - 1));
    let Some(first) = run.variants.first().and_then(|v| v.workload.as_ref()) else {
        return;
    };
    for name in first.figures.keys() {
        let values: Vec<Option<f64>> = run
            .variants
            .iter()
            .map(|v| {
                v.workload
                    .as_ref()
                    .and_then(|w| w.figures.get(name).copied())
            })
            .collect();
        let cells: Vec<String> = values
            .iter()
            .map(|v| v.map_or("-".into(), |v| format!("{v:.1}")))
            .collect();
        let ratios: Vec<String> = values
            .iter()
            .skip(1)
            .map(|v| match (values[0], v) {
                (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            })
            .collect();
        let _ = writeln!(
            out,
            "| {name} | {} | {} |",
            cells.join(" | "),
            ratios.join(" | ")
        );
    }
}
