//! One Prometheus registry per server instance, and the names it exports.
//!
//! Per instance, not the process-wide default registry: tests run several cells
//! and routers in one process, and each must count only its own calls. Every
//! metric is registered through [`Metrics`], which remembers the series names
//! it will export (`_bucket`, `_sum`, `_count` for histograms), so a test can
//! check that every name the alert rules and dashboards use is one a binary
//! exports, before a single sample was taken (a labelled family with no sample
//! yet is absent from a scrape).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder, core::Collector,
};

/// Latency buckets in seconds, 0.5 ms to 10 s: a lane batch commits in a few
/// milliseconds; a call past the router's deadline is an outage, not a slow call.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The registry of one server instance.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    names: Mutex<BTreeSet<String>>,
}

impl Metrics {
    /// A registry whose every series carries `const_labels` (the cell's name,
    /// the router's region): a dashboard can tell instances apart without
    /// relying on the scraper's relabelling.
    pub fn new(const_labels: &[(&str, &str)]) -> Metrics {
        let labels: HashMap<String, String> = const_labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let registry = Registry::new_custom(None, Some(labels.clone())).unwrap_or_else(|error| {
            tracing::error!(%error, "metric labels refused; exporting without them");
            Registry::new()
        });
        Metrics {
            registry,
            names: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let counter = IntCounter::with_opts(Opts::new(name, help))
            .unwrap_or_else(|error| invalid(name, error, || IntCounter::new("invalid", "-")));
        self.register(counter.clone(), false);
        counter
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let counter = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|error| {
            invalid(name, error, || {
                IntCounterVec::new(Opts::new("invalid", "-"), &[])
            })
        });
        self.register(counter.clone(), false);
        counter
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let gauge = IntGauge::with_opts(Opts::new(name, help))
            .unwrap_or_else(|error| invalid(name, error, || IntGauge::new("invalid", "-")));
        self.register(gauge.clone(), false);
        gauge
    }

    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::with_opts(Opts::new(name, help))
            .unwrap_or_else(|error| invalid(name, error, || Gauge::new("invalid", "-")));
        self.register(gauge.clone(), false);
        gauge
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let gauge = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|error| {
            invalid(name, error, || {
                IntGaugeVec::new(Opts::new("invalid", "-"), &[])
            })
        });
        self.register(gauge.clone(), false);
        gauge
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let histogram = HistogramVec::new(opts, labels).unwrap_or_else(|error| {
            invalid(name, error, || {
                HistogramVec::new(HistogramOpts::new("invalid", "-"), &[])
            })
        });
        self.register(histogram.clone(), true);
        histogram
    }

    /// Registers and remembers the names; a refusal (a name registered twice,
    /// a programming error) is logged, never a panic on a server.
    fn register(&self, collector: impl Collector + 'static, histogram: bool) {
        let names: Vec<String> = collector
            .desc()
            .iter()
            .map(|desc| desc.fq_name.clone())
            .collect();
        if let Err(error) = self.registry.register(Box::new(collector)) {
            tracing::error!(?names, %error, "metric not registered");
            return;
        }
        if let Ok(mut known) = self.names.lock() {
            for name in names {
                if histogram {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        known.insert(format!("{name}{suffix}"));
                    }
                } else {
                    known.insert(name);
                }
            }
        }
    }

    /// Every series name this registry can export.
    pub fn exported_names(&self) -> BTreeSet<String> {
        self.names
            .lock()
            .map(|names| names.clone())
            .unwrap_or_default()
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "metrics not encoded");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// A metric that could not be built (an invalid name: a programming error the
/// names test catches) is logged and replaced by an unregistered stand-in, so
/// a server never panics over its own instrumentation.
#[allow(clippy::expect_used)]
fn invalid<M>(
    name: &str,
    error: prometheus::Error,
    fallback: impl FnOnce() -> prometheus::Result<M>,
) -> M {
    tracing::error!(name, %error, "invalid metric");
    fallback().expect("the stand-in's name and labels are valid")
}

/// The series `cellctl reconcile --metrics-file` writes (node_exporter's
/// textfile collector format): reconcile runs as a command, not a server, so
/// its outcome reaches Prometheus as a file the node's exporter serves.
pub const RECONCILE_SERIES: &[&str] = &[
    "redcell_reconcile_discrepancies",
    "redcell_reconcile_last_run_timestamp_seconds",
];

