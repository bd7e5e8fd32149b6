//! The controller's I/O: one task per shard health-checks every node on its own connections,
//! feeds the results to the [`ShardCore`] and carries out its commands — and `MEMLOG FAILOVER`
//! switchovers — against the Redis nodes, the shard's connections ([`NodeTarget`]), the
//! sequencer (the catch-up barrier) and the metadata store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use journal_service::meta::{MetaStore, ShardTopology};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use super::core::{Command, Health, NodeRole, ShardCore};
use super::{record, FailoverSettings, SwitchoverRequest};
use crate::backend::{BackendConn, BackendOptions, NodeTarget};
use crate::keys::{parse_lsn, LSN_KEY};
use crate::prepare::{NodePreparation, PrepareError};
use crate::resp::{array_items, bulk_payload, encode_command, Proto, Request};
use crate::sequencer::{Sequencer, SequencerOp, SequencerRequest};
use crate::status::{NodeStatus, ShardStatus};

/// The key the catch-up barrier deletes: a journaled no-op that makes the applier check and
/// catch up the primary before the shard's reads resume.
const BARRIER_KEY: &[u8] = b"__memlog:failover";
/// How long a metadata-store operation may take before the controller goes on without it.
const META_TIMEOUT: Duration = Duration::from_secs(2);

/// What a controller needs from its shard.
pub(crate) struct ControllerSetup {
    pub shard: usize,
    pub slots: Vec<(u16, u16)>,
    /// Every configured node of the shard, primary first.
    pub nodes: Vec<String>,
    pub target: Arc<NodeTarget>,
    /// The shard's sequencer, once it started: the controller runs during start-up too, so a
    /// primary that is dead when the proxy starts is replaced rather than waited for.
    pub sequencer: watch::Receiver<Option<Sequencer>>,
    pub meta: Option<Arc<MetaStore>>,
    pub status: Arc<ShardStatus>,
    pub settings: FailoverSettings,
    /// What every node gets before it replays or serves.
    pub prepare: Arc<NodePreparation>,
}

/// One shard's controller task.
pub(crate) struct Controller {
    setup: ControllerSetup,
    core: ShardCore,
    /// The controller's own connection to each node.
    checks: Vec<(String, BackendConn)>,
    /// The role label each node's `memlog_redis_node_up` series has now.
    roles: HashMap<String, &'static str>,
    /// For each prepared node, its check connection's count of connects and the preparation's
    /// generation when it was prepared: a reconnect (the node may have restarted) or a new
    /// parameter group means it is prepared again.
    prepared: HashMap<String, (u64, u64)>,
}

