//! Flow control (DESIGN.md §6): how much any one user, and everyone together,
//! may ask of the router at once.
//!
//! Two independent limits, applied in this order:
//!
//! 1. **Global concurrency with load shedding** ([`global_limit_layer`]), a tower
//!    layer around the whole gRPC server. At most `max_in_flight` requests are
//!    being handled at any moment, across every connection; a request that
//!    arrives when all slots are taken is refused at once with
//!    `RESOURCE_EXHAUSTED` instead of queueing. Queueing would only add latency
//!    to requests whose clients will time out and retry anyway, and would let a
//!    burst pile up memory; shedding keeps the requests we do accept fast.
//! 2. **A per-user token bucket** ([`UserRateLimiter`]), checked by the handler
//!    right after authentication (it needs the user id, which the layer below
//!    the gRPC codec does not have). Each user gets `burst` requests at once and
//!    `per_second` sustained; one noisy user cannot use up the global slots for
//!    everyone.
//!
//! Both refusals are `RESOURCE_EXHAUSTED`: the client should back off and retry,
//! and nothing was done on its behalf.
//!
//! Invariants, and why they hold:
//! - **The concurrency budget is global, not per connection.** The layer holds
//!   one semaphore shared by every service it wraps and every clone of those
//!   (tonic clones the service per connection). That is why it is built on
//!   tower's `GlobalConcurrencyLimitLayer` rather than `ConcurrencyLimitLayer`,
//!   which would make a fresh semaphore each time it wraps a service.
//! - **A slot is held until the response future completes**: for unary RPCs
//!   that is the whole handler; a server-streaming response releases its slot
//!   when the headers go out, not when the stream ends.
//! - **The rate limiter's memory is bounded by recent users**, not by all users
//!   ever seen, as long as someone calls [`UserRateLimiter::shrink`]
//!   periodically: it drops every user whose bucket has refilled completely
//!   (their state is indistinguishable from a fresh one, so forgetting them
//!   changes no decision).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::Semaphore;
use tonic::Status;
use tower::limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer};
use tower::load_shed::LoadShed;
use tower::load_shed::error::Overloaded;
use tower::util::MapErr;
use tower::{BoxError, Layer, ServiceBuilder};

/// Per-user token buckets, keyed by user id.
///
/// `C` is the time source: the real clock in production ([`UserRateLimiter::new`]),
/// a fake one in tests ([`UserRateLimiter::with_clock`]). Cheap to clone; clones
/// share the buckets.
pub struct UserRateLimiter<C: Clock = DefaultClock> {
    buckets: Arc<Buckets<C>>,
    /// Kept for the refusal message.
    per_second: NonZeroU32,
}

/// With the default clock this is `governor::DefaultKeyedRateLimiter<String>`.
type Buckets<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

impl UserRateLimiter {
    /// Each user may make `burst` requests at once and `per_second` sustained.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> UserRateLimiter {
        UserRateLimiter::with_clock(per_second, burst, DefaultClock::default())
    }
}

impl<C: Clock> UserRateLimiter<C> {
    /// As [`UserRateLimiter::new`], reading time from `clock`.
    pub fn with_clock(per_second: NonZeroU32, burst: NonZeroU32, clock: C) -> UserRateLimiter<C> {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        UserRateLimiter {
            buckets: Arc::new(RateLimiter::new(
                quota,
                DefaultKeyedStateStore::default(),
                clock,
            )),
            per_second,
        }
    }

    /// Takes one token from `user`'s bucket, or refuses with
    /// `RESOURCE_EXHAUSTED` when it is empty.
    pub fn check(&self, user: &str) -> Result<(), Status> {
        self.buckets
            .check_key(&user.to_owned())
            .map_err(|_not_until| {
                Status::resource_exhausted(format!(
                    "rate limit: {} requests/s per user",
                    self.per_second
                ))
            })
    }

    /// Forgets users whose buckets are full again and returns the freed
    /// memory.
    ///
    /// The router calls this from a tracked background task, every few seconds
    /// to a minute: between calls the map holds at most the users seen since
    /// the previous call (plus those still refilling), so the period trades
    /// memory for the cost of a sweep over the map.
    pub fn shrink(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    /// How many users currently have a bucket (for metrics and tests).
    pub fn tracked_users(&self) -> usize {
        self.buckets.len()
    }
}

impl<C: Clock> Clone for UserRateLimiter<C> {
    fn clone(&self) -> Self {
        UserRateLimiter {
            buckets: Arc::clone(&self.buckets),
            per_second: self.per_second,
        }
    }
}

impl<C: Clock> fmt::Debug for UserRateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRateLimiter")
            .field("per_second", &self.per_second)
            .field("tracked_users", &self.buckets.len())
            .finish()
    }
}

