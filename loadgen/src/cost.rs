//! The cost model: CPU seconds each component spent over the measured phase,
//! from `/proc/<pid>/stat` (utime + stime), per Open and per Send.
//!
//! Components: `loadgen` (this process), `router` and `cell` (the processes
//! `cellctl up` recorded in its pid files), `postgres` (every server's
//! postmaster, its live children — backends, WAL writer, checkpointer — and
//! the children it has already reaped, cutime + cstime of the postmaster).
//! Times are in clock ticks of 1/100 s (USER_HZ, 100 on every Linux this
//! runs on), so a short phase's figures are coarse; the report divides by
//! the calls of the measured phase.

use std::collections::BTreeMap;

use serde::Serialize;

/// USER_HZ: the unit of /proc times.
const TICKS_PER_SEC: f64 = 100.0;

/// WeChat's published red-envelope peak (requests per second).
pub const WECHAT_PEAK_PER_SEC: f64 = 760_000.0;

/// The processes to account, by component.
#[derive(Debug, Clone)]
pub struct CostProbe {
    parts: Vec<(&'static str, u32)>,
}

/// CPU seconds per component at one moment.
pub type CpuSnapshot = BTreeMap<&'static str, f64>;

impl CostProbe {
    /// This process and the fleet's parts (`cell-…`, `router-…`, `postgres-…`).
    pub fn new(parts: &[(String, u32)]) -> CostProbe {
        let mut accounted = vec![("loadgen", std::process::id())];
        for (part, pid) in parts {
            let component = if part.starts_with("cell-") {
                "cell"
            } else if part.starts_with("router-") {
                "router"
            } else if part.starts_with("postgres-") {
                "postgres"
            } else {
                continue;
            };
            accounted.push((component, *pid));
        }
        CostProbe { parts: accounted }
    }

    pub fn snapshot(&self) -> CpuSnapshot {
        let mut snapshot = CpuSnapshot::new();
        for &(component, pid) in &self.parts {
            let mut ticks = 0;
            if let Some(stat) = Stat::read(pid) {
                ticks += stat.utime + stat.stime;
                if component == "postgres" {
                    ticks += stat.cutime + stat.cstime;
                    for child in redcell_pgsys::process_tree::children_of(pid) {
                        if let Some(child) = Stat::read(child) {
                            ticks += child.utime + child.stime;
                        }
                    }
                }
            }
            *snapshot.entry(component).or_default() += ticks as f64 / TICKS_PER_SEC;
        }
        snapshot
    }
}

/// The fields of `/proc/<pid>/stat` the model reads.
#[derive(Debug)]
struct Stat {
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl Stat {
    fn read(pid: u32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces: fields start after its ')'.
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
        // Field 3 (state) is fields[0]; utime is field 14.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            cutime: field(16)?,
            cstime: field(17)?,
        })
    }
}

/// The cost of one measured phase.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Cost {
    /// CPU seconds per component over the phase.
    pub cpu_secs: BTreeMap<String, f64>,
    /// µs of CPU per call of the phase's main kind, per component.
    pub us_per_call: BTreeMap<String, f64>,
    /// What the calls were (`open` or `send`) and how many.
    pub per: String,
    pub calls: u64,
    pub total_us_per_call: f64,
    /// Cores busy at 100k calls/s of this kind.
    pub cores_per_100k: f64,
    /// Cores busy at WeChat's 760k requests/s peak, were every request this kind.
    pub cores_at_wechat_peak: f64,
}

impl Cost {
    /// The cost of `calls` calls of kind `per` between two snapshots.
    pub fn between(before: &CpuSnapshot, after: &CpuSnapshot, per: &str, calls: u64) -> Cost {
        let cpu_secs: BTreeMap<String, f64> = after
            .iter()
            .map(|(component, secs)| {
                let start = before.get(component).copied().unwrap_or(0.0);
                ((*component).to_owned(), (secs - start).max(0.0))
            })
            .collect();
        let calls_f = (calls.max(1)) as f64;
        let us_per_call: BTreeMap<String, f64> = cpu_secs
            .iter()
            .map(|(component, secs)| (component.clone(), secs * 1e6 / calls_f))
            .collect();
        let total_us_per_call: f64 = us_per_call.values().sum();
        Cost {
            cpu_secs,
            us_per_call,
            per: per.to_owned(),
            calls,
            total_us_per_call,
            cores_per_100k: total_us_per_call * 100_000.0 / 1e6,
            cores_at_wechat_peak: total_us_per_call * WECHAT_PEAK_PER_SEC / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_the_model_divides() {
        let probe = CostProbe::new(&[]);
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i ^ (spin >> 3));
        }
        assert!(spin != 1);
        let snapshot = probe.snapshot();
        assert!(snapshot["loadgen"] > 0.0, "{snapshot:?}");
        let mut before = CpuSnapshot::new();
        before.insert("cell", 1.0);
        let mut after = CpuSnapshot::new();
        after.insert("cell", 3.0);
        let cost = Cost::between(&before, &after, "open", 1_000_000);
        assert!((cost.us_per_call["cell"] - 2.0).abs() < 1e-9);
        assert!((cost.cores_per_100k - 0.2).abs() < 1e-9);
    }
}
