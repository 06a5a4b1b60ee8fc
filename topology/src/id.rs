//! The envelope ID: a fixed-width 22-digit decimal string that operators read by
//! eye (DESIGN.md §2).
//!
//! ```text
//! YYMMDD  R  EE  NNNNNNNNNN  SSS
//! 260122  1  03  0000481516  742
//! ```
//!
//! Parsing checks everything the ID can say about itself — length, digits, a real
//! calendar date, a non-zero region digit — and returns an [`IdError`] naming the
//! problem; it never panics. Whether the region and epoch exist is a question for
//! the topology ([`crate::Topology::route`]), not for the codec.

use std::{fmt, str::FromStr};

use crate::suffix::Suffix;

/// Length of every envelope ID.
pub const ID_LEN: usize = 22;

/// Exclusive upper bound of the 10-digit sequence field.
pub const SEQUENCE_LIMIT: u64 = 10_000_000_000;

/// The UTC day an envelope was minted on: its day partition (hot/cold data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MintDate {
    year: u16,
    month: u8,
    day: u8,
}

impl MintDate {
    /// A calendar date in 2000–2099 (the ID carries two year digits).
    pub fn new(year: u16, month: u8, day: u8) -> Option<MintDate> {
        let valid = (2000..=2099).contains(&year)
            && (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month);
        valid.then_some(MintDate { year, month, day })
    }

    /// The UTC date of a Unix day number (days since 1970-01-01), by Howard
    /// Hinnant's `civil_from_days`. `None` outside 2000–2099.
    pub fn from_unix_days(days: i64) -> Option<MintDate> {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
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
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        MintDate::new(
            u16::try_from(year).ok()?,
            u8::try_from(month).ok()?,
            u8::try_from(day).ok()?,
        )
    }

    /// Today's UTC date at `now`.
    pub fn from_system_time(now: std::time::SystemTime) -> Option<MintDate> {
        let seconds = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
        MintDate::from_unix_days(i64::try_from(seconds / 86_400).ok()?)
    }

    pub fn year(self) -> u16 {
        self.year
    }

    pub fn month(self) -> u8 {
        self.month
    }

    /// Day of month, 1–31: the `claims`/`envelopes` LIST partition key.
    pub fn day(self) -> u8 {
        self.day
    }
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The region digit `R`, 1–9 (index + 1 into cells.yaml's `regions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionDigit(u8);

impl RegionDigit {
    pub const fn new(digit: u8) -> Option<RegionDigit> {
        if digit >= 1 && digit <= 9 {
            Some(RegionDigit(digit))
        } else {
            None
        }
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    /// Position of the region in cells.yaml's `regions` list.
    pub const fn index(self) -> usize {
        (self.0 - 1) as usize
    }
}

/// A topology epoch, 0–99: the range table an ID was minted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpochId(u8);

impl EpochId {
    pub const MAX: u8 = 99;

    pub const fn new(id: u8) -> Option<EpochId> {
        if id <= Self::MAX {
            Some(EpochId(id))
        } else {
            None
        }
    }

    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for EpochId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A parsed, well-formed envelope ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvelopeId {
    date: MintDate,
    region: RegionDigit,
    epoch: EpochId,
    sequence: u64,
    suffix: Suffix,
}

impl EnvelopeId {
    /// `None` when `sequence` does not fit its 10 digits.
    pub fn new(
        date: MintDate,
        region: RegionDigit,
        epoch: EpochId,
        sequence: u64,
        suffix: Suffix,
    ) -> Option<EnvelopeId> {
        (sequence < SEQUENCE_LIMIT).then_some(EnvelopeId {
            date,
            region,
            epoch,
            sequence,
            suffix,
        })
    }

    pub fn date(self) -> MintDate {
        self.date
    }

    pub fn region(self) -> RegionDigit {
        self.region
    }

    pub fn epoch(self) -> EpochId {
        self.epoch
    }

    /// Unique within (cell, date); minted by the cell.
    pub fn sequence(self) -> u64 {
        self.sequence
    }

    pub fn suffix(self) -> Suffix {
        self.suffix
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}{:02}{:02}{}{:02}{:010}{}",
            self.date.year % 100,
            self.date.month,
            self.date.day,
            self.region.0,
            self.epoch.0,
            self.sequence,
            self.suffix
        )
    }
}

/// Why a string is not an envelope ID. Messages name the offending part so a
/// client (and an operator reading logs) can see what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("envelope id must be 22 digits, got {0} characters")]
    Length(usize),
    #[error("envelope id has {found:?} at position {position}; only digits 0-9 are allowed")]
    NotDigit { position: usize, found: char },
    #[error("envelope id date {0} is not a calendar date (YYMMDD)")]
    Date(String),
    #[error("envelope id region digit is 0; regions are numbered 1-9")]
    RegionZero,
}

impl FromStr for EnvelopeId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<EnvelopeId, IdError> {
        let length = text.chars().count();
        if length != ID_LEN {
            return Err(IdError::Length(length));
        }
        if let Some((position, found)) = text.chars().enumerate().find(|(_, c)| !c.is_ascii_digit())
        {
            return Err(IdError::NotDigit {
                position: position + 1,
                found,
            });
        }
        // All 22 characters are ASCII digits from here on, so byte slicing is exact.
        let number = |from: usize, to: usize| -> u64 {
            text.as_bytes()[from..to]
                .iter()
                .fold(0, |acc, b| acc * 10 + u64::from(b - b'0'))
        };
        let (yy, mm, dd) = (number(0, 2), number(2, 4), number(4, 6));
        let date = MintDate::new(2000 + yy as u16, mm as u8, dd as u8)
            .ok_or_else(|| IdError::Date(text[0..6].to_owned()))?;
        let region = RegionDigit::new(number(6, 7) as u8).ok_or(IdError::RegionZero)?;
        let epoch = EpochId(number(7, 9) as u8);
        let sequence = number(9, 19);
        let suffix = Suffix::new(number(19, 22) as u16).ok_or(IdError::Length(length))?;
        Ok(EnvelopeId {
            date,
            region,
            epoch,
            sequence,
            suffix,
        })
    }
}
