//! Opens of one hot envelope: exact sums, one share per user, idempotency.

use std::collections::HashSet;

use redcell_proto::v1::{self as pb};

use crate::stack::{Stack, StackBuilder};

/// `users` distinct users open concurrently, spread over all servers.
async fn open_all(
    stack: &Stack,
    envelope: &str,
    users: usize,
    servers: usize,
) -> Vec<(String, pb::OpenResponse)> {
    let mut tasks = Vec::new();
    for index in 0..users {
        let user = format!("u{index}");
        let mut client = stack.client(index % servers, &user);
        let request = pb::OpenRequest {
            envelope_id: envelope.to_owned(),
        };
        tasks.push(tokio::spawn(async move {
            // RESOURCE_EXHAUSTED / UNAVAILABLE are retryable: a client retries.
            loop {
                match client.open(request.clone()).await {
                    Ok(response) => return (user, response.into_inner()),
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                        ) =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    Err(status) => panic!("open failed: {status}"),
                }
            }
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

async fn hot_envelope(servers: usize) {
    let mut stack = StackBuilder {
        servers,
        ..StackBuilder::default()
    }
    .start()
    .await;
    let envelope = stack
        .send("sender", pb::EnvelopeKind::Lucky, 100_000, 100)
        .await;
    let results = open_all(&stack, &envelope.id, 1000, servers).await;

    let taken: Vec<&(String, pb::OpenResponse)> = results
        .iter()
        .filter(|(_, r)| r.status() == pb::ShareStatus::Available)
        .collect();
    assert_eq!(taken.len(), 100, "exactly 100 shares");
    assert_eq!(
        taken.iter().map(|(_, r)| r.amount_cents).sum::<i64>(),
        100_000,
        "sum exact"
    );
    assert!(taken.iter().all(|(_, r)| r.amount_cents >= 1));
    let users: HashSet<&String> = taken.iter().map(|(user, _)| user).collect();
    assert_eq!(users.len(), 100, "nobody twice");
    let sequences: HashSet<u32> = taken.iter().map(|(_, r)| r.sequence).collect();
    assert_eq!(sequences, (1..=100).collect());
    assert!(
        results
            .iter()
            .filter(|(_, r)| r.status() != pb::ShareStatus::Available)
            .all(|(_, r)| r.status() == pb::ShareStatus::Exhausted)
    );

    // What was acknowledged is what is stored.
    let stored = stack.claims(&envelope.id).await;
    assert_eq!(stored.len(), 100);
    for (user, response) in &taken {
        assert!(
            stored.contains(&(user.clone(), response.amount_cents)),
            "{user} acknowledged but not stored"
        );
    }
    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.held_cents, 0);
    assert_eq!(report.claims, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_envelope_one_server() {
    hot_envelope(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_envelope_two_servers_of_one_cell() {
    hot_envelope(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_opening_five_times_gets_one_share() {
    let mut stack = StackBuilder::default().start().await;
    let envelope = stack
        .send("sender", pb::EnvelopeKind::Lucky, 1_000, 10)
        .await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let mut client = stack.client(0, "alice");
        let request = pb::OpenRequest {
            envelope_id: envelope.id.clone(),
        };
        tasks.push(tokio::spawn(async move {
            client.open(request).await.unwrap().into_inner()
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    assert!(
        replies.iter().all(|reply| *reply == replies[0]),
        "identical replies: {replies:?}"
    );
    assert_eq!(replies[0].status(), pb::ShareStatus::Available);
    assert_eq!(stack.claims(&envelope.id).await.len(), 1);
    let grab = stack
        .client(0, "alice")
        .grab(pb::GrabRequest {
            envelope_id: envelope.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grab.status(), pb::ShareStatus::AlreadyOpened);
    stack.drain_settlement().await;
    stack.check_money().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rowlock_strategy_keeps_the_same_invariants() {
    let mut stack = StackBuilder {
        strategy: redcell_cell::OpenStrategy::Rowlock,
        ..StackBuilder::default()
    }
    .start()
    .await;
    let envelope = stack
        .send("sender", pb::EnvelopeKind::Lucky, 50_000, 50)
        .await;
    let results = open_all(&stack, &envelope.id, 200, 1).await;
    let taken: Vec<i64> = results
        .iter()
        .filter(|(_, r)| r.status() == pb::ShareStatus::Available)
        .map(|(_, r)| r.amount_cents)
        .collect();
    assert_eq!(taken.len(), 50);
    assert_eq!(taken.iter().sum::<i64>(), 50_000);
    stack.drain_settlement().await;
    stack.check_money().await;
}
