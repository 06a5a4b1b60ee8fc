//! Where requests go: new envelopes spread over the active cells of the
//! sender's region by range size; every request for one envelope reaches one
//! logic server of its cell.

use redcell_proto::v1 as pb;

use crate::stack::Builder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_envelopes_spread_over_the_senders_region() {
    let mut stack = Builder::default().start().await;
    let mut sends = Vec::new();
    for (region, count) in [("north", 300), ("south", 200)] {
        for index in 0..count {
            let sender = format!("{region}-sender-{index}");
            stack.fund(&sender, 100).await;
            let request = pb::SendRequest {
                total_cents: 100,
                count: 1,
                kind: pb::EnvelopeKind::Lucky.into(),
                greeting: String::new(),
                recipients: Vec::new(),
                idempotency_key: format!("k{index}"),
            };
            let mut client = stack.client_in(&sender, region);
            sends.push(tokio::spawn(async move {
                let reply = client.send(request).await.unwrap().into_inner();
                (region, reply.envelope.unwrap().id)
            }));
        }
    }
    for send in sends {
        let (region, id) = send.await.unwrap();
        let digit = if region == "north" { '1' } else { '2' };
        assert_eq!(
            id.chars().nth(6),
            Some(digit),
            "minted in the sender's region"
        );
    }
    let per_cell = stack.envelopes_per_cell().await;
    for (cell, count) in &per_cell {
        let (even, region_total) = if cell.starts_with('n') {
            (100.0, 300)
        } else {
            (100.0, 200)
        };
        let _ = region_total;
        let share = *count as f64;
        assert!(
            (even * 0.75..=even * 1.25).contains(&share),
            "cell {cell} got {count} envelopes, outside ±25% of {even}: {per_cell:?}"
        );
    }
    stack.check_money().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_for_one_envelope_reaches_one_server() {
    let mut stack = Builder {
        servers_per_cell: 2,
        ..Builder::default()
    }
    .start()
    .await;
    let envelope = stack.send("alice", "sticky", 10_000, 20).await;
    let cell = stack.cell_of(&envelope.id);
    let before: Vec<u64> = stack
        .cell(&cell)
        .servers
        .iter()
        .map(|s| s.metrics.envelope_requests())
        .collect();
    for index in 0..30 {
        let user = format!("opener{index}");
        let mut client = stack.client(&user);
        client
            .grab(pb::GrabRequest {
                envelope_id: envelope.id.clone(),
            })
            .await
            .unwrap();
        client
            .open(pb::OpenRequest {
                envelope_id: envelope.id.clone(),
            })
            .await
            .unwrap();
    }
    let after: Vec<u64> = stack
        .cell(&cell)
        .servers
        .iter()
        .map(|s| s.metrics.envelope_requests())
        .collect();
    let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        served.contains(&60) && served.contains(&0),
        "one server served all 60 requests: {served:?}"
    );
    stack.check_money().await;
}