impl Controller {
    /// Starts watching the shard; `MEMLOG FAILOVER` requests go to the returned sender.
    pub(crate) fn spawn(setup: ControllerSetup) -> mpsc::UnboundedSender<SwitchoverRequest> {
        let opts = BackendOptions {
            connect_timeout: setup.settings.check_timeout,
            request_timeout: setup.settings.check_timeout.max(Duration::from_secs(1)),
            access: setup.prepare.opts().access.clone(),
        };
        let primary = setup.target.addr().to_string();
        let checks = setup
            .nodes
            .iter()
            .map(|addr| (addr.clone(), BackendConn::spawn(addr, Proto::Resp2, opts.clone())))
            .collect();
        let core = ShardCore::new(&primary, &setup.nodes, setup.settings.detect, Instant::now());
        let (requests, inbox) = mpsc::unbounded_channel();
        let controller = Controller { setup, core, checks, roles: HashMap::new(), prepared: HashMap::new() };
        tokio::spawn(controller.run(inbox));
        requests
    }

    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<SwitchoverRequest>) {
        let mut tick = tokio::time::interval(self.setup.settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    let result = self.switchover(request.to.as_deref()).await;
                    let _ = request.done.send(result);
                    continue;
                }
            }
            if let Some(refusal) = self.setup.sequencer.borrow().as_ref().and_then(|s| s.refusal()) {
                // Nothing of the shard may change its node: it stays as it was for the operator.
                tracing::info!(shard = self.setup.shard, "the shard is refused ({refusal}): its controller stops");
                return;
            }
            self.check_all().await;
            for command in self.core.decide(Instant::now()) {
                self.execute(command).await;
            }
            self.publish();
        }
    }

    /// Checks every node at once; each gets the check timeout to answer.
    async fn check_all(&mut self) {
        let deadline = tokio::time::Instant::now() + self.setup.settings.check_timeout;
        // Read before the checks go out: the primary held this much before it was asked, so a
        // smaller answer means it lost data (an answer racing a newer apply is never below it).
        let floor = self.setup.target.lsn_floor();
        let lsn_get = encode_command(&[&b"GET"[..], LSN_KEY]);
        let sent: Vec<_> = self
            .checks
            .iter()
            .map(|(addr, conn)| {
                let replies = [
                    conn.send(encode_command(&["PING"])),
                    conn.send(encode_command(&["ROLE"])),
                    conn.send(lsn_get.clone()),
                ];
                (addr.clone(), replies)
            })
            .collect();
        for (addr, [ping, role, lsn]) in sent {
            let mut replies = Vec::with_capacity(3);
            for rx in [ping, role, lsn] {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Ok(reply))) => replies.push(reply),
                    _ => break,
                }
            }
            if replies.first().is_some_and(|ping| ping.starts_with(b"-BUSY")) {
                self.core.observe_busy(&addr, Instant::now());
                continue;
            }
            let mut health = parse_health(&replies);
            // A node that (re)appeared is prepared before any decision uses it; until it is,
            // it counts as not answering.
            if health.is_some() && self.only_the_group_changed_on_the_primary(&addr) {
                // The primary takes a parameter change from its journal, at its place in the
                // shard's history (docs/parameters.md); setting it here could land before or
                // after the writes around it.
                let generation = self.setup.prepare.generation();
                self.prepared.entry(addr.clone()).and_modify(|(_, g)| *g = generation);
            } else if health.is_some() && !self.is_prepared(&addr) {
                if let Err(e) = self.prepare(&addr).await {
                    tracing::warn!(shard = self.setup.shard, node = %addr, "node not prepared: {e}");
                    health = None;
                }
            }
            if let Some(health) = health.as_ref().filter(|_| addr == self.core.primary()) {
                if health.lsn < floor {
                    // Restarted empty (or from an old file) before any check saw it holding
                    // more: it is rebuilt all the same, not served as it is.
                    self.core.primary_behind();
                }
                self.setup.target.primary_holds(health.lsn);
            }
            self.core.observe(&addr, health, Instant::now());
        }
    }

    async fn execute(&mut self, command: Command) {
        match command {
            Command::Hold => {
                tracing::warn!(
                    shard = self.setup.shard,
                    primary = %self.core.primary(),
                    "the primary does not answer and no replica can replace it: the shard is held until one returns"
                );
                self.setup.target.hold();
                self.setup.status.update(|view| view.held = true);
            }
            Command::Promote { node } => self.fail_over(&node).await,
            Command::Rebuild { node } => self.rebuild(&node).await,
            Command::Demote { node, primary } => self.demote(&node, &primary).await,
            Command::Reclaim { node } => self.reclaim(&node).await,
        }
    }

    /// The recorded primary answers as a replica: it is made the primary again, and every
    /// connection reconnects to it (so the applier reads its `__memlog:lsn` again: what it holds
    /// may have changed while it replicated another node).
    async fn reclaim(&mut self, node: &str) {
        tracing::warn!(
            shard = self.setup.shard,
            node,
            "the recorded primary answers as a replica: making it the primary again"
        );
        let reclaimed = match self.prepare(node).await {
            Ok(()) => self.command(node, &["REPLICAOF", "NO", "ONE"]).await,
            Err(e) => Err(e.to_string()),
        };
        match reclaimed {
            Ok(()) => {
                self.setup.target.retarget(node);
                self.core.promoted(node);
                self.event("primary_reclaimed", json!({"shard": self.setup.shard, "node": node})).await;
            }
            Err(e) => tracing::warn!(shard = self.setup.shard, node, "cannot make the recorded primary a primary: {e}"),
        }
    }

    /// Automatic failover: the primary stopped answering; `node` replaces it.
    async fn fail_over(&mut self, node: &str) {
        let started = Instant::now();
        let from = self.core.primary().to_string();
        let lsn = self.core.node(node).and_then(|(h, _)| h.map(|h| h.lsn)).unwrap_or(0);
        tracing::warn!(
            shard = self.setup.shard,
            %from,
            to = node,
            lsn,
            detect_ms = crate::units::millis(self.setup.settings.detect),
            "the primary does not answer: failing over"
        );
        self.setup.target.hold();
        self.event(
            "failover_started",
            json!({"shard": self.setup.shard, "from": from, "to": node, "lsn": lsn, "reason": "primary not answering"}),
        )
        .await;
        let promoted = match self.prepare(node).await {
            Ok(()) => self.command(node, &["REPLICAOF", "NO", "ONE"]).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = promoted {
            // The shard stays held; the next check decides again.
            tracing::warn!(shard = self.setup.shard, node, "cannot promote: {e}");
            return;
        }
        self.switch_to(&from, node, started).await;
    }

    /// `MEMLOG FAILOVER`: hold, let the target apply everything the primary has, switch, resume.
    async fn switchover(&mut self, to: Option<&str>) -> Result<String, String> {
        let to = self.core.switchover_target(to).map_err(|e| format!("ERR memlog: shard {}: {e}", self.setup.shard))?;
        let started = Instant::now();
        let from = self.core.primary().to_string();
        tracing::info!(shard = self.setup.shard, %from, %to, "switchover requested");
        self.setup.target.hold();
        self.event(
            "failover_started",
            json!({"shard": self.setup.shard, "from": from, "to": to, "reason": "switchover"}),
        )
        .await;
        let deadline = started + self.setup.settings.hold;
        loop {
            let (primary, target) = (self.lsn_of(&from).await, self.lsn_of(&to).await);
            match (primary, target) {
                // Nothing in flight to the old primary, and the target holds all it applied.
                (Some(a), Some(b)) if a == b && self.setup.target.applies_in_flight() == 0 => break,
                _ if Instant::now() >= deadline => {
                    self.setup.target.release();
                    return Err(format!(
                        "ERR memlog: {to} did not catch up with {from} (lsn {primary:?} vs {target:?}); the switchover was abandoned"
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let promoted = match self.prepare(&to).await {
            Ok(()) => self.command(&to, &["REPLICAOF", "NO", "ONE"]).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = promoted {
            self.setup.target.release();
            return Err(format!("ERR memlog: cannot promote {to}: {e}"));
        }
        self.switch_to(&from, &to, started).await;
        Ok(to)
    }

    /// `to` answers as a primary: record it (the new epoch), point the shard at it, catch it up
    /// from the journal, resume, repoint the other nodes.
    async fn switch_to(&mut self, from: &str, to: &str, started: Instant) {
        self.core.promoted(to);
        let epoch = self.record().await;
        let target = &self.setup.target;
        target.retarget(to);
        target.release_applies();
        self.publish();
        let switched_ms = crate::units::millis(started.elapsed());
        self.catch_up().await;
        self.setup.target.release();
        let elapsed = started.elapsed();
        let shard = self.setup.shard.to_string();
        metrics::counter!("memlog_failovers_total", "shard" => shard.clone()).increment(1);
        metrics::histogram!("memlog_failover_duration_seconds", "shard" => shard).record(elapsed.as_secs_f64());
        tracing::info!(
            shard = self.setup.shard,
            from,
            to,
            epoch,
            switched_ms,
            elapsed_ms = crate::units::millis(elapsed),
            "failover completed: the shard serves from its new primary"
        );
        self.event(
            "failover_completed",
            json!({"shard": self.setup.shard, "from": from, "to": to, "epoch": epoch, "duration_ms": crate::units::millis(elapsed)}),
        )
        .await;
        let others: Vec<String> = self.core.replicas().map(str::to_string).collect();
        for node in others {
            self.demote(&node, to).await;
        }
        self.publish();
    }

    /// The primary answers again after it was lost, or came back with less than it held: it is
    /// caught up from the journal before the shard serves again.
    async fn rebuild(&mut self, node: &str) {
        let started = Instant::now();
        tracing::warn!(
            shard = self.setup.shard,
            node,
            "the primary returned (possibly empty): rebuilding it from the journal"
        );
        if let Err(e) = self.prepare(node).await {
            // Not held yet: the next check decides again.
            tracing::warn!(shard = self.setup.shard, node, "cannot rebuild before the node is prepared: {e}");
            return;
        }
        let target = &self.setup.target;
        target.hold();
        // Reconnecting makes the applier check what the node holds before it applies anything.
        target.retarget(node);
        target.release_applies();
        self.catch_up().await;
        self.setup.target.release();
        self.core.rebuilt();
        let elapsed_ms = crate::units::millis(started.elapsed());
        tracing::info!(
            shard = self.setup.shard,
            node,
            elapsed_ms,
            "primary rebuilt from the journal; the shard serves again"
        );
        self.event("node_rebuilt", json!({"shard": self.setup.shard, "node": node, "duration_ms": elapsed_ms})).await;
    }

    /// Makes `node` a replica of `primary`.
    async fn demote(&mut self, node: &str, primary: &str) {
        let Some((host, port)) = primary.rsplit_once(':') else { return };
        let repointed = match self.prepare(node).await {
            Ok(()) => self.command(node, &["REPLICAOF", host, port]).await,
            Err(e) => Err(e.to_string()),
        };
        match repointed {
            Ok(()) => {
                self.core.demoted(node);
                tracing::info!(shard = self.setup.shard, node, primary, "node now replicates the primary");
                self.event("node_demoted", json!({"shard": self.setup.shard, "node": node, "primary": primary})).await;
            }
            Err(e) => tracing::debug!(shard = self.setup.shard, node, "cannot repoint: {e}"),
        }
    }

    /// Applies a journaled no-op through the sequencer and waits for it: the apply connections
    /// reconnected to the (new) primary, so the applier first reads its `__memlog:lsn` and
    /// replays the journal tail onto it; once the no-op is applied, so is everything before it.
    async fn catch_up(&self) {
        let mut started = self.setup.sequencer.clone();
        let Ok(sequencer) = started.wait_for(Option::is_some).await.map(|s| s.clone()) else { return };
        let Some(sequencer) = sequencer else { return };
        let mut attempt = 0u32;
        loop {
            let (reply, applied) = oneshot::channel();
            let request = Request::from_args(&[&b"DEL"[..], BARRIER_KEY]);
            let op = SequencerOp::Write { request, command: None };
            sequencer.submit(SequencerRequest { proto: Proto::Resp2, db: 0, client: 0, op, reply }).await;
            match applied.await {
                Ok(Ok(reply)) if reply.starts_with(b":") => return,
                outcome => {
                    attempt += 1;
                    let outcome = match outcome {
                        Ok(Ok(reply)) => String::from_utf8_lossy(&reply).trim().to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "dropped".to_string(),
                    };
                    tracing::info!(shard = self.setup.shard, attempt, %outcome, "catch-up barrier not applied yet; again");
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt.min(20)))).await;
                }
            }
        }
    }

    /// Records the shard's topology; the new version is its epoch.
    async fn record(&mut self) -> u64 {
        let shard = self.setup.shard;
        let entry = ShardTopology {
            id: crate::router::shard_id(shard),
            slots: self.setup.slots.clone(),
            primary: self.core.primary().to_string(),
            replicas: self.core.replicas().map(str::to_string).collect(),
        };
        let epoch = match &self.setup.meta {
            None => self.setup.status.view().epoch + 1,
            Some(meta) => match tokio::time::timeout(META_TIMEOUT, record::record(meta, &[entry])).await {
                Ok(Ok(version)) => version,
                Ok(Err(e)) => {
                    tracing::warn!(shard, "cannot record the new topology: {e}");
                    return self.setup.status.view().epoch;
                }
                Err(_) => {
                    tracing::warn!(shard, "recording the new topology timed out");
                    return self.setup.status.view().epoch;
                }
            },
        };
        self.setup.status.update(|view| view.epoch = epoch);
        metrics::gauge!("memlog_shard_epoch", "shard" => shard.to_string()).set(epoch as f64);
        self.event("epoch_bumped", json!({"shard": shard, "epoch": epoch, "primary": self.core.primary()})).await;
        epoch
    }

    async fn event(&self, kind: &str, body: serde_json::Value) {
        let Some(meta) = &self.setup.meta else { return };
        match tokio::time::timeout(META_TIMEOUT, meta.append_event(kind, &body)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(shard = self.setup.shard, kind, "cannot record the event: {e}"),
            Err(_) => tracing::warn!(shard = self.setup.shard, kind, "recording the event timed out"),
        }
    }

    /// Sends `args` to `node` on the controller's connection; `Ok` on `+OK`.
    async fn command(&self, node: &str, args: &[&str]) -> Result<(), String> {
        let conn = self.conn(node).ok_or_else(|| format!("{node} is not a node of the shard"))?;
        match tokio::time::timeout(self.setup.settings.check_timeout.max(Duration::from_millis(500)), conn.call(args))
            .await
        {
            Ok(Ok(reply)) if reply.starts_with(b"+OK") => Ok(()),
            Ok(Ok(reply)) => Err(String::from_utf8_lossy(&reply).trim().to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
    }

    /// Runs the node preparation on `node` over the controller's connection to it.
    async fn prepare(&mut self, node: &str) -> Result<(), PrepareError> {
        let conn = self.conn(node).ok_or_else(|| PrepareError::Step {
            node: node.to_string(),
            step: "finding the node",
            reason: "not a node of the shard".to_string(),
        })?;
        let (connects, generation) = (conn.connects(), self.setup.prepare.generation());
        self.setup.prepare.prepare(node, conn).await?;
        self.prepared.insert(node.to_string(), (connects, generation));
        Ok(())
    }

    /// True when `node` is the primary and was prepared over the connection the controller has
    /// to it now, with an older parameter group.
    fn only_the_group_changed_on_the_primary(&self, node: &str) -> bool {
        let Some(connects) = self.conn(node).map(BackendConn::connects) else { return false };
        node == self.core.primary()
            && self.prepared.get(node).is_some_and(|&(c, g)| c == connects && g != self.setup.prepare.generation())
    }

    /// True when `node` was prepared over the connection the controller has to it now, with
    /// the parameter group in force now.
    fn is_prepared(&self, node: &str) -> bool {
        let Some(connects) = self.conn(node).map(BackendConn::connects) else { return false };
        self.prepared.get(node).copied() == Some((connects, self.setup.prepare.generation()))
    }

    /// `node`'s `__memlog:lsn` now, if it answers.
    async fn lsn_of(&self, node: &str) -> Option<u64> {
        let conn = self.conn(node)?;
        let reply = tokio::time::timeout(self.setup.settings.check_timeout, conn.call(&[&b"GET"[..], LSN_KEY])).await;
        parse_lsn(&reply.ok()?.ok()?)
    }

    fn conn(&self, node: &str) -> Option<&BackendConn> {
        self.checks.iter().find(|(addr, _)| addr == node).map(|(_, conn)| conn)
    }

    /// Publishes what the last checks saw: `MEMLOG TOPOLOGY` and `memlog_redis_node_up`.
    fn publish(&mut self) {
        let shard = self.setup.shard.to_string();
        let status = |addr: &str| {
            let (health, up) = self.core.node(addr).unwrap_or((None, false));
            NodeStatus { addr: addr.to_string(), lsn: health.map(|h| h.lsn), up }
        };
        let primary = status(self.core.primary());
        let replicas: Vec<NodeStatus> = self.core.replicas().map(status).collect();
        for (node, role) in std::iter::once((&primary, "primary")).chain(replicas.iter().map(|r| (r, "replica"))) {
            let up = if node.up { 1.0 } else { 0.0 };
            let labels = [("shard", shard.clone()), ("addr", node.addr.clone())];
            if let Some(old) = self.roles.insert(node.addr.clone(), role).filter(|old| *old != role) {
                metrics::gauge!("memlog_redis_node_up", &labels).set(0.0);
                let mut stale = labels.to_vec();
                stale.push(("role", old.to_string()));
                metrics::gauge!("memlog_redis_node_up", &stale).set(0.0);
            }
            let mut current = labels.to_vec();
            current.push(("role", role.to_string()));
            metrics::gauge!("memlog_redis_node_up", &current).set(up);
        }
        let held = self.setup.target.is_held();
        self.setup.status.update(|view| {
            view.held = held;
            view.primary = primary;
            view.replicas = replicas;
        });
    }
}

/// A node's health from its replies to `PING`, `ROLE`, `GET __memlog:lsn`; `None` unless all
/// three answered as a serving node does.
fn parse_health(replies: &[Bytes]) -> Option<Health> {
    let [ping, role, lsn] = replies else { return None };
    if !ping.starts_with(b"+PONG") {
        return None;
    }
    Some(Health { role: parse_role(role)?, lsn: parse_lsn(lsn)? })
}

/// `ROLE`: `["master", …]` or `["slave", host, port, …]`.
fn parse_role(reply: &Bytes) -> Option<NodeRole> {
    let items = array_items(reply)?;
    match bulk_payload(items.first()?)? {
        b"master" => Some(NodeRole::Primary),
        b"slave" => {
            let host = String::from_utf8_lossy(bulk_payload(items.get(1)?)?).into_owned();
            let port = items.get(2)?.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
            Some(NodeRole::Replica { of: format!("{host}:{}", String::from_utf8_lossy(port)) })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_health_replies() {
        let primary = [
            Bytes::from_static(b"+PONG\r\n"),
            Bytes::from_static(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"),
            Bytes::from_static(b"$2\r\n42\r\n"),
        ];
        assert_eq!(parse_health(&primary), Some(Health { role: NodeRole::Primary, lsn: 42 }));
        let replica = [
            Bytes::from_static(b"+PONG\r\n"),
            Bytes::from_static(b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:7001\r\n$9\r\nconnected\r\n:10\r\n"),
            Bytes::from_static(b"$-1\r\n"),
        ];
        assert_eq!(
            parse_health(&replica),
            Some(Health { role: NodeRole::Replica { of: "127.0.0.1:7001".into() }, lsn: 0 })
        );
        let loading = [Bytes::from_static(b"-LOADING Redis is loading\r\n")];
        assert_eq!(parse_health(&loading), None);
        assert_eq!(parse_lsn(&Bytes::from_static(b"$3\r\nabc\r\n")), None);
    }
}
