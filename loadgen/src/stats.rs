//! What one timed phase saw, per operation label ("open", "open-cold",
//! "send", ...): an HDR histogram of latencies (µs, 1 µs to 60 s, three
//! significant digits), the errors by gRPC code, and the outcomes that the
//! money checks add up (shares taken and their cents, exhausted answers,
//! envelopes sent).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Status;

/// What a successful call answered, as far as the counts need it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Open: the caller took a share of `cents`.
    Taken { cents: i64 },
    /// Open: no share left (or expired).
    Empty,
    /// Send: a new envelope.
    Sent { id: String },
    /// Grab: answered (writes nothing).
    Grabbed,
}

/// One label's numbers while the phase runs.
#[derive(Debug)]
struct Series {
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// The first message of each code.
    messages: BTreeMap<String, String>,
    /// Offset from the phase start of the latest completion.
    last_done: Duration,
}

/// Everything a phase records; one per phase, behind a mutex in the driver.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    /// An empty histogram with the bounds every series uses.
    empty_histogram: Histogram<u64>,
    series: BTreeMap<&'static str, Series>,
    pub taken: u64,
    pub taken_cents: i64,
    pub empty: u64,
    pub sent: Vec<String>,
    /// Offset of the latest completion that took a share.
    last_taken: Duration,
}

impl Recorder {
    pub fn new(started: Instant) -> Result<Recorder, String> {
        let empty_histogram = Histogram::new_with_bounds(1, 60_000_000, 3)
            .map_err(|error| format!("histogram: {error}"))?;
        Ok(Recorder {
            started,
            empty_histogram,
            series: BTreeMap::new(),
            taken: 0,
            taken_cents: 0,
            empty: 0,
            sent: Vec::new(),
            last_taken: Duration::ZERO,
        })
    }

    /// One finished call: `took` is from its intended start (open loop) or
    /// its actual start (closed loop).
    pub fn record(&mut self, label: &'static str, took: Duration, result: Result<Outcome, Status>) {
        let done = self.started.elapsed();
        let empty = &self.empty_histogram;
        let series = self.series.entry(label).or_insert_with(|| Series {
            latency: empty.clone(),
            ok: 0,
            errors: BTreeMap::new(),
            messages: BTreeMap::new(),
            last_done: Duration::ZERO,
        });
        series
            .latency
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        series.last_done = series.last_done.max(done);
        match result {
            Ok(outcome) => {
                series.ok += 1;
                match outcome {
                    Outcome::Taken { cents } => {
                        self.taken += 1;
                        self.taken_cents += cents;
                        self.last_taken = self.last_taken.max(done);
                    }
                    Outcome::Empty => self.empty += 1,
                    Outcome::Sent { id } => self.sent.push(id),
                    Outcome::Grabbed => {}
                }
            }
            Err(status) => {
                let code = format!("{:?}", status.code());
                series
                    .messages
                    .entry(code.clone())
                    .or_insert_with(|| status.message().to_owned());
                *series.errors.entry(code).or_default() += 1;
            }
        }
    }

    /// The phase's summary, `elapsed` being its wall time.
    pub fn summary(&self, name: &str, elapsed: Duration, peak_in_flight: u64) -> PhaseSummary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ops = self
            .series
            .iter()
            .map(|(label, series)| {
                let errors: u64 = series.errors.values().sum();
                let calls = series.ok + errors;
                let ms = |q: f64| series.latency.value_at_quantile(q) as f64 / 1000.0;
                (
                    (*label).to_owned(),
                    OpSummary {
                        calls,
                        ok: series.ok,
                        errors: series.errors.clone(),
                        error_messages: series.messages.clone(),
                        per_sec: calls as f64 / secs,
                        p50_ms: ms(0.5),
                        p90_ms: ms(0.9),
                        p99_ms: ms(0.99),
                        p999_ms: ms(0.999),
                        max_ms: series.latency.max() as f64 / 1000.0,
                        last_done_secs: series.last_done.as_secs_f64(),
                    },
                )
            })
            .collect();
        let taken_secs = self.last_taken.as_secs_f64();
        PhaseSummary {
            name: name.to_owned(),
            elapsed_secs: elapsed.as_secs_f64(),
            ops,
            shares_taken: self.taken,
            shares_taken_cents: self.taken_cents,
            empty_answers: self.empty,
            envelopes_sent: self.sent.len() as u64,
            shares_per_sec: if taken_secs > 0.0 {
                self.taken as f64 / taken_secs
            } else {
                0.0
            },
            peak_in_flight,
            sent_ids: self.sent.clone(),
        }
    }
}

/// One label of a phase, as reported.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OpSummary {
    pub calls: u64,
    pub ok: u64,
    /// gRPC code name -> count.
    pub errors: BTreeMap<String, u64>,
    /// gRPC code name -> the first message seen with it.
    pub error_messages: BTreeMap<String, String>,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// When (from the phase start) the label's last call finished.
    pub last_done_secs: f64,
}

/// One phase, as reported.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PhaseSummary {
    pub name: String,
    pub elapsed_secs: f64,
    pub ops: BTreeMap<String, OpSummary>,
    /// Opens answered AVAILABLE (each user opens an envelope at most once, so
    /// these are distinct shares).
    pub shares_taken: u64,
    pub shares_taken_cents: i64,
    pub empty_answers: u64,
    pub envelopes_sent: u64,
    /// Shares taken over the time to the last share taken (the Opens after
    /// every share is gone are answered from memory and would inflate it).
    pub shares_per_sec: f64,
    /// Most calls in flight at the client at once.
    pub peak_in_flight: u64,
    /// The envelopes the phase's Sends created (not reported).
    #[serde(skip)]
    pub sent_ids: Vec<String>,
}

impl PhaseSummary {
    pub fn op(&self, label: &str) -> Option<&OpSummary> {
        self.ops.get(label)
    }
}
