//! Page sizes on the wire, one rule for every paginated call (Get's
//! `page_size`, History's `page_size`, CellHistory's `limit`): `0` asks for
//! the server's default, anything up to the maximum is served as asked, more
//! is refused (the caller answers `INVALID_ARGUMENT` naming its field, with
//! [`PageSizeError`]'s text). Never clamped silently: a client asking for
//! more than it can get learns it at once instead of paging short.

use std::fmt;

/// The default and the most a paginated call serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize {
    default: u32,
    max: u32,
}

impl PageSize {
    /// `default` must be between 1 and `max` (checked at compile time for
    /// constants).
    pub const fn new(default: u32, max: u32) -> PageSize {
        assert!(
            default >= 1 && default <= max,
            "page size default out of range"
        );
        PageSize { default, max }
    }

    pub const fn default_size(self) -> u32 {
        self.default
    }

    pub const fn max(self) -> u32 {
        self.max
    }

    /// The size to serve for a request that asked for `requested`.
    pub fn resolve(self, requested: u32) -> Result<u32, PageSizeError> {
        match requested {
            0 => Ok(self.default),
            size if size <= self.max => Ok(size),
            size => Err(PageSizeError {
                requested: size,
                max: self.max,
            }),
        }
    }
}

/// A page size over the maximum; displays as the message for the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSizeError {
    pub requested: u32,
    pub max: u32,
}

impl fmt::Display for PageSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "must be at most {}, got {}", self.max, self.requested)
    }
}

impl std::error::Error for PageSizeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_the_default_up_to_max_is_as_asked_above_is_refused() {
        const PAGE: PageSize = PageSize::new(20, 100);
        assert_eq!(PAGE.resolve(0), Ok(20));
        for size in 1..=100 {
            assert_eq!(PAGE.resolve(size), Ok(size));
        }
        for size in [101, 1_000, u32::MAX] {
            let refused = PAGE.resolve(size);
            assert_eq!(
                refused,
                Err(PageSizeError {
                    requested: size,
                    max: 100
                })
            );
            assert_eq!(
                refused.map_err(|error| error.to_string()),
                Err(format!("must be at most 100, got {size}"))
            );
        }
        assert_eq!((PAGE.default_size(), PAGE.max()), (20, 100));
    }
}
