//! The cells.yaml edit of a failover: every cell whose `db` is on the old
//! primary's port moves to the promoted standby's port (a server is promoted
//! whole, so every database on it moves together). Only the port changes; the
//! rewritten DSN is parsed back and must name the same host, user and
//! database, or the plan is refused.

use redcell_topology::{ConfigError, ConfigErrors, Topology, plan::PlanError};

use crate::commands::up::plan::local_database;

/// `topology` with every cell on port `from` moved to port `to`.
pub fn plan(topology: &Topology, from: u16, to: u16) -> Result<Topology, PlanError> {
    let mut document = topology.document().clone();
    let mut errors = Vec::new();
    for (index, cell) in document.cells.iter_mut().enumerate() {
        if local_database(&cell.db).map(|(port, _, _)| port) != Ok(from) {
            continue;
        }
        match with_port(&cell.db, to) {
            Ok(dsn) => cell.db = dsn,
            Err(reason) => errors.push(ConfigError::new(format!("cells[{index}].db"), reason)),
        }
    }
    if !errors.is_empty() {
        return Err(PlanError::Invalid(ConfigErrors(errors)));
    }
    Topology::from_document(document).map_err(PlanError::Invalid)
}

/// `dsn` with its port replaced by `port`, in either DSN form (URL or
/// `key=value`).
pub fn with_port(dsn: &str, port: u16) -> Result<String, String> {
    let rewritten = match dsn.find("://") {
        Some(scheme_end) => {
            let authority_start = scheme_end + 3;
            let authority_end = dsn[authority_start..]
                .find(['/', '?'])
                .map_or(dsn.len(), |at| authority_start + at);
            let authority = &dsn[authority_start..authority_end];
            let host_start = authority.rfind('@').map_or(0, |at| at + 1);
            let hostport = &authority[host_start..];
            let host = match hostport.rfind(':') {
                Some(colon) if !hostport[colon..].contains(']') => &hostport[..colon],
                _ => hostport,
            };
            format!(
                "{}{}{host}:{port}{}",
                &dsn[..authority_start],
                &authority[..host_start],
                &dsn[authority_end..]
            )
        }
        None => {
            let mut replaced = false;
            let mut words: Vec<String> = dsn
                .split_whitespace()
                .map(|word| {
                    if word.starts_with("port=") {
                        replaced = true;
                        format!("port={port}")
                    } else {
                        word.to_owned()
                    }
                })
                .collect();
            if !replaced {
                words.push(format!("port={port}"));
            }
            words.join(" ")
        }
    };
    let shown = redcell_migrations::display_dsn(dsn);
    let before: tokio_postgres::Config = dsn
        .parse()
        .map_err(|error| format!("{shown}: malformed DSN: {error}"))?;
    let after: tokio_postgres::Config = rewritten
        .parse()
        .map_err(|error| format!("{shown}: cannot move it to port {port}: {error}"))?;
    let same = before.get_hosts() == after.get_hosts()
        && before.get_user() == after.get_user()
        && before.get_dbname() == after.get_dbname()
        && before.get_password() == after.get_password()
        && after.get_ports() == [port];
    if !same {
        return Err(format!(
            "{shown}: moving it to port {port} would change more than its port"
        ));
    }
    Ok(rewritten)
}
