//! A timed phase of a benchmark: many calls, at most `concurrency` in flight,
//! each call's latency in an HDR histogram, the phase's wall time around all.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use tonic::Status;

use crate::latency::Latencies;

/// A call to time.
pub type Call<T> = std::pin::Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

/// One phase's numbers.
#[derive(Debug)]
pub struct Phase {
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Latencies,
}

impl Phase {
    /// Calls per second over the phase's wall time.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `calls` concurrently (at most `concurrency` at once, at least one)
/// and times each; returns the phase and the answers of the calls that
/// succeeded (the first failures are printed to stderr).
pub async fn timed<T: Send + 'static>(
    concurrency: usize,
    calls: Vec<Call<T>>,
) -> Result<(Phase, Vec<T>), String> {
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(calls.len());
    for call in calls {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let result = call.await;
            drop(permit);
            (begun.elapsed(), result)
        }));
    }
    let mut latency = Latencies::new()?;
    let mut answers = Vec::new();
    let mut errors = 0;
    let calls = tasks.len() as u64;
    for task in tasks {
        let (took, result) = task.await.map_err(|e| e.to_string())?;
        latency.record(took);
        match result {
            Ok(answer) => answers.push(answer),
            Err(status) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("loadgen: call failed: {status}");
                }
            }
        }
    }
    let phase = Phase {
        calls,
        errors,
        elapsed: started.elapsed(),
        latency,
    };
    Ok((phase, answers))
}
