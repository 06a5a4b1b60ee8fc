//! The `router` binary as an operator runs it: a bad configuration exits 78
//! naming the flag before binding; a good one serves gRPC health, rereads
//! cells.yaml on SIGHUP, and stops cleanly on SIGTERM.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use redcell_proto::v1::{self as pb, red_envelope_client::RedEnvelopeClient};
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
    std::fs::write(&key, HS256_KEY).unwrap();
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

/// The development key of the routers these tests start.
const HS256_KEY: &[u8] = b"a-development-key-of-32-bytes-or-more!!";

/// A `router` process on the bundled topology (copied into a temp dir, so a
/// test may rewrite it), region north, with `extra` flags; `serving` says
/// whether it answered its health check SERVING.
struct RouterProcess {
    dir: tempfile::TempDir,
    child: std::process::Child,
    channel: tonic::transport::Channel,
    serving: bool,
}

impl RouterProcess {
    async fn start(extra: &[&str]) -> RouterProcess {
        let dir = tempfile::tempdir().unwrap();
        let topology = dir.path().join("cells.yaml");
        std::fs::write(&topology, TOPOLOGY).unwrap();
        let key = dir.path().join("hs.key");
        std::fs::write(&key, HS256_KEY).unwrap();
        let listen = free_address();
        let child = Command::new(env!("CARGO_BIN_EXE_router"))
            .args(args(
                &topology,
                &key,
                listen,
                "north",
                "router-internal-token-0123456789",
            ))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
        RouterProcess {
            dir,
            child,
            channel,
            serving,
        }
    }

    fn topology_path(&self) -> std::path::PathBuf {
        self.dir.path().join("cells.yaml")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// SIGTERM, then the exit status.
    async fn stop(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap()
    }
}

/// With a file watch that would not look again for an hour, SIGHUP alone
/// makes the router reread cells.yaml: the degrade switch it carries applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_topology() {
    let router = RouterProcess::start(&["--reload-interval-ms", "3600000"]).await;
    let token = redcell_proto::token::mint_hs256(HS256_KEY, "alice", 600).unwrap();
    let history = || {
        let mut request = tonic::Request::new(pb::HistoryRequest {
            direction: pb::HistoryDirection::Sent.into(),
            page_size: 10,
            page_token: String::new(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut client = RedEnvelopeClient::new(router.channel.clone());
        async move { client.history(request).await }
    };
    // No cell runs here: the page is empty and partial, but served.
    let before = history().await;

    let switched_off = TOPOLOGY.replace("\ndegrade: {}", "\ndegrade: {history: off}");
    assert_ne!(switched_off, TOPOLOGY);
    std::fs::write(router.topology_path(), &switched_off).unwrap();
    let unwatched = history().await;
    router.signal("-HUP");
    let mut after = None;
    for _ in 0..200 {
        match history().await {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                after = Some(status);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let serving = router.serving;
    let exit = router.stop().await;

    assert!(serving, "the router never answered its health check");
    let before = before.unwrap().into_inner();
    assert!(before.entries.is_empty() && before.degraded, "{before:?}");
    assert!(unwatched.is_ok(), "reloaded without SIGHUP: {unwatched:?}");
    let after = after.expect("SIGHUP never applied history: off");
    assert!(after.message().contains("switched off"), "{after:?}");
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_stops_on_sigterm() {
    let router = RouterProcess::start(&[]).await;
    let serving = router.serving;
    let status = router.stop().await;
    assert!(serving, "the router never answered its health check");
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}

/// Every flag has an environment fallback (README): each of these, set to 0
/// in the environment only, is read and refused naming its flag. The router
/// is given a port already in use, so a binary that ignored the variable
/// would get past validation and fail to bind (exit 1) instead of hanging.
#[test]
fn every_tuning_flag_has_an_environment_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("cells.yaml");
    std::fs::write(&topology, TOPOLOGY).unwrap();
    let key = dir.path().join("hs.key");
    std::fs::write(&key, HS256_KEY).unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    for (variable, flag) in [
        ("REDCELL_ROUTER_RATE_PER_USER", "--rate-per-user"),
        ("REDCELL_ROUTER_RATE_BURST", "--rate-burst"),
        ("REDCELL_ROUTER_MAX_IN_FLIGHT", "--max-in-flight"),
        ("REDCELL_ROUTER_CELL_TIMEOUT_MS", "--cell-timeout-ms"),
        ("REDCELL_ROUTER_HEALTH_INTERVAL_MS", "--health-interval-ms"),
        ("REDCELL_ROUTER_RELOAD_INTERVAL_MS", "--reload-interval-ms"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_router"))
            .args(args(
                &topology,
                &key,
                listen,
                "north",
                "router-internal-token-0123456789",
            ))
            .env(variable, "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{variable}=0: {stderr}");
        assert!(
            stderr.contains(&format!("router: {flag}: must be at least 1")),
            "{variable}=0 names {flag}: {stderr}"
        );
        // The help names the variable too.
        let help = Command::new(env!("CARGO_BIN_EXE_router"))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains(variable), "--help names {variable}");
    }
    drop(taken);
}
