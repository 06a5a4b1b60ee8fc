//! `degrade.claims` (issue 11 item 5): during a peak an operator switches off
//! Get's claim list; the router reads the switch from the topology snapshot
//! of each request, so it takes effect on reload, without a restart, and
//! switching it back on brings the list back.

use redcell_proto::v1 as pb;

use crate::{
    history::set_degrade,
    stack::{Builder, Stack},
};

async fn get(stack: &Stack, user: &str, envelope_id: &str, page_size: u32) -> pb::GetResponse {
    stack
        .client(user)
        .get(pb::GetRequest {
            envelope_id: envelope_id.to_owned(),
            page_token: String::new(),
            page_size,
        })
        .await
        .unwrap()
        .into_inner()
}

fn claimants(reply: &pb::GetResponse) -> Vec<String> {
    let mut users: Vec<String> = reply.claims.iter().map(|c| c.user.clone()).collect();
    users.sort_unstable();
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_degrade_switch_is_honoured_on_reload() {
    let mut stack = Builder::default().start().await;
    let envelope = stack.send("alice", "claims-switch", 600, 3).await;
    for user in ["bob", "carol"] {
        let opened = stack.open_as(user, &envelope.id).await.unwrap();
        assert_eq!(opened.status(), pb::ShareStatus::Available, "{user}");
    }

    // On (the default): the claims, whole, not degraded.
    let whole = get(&stack, "alice", &envelope.id, 0).await;
    assert_eq!(claimants(&whole), ["bob", "carol"]);
    assert!(!whole.degraded, "{whole:?}");
    let paged = get(&stack, "alice", &envelope.id, 1).await;
    assert_eq!(paged.claims.len(), 1);
    assert!(!paged.next_page_token.is_empty(), "{paged:?}");

    // Off: the envelope (current: two shares taken), no claims, no page
    // token, marked degraded.
    set_degrade(&mut stack, "{claims: off}").await;
    for page_size in [0, 1] {
        let shed = get(&stack, "alice", &envelope.id, page_size).await;
        assert!(shed.claims.is_empty(), "{shed:?}");
        assert!(shed.next_page_token.is_empty(), "{shed:?}");
        assert!(shed.degraded, "{shed:?}");
        let shown = shed.envelope.as_ref().unwrap();
        assert_eq!(shown.id, envelope.id);
        assert_eq!(shown, whole.envelope.as_ref().unwrap());
    }
    // Everything else still works while it is off, History included.
    let opened = stack.open_as("dave", &envelope.id).await.unwrap();
    assert_eq!(opened.status(), pb::ShareStatus::Available);
    let history = stack
        .client("dave")
        .history(pb::HistoryRequest {
            direction: pb::HistoryDirection::Received.into(),
            page_token: String::new(),
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries.len(), 1);
    assert!(!history.degraded);

    // Back on: the claims again, the one taken while off included.
    set_degrade(&mut stack, "{}").await;
    let back = get(&stack, "alice", &envelope.id, 0).await;
    assert_eq!(claimants(&back), ["bob", "carol", "dave"]);
    assert!(!back.degraded, "{back:?}");
    assert_eq!(
        back.claims.iter().map(|c| c.amount_cents).sum::<i64>(),
        600,
        "three shares of 600"
    );
    stack.check_money().await;
}
