//! The `router` binary as an operator runs it: a bad configuration exits 78
//! naming the flag before binding; a good one serves gRPC health and stops
//! cleanly on SIGTERM.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TOPOLOGY: &str = include_str!("../../../cells.yaml");

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn args(topology: &Path, key: &Path, listen: SocketAddr, region: &str, token: &str) -> Vec<String> {
    [
        "--topology",
        &topology.display().to_string(),
        "--listen",
        &listen.to_string(),
        "--region",
        region,
        "--jwt-hs256-key-file",
        &key.display().to_string(),
        "--internal-token",
        token,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn bad_configuration_exits_78_naming_the_flag_without_binding() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("cells.yaml");
    std::fs::write(&topology, TOPOLOGY).unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, TOPOLOGY.replace("status: active", "status: dead")).unwrap();
    let key = dir.path().join("hs.key");
    std::fs::write(&key, b"a-development-key-of-32-bytes-or-more!!").unwrap();
    let short_key = dir.path().join("short.key");
    std::fs::write(&short_key, b"short").unwrap();
    let token = "router-internal-token-0123456789";
    let listen = free_address();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            args(&topology, &key, listen, "west", token),
            "router: --region: unknown region \"west\" (regions: north, south)",
        ),
        (
            args(&topology, &key, listen, "north", "short"),
            "router: --internal-token: must be at least 16 visible ASCII characters",
        ),
        (
            args(&topology, &short_key, listen, "north", token),
            "router: bearer token key:",
        ),
        (
            args(&broken, &key, listen, "north", token),
            "cells[0].status: unknown status \"dead\"",
        ),
        (
            args(
                &dir.path().join("missing.yaml"),
                &key,
                listen,
                "north",
                token,
            ),
            "router: --topology: cannot read",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_router"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
        assert!(
            std::net::TcpStream::connect(listen).is_err(),
            "the port was bound"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("cells.yaml");
    std::fs::write(&topology, TOPOLOGY).unwrap();
    let key = dir.path().join("hs.key");
    std::fs::write(&key, b"a-development-key-of-32-bytes-or-more!!").unwrap();
    let listen = free_address();
    let mut child = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(args(
            &topology,
            &key,
            listen,
            "north",
            "router-internal-token-0123456789",
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect_lazy();
    let mut serving = false;
    for _ in 0..200 {
        let request = HealthCheckRequest {
            service: "redcell.v1.RedEnvelope".into(),
        };
        if let Ok(response) = HealthClient::new(channel.clone()).check(request).await
            && response.into_inner().status == 1
        {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = i32::try_from(child.id()).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(serving, "the router never answered its health check");
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}
