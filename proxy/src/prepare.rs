//! Node preparation: the one step that brings a Redis node into the cluster's shape before it
//! replays or serves (docs/architecture.md, "Node preparation"). The failover controller runs it
//! on every node that (re)appears — first start, a restart (empty or not), before a promotion,
//! a rebuild or a demotion — and the snapshot loader runs it after a load. Anything a node needs
//! configured is added here, not at the places nodes appear.
//!
//! It sets the credentials the node presents to its primary (`masteruser`/`masterauth`): the
//! proxy's own `[backend]` credentials, which every node accepts, so a replica can sync from
//! whichever node is primary. A snapshot load sets a one-time credential instead, which
//! preparation replaces again once the load is over; while a load holds a node
//! (`hold_for_load`), preparation leaves its credentials alone, so a controller preparing a node
//! it sees (re)appear mid-load does not lock the node out of the load. Then it applies the parameter group in
//! force (`params`; docs/parameters.md): Redis does not replicate `CONFIG SET`, so replicas,
//! nodes restarted empty, promoted or rebuilt get the group here, before they replay or serve;
//! and `maxmemory 0`, since memlog's evictor enforces the limit. It also creates the (disabled)
//! user scripts of restricted callers run as (README, "Scripts and functions run with their
//! caller's permissions").
//! A change of the group makes the controllers prepare every node again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::backend::{BackendConn, BackendOptions, NodeAccess};
use crate::params::LiveGroup;
use crate::resp::Proto;

/// Why a node could not be prepared: it must not replay or serve until it is.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error("Redis node {node}: {step} failed: {reason}")]
    Step { node: String, step: &'static str, reason: String },
}

/// The preparation every node of the cluster gets, and the connection options it uses.
#[derive(Debug)]
pub(crate) struct NodePreparation {
    opts: BackendOptions,
    params: Arc<LiveGroup>,
    /// Nodes a snapshot load holds: they present its one-time credential until it is over.
    loading: Mutex<HashSet<String>>,
    /// Held (shared) by a credentials step from its check of `loading` until its reply, and
    /// (exclusive) by `hold_for_load` while it adds a node: a step already sent cannot land
    /// after the load's one-time credential.
    credential_gate: tokio::sync::RwLock<()>,
}

/// A snapshot load's hold on a node; dropping it gives the node back to preparation.
pub(crate) struct LoadHold {
    preparation: Arc<NodePreparation>,
    node: String,
}

impl Drop for LoadHold {
    fn drop(&mut self) {
        self.preparation.loading.lock().unwrap().remove(&self.node);
    }
}

impl NodePreparation {
    pub(crate) fn new(opts: BackendOptions, params: Arc<LiveGroup>) -> Arc<NodePreparation> {
        Arc::new(NodePreparation {
            opts,
            params,
            loading: Mutex::default(),
            credential_gate: tokio::sync::RwLock::new(()),
        })
    }

    /// Marks `node` as being loaded from a snapshot until the hold is dropped: preparation
    /// meanwhile applies the parameter group but keeps the credential the load set.
    pub(crate) async fn hold_for_load(self: &Arc<Self>, node: &str) -> LoadHold {
        let _no_step_in_flight = self.credential_gate.write().await;
        self.loading.lock().unwrap().insert(node.to_string());
        LoadHold { preparation: self.clone(), node: node.to_string() }
    }

    /// The version of what preparation applies: it changes when the parameter group does.
    pub(crate) fn generation(&self) -> u64 {
        self.params.generation()
    }

    /// The options (timeouts, credentials) of connections to the nodes.
    pub(crate) fn opts(&self) -> &BackendOptions {
        &self.opts
    }

    /// How connections reach the nodes: TLS and credentials.
    pub(crate) fn access(&self) -> &NodeAccess {
        &self.opts.access
    }

    /// Prepares `node` over `conn` (a connection to that node): every step, in order.
    pub(crate) async fn prepare(&self, node: &str, conn: &BackendConn) -> Result<(), PrepareError> {
        self.credentials(node, conn).await?;
        self.script_caller(node, conn).await?;
        self.parameters(node, conn).await
    }

    /// The user scripts of restricted callers run as (`crate::sequencer::run_as`), created
    /// disabled and with no permission. Its applies redefine it each time; creating it here
    /// proves the `[backend]` user may run `ACL SETUSER` before the node serves — without that
    /// right a restricted caller's script could not be switched to its caller's rules.
    async fn script_caller(&self, node: &str, conn: &BackendConn) -> Result<(), PrepareError> {
        let args = ["ACL", "SETUSER", crate::keys::SCRIPT_CALLER_USER, "reset"];
        self.step(node, conn, "ACL SETUSER of the script caller (the [backend] user needs +acl|setuser)", &args).await
    }

    /// Prepares `node` over a connection of its own.
    pub(crate) async fn prepare_at(&self, node: &str) -> Result<(), PrepareError> {
        let conn = BackendConn::spawn(node, Proto::Resp2, self.opts.clone());
        self.prepare(node, &conn).await
    }

    /// `masteruser`/`masterauth`: what the node sends its primary's replication port. Set even
    /// without credentials (to empty), so a one-time credential of a snapshot load never stays.
    async fn credentials(&self, node: &str, conn: &BackendConn) -> Result<(), PrepareError> {
        let _gate = self.credential_gate.read().await;
        if self.loading.lock().unwrap().contains(node) {
            tracing::debug!(node, "a snapshot load holds the node; its credentials are left to the load");
            return Ok(());
        }
        let (user, password) = match self.opts.access.auth.as_deref() {
            Some(auth) => (auth.user.as_deref().unwrap_or_default(), auth.password.as_str()),
            None => ("", ""),
        };
        let args = ["CONFIG", "SET", "masteruser", user, "masterauth", password];
        self.step(node, conn, "CONFIG SET masteruser/masterauth", &args).await
    }

    /// The parameter group's node parameters and `maxmemory 0`, in one `CONFIG SET` (atomic
    /// on the node): memlog enforces `maxmemory` itself, so no node evicts or refuses on its own
    /// what the journal committed (docs/parameters.md, "Eviction") — a node configured with a
    /// limit before memlog fronted it included.
    async fn parameters(&self, node: &str, conn: &BackendConn) -> Result<(), PrepareError> {
        let mut args = self.params.node_command().unwrap_or_else(|| vec!["CONFIG".into(), "SET".into()]);
        args.extend(["maxmemory".to_string(), "0".to_string()]);
        self.step(node, conn, "CONFIG SET of the parameter group", &args).await
    }

    /// Sends one command; anything but `+OK` fails the step.
    async fn step<A: AsRef<[u8]>>(
        &self,
        node: &str,
        conn: &BackendConn,
        step: &'static str,
        args: &[A],
    ) -> Result<(), PrepareError> {
        let failed = |reason: String| PrepareError::Step { node: node.to_string(), step, reason };
        match tokio::time::timeout(self.opts.request_timeout, conn.call(args)).await {
            Ok(Ok(reply)) if reply.starts_with(b"+OK") => Ok(()),
            Ok(Ok(reply)) => Err(failed(String::from_utf8_lossy(&reply).trim().to_string())),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("timed out".to_string())),
        }
    }
}
