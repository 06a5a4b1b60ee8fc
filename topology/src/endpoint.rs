//! Syntax checks for the two kinds of endpoint cells.yaml names: logic-server
//! addresses (`host:port`) and order-database DSNs
//! (`postgres://user[:password]@host[:port]/database[?options]`).
//!
//! Only the shape is checked here (no I/O, no name resolution): a typo must fail
//! `cellctl validate`, not the first request at 3 a.m.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Why an address is malformed, for the error message.
pub fn check_server_address(address: &str) -> Result<(), &'static str> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err("expected host:port");
    };
    check_port(port)?;
    check_host(host)
}

/// Why a DSN is malformed, for the error message.
pub fn check_dsn(dsn: &str) -> Result<(), &'static str> {
    let rest = dsn
        .strip_prefix("postgres://")
        .or_else(|| dsn.strip_prefix("postgresql://"))
        .ok_or("scheme must be postgres:// or postgresql://")?;
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let (authority, database) = rest.split_once('/').ok_or("missing /database")?;
    if database.is_empty() {
        return Err("missing database name");
    }
    if !database
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("database name may hold only [A-Za-z0-9_-]");
    }
    let (user, host_port) = authority.rsplit_once('@').ok_or("missing user@")?;
    let user = user.split_once(':').map_or(user, |(name, _password)| name);
    if user.is_empty() {
        return Err("missing user name");
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
            check_port(port)?;
            check_host(host)
        }
        _ => check_host(host_port),
    }
}

fn check_port(port: &str) -> Result<(), &'static str> {
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not a listening port"),
        Ok(_) if port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err("port must be a number 1-65535"),
    }
}

fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("missing host");
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(()),
            _ => Err("malformed IPv6 address"),
        };
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| "malformed IPv4 address");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() <= 253 && host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("malformed host name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        for good in [
            "127.0.0.1:7101",
            "[::1]:7101",
            "n1-0.n1.redcell.svc:7101",
            "localhost:1",
        ] {
            assert_eq!(check_server_address(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("127.0.0.1", "expected host:port"),
            (":7101", "missing host"),
            ("host:0", "port 0 is not a listening port"),
            ("host:65536", "port must be a number 1-65535"),
            ("host:+80", "port must be a number 1-65535"),
            ("300.1.1.1:80", "malformed IPv4 address"),
            ("[::g]:80", "malformed IPv6 address"),
            ("bad_host:80", "malformed host name"),
        ] {
            assert_eq!(check_server_address(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn dsns() {
        for good in [
            "postgres://redcell@127.0.0.1:6101/cell_n1",
            "postgresql://redcell:secret@db.local/cell-n1?sslmode=require",
            "postgres://redcell@[::1]:5432/x",
        ] {
            assert_eq!(check_dsn(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            (
                "mysql://u@h/db",
                "scheme must be postgres:// or postgresql://",
            ),
            ("postgres://u@h:5432", "missing /database"),
            ("postgres://u@h:5432/", "missing database name"),
            ("postgres://h:5432/db", "missing user@"),
            ("postgres://@h:5432/db", "missing user name"),
            ("postgres://u@h:99999/db", "port must be a number 1-65535"),
            ("postgres://u@/db", "missing host"),
            (
                "postgres://u@h/d b",
                "database name may hold only [A-Za-z0-9_-]",
            ),
        ] {
            assert_eq!(check_dsn(bad), Err(why), "{bad}");
        }
    }
}
