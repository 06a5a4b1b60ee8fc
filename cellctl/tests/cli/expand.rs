//! Parallel expansion (issue 12 items 1-2): `cellctl expand`, `switch`,
//! `reverse`, `complete` — on files (dry runs, conventions, refusals) and on
//! a live `cellctl up` fleet (the new cell's PostgreSQL and logic server
//! started by `up`, envelopes landing on it only while switched, and those
//! still opening after a reverse). Timings are printed, never asserted.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use redcell_proto::{
    internal::REGION_METADATA,
    token::{BearerToken, mint_hs256},
    v1::{self as pb, red_envelope_client::RedEnvelopeClient},
};
use redcell_topology::{EnvelopeId, Topology, UtcTimestamp, plan};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use super::{bundled, cellctl, write_temp};
use crate::up::Site;

fn read(path: &Path) -> Topology {
    Topology::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A copy of the bundled cells.yaml and a state directory no `up` runs on.
fn site() -> (tempfile::TempDir, PathBuf, String) {
    let (dir, path) = write_temp("cells.yaml", &std::fs::read_to_string(bundled()).unwrap());
    let state = dir.path().join("state").to_str().unwrap().to_owned();
    (dir, path, state)
}

#[test]
fn expand_add_dry_run_derives_cells_and_writes_nothing() {
    let (_dir, path, state) = site();
    let original = std::fs::read_to_string(&path).unwrap();
    let out = cellctl(
        &["expand", "--add", "2", "--state-dir", &state],
        Some(&path),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // s1 and s2 own 500 suffixes each (n1-n3 333-334): they are split, and
    // the new cells take the next server ports and DB ports of the file.
    let expected_head = "new cells:\n\
         \x20 s3       region south, split from s1\n\
         \x20          servers 127.0.0.1:7213, 127.0.0.1:7214 (derived)\n\
         \x20          db      postgres://redcell@127.0.0.1:6203/cell_s3 (derived)\n\
         \x20 s4       region south, split from s2\n\
         \x20          servers 127.0.0.1:7215, 127.0.0.1:7216 (derived)\n\
         \x20          db      postgres://redcell@127.0.0.1:6204/cell_s4 (derived)\n\
         epoch 1 (new; minting stays on epoch 0 until `cellctl switch`):\n\
         \x20 north: n1 000-332, n2 333-665, n3 666-999\n\
         \x20 south: s1 000-249, s2 500-749, s3 250-499, s4 750-999\n\
         mint pool: unchanged by expand (shown after the diff); once `cellctl switch` is applied:\n";
    assert!(out.stdout.starts_with(expected_head), "{}", out.stdout);
    assert!(
        out.stdout.contains("plan: expand --split s1:s3,s2:s4\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("mint pool after the change:\nregion north: epoch 0, 1000 suffixes\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with(&format!(
        "dry run: nothing written; run again with --apply to write {}\n",
        path.display()
    )));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
}

#[test]
fn expand_takes_given_servers_and_db_and_refuses_bad_input() {
    let (_dir, path, state) = site();
    let out = cellctl(
        &[
            "expand",
            "--split",
            "n1:n6",
            "--servers",
            "n6=127.0.0.1:7301,127.0.0.1:7302",
            "--db",
            "n6=postgres://redcell@127.0.0.1:6301/orders_n6",
            "--state-dir",
            &state,
            "--apply",
        ],
        Some(&path),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "  n6       region north, split from n1\n\
             \x20          servers 127.0.0.1:7301, 127.0.0.1:7302 (given)\n\
             \x20          db      postgres://redcell@127.0.0.1:6301/orders_n6 (given)\n"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("fleet: no `cellctl up` runs on"),
        "{}",
        out.stdout
    );
    let written = read(&path);
    let n6 = written.cell("n6").unwrap();
    assert_eq!(n6.servers, ["127.0.0.1:7301", "127.0.0.1:7302"]);
    assert_eq!(written.minting_epoch().get(), 0);
    assert_eq!(written.pending_cells()[0].name, "n6");

    // A second expansion waits for this one's switch.
    let again = cellctl(
        &["expand", "--split", "n2:n7", "--state-dir", &state],
        Some(&path),
    );
    assert_eq!(again.code, 1);
    assert_eq!(
        again.stderr.trim_end(),
        "cellctl: cannot expand --split n2:n7: epoch 1 is not minting yet; promote it (or remove it) \
         before planning another expansion"
    );

    let (_dir, fresh, state) = site();
    for (args, message) in [
        (
            vec!["--split", "n1"],
            r#"cellctl: --split: "n1" is not OLD:NEW (e.g. --split n1:n4,s2:s3)"#,
        ),
        (
            vec!["--split", "n9:n6"],
            r#"cellctl: cannot expand: unknown cell "n9""#,
        ),
        (
            vec!["--split", "n1:n2"],
            r#"cellctl: cannot expand --split n1:n2: cell "n2" already exists"#,
        ),
        (
            vec!["--split", "n1:n6", "--servers", "n7=127.0.0.1:1"],
            r#"cellctl: --servers: "n7" is not a new cell of this expansion (new: n6)"#,
        ),
        (vec!["--add", "0"], "cellctl: --add: must be at least 1"),
    ] {
        let mut full = vec!["expand"];
        full.extend(args.iter().copied());
        full.extend(["--state-dir", state.as_str()]);
        let out = cellctl(&full, Some(&fresh));
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert_eq!(out.stderr.trim_end(), message, "{args:?}");
    }
}

#[test]
fn switch_is_refused_while_a_new_cell_does_not_serve() {
    let (_dir, path, state) = site();
    // Servers and DB on ports nothing listens on.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (server, db) = (free(), free());
    let servers = format!("n6=127.0.0.1:{server}");
    let dsn = format!("n6=postgres://redcell@127.0.0.1:{db}/cell_n6");
    let applied = cellctl(
        &[
            "expand",
            "--split",
            "n1:n6",
            "--servers",
            &servers,
            "--db",
            &dsn,
            "--state-dir",
            &state,
            "--apply",
        ],
        Some(&path),
    );
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    let expanded = std::fs::read_to_string(&path).unwrap();

    for apply in [false, true] {
        let mut args = vec!["switch", "--state-dir", &state];
        if apply {
            args.push("--apply");
        }
        let out = cellctl(&args, Some(&path));
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert!(
            out.stdout.starts_with(&format!(
                "new cells:\n  n6       server 127.0.0.1:{server} DOWN (cannot connect:"
            )),
            "{}",
            out.stdout
        );
        assert!(
            out.stderr.starts_with(
                "cellctl: cannot switch: 2 of the new cells' parts are not ready; nothing written:\n"
            ) && out.stderr.contains(&format!("  n6 server 127.0.0.1:{server} is DOWN"))
                && out
                    .stderr
                    .contains(&format!("  n6 db postgres://redcell@127.0.0.1:{db}/cell_n6 is unreachable")),
            "{}",
            out.stderr
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expanded);
    }
}

#[test]
fn reverse_and_complete_follow_the_switch_state() {
    let (_dir, path, state) = site();
    for (command, message) in [
        (
            "reverse",
            "cellctl: cannot reverse: nothing to reverse: minting is not switched (no switch, or it was reversed or completed)",
        ),
        (
            "complete",
            "cellctl: cannot complete: nothing to complete: minting is not switched (no switch, or it was reversed or completed)",
        ),
    ] {
        let out = cellctl(&[command, "--state-dir", &state], Some(&path));
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert_eq!(out.stderr.trim_end(), message);
    }
    let nothing = cellctl(&["switch", "--state-dir", &state], Some(&path));
    assert_eq!(nothing.code, 1);
    assert_eq!(
        nothing.stderr.trim_end(),
        "cellctl: cannot switch: nothing to switch to: the minting epoch 0 is the latest (plan an \
         expansion first)"
    );

    // A file switched a minute ago (as `switch --apply` writes it).
    let expanded = plan::expand(
        &read(&path),
        &[plan::Split {
            from: "n1".into(),
            into: plan::NewCell {
                name: "n6".into(),
                servers: vec!["127.0.0.1:7301".into()],
                db: "postgres://redcell@127.0.0.1:6301/cell_n6".into(),
            },
        }],
    )
    .unwrap();
    let minute_ago =
        UtcTimestamp::from_system_time(SystemTime::now() - Duration::from_secs(60)).unwrap();
    let switched = plan::switch(&expanded, minute_ago).unwrap();
    std::fs::write(&path, switched.to_yaml().unwrap()).unwrap();

    let soaking = cellctl(&["complete", "--state-dir", &state, "--apply"], Some(&path));
    assert_eq!(soaking.code, 1, "{}", soaking.stdout);
    assert!(
        soaking.stderr.starts_with(&format!(
            "cellctl: cannot complete the switch to epoch 1 (soak 600 s): the switch of {minute_ago} \
             soaks for 600 s before it can be completed ("
        )),
        "{}",
        soaking.stderr
    );

    let dry = cellctl(&["reverse", "--state-dir", &state], Some(&path));
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.starts_with("plan: reverse minting from epoch 1 to epoch 0\n")
            && dry.stdout.contains(&format!(
                "-  epoch: 1\n+  epoch: 0\n   region_override: {{}}\n-  switched_from: 0\n-  switched_at: {minute_ago}\n"
            ))
            && dry.stdout.contains("mint pool after the change:\nregion north: epoch 0, 1000 suffixes\n"),
        "{}",
        dry.stdout
    );
    let reversed = cellctl(&["reverse", "--state-dir", &state, "--apply"], Some(&path));
    assert_eq!(reversed.code, 0, "{}", reversed.stderr);
    assert_eq!(read(&path), expanded);

    // Switched again (by the plan: the new cell does not run here), then
    // completed without a soak: reverse is refused from then on.
    std::fs::write(&path, switched.to_yaml().unwrap()).unwrap();
    let completed = cellctl(
        &[
            "complete",
            "--soak-secs",
            "0",
            "--state-dir",
            &state,
            "--apply",
        ],
        Some(&path),
    );
    assert_eq!(completed.code, 0, "{}", completed.stderr);
    let after = read(&path);
    assert_eq!(after.minting_epoch().get(), 1);
    assert!(after.switch().is_none());
    let refused = cellctl(&["reverse", "--state-dir", &state, "--apply"], Some(&path));
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("nothing to reverse"),
        "{}",
        refused.stderr
    );
}

type Client = RedEnvelopeClient<InterceptedService<Channel, BearerToken>>;

/// A client of the fleet's first router, calling as `user`.
async fn client(state: &Path, user: &str) -> Client {
    let routers = std::fs::read_to_string(state.join("routers")).unwrap();
    let router = routers.lines().next().unwrap().to_owned();
    let key = std::fs::read(state.join("hs256.key")).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{router}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let token = mint_hs256(&key, user, 3600).unwrap();
    RedEnvelopeClient::with_interceptor(channel, BearerToken::new(&token).unwrap())
}

/// `count` envelopes of 2 shares sent from north; their IDs.
async fn send_many(client: &mut Client, tag: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for index in 0..count {
        let mut request = tonic::Request::new(pb::SendRequest {
            total_cents: 200,
            count: 2,
            kind: pb::EnvelopeKind::Equal.into(),
            greeting: "expand".to_owned(),
            recipients: Vec::new(),
            idempotency_key: format!("{tag}-{index}"),
        });
        request
            .metadata_mut()
            .insert(REGION_METADATA, "north".parse().unwrap());
        let reply = client.send(request).await.unwrap().into_inner();
        ids.push(reply.envelope.unwrap().id);
    }
    ids
}

fn cells_of(topology: &Topology, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| {
            let id: EnvelopeId = id.parse().unwrap();
            topology.route(&id).unwrap().name.clone()
        })
        .collect()
}

