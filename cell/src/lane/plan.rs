//! The lane's decisions, as pure functions of (what the lane knows, what is
//! queued): no I/O, no clock of their own, no channels. The actor in
//! [`super`] feeds them and carries out their answer; the property tests
//! below hold them to the money invariants for arbitrary request sequences.
//!
//! A batch is decided in two steps:
//! 1. [`triage`] answers from memory every Grab, every replayed Open and every
//!    Open that cannot take a share, and groups the remaining Opens by user
//!    (a user's duplicate Opens in one batch share one share): the *takers*.
//! 2. [`plan_batch`] draws the takers' shares in queue order against the
//!    committed state: the claims to write and the envelope's remainder after
//!    them, with every taker in exactly one of *taking* (answered with its
//!    share once the batch commits), *answered* (now), or *overflow* (it fits
//!    the committed state but not after the takers ahead of it: `EXHAUSTED`,
//!    but only once that batch has committed — a failed commit must never
//!    have told anyone `EXHAUSTED` while shares remain). After a lost version
//!    race or an expiry seen by the database, the actor reloads and plans the
//!    same takers again; replanning is what makes a share opened meanwhile
//!    through another server come back as that user's answer, not a second
//!    share.

use std::{collections::HashMap, time::SystemTime};

use crate::{
    envelope::{Claim, Envelope, Status},
    error::CellError,
    share::{OpenResult, ShareStatus},
    store::NewClaim,
};

/// An envelope and its claims, as the lane knows them.
#[derive(Debug, Clone)]
pub struct LaneState {
    pub envelope: Envelope,
    pub claims: HashMap<String, OpenResult>,
    /// The DB refused a commit because the envelope expired by its clock.
    pub expired_in_db: bool,
}

impl LaneState {
    pub fn new(envelope: Envelope, claims: Vec<Claim>) -> LaneState {
        let claims = claims
            .into_iter()
            .map(|claim| {
                (
                    claim.user,
                    OpenResult::taken(claim.amount_cents, claim.sequence),
                )
            })
            .collect();
        LaneState {
            envelope,
            claims,
            expired_in_db: false,
        }
    }

    /// Why nothing can be taken from this envelope by `user`, if so.
    /// `remaining_count` accounts for the takers ahead in the batch.
    fn refusal(
        &self,
        user: &str,
        remaining_count: u32,
        now: SystemTime,
    ) -> Result<Option<ShareStatus>, CellError> {
        match self.envelope.status {
            Status::PendingPayment => {
                return Err(CellError::FailedPrecondition(format!(
                    "envelope {} is not paid yet",
                    self.envelope.id
                )));
            }
            Status::Cancelled => {
                return Err(CellError::FailedPrecondition(format!(
                    "envelope {} was cancelled (its payment failed)",
                    self.envelope.id
                )));
            }
            Status::Active | Status::Exhausted | Status::Expired => {}
        }
        Ok(if self.claims.contains_key(user) {
            Some(ShareStatus::AlreadyOpened)
        } else if !self.envelope.is_eligible(user) {
            Some(ShareStatus::NotEligible)
        } else if self.expired_in_db || self.envelope.status == Status::Expired {
            Some(ShareStatus::Expired)
        } else if self.envelope.status == Status::Exhausted || self.envelope.remaining_count == 0 {
            // Emptied before it expired: it stays EXHAUSTED, as Get shows.
            Some(ShareStatus::Exhausted)
        } else if now >= self.envelope.expires_at {
            Some(ShareStatus::Expired)
        } else if remaining_count == 0 {
            Some(ShareStatus::Exhausted)
        } else {
            None
        })
    }

    /// The answer to an Open by `user` that takes nothing now: the user's
    /// first result if it holds a share, else the refusal.
    fn answer_without_share(&self, user: &str, refusal: ShareStatus) -> OpenResult {
        match refusal {
            ShareStatus::AlreadyOpened => self
                .claims
                .get(user)
                .copied()
                .unwrap_or(OpenResult::refused(ShareStatus::AlreadyOpened)),
            status => OpenResult::refused(status),
        }
    }

