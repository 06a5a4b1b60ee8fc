//! Counters of one logic server, readable by its embedder (tests, and the
//! Prometheus exporter of DESIGN §9 when it lands). Atomic, lock-free: they sit
//! on the request path.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct CellMetrics {
    /// Grab, Open and Get calls that reached this server's operations.
    envelope_requests: AtomicU64,
    /// Send calls.
    sends: AtomicU64,
}

impl CellMetrics {
    pub fn envelope_requests(&self) -> u64 {
        self.envelope_requests.load(Ordering::Relaxed)
    }

    pub fn sends(&self) -> u64 {
        self.sends.load(Ordering::Relaxed)
    }

    pub(crate) fn count_envelope_request(&self) {
        self.envelope_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_send(&self) {
        self.sends.fetch_add(1, Ordering::Relaxed);
    }
}
