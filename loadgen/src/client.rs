//! Clients of the fleet's routers: a few HTTP/2 connections per router
//! (calls spread over them round robin, so one connection's stream limit
//! and one socket's copy path are not what is measured) and an HS256 bearer
//! token per user, minted up front with the fleet's key, as `cellctl
//! dev-token` mints them.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use redcell_proto::{
    token::{BearerToken, mint_hs256},
    v1::red_envelope_client::RedEnvelopeClient,
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// Connections opened to each router.
const CONNECTIONS_PER_ROUTER: usize = 4;
/// Token lifetime: longer than any run.
const TOKEN_TTL_SECS: u64 = 6 * 3600;

pub type RouterClient = RedEnvelopeClient<InterceptedService<Channel, BearerToken>>;

/// Tokens of users `{prefix}0..{prefix}{n}`.
#[derive(Debug)]
pub struct Users {
    tokens: Vec<BearerToken>,
}

impl Users {
    pub fn mint(key: &[u8], prefix: &str, count: usize) -> Result<Users, String> {
        let tokens = (0..count.max(1))
            .map(|index| {
                let user = format!("{prefix}{index}");
                let token = mint_hs256(key, &user, TOKEN_TTL_SECS)
                    .map_err(|error| format!("token for {user}: {error}"))?;
                BearerToken::new(&token).ok_or_else(|| format!("token for {user} is not metadata"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Users { tokens })
    }
}

/// The routers' connections.
#[derive(Debug)]
pub struct Routers {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Routers {
    pub fn connect(routers: &[SocketAddr]) -> Result<Routers, String> {
        let mut channels = Vec::new();
        for router in routers {
            for _ in 0..CONNECTIONS_PER_ROUTER {
                channels.push(
                    Channel::from_shared(format!("http://{router}"))
                        .map_err(|error| format!("router {router}: {error}"))?
                        .connect_lazy(),
                );
            }
        }
        if channels.is_empty() {
            return Err("the fleet has no router".into());
        }
        Ok(Routers {
            channels,
            next: AtomicUsize::new(0),
        })
    }

    /// A client calling as user `index` of `users` (wrapping around).
    pub fn client(&self, users: &Users, index: usize) -> RouterClient {
        let channel = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        let token = users.tokens[index % users.tokens.len()].clone();
        RedEnvelopeClient::with_interceptor(self.channels[channel].clone(), token)
    }
}