    /// Records a committed batch: the envelope's new version and remainder
    /// and the takers' shares. Returns each claim's result, in claim order.
    pub fn apply(&mut self, plan: &BatchPlan, version: i64) -> Vec<OpenResult> {
        let envelope = &mut self.envelope;
        envelope.version = version;
        envelope.remaining_cents = plan.remaining_cents;
        envelope.remaining_count = plan.remaining_count;
        if plan.remaining_count == 0 {
            envelope.status = Status::Exhausted;
        }
        plan.claims
            .iter()
            .map(|claim| {
                let result = OpenResult::taken(claim.amount_cents, claim.sequence);
                self.claims.insert(claim.user.clone(), result);
                result
            })
            .collect()
    }
}

/// What a queued request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Grab,
    Open,
}

/// One queued request, as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Queued<'a> {
    pub user: &'a str,
    pub ask: Ask,
}

/// An answer given from memory.
#[derive(Debug, Clone)]
pub enum Answer {
    Grab(Result<ShareStatus, CellError>),
    Open(Result<OpenResult, CellError>),
}

/// A user whose Opens in this batch may take a share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taker {
    pub user: String,
    /// The queue positions of the user's Opens (all answered alike).
    pub requests: Vec<usize>,
}

/// What [`triage`] decided.
#[derive(Debug, Default)]
pub struct Triage {
    /// `(queue position, answer)` for the requests answered from memory.
    pub answers: Vec<(usize, Answer)>,
    /// The rest, in queue order of each user's first Open.
    pub takers: Vec<Taker>,
}