/// The global concurrency limit with load shedding, for
/// `tonic::transport::Server::builder().layer(global_limit_layer(n))`.
///
/// At most `max_in_flight` requests run at once across all connections; the
/// next one is refused immediately. Shed requests reach clients as
/// `RESOURCE_EXHAUSTED` "router overloaded: too many requests in flight": the
/// layer turns tower's `Overloaded` error into that status itself, rather than
/// relying on tonic's own mapping of `Overloaded` (whose message speaks of "the
/// connection", wrong for a global limit, and which tonic documents as
/// unstable). `max_in_flight == 0` sheds every request; validate the config.
pub fn global_limit_layer(max_in_flight: usize) -> GlobalLimitLayer {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    GlobalLimitLayer {
        limit: GlobalConcurrencyLimitLayer::with_semaphore(Arc::clone(&slots)),
        slots,
        max_in_flight,
    }
}

/// See [`global_limit_layer`]. Cloning it shares the budget.
#[derive(Clone)]
pub struct GlobalLimitLayer {
    limit: GlobalConcurrencyLimitLayer,
    /// The semaphore inside `limit`, kept to report how many slots are taken.
    slots: Arc<Semaphore>,
    max_in_flight: usize,
}

impl GlobalLimitLayer {
    /// Requests being handled now (for a gauge).
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.slots.available_permits())
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

impl fmt::Debug for GlobalLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalLimitLayer")
            .field("max_in_flight", &self.max_in_flight)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// What [`GlobalLimitLayer`] wraps a service in: the concurrency limit inside,
/// the shedder around it (it turns "no slot free" into an immediate error), and
/// the error mapping outermost.
pub type GlobalLimit<S> = MapErr<LoadShed<ConcurrencyLimit<S>>, fn(BoxError) -> BoxError>;

impl<S> Layer<S> for GlobalLimitLayer {
    type Service = GlobalLimit<S>;

    fn layer(&self, inner: S) -> GlobalLimit<S> {
        ServiceBuilder::new()
            .map_err(overloaded_as_status as fn(BoxError) -> BoxError)
            .load_shed()
            .layer(self.limit.clone())
            .service(inner)
    }
}

