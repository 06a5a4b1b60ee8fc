//! The client API (`redcell.v1.RedEnvelope`) as the router serves it: admit the
//! caller (token, rate limit), then route to a cell (DESIGN.md §6).

use std::{sync::Arc, time::Duration};

use redcell_proto::{
    internal::{AsUser, REGION_METADATA, SUFFIX_METADATA, SendRefusal},
    v1::{self as pb, red_envelope_client::RedEnvelopeClient, red_envelope_server::RedEnvelope},
};
use redcell_topology::{Cell, ClaimsMode, EnvelopeId, RegionDigit, Suffix, Topology};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    auth::{Authenticator, UserId},
    deadline::Deadline,
    directory::Directory,
    error::RouterError,
    failover::{self, CellError},
    history::History,
    limits::UserRateLimiter,
    metrics::RouterMetrics,
    route,
    topology::TopologyHandle,
    traceparent::TraceParent,
};

#[derive(Debug, Clone)]
pub struct RouterService {
    pub(crate) topology: Arc<TopologyHandle>,
    pub(crate) directory: Arc<Directory>,
    pub(crate) auth: Authenticator,
    pub(crate) limiter: Arc<UserRateLimiter>,
    pub(crate) internal_token: Arc<str>,
    pub(crate) region: RegionDigit,
    pub(crate) cell_timeout: Duration,
    pub(crate) history: History,
    pub(crate) metrics: Arc<RouterMetrics>,
}

/// Who is calling, in which trace, and until when: what every request to a
/// cell made for this call carries.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) user: UserId,
    pub(crate) trace: TraceParent,
    pub(crate) deadline: Deadline,
}

/// An idempotent call on an existing envelope.
enum Call {
    Grab(pb::GrabRequest),
    Open(pb::OpenRequest),
    Get(pb::GetRequest),
}

enum Reply {
    Grab(pb::GrabResponse),
    Open(pb::OpenResponse),
    Get(Box<pb::GetResponse>),
}

impl RouterService {
    /// Authenticates the caller and charges their rate limit; the call's
    /// deadline starts now.
    fn admit<T>(&self, request: &Request<T>) -> Result<Caller, RouterError> {
        let metadata = request.metadata();
        let user = self.auth.authenticate(metadata)?;
        self.limiter.check(user.as_str()).inspect_err(|_| {
            self.metrics.rate_limited.inc();
        })?;
        let deadline = Deadline::for_call(self.cell_timeout, metadata);
        // A call that arrives already late is answered as such, at once.
        deadline.left_for("the router could start on it")?;
        Ok(Caller {
            user,
            trace: TraceParent::from_metadata(metadata),
            deadline,
        })
    }

    /// A request to a cell: the caller, the internal credential, the trace
    /// context (a child of the caller's), and what is left of the deadline.
    pub(crate) fn outgoing<T>(&self, caller: &Caller, message: T) -> Result<Request<T>, Status> {
        let left = caller.deadline.left_for("a cell was asked")?;
        let mut request = Request::new(message);
        AsUser::new(caller.user.as_str())
            .ok_or_else(|| Status::internal("user id is not metadata"))?
            .with_internal(&self.internal_token)
            .ok_or_else(|| Status::internal("bad internal token"))?
            .stamp(request.metadata_mut());
        // The current span's context when spans are exported (the cell's span
        // becomes its child); otherwise a child of the caller's traceparent.
        if !redcell_lifecycle::telemetry::inject_current(request.metadata_mut()) {
            caller.trace.child().inject(request.metadata_mut());
        }
        request.set_timeout(left);
        Ok(request)
    }

    /// [`outgoing`](Self::outgoing) for one attempt on one server: its gRPC
    /// timeout is the attempt's share of the deadline.
    pub(crate) fn attempt<T>(
        &self,
        caller: &Caller,
        message: T,
        budget: Duration,
    ) -> Result<Request<T>, Status> {
        let mut request = self.outgoing(caller, message)?;
        request.set_timeout(budget);
        Ok(request)
    }

    /// Routes an idempotent call to the envelope's cell, trying its servers in
    /// rendezvous order on `UNAVAILABLE`, within the call's deadline.
    async fn existing(
        &self,
        caller: &Caller,
        envelope_id: &str,
        call: Call,
    ) -> Result<Reply, RouterError> {
        let invalid = |message: String| RouterError::InvalidArgument {
            field: "envelope_id",
            message,
        };
        let id: EnvelopeId = envelope_id
            .parse()
            .map_err(|error: redcell_topology::IdError| invalid(error.to_string()))?;
        let topology = self.topology.load();
        let cell = topology
            .route(&id)
            .map_err(|error| invalid(error.to_string()))?;
        let servers = route::servers_for(cell, envelope_id, |server| {
            self.directory.is_serving(server)
        });
        // Idempotent: another server of the cell may take it after a
        // transport failure, a stall, or its own UNAVAILABLE.
        let retry = |status: &Status| status.code() == tonic::Code::Unavailable;
        let call = &call;
        failover::call_cell(
            &self.directory,
            &cell.name,
            &servers,
            caller.deadline,
            retry,
            |channel, budget| async move {
                let mut client = RedEnvelopeClient::new(channel);
                match call {
                    Call::Grab(message) => client
                        .grab(self.attempt(caller, message.clone(), budget)?)
                        .await
                        .map(|response| response.map(Reply::Grab)),
                    Call::Open(message) => client
                        .open(self.attempt(caller, message.clone(), budget)?)
                        .await
                        .map(|response| response.map(Reply::Open)),
                    Call::Get(message) => client
                        .get(self.attempt(caller, message.clone(), budget)?)
                        .await
                        .map(|response| response.map(|reply| Reply::Get(Box::new(reply)))),
                }
            },
        )
        .await
        .map_err(RouterError::Cell)
    }

