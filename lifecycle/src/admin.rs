//! The admin port (`--admin-listen`): Prometheus `/metrics` over HTTP/1.1.
//!
//! Hand-written rather than a web framework: it answers one GET with one text
//! body, so the few lines here cost less than compiling hyper's HTTP/1 server
//! into every binary. Every response closes its connection (Prometheus and curl
//! both handle `Connection: close`); a request head larger than 8 KiB or slower
//! than 5 s is dropped, so a stuck client holds nothing for long. The port
//! serves metrics only: no secret, nothing that changes state.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

const MAX_HEAD_BYTES: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `address` now (so a bad `--admin-listen` fails at start) and returns
/// the listener for [`serve`].
pub async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|error| format!("--admin-listen: cannot bind {address}: {error}"))
}

/// Serves `/metrics` from `metrics` until `cancel`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "admin endpoint serving /metrics");
    }
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, &metrics).await {
                        tracing::debug!(%error, "admin request dropped");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let Some(head) = head else {
        return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
    };
    let mut parts = head.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = metrics.render();
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(header.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            stream.shutdown().await
        }
        (_, "/metrics") => respond(&mut stream, "405 Method Not Allowed", "GET only\n").await,
        _ => respond(&mut stream, "404 Not Found", "see /metrics\n").await,
    }
}

/// The request line, once the whole head arrived; `None` when it is too big.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let line = head.split(|&byte| byte == b'\r').next().unwrap_or(&[]);
    Ok(Some(String::from_utf8_lossy(line).into_owned()))
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads `/metrics` from `address` (tests, `cellctl status`): the body of a 200.
pub async fn scrape(address: std::net::SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("{address}: {error}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: redcell\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|error| format!("{address}: {error}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|error| format!("{address}: {error}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{address}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{address}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_over_http_and_nothing_else() {
        let metrics = Arc::new(Metrics::new(&[("region", "north")]));
        metrics.counter("redcell_admin_test_total", "help").inc();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, metrics, cancel.clone()));

        let body = scrape(address).await.unwrap();
        assert!(
            body.contains("redcell_admin_test_total{region=\"north\"} 1"),
            "{body}"
        );

        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /secrets HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");

        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_bad_address_is_named_at_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let error = bind(taken.local_addr().unwrap()).await.unwrap_err();
        assert!(error.starts_with("--admin-listen: cannot bind"), "{error}");
    }
}
