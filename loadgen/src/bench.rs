//! What every benchmark starts from: the strategies to compare, and a
//! PostgreSQL with migrated templates of the order DB and the ledger (the test
//! harness's server, so a run needs nothing installed by hand beyond the
//! PostgreSQL binaries).

use redcell_cell::OpenStrategy;

/// Template databases every deployment's DBs are cloned from.
pub const ORDERS_TEMPLATE: &str = "bench_orders";
pub const LEDGER_TEMPLATE: &str = "bench_ledger";

/// The strategies to run: the one asked for, or both, lanes first.
pub fn strategies(asked: Option<OpenStrategy>) -> Vec<OpenStrategy> {
    match asked {
        Some(strategy) => vec![strategy],
        None => vec![OpenStrategy::Lane, OpenStrategy::Rowlock],
    }
}

/// The harness's PostgreSQL, with [`ORDERS_TEMPLATE`] and [`LEDGER_TEMPLATE`]
/// migrated exactly like real databases.
pub async fn postgres() -> Result<&'static redcell_harness::PgServer, String> {
    let server = redcell_harness::shared()
        .await
        .map_err(|error| error.to_string())?;
    let orders = redcell_migrations::script(redcell_migrations::ORDER_DB);
    let ledger = redcell_migrations::script(redcell_migrations::LEDGER);
    for (template, script) in [(ORDERS_TEMPLATE, orders), (LEDGER_TEMPLATE, ledger)] {
        server
            .ensure_template(template, &[&script])
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(server)
}