    /// The region new envelopes of this call are minted for.
    fn sender_region<T>(
        &self,
        request: &Request<T>,
        topology: &Topology,
    ) -> Result<RegionDigit, RouterError> {
        let invalid = |message: String| RouterError::InvalidArgument {
            field: REGION_METADATA,
            message,
        };
        let Some(value) = request.metadata().get(REGION_METADATA) else {
            return Ok(self.region);
        };
        let text = value
            .to_str()
            .map_err(|_| invalid("must be ASCII".to_owned()))?;
        topology
            .region_digit(text)
            .or_else(|| {
                text.parse::<u8>()
                    .ok()
                    .and_then(RegionDigit::new)
                    .filter(|d| topology.region_name(*d).is_some())
            })
            .ok_or_else(|| {
                // Echoed only when short: a status message is a response
                // header, and a client's header list limit (16 KiB by
                // default) would turn a long echo into a protocol error.
                let shown = if text.len() <= 64 {
                    format!("{text:?}")
                } else {
                    format!("of {} bytes", text.len())
                };
                invalid(format!(
                    "unknown region {shown} (regions: {})",
                    topology.regions().join(", ")
                ))
            })
    }

    /// Sends to one cell: its servers in order while they cannot be reached.
    async fn send_to_cell(
        &self,
        cell: &Cell,
        suffix: Suffix,
        caller: &Caller,
        message: &pb::SendRequest,
    ) -> Result<pb::SendResponse, SendRefusal> {
        let key = format!("{}/{}", caller.user.as_str(), message.idempotency_key);
        let servers = route::servers_for(cell, &key, |server| self.directory.is_serving(server));
        let suffix_value = MetadataValue::try_from(suffix.to_string()).map_err(|_| {
            SendRefusal::Final(RouterError::Internal("suffix is not metadata").into())
        })?;
        // The same Send, with the same idempotency key, on the cell's next
        // server after a transport failure or a stall: the cell's idempotency
        // row makes it replay the first attempt. A handler's answer is never
        // retried here (it may follow a debit); `send_failure` reads it.
        let sent = failover::call_cell(
            &self.directory,
            &cell.name,
            &servers,
            caller.deadline,
            |_| false,
            |channel, budget| {
                let request = self
                    .attempt(caller, message.clone(), budget)
                    .map(|mut request| {
                        request
                            .metadata_mut()
                            .insert(SUFFIX_METADATA, suffix_value.clone());
                        request
                    });
                async move { RedEnvelopeClient::new(channel).send(request?).await }
            },
        )
        .await;
        match sent {
            Ok(response) => Ok(response),
            Err(CellError::Answered(status)) => Err(SendRefusal::from(status)),
            // Out of time: the client's answer, whatever was reached.
            Err(CellError::NoAnswer { status, .. })
                if status.code() == tonic::Code::DeadlineExceeded =>
            {
                Err(SendRefusal::Final(status))
            }
            // No server of the cell could be reached: nothing was written.
            Err(CellError::NoAnswer {
                status,
                reached: false,
            }) => Err(SendRefusal::NothingWritten(status)),
            // Some attempt may have reached a handler, and debited: only this
            // cell may take the Send again (the client retries with its key).
            Err(CellError::NoAnswer {
                status,
                reached: true,
            }) => Err(SendRefusal::Final(status)),
        }
    }

    /// Asks the cell of `envelope_id` for the Send that paid for it: its
    /// idempotency row replays the envelope (or finishes its payment), and
    /// refuses a reused key with different contents. If that cell is down,
    /// the client gets `UNAVAILABLE` and retries; no other cell may take the
    /// Send, its order is paid.
    async fn send_to_paid_envelope(
        &self,
        topology: &Topology,
        envelope_id: &str,
        caller: &Caller,
        message: &pb::SendRequest,
    ) -> Result<pb::SendResponse, RouterError> {
        let unroutable = |reason: String| {
            tracing::error!(envelope_id, %reason, "a paid Send names an envelope no cell holds");
            RouterError::PaidEnvelopeLost
        };
        let id: EnvelopeId = envelope_id
            .parse()
            .map_err(|error: redcell_topology::IdError| unroutable(error.to_string()))?;
        let cell = topology
            .route(&id)
            .map_err(|error| unroutable(error.to_string()))?;
        match self.send_to_cell(cell, id.suffix(), caller, message).await {
            Ok(response) => Ok(response),
            Err(SendRefusal::NothingWritten(status) | SendRefusal::Final(status)) => {
                Err(RouterError::CellAnswer(status))
            }
            Err(SendRefusal::PaidFor { envelope_id: other }) => Err(unroutable(format!(
                "its cell {} says the key paid for {other}",
                cell.name
            ))),
        }
    }
}

