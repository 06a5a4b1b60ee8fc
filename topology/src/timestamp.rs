//! UTC instants as cells.yaml writes them: RFC 3339 in its one strict form
//! `YYYY-MM-DDTHH:MM:SSZ` (whole seconds, `Z`), e.g. `minting.switched_at`.
//!
//! One form only, so that a value written by `cellctl` and one typed by an
//! operator compare equal, and the file never depends on a local time zone.
//! The crate reads no clock: callers pass `now` in (a [`SystemTime`] or
//! seconds), so plans stay pure and tests replay any instant.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

/// Seconds since 1970-01-01T00:00:00Z, years 1970–9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTimestamp {
    unix_secs: u64,
}

/// 9999-12-31T23:59:59Z: four year digits.
const MAX_UNIX_SECS: u64 = 253_402_300_799;

impl UtcTimestamp {
    /// The instant `unix_secs` after the Unix epoch; `None` past year 9999.
    pub fn from_unix_secs(unix_secs: u64) -> Option<UtcTimestamp> {
        (unix_secs <= MAX_UNIX_SECS).then_some(UtcTimestamp { unix_secs })
    }

    /// `now`, truncated to the second; `None` before 1970 or past 9999.
    pub fn from_system_time(now: SystemTime) -> Option<UtcTimestamp> {
        let since = now.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        UtcTimestamp::from_unix_secs(since.as_secs())
    }

    pub fn unix_secs(self) -> u64 {
        self.unix_secs
    }

    /// How long after `earlier` this is (zero if it is not later: a clock
    /// set back never yields a negative soak).
    pub fn since(self, earlier: UtcTimestamp) -> Duration {
        Duration::from_secs(self.unix_secs.saturating_sub(earlier.unix_secs))
    }

    /// Parses exactly `YYYY-MM-DDTHH:MM:SSZ`; `None` for anything else,
    /// including dates that do not exist (2026-02-30) and leap seconds.
    pub fn parse(text: &str) -> Option<UtcTimestamp> {
        let bytes = text.as_bytes();
        if bytes.len() != 20
            || bytes[4] != b'-'
            || bytes[7] != b'-'
            || bytes[10] != b'T'
            || bytes[13] != b':'
            || bytes[16] != b':'
            || bytes[19] != b'Z'
        {
            return None;
        }
        let number = |from: usize, to: usize| -> Option<u64> {
            let digits = &bytes[from..to];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(
                digits
                    .iter()
                    .fold(0, |value, digit| value * 10 + u64::from(digit - b'0')),
            )
        };
        let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
        let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
        if year < 1970 || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let days = days_from_civil(year, month, day)?;
        let parsed =
            UtcTimestamp::from_unix_secs(days * 86_400 + hour * 3_600 + minute * 60 + second)?;
        // A day past the month's end would roll over: only exact dates round-trip.
        (civil_from_days(days) == (year, month, day)).then_some(parsed)
    }
}

impl fmt::Display for UtcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.unix_secs / 86_400;
        let in_day = self.unix_secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            in_day / 3_600,
            in_day % 3_600 / 60,
            in_day % 60
        )
    }
}

/// Days since 1970-01-01 of a date in 1970 or later (Howard Hinnant's
/// `days_from_civil`, for non-negative eras only).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    if !(1..=31).contains(&day) {
        return None;
    }
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

/// (year, month, day) of a day number (Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    (year_of_era + era * 400 + u64::from(month <= 2), month, day)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::UtcTimestamp;

    #[test]
    fn known_instants_round_trip() {
        for (text, secs) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T12:34:56Z", 951_827_696),
            ("2026-01-22T08:00:00Z", 1_769_068_800),
            ("9999-12-31T23:59:59Z", 253_402_300_799),
        ] {
            let parsed = UtcTimestamp::parse(text).unwrap();
            assert_eq!(parsed.unix_secs(), secs, "{text}");
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn anything_but_the_strict_form_is_refused() {
        for text in [
            "",
            "2026-01-22",
            "2026-01-22T08:00:00",
            "2026-01-22T08:00:00+00:00",
            "2026-01-22 08:00:00Z",
            "2026-01-22T08:00:00.5Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-22T24:00:00Z",
            "2026-01-22T23:60:00Z",
            "2026-01-22T23:59:60Z",
            "1969-12-31T23:59:59Z",
            "+026-01-22T08:00:00Z",
        ] {
            assert_eq!(UtcTimestamp::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        // 1970 to 2370: every day of a whole 400-year cycle, leap rules included.
        for day in 0..146_097 {
            let instant = UtcTimestamp::from_unix_secs(day * 86_400 + 86_399).unwrap();
            assert_eq!(UtcTimestamp::parse(&instant.to_string()), Some(instant));
        }
    }
}
