//! Envelope-ID suffixes (the last three digits, `000`–`999`) and inclusive ranges
//! of them, as written in cells.yaml (`"000-332"`, `"000-099,500-599"`).
//!
//! A suffix selects the owning cell through an epoch's range table, so it is the
//! unit of placement: every table covers all 1,000 suffixes exactly once.

use std::fmt;

/// Number of distinct suffixes; a range table has exactly this many slots.
pub const SUFFIX_COUNT: u16 = 1000;

/// One suffix, `0..=999`. Formatted with three digits, as it appears in an ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Suffix(u16);

impl Suffix {
    /// `None` when `value > 999`.
    pub const fn new(value: u16) -> Option<Suffix> {
        if value < SUFFIX_COUNT {
            Some(Suffix(value))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    pub(crate) const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Suffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.0)
    }
}

/// An inclusive range of suffixes, `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SuffixRange {
    start: Suffix,
    end: Suffix,
}

impl SuffixRange {
    /// `None` unless `start <= end`.
    pub fn new(start: Suffix, end: Suffix) -> Option<SuffixRange> {
        (start <= end).then_some(SuffixRange { start, end })
    }

    pub fn start(self) -> Suffix {
        self.start
    }

    pub fn end(self) -> Suffix {
        self.end
    }

    /// Number of suffixes in the range (at least 1).
    pub fn len(self) -> u16 {
        self.end.0 - self.start.0 + 1
    }

    /// Never true: a range holds at least one suffix. Present for clippy's
    /// `len_without_is_empty` and for symmetry with collections.
    pub fn is_empty(self) -> bool {
        false
    }

    pub fn contains(self, suffix: Suffix) -> bool {
        self.start <= suffix && suffix <= self.end
    }

    pub fn iter(self) -> impl Iterator<Item = Suffix> {
        (self.start.0..=self.end.0).map(Suffix)
    }
}

impl fmt::Display for SuffixRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Parses one cells.yaml range value: comma-separated `NNN-NNN` or `NNN` items,
/// each exactly three digits. Returns `None` on any malformed item; the caller
/// names the offending value in its error.
pub fn parse_ranges(text: &str) -> Option<Vec<SuffixRange>> {
    text.split(',')
        .map(|item| parse_range(item.trim()))
        .collect()
}

fn parse_range(item: &str) -> Option<SuffixRange> {
    match item.split_once('-') {
        Some((start, end)) => SuffixRange::new(parse_suffix(start)?, parse_suffix(end)?),
        None => {
            let single = parse_suffix(item)?;
            SuffixRange::new(single, single)
        }
    }
}

fn parse_suffix(digits: &str) -> Option<Suffix> {
    if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().and_then(Suffix::new)
}

/// Formats ranges the way cells.yaml writes them: `"000-166,500-599"`.
pub fn format_ranges(ranges: &[SuffixRange]) -> String {
    ranges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Merges sorted suffixes into maximal contiguous ranges (for messages and plans).
pub fn coalesce(suffixes: impl IntoIterator<Item = Suffix>) -> Vec<SuffixRange> {
    let mut ranges: Vec<SuffixRange> = Vec::new();
    for suffix in suffixes {
        match ranges.last_mut() {
            Some(last) if last.end.0 + 1 == suffix.0 => last.end = suffix,
            _ => ranges.push(SuffixRange {
                start: suffix,
                end: suffix,
            }),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_lists() {
        let ranges = parse_ranges("000-099, 500-599,742").unwrap_or_default();
        assert_eq!(format_ranges(&ranges), "000-099,500-599,742");
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<u16>(), 201);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", "0-99", "000-1000", "332-000", "00a-100", "000-", "-100", "000--1",
        ] {
            assert_eq!(parse_ranges(bad), None, "{bad:?} must be rejected");
        }
    }

    #[test]
    fn coalesces_runs() {
        let suffixes = [1, 2, 3, 7, 9, 10].map(Suffix);
        assert_eq!(format_ranges(&coalesce(suffixes)), "001-003,007,009-010");
    }
}