/// The calls, before [`RouterError`] maps what they answer.
impl RouterService {
    async fn serve_send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, RouterError> {
        let caller = self.admit(&request)?;
        let topology = self.topology.load();
        let region = self.sender_region(&request, &topology)?;
        let message = request.into_inner();
        let draw = route::stable_hash(&[
            caller.user.as_str().as_bytes(),
            message.idempotency_key.as_bytes(),
        ]);
        let mut excluded: Vec<String> = Vec::new();
        let mut last = None;
        // The first cell, and once more another one if the first failed before
        // writing anything (DESIGN §6 self-healing).
        for _attempt in 0..2 {
            let usable = |cell: &str| {
                !excluded.iter().any(|e| e == cell)
                    && self.directory.usable_for_new(&topology, cell)
            };
            let Some((suffix, index)) = route::mint_suffix(&topology, region, draw, usable) else {
                break;
            };
            let Some(cell) = topology.cells().get(index) else {
                break;
            };
            match self.send_to_cell(cell, suffix, &caller, &message).await {
                Ok(response) => return Ok(Response::new(response)),
                Err(SendRefusal::NothingWritten(status)) => {
                    self.directory.suspect(&cell.name);
                    excluded.push(cell.name.clone());
                    last = Some(status);
                }
                Err(SendRefusal::PaidFor { envelope_id }) => {
                    return self
                        .send_to_paid_envelope(&topology, &envelope_id, &caller, &message)
                        .await
                        .map(Response::new);
                }
                Err(SendRefusal::Final(status)) => return Err(RouterError::CellAnswer(status)),
            }
        }
        Err(match last {
            Some(status) => RouterError::CellAnswer(status),
            None => RouterError::NoCellForRegion {
                region: topology.region_name(region).unwrap_or("?").to_owned(),
            },
        })
    }

    async fn serve_grab(
        &self,
        request: Request<pb::GrabRequest>,
    ) -> Result<Response<pb::GrabResponse>, RouterError> {
        let caller = self.admit(&request)?;
        let message = request.into_inner();
        let id = message.envelope_id.clone();
        match self.existing(&caller, &id, Call::Grab(message)).await? {
            Reply::Grab(reply) => Ok(Response::new(reply)),
            _ => Err(RouterError::Internal("mismatched reply")),
        }
    }

    async fn serve_open(
        &self,
        request: Request<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenResponse>, RouterError> {
        let caller = self.admit(&request)?;
        let message = request.into_inner();
        let id = message.envelope_id.clone();
        match self.existing(&caller, &id, Call::Open(message)).await? {
            Reply::Open(reply) => Ok(Response::new(reply)),
            _ => Err(RouterError::Internal("mismatched reply")),
        }
    }

    async fn serve_get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, RouterError> {
        let caller = self.admit(&request)?;
        let message = request.into_inner();
        let id = message.envelope_id.clone();
        // The switch as of this request's snapshot (a reload mid-call does
        // not change the answer halfway).
        let claims = self.topology.load().claims_mode();
        match self.existing(&caller, &id, Call::Get(message)).await? {
            Reply::Get(reply) => Ok(Response::new(without_claims_if(claims, *reply))),
            _ => Err(RouterError::Internal("mismatched reply")),
        }
    }

    async fn serve_history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, RouterError> {
        let caller = self.admit(&request)?;
        let response = self
            .history
            .serve(self, &caller, request.into_inner())
            .await?;
        Ok(Response::new(response))
    }
}

/// `degrade.claims: off`: the envelope without its claim list (nor a token
/// to page through it), marked degraded, so the client knows the list is
/// left out rather than empty.
fn without_claims_if(mode: ClaimsMode, reply: pb::GetResponse) -> pb::GetResponse {
    match mode {
        ClaimsMode::On => reply,
        ClaimsMode::Off => pb::GetResponse {
            claims: Vec::new(),
            next_page_token: String::new(),
            degraded: true,
            ..reply
        },
    }
}

/// Every status a client gets is a [`RouterError`]'s, whose one exhaustive
/// mapping ends in [`failover::client_status`]: `UNKNOWN` and `CANCELLED`
/// never leave the router.
#[tonic::async_trait]
impl RedEnvelope for RouterService {
    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        self.serve_send(request).await.map_err(Status::from)
    }

    async fn grab(
        &self,
        request: Request<pb::GrabRequest>,
    ) -> Result<Response<pb::GrabResponse>, Status> {
        self.serve_grab(request).await.map_err(Status::from)
    }

    async fn open(
        &self,
        request: Request<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenResponse>, Status> {
        self.serve_open(request).await.map_err(Status::from)
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.serve_get(request).await.map_err(Status::from)
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.serve_history(request).await.map_err(Status::from)
    }
}
