//! Pearson's chi-square goodness of fit of new envelopes over cells against
//! the mint pool's range shares, one group per sender region.
//!
//! The router draws a suffix uniformly from the region's pool (keyed by the
//! sender and the idempotency key through a fixed hash), so a cell's count
//! among N Sends of a region is binomial with p = its suffixes / the pool's
//! total. The statistic sums (O - E)² / E over every cell of every region;
//! each region contributes (cells - 1) degrees of freedom, since its counts
//! sum to its N. It is compared with the 0.999 quantile of the chi-square
//! distribution: a fair draw fails one run in a thousand, a cell left out or
//! a table ignored (a share off by a factor) fails every time at the
//! scenario's sample size.

/// One cell's part of the fit.
#[derive(Debug, Clone)]
pub struct Cell {
    pub name: String,
    pub observed: u64,
    /// Its suffixes in the region's pool.
    pub suffixes: u32,
}

/// The fit of all regions.
#[derive(Debug)]
pub struct Fit {
    pub statistic: f64,
    pub degrees_of_freedom: usize,
    /// Every cell with its expected count, for the report.
    pub lines: Vec<String>,
}

/// The chi-square statistic of `regions` (each a region's cells).
pub fn fit(regions: &[(String, Vec<Cell>)]) -> Fit {
    let mut statistic = 0.0;
    let mut degrees_of_freedom = 0;
    let mut lines = Vec::new();
    for (region, cells) in regions {
        let sends: u64 = cells.iter().map(|cell| cell.observed).sum();
        let total: u32 = cells.iter().map(|cell| cell.suffixes).sum();
        degrees_of_freedom += cells.len().saturating_sub(1);
        for cell in cells {
            let expected = sends as f64 * f64::from(cell.suffixes) / f64::from(total);
            statistic += (cell.observed as f64 - expected).powi(2) / expected;
            lines.push(format!(
                "{region} {}: {} observed, {expected:.1} expected ({}/{total} suffixes)",
                cell.name, cell.observed, cell.suffixes
            ));
        }
    }
    Fit {
        statistic,
        degrees_of_freedom,
        lines,
    }
}

/// The 0.999 quantile of chi-square with `df` degrees of freedom (standard
/// tables, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.4), for 1-8.
pub fn critical_999(df: usize) -> f64 {
    const TABLE: [f64; 8] = [
        10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124,
    ];
    TABLE[df - 1]
}

#[test]
fn chi_square_of_a_known_sample() {
    let cell = |name: &str, observed, suffixes| Cell {
        name: name.to_owned(),
        observed,
        suffixes,
    };
    // 60 draws over three equal cells: E = 20 each; (10² + 0 + 10²) / 20.
    // 30 over shares 1:2: E = 10, 20; (5² / 10 + 5² / 20).
    let fit = fit(&[
        (
            "a".into(),
            vec![cell("x", 10, 100), cell("y", 20, 100), cell("z", 30, 100)],
        ),
        ("b".into(), vec![cell("u", 15, 250), cell("v", 15, 500)]),
    ]);
    assert!(
        (fit.statistic - (10.0 + 2.5 + 1.25)).abs() < 1e-9,
        "{fit:?}"
    );
    assert_eq!(fit.degrees_of_freedom, 3);
    assert_eq!(critical_999(fit.degrees_of_freedom), 16.266);
}
