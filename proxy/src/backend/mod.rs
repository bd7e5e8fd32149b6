//! Connections to Redis nodes. One `BackendConn` is one TCP connection shared by many client
//! sessions: requests are pipelined onto it and replies matched back in order, so a few
//! connections per node carry any number of clients.
//!
//! A connection follows a [`NodeTarget`]: the shard's *current* primary. It reads the target's
//! address at each (re)connect, and a retarget (failover) drops it and reconnects to the new
//! node at once. While the node is unreachable, or while the shard is *held* (failing over),
//! requests wait — up to the target's hold time, then they fail (`-TRYAGAIN` when held) — so a
//! quick failover is a pause for clients, not errors. A read whose connection dropped is sent
//! again (it is a read); nothing else is ever retried: a lost write's outcome is unknown.
//!
//! Rooms: `target` (the node a shard's connections follow, and its hold), `conn` (the pipelined
//! connection and its task), `setup` (a fresh connection's handshake: AUTH/HELLO, the LSN check),
//! `link` (opening any connection to a node: TCP, TLS, `AUTH`), `tls` (`[backend] tls`), `auth`
//! (the credentials the proxy presents).

mod admin;
mod auth;
mod conn;
mod link;
mod setup;
mod target;
mod tls;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

pub use admin::{AdminConn, AdminError};
pub use auth::{random_secret, AuthConfigError, BackendAuth};
pub(crate) use conn::BackendConn;
pub use link::{BackendConfigError, NodeAccess, NodeStream};
pub(crate) use target::{NodeTarget, Role};
pub use tls::{BackendTls, BackendTlsError};

/// Why a backend request produced no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("Redis node {addr} is unreachable ({reason})")]
    Unreachable { addr: String, reason: String },
    #[error("connection to Redis node {addr} was lost; the command's outcome is unknown")]
    Lost { addr: String },
    #[error("Redis node {addr} did not answer within {ms} ms; the command's outcome is unknown")]
    Timeout { addr: String, ms: u64 },
    #[error("Redis node {addr} sent a reply that is not valid RESP")]
    BadReply { addr: String },
    #[error("shard {shard} is failing over; nothing was sent")]
    FailingOver { shard: usize },
    #[error("Redis node {addr} was not checked since the connection opened; the batch was not sent")]
    Unverified { addr: String },
}

pub(crate) type ReplyResult = Result<Bytes, BackendError>;
pub(crate) type ReplySender = oneshot::Sender<ReplyResult>;

pub(crate) type BatchResult = Result<Vec<Bytes>, BackendError>;
pub(crate) type BatchSender = oneshot::Sender<BatchResult>;

/// Timeouts, TLS and credentials of a backend connection.
#[derive(Debug, Clone)]
pub(crate) struct BackendOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// TLS, and the credentials sent as `AUTH` (or in `HELLO 3 AUTH`) on every connection
    /// before anything else.
    pub access: NodeAccess,
}
