//! Lane mechanics through the library API over a real order DB: the queue cap
//! answers RESOURCE_EXHAUSTED at once, queued Opens commit once the envelope's
//! row is free, and idle lanes retire and come back on demand.

use std::time::Duration;

use redcell_cell::{
    error::CellError,
    lane::{LaneConfig, Lanes},
    share::ShareStatus,
};
use redcell_proto::v1 as pb;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::stack::StackBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_refused_at_once_and_idle_lanes_retire() {
    let mut stack = StackBuilder::default().start().await;
    let envelope = stack
        .send("sender", pb::EnvelopeKind::Lucky, 1_000, 10)
        .await;
    let id = envelope.id.parse().unwrap();

    let pool = redcell_cell::db::pool(&stack.orders.dsn, 4).unwrap();
    let config = LaneConfig {
        queue_cap: 1,
        batch_max: 1,
        idle: Duration::from_millis(300),
    };
    let lanes = Lanes::new(pool, config, TaskTracker::new(), CancellationToken::new());

    // Hold the envelope's row so the lane's first commit waits on the lock.
    let mut blocker = stack.orders.connect().await.unwrap();
    let holding = blocker.transaction().await.unwrap();
    holding
        .execute(
            "SELECT 1 FROM envelopes WHERE id = $1 FOR UPDATE",
            &[&envelope.id],
        )
        .await
        .unwrap();

    let first = tokio::spawn({
        let lanes = lanes.clone();
        async move { lanes.open(id, "first".into()).await }
    });
    let observer = stack.orders.connect().await.unwrap();
    for attempt in 0.. {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE envelopes%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(
            attempt < 600,
            "the lane's commit never waited on the row lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The lane is busy committing "first": one more fits the queue...
    let second = tokio::spawn({
        let lanes = lanes.clone();
        async move { lanes.open(id, "second".into()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and the next is refused at once.
    match lanes.open(id, "third".into()).await {
        Err(CellError::Busy(message)) => assert!(message.contains("requests queued"), "{message}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(
        !first.is_finished(),
        "nothing commits while the row is held"
    );

    holding.rollback().await.unwrap();
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(first.status, ShareStatus::Available);
    assert_eq!(second.status, ShareStatus::Available);
    assert_eq!((first.sequence, second.sequence), (1, 2));

    assert_eq!(lanes.len(), 1);
    for attempt in 0.. {
        if lanes.is_empty() {
            break;
        }
        assert!(attempt < 200, "the idle lane never retired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new lane loads the envelope from the DB and knows who already opened.
    let replay = lanes.open(id, "first".into()).await.unwrap();
    assert_eq!(replay, first);
    assert_eq!(
        lanes.grab(id, "third".into()).await.unwrap(),
        ShareStatus::Available
    );

    stack.drain_settlement().await;
    let report = stack.check_money().await;
    assert_eq!(report.claims, 2);
}