/// The status a shed request gets; other errors pass through untouched.
fn overloaded_as_status(err: BoxError) -> BoxError {
    if err.is::<Overloaded>() {
        Box::new(Status::resource_exhausted(
            "router overloaded: too many requests in flight",
        ))
    } else {
        err
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use tokio::sync::Notify;
    use tonic::Code;
    use tower::{Service, ServiceExt};

    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// 2 requests/s sustained, 3 at once, on a clock the test moves.
    fn limiter() -> (UserRateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            UserRateLimiter::with_clock(nz(2), nz(3), clock.clone()),
            clock,
        )
    }

    fn assert_limited(result: Result<(), Status>) {
        let status = result.expect_err("request should have been rate limited");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "rate limit: 2 requests/s per user");
    }

    #[test]
    fn burst_then_refusal_for_one_user_only() {
        let (limiter, _clock) = limiter();
        for _ in 0..3 {
            limiter.check("alice").unwrap();
        }
        assert_limited(limiter.check("alice"));
        assert_limited(limiter.check("alice"));

        // Bob has his own bucket.
        for _ in 0..3 {
            limiter.check("bob").unwrap();
        }
        assert_limited(limiter.check("bob"));
    }

    #[test]
    fn buckets_refill_with_time() {
        let (limiter, clock) = limiter();
        for _ in 0..3 {
            limiter.check("alice").unwrap();
        }
        assert_limited(limiter.check("alice"));

        // At 2/s, half a second earns exactly one request.
        clock.advance(Duration::from_millis(500));
        limiter.check("alice").unwrap();
        assert_limited(limiter.check("alice"));

        // Long idle refills to the burst, never beyond it.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            limiter.check("alice").unwrap();
        }
        assert_limited(limiter.check("alice"));
    }

    #[test]
    fn clones_share_buckets() {
        let (limiter, _clock) = limiter();
        let clone = limiter.clone();
        for _ in 0..3 {
            limiter.check("alice").unwrap();
        }
        assert_limited(clone.check("alice"));
    }

    #[test]
    fn shrink_forgets_only_users_whose_buckets_refilled() {
        let (limiter, clock) = limiter();
        limiter.check("alice").unwrap();
        limiter.check("bob").unwrap();
        assert_eq!(limiter.tracked_users(), 2);

        // Not yet refilled: a forgotten bob could burst again early.
        limiter.shrink();
        assert_eq!(limiter.tracked_users(), 2);

        clock.advance(Duration::from_secs(10));
        for _ in 0..3 {
            limiter.check("alice").unwrap();
        }
        limiter.shrink();
        assert_eq!(
            limiter.tracked_users(),
            1,
            "bob refilled, alice just emptied hers"
        );
        // Forgetting alice would have been wrong: she is still limited.
        assert_limited(limiter.check("alice"));
        limiter.check("bob").unwrap();
    }

    /// Fails instead of hanging if a request that should be shed is admitted
    /// (it would then wait forever on the held service). Not a timing
    /// threshold: a shed request answers at once.
    async fn within<F: std::future::Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .expect("request was queued or admitted instead of shed")
    }

    /// A service that holds every request until `release` is notified, and
    /// tells `entered` when a request got in.
    fn held_service(
        entered: Arc<Notify>,
        release: Arc<Notify>,
    ) -> impl Service<u32, Response = u32, Error = Infallible, Future: Send> + Clone {
        tower::service_fn(move |request: u32| {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                entered.notify_one();
                release.notified().await;
                Ok(request)
            }
        })
    }

    #[tokio::test]
    async fn second_request_is_shed_while_the_first_holds_the_slot() {
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let layer = global_limit_layer(1);
        let svc = ServiceBuilder::new()
            .layer(layer.clone())
            .service(held_service(entered.clone(), release.clone()));

        let first = tokio::spawn(svc.clone().oneshot(1));
        entered.notified().await;
        assert_eq!(layer.in_flight(), 1);

        let shed = within(svc.clone().oneshot(2)).await.unwrap_err();
        let status = shed.downcast::<Status>().expect("shed error is a Status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "router overloaded: too many requests in flight"
        );

        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(layer.in_flight(), 0);

        // The slot is free again.
        let third = tokio::spawn(svc.clone().oneshot(3));
        entered.notified().await;
        release.notify_one();
        assert_eq!(third.await.unwrap().unwrap(), 3);
    }

    #[tokio::test]
    async fn budget_is_shared_by_every_service_the_layer_wraps() {
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let layer = global_limit_layer(1);
        // Two separately wrapped services, as two servers or two connections.
        let a = layer.layer(held_service(entered.clone(), release.clone()));
        let b = layer.layer(held_service(entered.clone(), release.clone()));

        let first = tokio::spawn(a.oneshot(1));
        entered.notified().await;
        let shed = within(b.oneshot(2)).await.unwrap_err();
        assert_eq!(
            shed.downcast::<Status>().unwrap().code(),
            Code::ResourceExhausted
        );
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 1);
    }

    #[test]
    fn other_errors_pass_through() {
        let err: BoxError = "boom".into();
        let mapped = overloaded_as_status(err);
        assert!(!mapped.is::<Status>());
        assert_eq!(mapped.to_string(), "boom");
    }

    /// Through a real tonic server on a real socket: what a client sees when
    /// the router sheds its request.
    mod over_grpc {
        use tokio::net::TcpListener;
        use tokio::sync::{Notify, Semaphore};
        use tokio_util::sync::CancellationToken;
        use tonic::transport::server::TcpIncoming;
        use tonic::transport::{Channel, Server};
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        use tower::util::MapFutureLayer;

        use super::*;

        #[tokio::test]
        async fn shed_request_reaches_the_client_as_resource_exhausted() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();

            // Every request waits at this gate (after taking its slot) until
            // the test opens it; `entered` says one is waiting.
            let gate = Arc::new(Semaphore::new(0));
            let entered = Arc::new(Notify::new());
            let hold = MapFutureLayer::new({
                let (gate, entered) = (gate.clone(), entered.clone());
                move |response| {
                    let (gate, entered) = (gate.clone(), entered.clone());
                    async move {
                        entered.notify_one();
                        drop(gate.acquire().await);
                        response.await
                    }
                }
            });

            let (_reporter, health) = tonic_health::server::health_reporter();
            let stop = CancellationToken::new();
            let server = tokio::spawn(
                Server::builder()
                    .layer(global_limit_layer(1))
                    .layer(hold)
                    .add_service(health)
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener),
                        stop.clone().cancelled_owned(),
                    ),
            );

            let channel = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let check = |channel: Channel| async move {
                HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
            };

            let first = tokio::spawn(check(channel.clone()));
            entered.notified().await;

            let status = within(check(channel.clone())).await.unwrap_err();
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(
                status.message(),
                "router overloaded: too many requests in flight"
            );

            gate.add_permits(Semaphore::MAX_PERMITS / 2);
            let served = first.await.unwrap().unwrap().into_inner();
            assert_eq!(served.status, ServingStatus::Serving as i32);
            // With the slot back, the next request is served.
            let again = check(channel).await.unwrap().into_inner();
            assert_eq!(again.status, ServingStatus::Serving as i32);

            stop.cancel();
            server.await.unwrap().unwrap();
        }
    }
}
