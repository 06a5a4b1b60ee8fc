//! Reads one gauge from a server's Prometheus text endpoint (`GET /metrics`
//! over a plain TCP connection: a one-line HTTP/1.0 request is all the
//! admin endpoint needs, no HTTP client crate for it).

use std::{net::SocketAddr, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of the first sample of `name` (any labels), if the server answers.
pub async fn gauge(address: SocketAddr, name: &str) -> Option<f64> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: loadgen\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_millis(500), fetch)
        .await
        .ok()??;
    sample(&body, name)
}

fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_labelled_gauge_is_read() {
        let body = "# HELP x\nredcell_cell_lane_queue_depth_other 9\nredcell_cell_lane_queue_depth{cell=\"n1\"} 42\n";
        assert_eq!(
            super::sample(body, "redcell_cell_lane_queue_depth"),
            Some(42.0)
        );
    }
}
