//! Time as a logic server sees it, and the order DB's time as it decides.
//!
//! Every money decision that depends on time is the database's: it stamps
//! `created_at`/`expires_at`, and expiry, recovery's grace and a lane
//! commit's `expires_at > now()` guard all compare with its `now()`. A logic
//! server's clock may be minutes off (a VM resumed, NTP not yet synced);
//! nothing it believes about the time may refund early, take a share after a
//! refund or cancel a fresh Send.
//!
//! A lane still answers EXPIRED from memory (no round trip per Open). For
//! that it reads [`DbClock::now`]: this server's clock corrected by the offset
//! to the DB's clock that the health probe measures on every probe. Until a
//! first measurement there is no DB time, and the lane never judges expiry
//! itself: the commit's guard does.
//!
//! [`wall`] is the server's own clock. Builds with the `failpoints` feature
//! (tests only) can skew it by `REDCELL_CLOCK_SKEW_SECS` to prove the above
//! with a server whose clock is off; other builds read the system clock.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::{Duration, SystemTime},
};

/// This server's wall clock (skewed in failpoints builds when a test asks).
pub fn wall() -> SystemTime {
    shift(SystemTime::now(), skew_millis())
}

#[cfg(feature = "failpoints")]
static SKEW_MILLIS: AtomicI64 = AtomicI64::new(0);

#[cfg(feature = "failpoints")]
fn skew_millis() -> i64 {
    SKEW_MILLIS.load(Ordering::Relaxed)
}

#[cfg(not(feature = "failpoints"))]
fn skew_millis() -> i64 {
    0
}

/// Tests only: moves [`wall`] by `seconds` (negative: behind).
#[cfg(feature = "failpoints")]
pub fn set_skew_secs(seconds: i64) {
    SKEW_MILLIS.store(seconds.saturating_mul(1000), Ordering::Relaxed);
}

/// `time` moved by `millis` (either way).
fn shift(time: SystemTime, millis: i64) -> SystemTime {
    let by = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 { time + by } else { time - by }
}

/// No offset measured yet.
const UNKNOWN: i64 = i64::MIN;

/// The order DB's clock as this server estimates it: [`wall`] plus the
/// offset the last probe measured.
#[derive(Debug)]
pub struct DbClock {
    offset_millis: AtomicI64,
}

impl Default for DbClock {
    fn default() -> DbClock {
        DbClock {
            offset_millis: AtomicI64::new(UNKNOWN),
        }
    }
}

impl DbClock {
    /// Records one reading: the DB said `db` for a query sent at `sent` and
    /// answered at `received` (both by [`wall`]); the DB's reading is taken
    /// as the midpoint's, so the error is at most half the round trip.
    pub fn observe(&self, db: SystemTime, sent: SystemTime, received: SystemTime) {
        let half = received.duration_since(sent).unwrap_or_default() / 2;
        let local = sent + half;
        let offset = match db.duration_since(local) {
            Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
        };
        self.offset_millis.store(offset, Ordering::Relaxed);
    }

    /// The DB's time now, or `None` before the first reading.
    pub fn now(&self) -> Option<SystemTime> {
        match self.offset_millis.load(Ordering::Relaxed) {
            UNKNOWN => None,
            offset => Some(shift(wall(), offset)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(clock: &DbClock) -> i64 {
        clock.offset_millis.load(Ordering::Relaxed)
    }

    #[test]
    fn the_offset_is_the_db_reading_against_the_round_trip_midpoint() {
        let clock = DbClock::default();
        assert_eq!(clock.now(), None, "no reading, no DB time");
        let db = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // This server ten minutes ahead, a 4 ms round trip.
        let sent = db + Duration::from_secs(600) - Duration::from_millis(2);
        clock.observe(db, sent, sent + Duration::from_millis(4));
        assert_eq!(offset(&clock), -600_000);
        assert!(clock.now().is_some());
        // Ten minutes behind.
        let sent = db - Duration::from_secs(600) - Duration::from_millis(2);
        clock.observe(db, sent, sent + Duration::from_millis(4));
        assert_eq!(offset(&clock), 600_000);
        assert_eq!(shift(db, offset(&clock)), db + Duration::from_secs(600));
    }
}
