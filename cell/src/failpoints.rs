//! Tests only (the `failpoints` feature, never in a release build): how the
//! `cell` binary is told to stop at a fail point or to run with its clock off.
//!
//! * `FAILPOINTS` — the `fail` crate's own syntax (`point=pause`, `panic`, …).
//! * `REDCELL_CRASH_AT=<point>[,<point>…]` — the first thread to reach the
//!   point logs `fail point <point> reached` on stderr and stays there, so a
//!   test knows the server sits exactly at the point before it kills it with
//!   SIGKILL (a crash at that line, not somewhere near it).
//! * `REDCELL_CLOCK_SKEW_SECS=<seconds>` — moves [`crate::clock::wall`]
//!   (negative: behind), a server whose clock is off its DB's.

use fail::FailScenario;

/// Reads the three variables; the scenario lives as long as the process.
pub fn setup() -> FailScenario<'static> {
    let scenario = FailScenario::setup();
    if let Ok(points) = std::env::var("REDCELL_CRASH_AT") {
        for point in points.split(',').filter(|point| !point.is_empty()) {
            let name = point.to_owned();
            if let Err(error) = fail::cfg_callback(point, move || hold(&name)) {
                eprintln!("cell: REDCELL_CRASH_AT: {point}: {error}");
            }
        }
    }
    if let Ok(skew) = std::env::var("REDCELL_CLOCK_SKEW_SECS") {
        match skew.parse::<i64>() {
            Ok(seconds) => crate::clock::set_skew_secs(seconds),
            Err(error) => eprintln!("cell: REDCELL_CLOCK_SKEW_SECS={skew}: {error}"),
        }
    }
    scenario
}

/// Blocks this thread for good: the process is about to be killed here.
fn hold(point: &str) {
    eprintln!("fail point {point} reached: holding until killed");
    loop {
        std::thread::park();
    }
}