/// The textfile of one reconcile run: discrepancies per cell (every cell
/// checked, zeros included, so an alert clears) and when it ran.
pub fn reconcile_textfile(per_cell: &[(&str, usize)], ran_at_unix_seconds: u64) -> String {
    let mut text = String::from(
        "# HELP redcell_reconcile_discrepancies Discrepancies the last cellctl reconcile found, by cell\n\
         # TYPE redcell_reconcile_discrepancies gauge\n",
    );
    for (cell, count) in per_cell {
        let cell = cell.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!(
            "redcell_reconcile_discrepancies{{cell=\"{cell}\"}} {count}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP redcell_reconcile_last_run_timestamp_seconds When cellctl reconcile last finished (Unix time)\n\
         # TYPE redcell_reconcile_last_run_timestamp_seconds gauge\n\
         redcell_reconcile_last_run_timestamp_seconds {ran_at_unix_seconds}\n"
    ));
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_known_before_any_sample_and_histograms_expand() {
        let metrics = Metrics::new(&[("cell", "n1")]);
        let counter = metrics.counter_vec("redcell_test_total", "help", &["code"]);
        metrics.histogram_vec("redcell_test_seconds", "help", &[], LATENCY_BUCKETS);
        let names = metrics.exported_names();
        assert!(names.contains("redcell_test_total"));
        for suffix in ["_bucket", "_sum", "_count"] {
            assert!(names.contains(&format!("redcell_test_seconds{suffix}")));
        }
        // A labelled family with no sample is absent from a scrape ...
        assert!(!metrics.render().contains("redcell_test_total{"));
        counter.with_label_values(&["OK"]).inc();
        // ... and carries the constant label once it has one.
        let text = metrics.render();
        assert!(
            text.contains("redcell_test_total{code=\"OK\",cell=\"n1\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_name_registered_twice_is_logged_not_a_panic() {
        let metrics = Metrics::new(&[]);
        metrics.counter("redcell_twice_total", "help").inc();
        metrics.counter("redcell_twice_total", "help").inc_by(5);
        assert!(metrics.render().contains("redcell_twice_total 1"));
    }

    #[test]
    fn the_reconcile_textfile_has_every_cell_and_the_run_time() {
        let text = reconcile_textfile(&[("n1", 0), ("n2", 3), ("fleet", 0)], 1_700_000_000);
        assert!(text.contains("redcell_reconcile_discrepancies{cell=\"n1\"} 0\n"));
        assert!(text.contains("redcell_reconcile_discrepancies{cell=\"n2\"} 3\n"));
        assert!(text.contains("redcell_reconcile_last_run_timestamp_seconds 1700000000\n"));
        for name in RECONCILE_SERIES {
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
        }
    }
}

/// The topology a server serves, as the fleet view shows it: the version of
/// cells.yaml in force, and rereads of the file by result. Cells and routers
/// both export it, under their own prefix.
#[derive(Debug)]
pub struct TopologyMetrics {
    version: IntGauge,
    reloads: prometheus::IntCounterVec,
    /// The handle's counts already added to `reloads` (the handle counts on
    /// its own; a sample adds what is new since the last one).
    seen_ok: std::sync::atomic::AtomicU64,
    seen_refused: std::sync::atomic::AtomicU64,
}

impl TopologyMetrics {
    /// Registers `redcell_<component>_topology_version` and
    /// `redcell_<component>_topology_reloads_total{result}`.
    pub fn new(metrics: &Metrics, component: &str) -> TopologyMetrics {
        TopologyMetrics {
            version: metrics.gauge(
                &format!("redcell_{component}_topology_version"),
                &format!("Version of the topology this {component} serves"),
            ),
            reloads: metrics.counter_vec(
                &format!("redcell_{component}_topology_reloads_total"),
                "Topology file rereads that changed it, by result (ok: swapped in; refused: invalid, old one kept)",
                &["result"],
            ),
            seen_ok: Default::default(),
            seen_refused: Default::default(),
        }
    }

    /// Brings the gauge and the counters up to `handle`'s topology and counts.
    pub fn observe(&self, handle: &crate::TopologyHandle) {
        use std::sync::atomic::Ordering;
        self.version
            .set(i64::from(handle.load().document().version));
        for (result, now, seen) in [
            ("ok", handle.reloads(), &self.seen_ok),
            ("refused", handle.refused(), &self.seen_refused),
        ] {
            let before = seen.swap(now, Ordering::Relaxed);
            self.reloads
                .with_label_values(&[result])
                .inc_by(now.saturating_sub(before));
        }
    }
}
