//! Cap'n Proto RPC over TCP between Shoal nodes.
//!
//! The wire contract is `schema/shoal.capnp`; its generated code is committed in
//! [`shoal_capnp`] (regenerate with `schema/regenerate.sh`), so a build needs no `capnp`
//! binary.
//!
//! Cap'n Proto RPC objects are `!Send`, so each node runs all of its RPC work — the server
//! and every outgoing connection — on ONE thread, an [`RpcRuntime`]: a `smol::LocalExecutor`
//! driven by `smol::block_on`. The rest of the node reaches it only through async channels
//! carrying owned request and reply values:
//! - [`CapnpDataNodeClient`] and [`CapnpConfigNodeClient`] implement core's `DataNodeApi` and
//!   `ConfigNodeApi` for a remote node (connection reuse, reconnect with backoff, per-call
//!   timeouts, typed errors);
//! - [`CapnpRaftTransport`] carries Raft between the ConfigNodes of a group (append entries,
//!   votes, snapshots in checksummed chunks), and [`CapnpConfigNodeGroupClient`] the group's
//!   membership calls;
//! - [`RpcRuntime::serve`] exposes local `DataNodeApi`/`ConfigNodeApi` implementations; each
//!   incoming call is handed to the node's [`Spawner`](shoal_core::runtime::Spawner) and its
//!   reply comes back over a channel, so node logic never runs on the RPC thread.
//!
//! A connection first sees only a bootstrap capability offering `login(secret, role)`; a
//! wrong secret is refused with a typed error, and every call is checked against the
//! [`Role`] the connection logged in as ([`ServerSecrets`] holds the internal and admin
//! secrets). Until login a connection is cheap: small messages, a few of them, within the
//! login deadline; connections waiting for login and connections overall are capped
//! ([`ConnectionLimits`]), and failed logins are rate-limited per address
//! ([`LoginRateLimit`]). After login, messages are bounded by [`WireLimits`], so a malformed
//! or oversized message closes that one connection and never the node. TLS is optional
//! ([`ServerTls`], [`ClientTls`]).

mod auth;
mod client;
mod codec;
mod error;
mod limits;
mod raft;
mod runtime;
mod secret;
mod server;
mod tls;
mod wire;

/// Code generated from `schema/shoal.capnp` by `capnpc-rust` (do not edit; regenerate).
#[allow(
    missing_docs,
    unused,
    unsafe_code,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::unimplemented,
    clippy::todo,
    clippy::dbg_macro
)]
#[rustfmt::skip]
pub mod shoal_capnp;

pub use auth::{Access, LoginRateLimit, Role, Secret, SecretKind, ServerSecrets};
pub use client::{
    CapnpConfigNodeClient, CapnpConfigNodeGroupClient, CapnpDataNodeClient, ClientOptions,
};
pub use error::TransportError;
pub use limits::{ConnectionLimits, ConnectionStats, PRE_LOGIN_MAX_MESSAGE_BYTES};
pub use raft::{CapnpRaftTransport, RaftCallOptions};
pub use runtime::{RpcRuntime, WireLimits};
pub use secret::{
    ADMIN_SECRET_FILE_NAME, INTERNAL_SECRET_FILE_NAME, SECRET_FILE_NAME, SecretFileMode,
    load_or_create_secret, load_or_create_secret_file, read_secret_file,
};
pub use server::{ServedApis, ServerHandle, ServerOptions};
pub use tls::{ClientTls, ServerTls, TlsError};