/// Step 1: answers what memory can answer, groups the rest into takers.
pub fn triage(state: &LaneState, queue: &[Queued<'_>], now: SystemTime) -> Triage {
    let mut triage = Triage::default();
    // Shares left after the takers so far (for Grab's "is one left for me?").
    let mut remaining_count = state.envelope.remaining_count;
    for (position, request) in queue.iter().enumerate() {
        let user = request.user;
        let taker = triage.takers.iter_mut().find(|taker| taker.user == user);
        match request.ask {
            Ask::Grab => {
                let answer = if taker.is_some() {
                    Ok(ShareStatus::AlreadyOpened)
                } else {
                    state
                        .refusal(user, remaining_count, now)
                        .map(|refusal| refusal.unwrap_or(ShareStatus::Available))
                };
                triage.answers.push((position, Answer::Grab(answer)));
            }
            Ask::Open => {
                if let Some(taker) = taker {
                    taker.requests.push(position);
                    continue;
                }
                // Judged on the committed state: whether this Open still fits
                // after the takers ahead of it is plan_batch's question.
                let answer = match state.refusal(user, state.envelope.remaining_count, now) {
                    Ok(Some(refusal)) => Ok(state.answer_without_share(user, refusal)),
                    Err(error) => Err(error),
                    Ok(None) => {
                        remaining_count = remaining_count.saturating_sub(1);
                        triage.takers.push(Taker {
                            user: user.to_owned(),
                            requests: vec![position],
                        });
                        continue;
                    }
                };
                triage.answers.push((position, Answer::Open(answer)));
            }
        }
    }
    triage
}

/// What [`plan_batch`] decided for a list of takers (indexes into it).
#[derive(Debug, Clone, Default)]
pub struct BatchPlan {
    /// The shares to write, in sequence order.
    pub claims: Vec<NewClaim>,
    /// `taking[i]` is the taker whose share is `claims[i]`.
    pub taking: Vec<usize>,
    /// Takers answered now.
    pub answered: Vec<(usize, Result<OpenResult, CellError>)>,
    /// Takers answered `EXHAUSTED` once (and only if) the claims commit.
    pub overflow: Vec<usize>,
    /// The envelope's remainder after the claims.
    pub remaining_cents: i64,
    pub remaining_count: u32,
}

impl BatchPlan {
    /// The takers to plan again after a commit that did not happen (a lost
    /// version race, an expiry seen by the DB): those taking a share or
    /// overflowing, in their original order.
    pub fn unresolved(&self) -> Vec<usize> {
        let mut unresolved: Vec<usize> =
            self.taking.iter().chain(&self.overflow).copied().collect();
        unresolved.sort_unstable();
        unresolved
    }
}

/// Step 2: draws the shares of `takers` (users, in queue order) against the
/// committed state.
pub fn plan_batch(state: &LaneState, takers: &[&str], now: SystemTime) -> BatchPlan {
    let envelope = &state.envelope;
    let committed_remaining = envelope.remaining_count;
    let mut plan = BatchPlan {
        remaining_cents: envelope.remaining_cents,
        remaining_count: envelope.remaining_count,
        ..BatchPlan::default()
    };
    for (index, user) in takers.iter().enumerate() {
        match state.refusal(user, plan.remaining_count, now) {
            Ok(None) => {}
            Ok(Some(ShareStatus::Exhausted))
                if matches!(state.refusal(user, committed_remaining, now), Ok(None)) =>
            {
                plan.overflow.push(index);
                continue;
            }
            Ok(Some(refusal)) => {
                plan.answered
                    .push((index, Ok(state.answer_without_share(user, refusal))));
                continue;
            }
            Err(error) => {
                plan.answered.push((index, Err(error)));
                continue;
            }
        }
        let sequence = envelope.count - plan.remaining_count + 1;
        let amount = envelope.share(sequence, plan.remaining_cents, plan.remaining_count);
        plan.remaining_cents -= amount;
        plan.remaining_count -= 1;
        plan.claims.push(NewClaim {
            user: (*user).to_owned(),
            sequence,
            amount_cents: amount,
        });
        plan.taking.push(index);
    }
    plan
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::{collections::HashSet, time::Duration};

    use proptest::prelude::*;

    use super::*;
    use crate::{allocation, kind::Kind};

    const NOW_SECS: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    /// A fresh envelope of `total` cents in `count` shares, sent at `now`.
    fn envelope(kind: Kind, total: i64, count: u32, seed: [u8; 32], ttl_secs: i64) -> Envelope {
        let expires = if ttl_secs >= 0 {
            now() + Duration::from_secs(ttl_secs.unsigned_abs())
        } else {
            now() - Duration::from_secs(ttl_secs.unsigned_abs())
        };
        Envelope {
            id: "2601221000000481516742".parse().unwrap(),
            sender: "sender".into(),
            kind,
            status: Status::Active,
            total_cents: total,
            count,
            remaining_cents: total,
            remaining_count: count,
            greeting: String::new(),
            recipients: vec!["u1".into()],
            seed,
            split_version: allocation::SplitVersion::CURRENT,
            version: 0,
            created_at: now(),
            expires_at: expires,
        }
    }

    fn users(indexes: &[u8]) -> Vec<String> {
        indexes.iter().map(|index| format!("u{index}")).collect()
    }

    /// Commits `plan` as the database would (always succeeding).
    fn commit(state: &mut LaneState, plan: &BatchPlan) {
        let version = state.envelope.version + 1;
        state.apply(plan, version);
    }

    /// Runs one batch end to end in memory: triage, plan, commit. Returns
    /// each request's final answer by queue position.
    fn run_batch(state: &mut LaneState, queue: &[(String, Ask)]) -> Vec<Answer> {
        let view: Vec<Queued<'_>> = queue
            .iter()
            .map(|(user, ask)| Queued { user, ask: *ask })
            .collect();
        let triage = triage(state, &view, now());
        let mut answers: Vec<Option<Answer>> = vec![None; queue.len()];
        for (position, answer) in triage.answers {
            assert!(answers[position].is_none(), "answered twice");
            answers[position] = Some(answer);
        }
        let takers: Vec<&str> = triage.takers.iter().map(|t| t.user.as_str()).collect();
        let plan = plan_batch(state, &takers, now());
        let before = state.clone();
        commit(state, &plan);
        let results = plan
            .taking
            .iter()
            .zip(
                plan.claims
                    .iter()
                    .map(|c| OpenResult::taken(c.amount_cents, c.sequence)),
            )
            .map(|(taker, result)| (*taker, Ok(result)))
            .chain(plan.answered.iter().cloned())
            .chain(
                plan.overflow
                    .iter()
                    .map(|taker| (*taker, Ok(OpenResult::refused(ShareStatus::Exhausted)))),
            );
        let mut seen = HashSet::new();
        for (taker, result) in results {
            assert!(seen.insert(taker), "taker {taker} decided twice");
            for position in &triage.takers[taker].requests {
                assert!(answers[*position].is_none(), "answered twice");
                answers[*position] = Some(Answer::Open(result.clone()));
            }
        }
        assert_eq!(seen.len(), triage.takers.len(), "every taker decided");
        check_plan(&before, &plan, &takers);
        answers
            .into_iter()
            .map(|answer| answer.expect("every request answered"))
            .collect()
    }

    /// The money invariants of one plan against the state it was made on.
    fn check_plan(state: &LaneState, plan: &BatchPlan, takers: &[&str]) {
        let envelope = &state.envelope;
        let mut claimed = HashSet::new();
        for (claim, taker) in plan.claims.iter().zip(&plan.taking) {
            assert_eq!(claim.user, takers[*taker]);
            assert!(claimed.insert(&claim.user), "one share per user in a batch");
            assert!(
                !state.claims.contains_key(&claim.user),
                "{} already holds a share",
                claim.user
            );
            assert!(claim.amount_cents >= 1, "every share is at least 1 cent");
        }
        let sequences: Vec<u32> = plan.claims.iter().map(|c| c.sequence).collect();
        let first = envelope.count - envelope.remaining_count + 1;
        let expected: Vec<u32> = (first..first + sequences.len() as u32).collect();
        assert_eq!(sequences, expected, "consecutive sequence numbers");
        let taken: i64 = plan.claims.iter().map(|c| c.amount_cents).sum();
        assert_eq!(plan.remaining_cents, envelope.remaining_cents - taken);
        assert_eq!(
            plan.remaining_count,
            envelope.remaining_count - plan.claims.len() as u32
        );
        assert_eq!(
            plan.remaining_count == 0,
            plan.remaining_cents == 0,
            "shares and cents reach zero together"
        );
        assert!(plan.remaining_cents >= i64::from(plan.remaining_count));
        if !plan.overflow.is_empty() {
            assert_eq!(plan.remaining_count, 0, "overflow only past the last share");
        }
    }

    fn arbitrary_queue() -> impl Strategy<Value = Vec<(String, Ask)>> {
        prop::collection::vec(
            (
                0u8..12,
                prop_oneof![3 => Just(Ask::Open), 1 => Just(Ask::Grab)],
            ),
            0..40,
        )
        .prop_map(|requests| {
            requests
                .into_iter()
                .map(|(user, ask)| (format!("u{user}"), ask))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Batches of arbitrary Grabs and Opens (duplicates included) until the
        /// queue runs out: every request answered once; one share per user;
        /// a replayed Open returns the first result; Grab takes nothing; the
        /// shares are exactly the envelope's split (sum exact once
        /// exhausted); an expired or EXCLUSIVE envelope gives nothing it
        /// must not.
        #[test]
        fn batches_keep_the_money_invariants(
            seed in any::<[u8; 32]>(),
            count in 1u32..8,
            extra in 0i64..200,
            kind in prop_oneof![Just(Kind::Lucky), Just(Kind::Equal), Just(Kind::Exclusive)],
            expired in prop::bool::weighted(0.15),
            batches in prop::collection::vec(arbitrary_queue(), 1..5),
        ) {
            let count = if kind == Kind::Exclusive { 1 } else { count };
            let total = match kind {
                Kind::Equal => i64::from(count) * (1 + extra),
                Kind::Lucky | Kind::Exclusive => i64::from(count) + extra,
            };
            let ttl = if expired { -1 } else { 3_600 };
            let mut state = LaneState::new(envelope(kind, total, count, seed, ttl), Vec::new());
            let mut firsts: HashMap<String, OpenResult> = HashMap::new();
            for queue in &batches {
                let answers = run_batch(&mut state, queue);
                for ((user, ask), answer) in queue.iter().zip(answers) {
                    match (ask, answer) {
                        (Ask::Grab, Answer::Grab(status)) => {
                            let status = status.unwrap();
                            if expired {
                                prop_assert_ne!(status, ShareStatus::Available);
                            }
                        }
                        (Ask::Open, Answer::Open(result)) => {
                            let result = result.unwrap();
                            if result.status == ShareStatus::Available {
                                prop_assert!(!expired, "an expired envelope gives no share");
                                if kind == Kind::Exclusive {
                                    prop_assert_eq!(user.as_str(), "u1");
                                }
                                match firsts.get(user) {
                                    Some(first) => prop_assert_eq!(*first, result, "replay"),
                                    None => { firsts.insert(user.clone(), result); }
                                }
                            } else {
                                prop_assert!(!firsts.contains_key(user), "a holder is answered its share");
                            }
                        }
                        (ask, answer) => prop_assert!(false, "{ask:?} answered {answer:?}"),
                    }
                }
            }
            // The shares taken are the envelope's split, position by position.
            let mut taken: Vec<OpenResult> = firsts.values().copied().collect();
            taken.sort_by_key(|result| result.sequence);
            let split = allocation::replay(kind.split_rule(), allocation::SplitVersion::CURRENT, &seed, total, count);
            for result in &taken {
                prop_assert_eq!(result.amount_cents, split[result.sequence as usize - 1]);
            }
            prop_assert_eq!(state.claims.len(), taken.len());
            let sum: i64 = taken.iter().map(|r| r.amount_cents).sum();
            prop_assert_eq!(sum + state.envelope.remaining_cents, total, "no cent lost or made");
            if state.envelope.remaining_count == 0 {
                prop_assert_eq!(sum, total, "an exhausted envelope paid out exactly its total");
            }
        }

        /// A lost version race: another server committed shares for some of
        /// our takers (and others) meanwhile. Replanning on the reloaded
        /// state answers those takers with the share they already hold,
        /// never a second one, and continues the split where the other
        /// server left it.
        #[test]
        fn replanning_after_a_lost_race_never_pays_twice(
            seed in any::<[u8; 32]>(),
            count in 2u32..10,
            extra in 0i64..500,
            ours in prop::collection::vec(0u8..12, 1..10),
            theirs in prop::collection::vec(0u8..12, 1..10),
        ) {
            let total = i64::from(count) + extra;
            let fresh = LaneState::new(envelope(Kind::Lucky, total, count, seed, 3_600), Vec::new());
            let mut ours = users(&ours);
            ours.dedup();
            let mut seen = HashSet::new();
            ours.retain(|user| seen.insert(user.clone()));
            let our_takers: Vec<&str> = ours.iter().map(String::as_str).collect();
            let stale_plan = plan_batch(&fresh, &our_takers, now());

            // The other server wins the race.
            let mut theirs = users(&theirs);
            let mut seen = HashSet::new();
            theirs.retain(|user| seen.insert(user.clone()));
            let their_takers: Vec<&str> = theirs.iter().map(String::as_str).collect();
            let mut reloaded = fresh.clone();
            let their_plan = plan_batch(&reloaded, &their_takers, now());
            commit(&mut reloaded, &their_plan);

            let unresolved = stale_plan.unresolved();
            let again: Vec<&str> = unresolved.iter().map(|index| our_takers[*index]).collect();
            let replan = plan_batch(&reloaded, &again, now());
            check_plan(&reloaded, &replan, &again);
            for (index, result) in &replan.answered {
                let user = again[*index];
                if let Some(held) = reloaded.claims.get(user) {
                    prop_assert_eq!(result.as_ref().unwrap(), held, "their share, not a second");
                }
            }
            for claim in &replan.claims {
                prop_assert!(!reloaded.claims.contains_key(&claim.user));
            }
            commit(&mut reloaded, &replan);
            let sum: i64 = reloaded.claims.values().map(|r| r.amount_cents).sum();
            prop_assert_eq!(sum + reloaded.envelope.remaining_cents, total);
            prop_assert!(reloaded.claims.len() <= count as usize);
        }
    }

    /// Takers past the last share are not told EXHAUSTED by the plan: only
    /// once the batch that takes the last share commits.
    #[test]
    fn overflow_waits_for_the_commit() {
        let state = LaneState::new(envelope(Kind::Lucky, 10, 2, [1; 32], 3_600), Vec::new());
        let plan = plan_batch(&state, &["a", "b", "c", "d"], now());
        assert_eq!(plan.taking, vec![0, 1]);
        assert_eq!(plan.overflow, vec![2, 3]);
        assert!(plan.answered.is_empty());
        assert_eq!(plan.unresolved(), vec![0, 1, 2, 3]);
    }

    /// An unpaid envelope's error keeps its code for every caller.
    #[test]
    fn errors_keep_their_kind() {
        let mut unpaid = envelope(Kind::Lucky, 10, 2, [1; 32], 3_600);
        unpaid.status = Status::PendingPayment;
        let state = LaneState::new(unpaid, Vec::new());
        let queue = [
            Queued {
                user: "a",
                ask: Ask::Open,
            },
            Queued {
                user: "a",
                ask: Ask::Grab,
            },
        ];
        let triage = triage(&state, &queue, now());
        assert!(triage.takers.is_empty());
        for (_, answer) in triage.answers {
            let error = match answer {
                Answer::Open(result) => result.unwrap_err(),
                Answer::Grab(result) => result.unwrap_err(),
            };
            assert!(
                matches!(error, CellError::FailedPrecondition(_)),
                "{error:?}"
            );
        }
    }
}