/// Runs a change on the site, printing how long it took to return (the
/// apply, the write and the wait for the fleet); its stdout.
fn timed(site: &Site, args: &[&str]) -> String {
    let started = Instant::now();
    let (code, out, errors) = site.run(args);
    eprintln!(
        "timing: `cellctl {}` returned in {} ms; {}",
        args.join(" "),
        started.elapsed().as_millis(),
        out.lines()
            .find(|line| line.starts_with("fleet: signalled"))
            .unwrap_or("no fleet line")
    );
    assert_eq!(code, 0, "{args:?}\n{out}\n{errors}");
    out
}

/// The whole workflow on a live fleet: expand starts the new cell, switch
/// mints on it, reverse stops that while its envelopes still open, switch
/// again, complete, and reverse is refused.
#[test]
fn expand_switch_reverse_complete_on_a_live_fleet() {
    let site = Site::new();
    let _up = site.up_with("expand", &[]);
    let state_path = site.state();
    let state = state_path.to_str().unwrap().to_owned();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (server, db) = (free(), free());
    let servers = format!("n3=127.0.0.1:{server}");
    let dsn = format!("n3=postgres://redcell@127.0.0.1:{db}/cell_n3");

    let expanded = timed(
        &site,
        &[
            "expand",
            "--split",
            "n1:n3",
            "--servers",
            &servers,
            "--db",
            &dsn,
            "--state-dir",
            &state,
            "--apply",
        ],
    );
    assert!(!expanded.contains("is down"), "{expanded}");
    let parts: Vec<String> = _up.part_pids().into_iter().map(|(part, _)| part).collect();
    for part in [
        format!("postgres-{db}.pid"),
        format!("cell-n3-{server}.pid"),
    ] {
        assert!(parts.contains(&part), "{part} not in {parts:?}");
    }

    let switched = timed(&site, &["switch", "--state-dir", &state, "--apply"]);
    assert!(
        switched.starts_with(&format!(
            "new cells:\n  n3       server 127.0.0.1:{server} SERVING\n"
        )),
        "{switched}"
    );
    for (user, cents) in [("xp-sender", "100000"), ("xp-opener", "1")] {
        let (code, out, errors) = site.run(&["fund", user, cents, "--state-dir", &state]);
        assert_eq!(code, 0, "{out}{errors}");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut sender = runtime.block_on(client(&state_path, "xp-sender"));
    let mut opener = runtime.block_on(client(&state_path, "xp-opener"));
    let topology = read(&site.topology());
    // A router mints on a new cell once its own health check has seen the
    // cell serve (the switch waits for the routers' topology, not for that
    // check): rounds of 40 Sends until one lands on n3, for at most 30 s.
    let admitting = Instant::now();
    let mut while_switched = Vec::new();
    let mut on_n3: Vec<String> = Vec::new();
    for round in 0.. {
        let sent = runtime.block_on(send_many(&mut sender, &format!("switched-{round}"), 40));
        on_n3.extend(
            sent.iter()
                .zip(cells_of(&topology, &sent))
                .filter(|(_, cell)| cell == "n3")
                .map(|(id, _)| id.clone()),
        );
        while_switched.extend(sent);
        if !on_n3.is_empty() || admitting.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    assert!(
        !on_n3.is_empty(),
        "{} sends in 30 s, none on n3: {while_switched:?}",
        while_switched.len()
    );
    eprintln!(
        "while switched: {} of {} envelopes on n3 ({} ms after the switch)",
        on_n3.len(),
        while_switched.len(),
        admitting.elapsed().as_millis()
    );

    timed(&site, &["reverse", "--state-dir", &state, "--apply"]);
    let reversed_topology = read(&site.topology());
    let after_reverse = runtime.block_on(send_many(&mut sender, "reversed", 40));
    let cells = cells_of(&reversed_topology, &after_reverse);
    assert!(!cells.contains(&"n3".to_owned()), "{cells:?}");
    // The envelopes minted on n3 still route there and open.
    for id in &on_n3 {
        let reply = runtime
            .block_on(opener.open(pb::OpenRequest {
                envelope_id: id.clone(),
            }))
            .unwrap()
            .into_inner();
        assert_eq!(reply.status(), pb::ShareStatus::Available, "{id}");
        assert_eq!(reply.amount_cents, 100);
    }

    timed(&site, &["switch", "--state-dir", &state, "--apply"]);
    timed(
        &site,
        &[
            "complete",
            "--soak-secs",
            "0",
            "--state-dir",
            &state,
            "--apply",
        ],
    );
    let (code, _, errors) = site.run(&["reverse", "--state-dir", &state, "--apply"]);
    assert_eq!(code, 1);
    assert!(errors.contains("nothing to reverse"), "{errors}");
    let (code, out, errors) = site.run(&["reconcile", "--state-dir", &state]);
    assert_eq!(code, 0, "{out}{errors}");
}
