//! Call latencies, in an HDR histogram (microseconds, 1 µs to 60 s, three
//! significant digits): percentiles without the bias of averaging.

use std::time::Duration;

use hdrhistogram::Histogram;

#[derive(Debug)]
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Result<Latencies, String> {
        Histogram::new_with_bounds(1, 60_000_000, 3)
            .map(Latencies)
            .map_err(|error| error.to_string())
    }

    /// Records one call; beyond 60 s it counts as 60 s.
    pub fn record(&mut self, took: Duration) {
        self.0
            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// The latency at `quantile` (0.5 = median), in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }
}
