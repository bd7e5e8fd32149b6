//! The controller's decisions, without I/O: health-check results and the clock go in, commands
//! come out. The shell ([`super::shell`]) does the checking and the commands, so every rule here
//! is tested with plain values (as openraft tests its core).

use std::time::{Duration, Instant};

/// What a Redis node said about itself in one health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    pub role: NodeRole,
    /// Its `__memlog:lsn`: the journal prefix it holds (0 when it holds none).
    pub lsn: u64,
}

/// A node's replication role, as `ROLE` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeRole {
    Primary,
    /// A replica of `host:port`.
    Replica {
        of: String,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// The primary is gone and no replica can replace it: hold reads and writes.
    Hold,
    /// Make `node` the primary: `REPLICAOF NO ONE`, point the shard at it, catch it up from the
    /// journal, repoint the other nodes, record the topology, resume.
    Promote { node: String },
    /// The primary answers again after it was lost, or holds less than before (it restarted
    /// empty): hold, catch it up from the journal, resume.
    Rebuild { node: String },
    /// `node` answers but does not follow the primary (a returning old primary, a restarted
    /// empty node): `REPLICAOF primary` before anything else is sent to it.
    Demote { node: String, primary: String },
    /// The primary answers as a replica of another node of the shard (e.g. `memlog up` started
    /// again after a failover brings every node back in its first role): `REPLICAOF NO ONE`, and
    /// the applier checks it again.
    Reclaim { node: String },
}

/// Why a manual switchover cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ManualError {
    #[error("{0} is not a node of this shard")]
    UnknownNode(String),
    #[error("{0} is already the primary")]
    AlreadyPrimary(String),
    #[error("{0} does not answer health checks")]
    NotAnswering(String),
    #[error("no replica of this shard answers health checks")]
    NoReplica,
}

/// One node as the controller knows it.
#[derive(Debug, Clone)]
struct Node {
    addr: String,
    /// When it last answered a health check.
    last_ok: Option<Instant>,
    /// Whether the latest check got an answer.
    answering: bool,
    health: Option<Health>,
}

/// A shard's failover state: its primary and what each node last said.
#[derive(Debug, Clone)]
pub(crate) struct ShardCore {
    primary: String,
    nodes: Vec<Node>,
    detect: Duration,
    /// When the controller started watching: a node never heard from counts as silent since then.
    since: Instant,
    /// The primary was lost with no replica to take over; the shard is held.
    holding: bool,
}

impl ShardCore {
    /// Watches `nodes` (in preference order for ties; must include `primary`).
    pub(crate) fn new(primary: &str, nodes: &[String], detect: Duration, now: Instant) -> ShardCore {
        let mut all: Vec<Node> = Vec::with_capacity(nodes.len() + 1);
        for addr in std::iter::once(primary).chain(nodes.iter().map(String::as_str)) {
            if !all.iter().any(|n| n.addr == addr) {
                all.push(Node { addr: addr.to_string(), last_ok: None, answering: false, health: None });
            }
        }
        ShardCore { primary: primary.to_string(), nodes: all, detect, since: now, holding: false }
    }

    pub(crate) fn primary(&self) -> &str {
        &self.primary
    }

    /// Every node but the primary.
    pub(crate) fn replicas(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.addr.as_str()).filter(move |a| *a != self.primary)
    }

    /// What `addr` said in the latest check that it answered, and whether the latest check
    /// got an answer.
    pub(crate) fn node(&self, addr: &str) -> Option<(Option<&Health>, bool)> {
        self.nodes.iter().find(|n| n.addr == addr).map(|n| (n.health.as_ref(), n.answering))
    }

    /// Records one health check of `addr`: its answer, or `None` when it did not answer in time.
    /// A primary that answers with less than it held before lost its data: it will be rebuilt.
    pub(crate) fn observe(&mut self, addr: &str, health: Option<Health>, now: Instant) {
        let Some(node) = self.nodes.iter_mut().find(|n| n.addr == addr) else { return };
        node.answering = health.is_some();
        if let Some(health) = health {
            node.last_ok = Some(now);
            // The primary went back: it restarted empty (or lost data) and must be rebuilt.
            let went_back = addr == self.primary && node.health.as_ref().is_some_and(|old| health.lsn < old.lsn);
            node.health = Some(health);
            if went_back {
                self.holding = true;
            }
        }
    }

    /// The primary answered with less than the shard's applied journal prefix (which the core
    /// does not see): it lost data and will be rebuilt, as when it went back.
    pub(crate) fn primary_behind(&mut self) {
        self.holding = true;
    }

    /// Records a check of `addr` answered `-BUSY`: the node is running a long script or
    /// function, so it is alive, and still what it last said it was (nothing is known of it if
    /// it never said: it is then neither promoted nor demoted, only not taken for dead).
    pub(crate) fn observe_busy(&mut self, addr: &str, now: Instant) {
        let Some(node) = self.nodes.iter_mut().find(|n| n.addr == addr) else { return };
        node.answering = true;
        node.last_ok = Some(now);
    }

    /// True when the primary has not answered for the detection time.
    fn primary_lost(&self, now: Instant) -> bool {
        let node = self.nodes.iter().find(|n| n.addr == self.primary);
        let heard = node.and_then(|n| n.last_ok).unwrap_or(self.since);
        now.duration_since(heard) >= self.detect
    }

    /// The answering replica holding the longest journal prefix (the first listed on a tie).
    fn best_replica(&self) -> Option<&Node> {
        let candidates = self.nodes.iter().filter(|n| n.addr != self.primary && n.answering && n.health.is_some());
        candidates.fold(None, |best: Option<&Node>, n| match best {
            Some(b) if lsn(b) >= lsn(n) => Some(b),
            _ => Some(n),
        })
    }

    /// What to do now.
    pub(crate) fn decide(&mut self, now: Instant) -> Vec<Command> {
        if self.primary_lost(now) {
            if let Some(best) = self.best_replica() {
                return vec![Command::Promote { node: best.addr.clone() }];
            }
            if !self.holding {
                self.holding = true;
                return vec![Command::Hold];
            }
            return Vec::new();
        }
        let mut commands = Vec::new();
        let primary = self.nodes.iter().find(|n| n.addr == self.primary && n.answering);
        // Only a replica of another node of the shard: while a snapshot is loaded into it, the
        // primary replicates the proxy's snapshot-serving port, on purpose.
        let replicates_a_shard_node = |h: &Health| match &h.role {
            NodeRole::Replica { of } => self.nodes.iter().any(|n| n.addr == *of),
            NodeRole::Primary => false,
        };
        if primary.and_then(|n| n.health.as_ref()).is_some_and(replicates_a_shard_node) {
            commands.push(Command::Reclaim { node: self.primary.clone() });
        }
        let primary_answering = primary.is_some();
        if self.holding && primary_answering {
            commands.push(Command::Rebuild { node: self.primary.clone() });
        }
        for node in &self.nodes {
            let Some(health) = node.health.as_ref().filter(|_| node.answering && node.addr != self.primary) else {
                continue;
            };
            let follows = matches!(&health.role, NodeRole::Replica { of } if *of == self.primary);
            if !follows {
                commands.push(Command::Demote { node: node.addr.clone(), primary: self.primary.clone() });
            }
        }
        commands
    }

    /// The shell made `node` the primary.
    pub(crate) fn promoted(&mut self, node: &str) {
        self.primary = node.to_string();
        self.holding = false;
        if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == node) {
            if let Some(health) = &mut n.health {
                health.role = NodeRole::Primary;
            }
        }
    }

    /// The shell caught the returning primary up: the shard serves again.
    pub(crate) fn rebuilt(&mut self) {
        self.holding = false;
    }

    /// `demoted` now follows the primary (until its next check says otherwise).
    pub(crate) fn demoted(&mut self, demoted: &str) {
        let primary = self.primary.clone();
        if let Some(health) = self.nodes.iter_mut().find(|n| n.addr == demoted).and_then(|n| n.health.as_mut()) {
            health.role = NodeRole::Replica { of: primary };
        }
    }

    /// The target of a manual switchover: `to`, or the best answering replica.
    pub(crate) fn switchover_target(&self, to: Option<&str>) -> Result<String, ManualError> {
        let Some(to) = to else {
            return self.best_replica().map(|n| n.addr.clone()).ok_or(ManualError::NoReplica);
        };
        let node = self.nodes.iter().find(|n| n.addr == to).ok_or_else(|| ManualError::UnknownNode(to.to_string()))?;
        if node.addr == self.primary {
            return Err(ManualError::AlreadyPrimary(to.to_string()));
        }
        if !node.answering {
            return Err(ManualError::NotAnswering(to.to_string()));
        }
        Ok(node.addr.clone())
    }
}

fn lsn(node: &Node) -> u64 {
    node.health.as_ref().map_or(0, |h| h.lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DETECT: Duration = Duration::from_millis(1000);

    fn replica(of: &str, lsn: u64) -> Option<Health> {
        Some(Health { role: NodeRole::Replica { of: of.into() }, lsn })
    }

    fn primary(lsn: u64) -> Option<Health> {
        Some(Health { role: NodeRole::Primary, lsn })
    }

    fn shard(now: Instant) -> ShardCore {
        ShardCore::new("p:1", &["p:1".into(), "r:2".into(), "r:3".into()], DETECT, now)
    }

    fn healthy(core: &mut ShardCore, now: Instant) {
        core.observe("p:1", primary(10), now);
        core.observe("r:2", replica("p:1", 9), now);
        core.observe("r:3", replica("p:1", 8), now);
    }

    /// Every node of the shard stops answering at `now`.
    fn all_silent(core: &mut ShardCore, now: Instant) {
        for node in ["p:1", "r:2", "r:3"] {
            core.observe(node, None, now);
        }
    }

    #[test]
    fn a_busy_node_is_alive_even_if_it_was_busy_before_its_first_answer() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        // The primary runs a long script from before the controller's first check.
        for tick in 1..=30 {
            let now = t0 + DETECT * tick / 10;
            core.observe_busy("p:1", now);
            core.observe("r:2", replica("p:1", 0), now);
            core.observe("r:3", if tick > 20 { None } else { replica("p:1", 0) }, now);
            assert_eq!(core.decide(now), vec![], "tick {tick}: a busy primary is not failed over");
        }
        // A busy replica that never answered otherwise is neither promoted nor demoted.
        let t1 = t0 + DETECT * 4;
        let mut core = shard(t1);
        core.observe("p:1", None, t1);
        core.observe_busy("r:2", t1);
        core.observe("r:3", None, t1);
        assert_eq!(core.decide(t1 + DETECT), vec![Command::Hold]);
        // Once it answers, its health counts again.
        core.observe("r:2", replica("p:1", 4), t1 + DETECT);
        assert_eq!(core.decide(t1 + DETECT), vec![Command::Promote { node: "r:2".into() }]);
    }

    #[test]
    fn a_healthy_shard_needs_nothing() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        healthy(&mut core, t0);
        assert_eq!(core.decide(t0 + DETECT * 5 / 10), vec![]);
    }

    #[test]
    fn a_silent_primary_is_replaced_by_the_replica_with_the_longest_prefix_only_after_detection() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        healthy(&mut core, t0);
        let later = t0 + DETECT - Duration::from_millis(1);
        core.observe("p:1", None, later);
        core.observe("r:2", replica("p:1", 9), later);
        core.observe("r:3", replica("p:1", 12), later);
        assert_eq!(core.decide(later), vec![], "not before the detection time");
        let t1 = t0 + DETECT;
        assert_eq!(core.decide(t1), vec![Command::Promote { node: "r:3".into() }]);
        core.promoted("r:3");
        assert_eq!(core.primary(), "r:3");
        // The other replica still follows the old primary: it is repointed.
        assert_eq!(core.decide(t1), vec![Command::Demote { node: "r:2".into(), primary: "r:3".into() }]);
    }

    #[test]
    fn ties_go_to_the_first_listed_replica_and_silent_replicas_are_never_picked() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        healthy(&mut core, t0);
        let t1 = t0 + DETECT;
        core.observe("p:1", None, t1);
        core.observe("r:2", replica("p:1", 9), t1);
        core.observe("r:3", replica("p:1", 9), t1);
        assert_eq!(core.decide(t1), vec![Command::Promote { node: "r:2".into() }]);
        core.observe("r:2", None, t1);
        assert_eq!(core.decide(t1), vec![Command::Promote { node: "r:3".into() }]);
    }

    #[test]
    fn a_returning_old_primary_is_demoted_before_anything_else() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        healthy(&mut core, t0);
        let t1 = t0 + DETECT;
        core.observe("p:1", None, t1);
        assert_eq!(core.decide(t1), vec![Command::Promote { node: "r:2".into() }]);
        core.promoted("r:2");
        core.observe("r:3", replica("r:2", 9), t1);
        core.observe("r:2", primary(9), t1 + DETECT);
        // Frozen (SIGSTOP) and resumed: it still believes it is the primary.
        core.observe("p:1", primary(10), t1 + DETECT);
        assert_eq!(core.decide(t1 + DETECT), vec![Command::Demote { node: "p:1".into(), primary: "r:2".into() }]);
        core.demoted("p:1");
        assert_eq!(core.decide(t1 + DETECT), vec![]);
    }

    #[test]
    fn a_primary_back_as_a_replica_is_made_primary_again_and_the_others_follow_it() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        // After a failover to r:2 and a restart in the first roles: r:2 replicates p:1.
        core.promoted("r:2");
        core.observe("p:1", primary(0), t0);
        core.observe("r:2", replica("p:1", 0), t0);
        core.observe("r:3", replica("p:1", 0), t0);
        let demote = |node: &str| Command::Demote { node: node.into(), primary: "r:2".into() };
        assert_eq!(core.decide(t0), vec![Command::Reclaim { node: "r:2".into() }, demote("p:1"), demote("r:3")]);
        core.promoted("r:2");
        core.demoted("p:1");
        core.demoted("r:3");
        assert_eq!(core.decide(t0), vec![]);
        // Loading a snapshot, the primary replicates the proxy's serving port: left alone.
        core.observe("r:2", replica("127.0.0.1:40000", 0), t0);
        assert_eq!(core.decide(t0), vec![]);
    }

    #[test]
    fn with_no_replica_the_shard_holds_once_then_rebuilds_the_primary_when_it_returns() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        healthy(&mut core, t0);
        let t1 = t0 + DETECT;
        all_silent(&mut core, t1);
        assert_eq!(core.decide(t1), vec![Command::Hold]);
        assert_eq!(core.decide(t1 + DETECT), vec![], "holds once");
        // Restarted empty.
        let t2 = t1 + DETECT * 2;
        core.observe("p:1", primary(0), t2);
        assert_eq!(core.decide(t2), vec![Command::Rebuild { node: "p:1".into() }]);
        core.rebuilt();
        assert_eq!(core.decide(t2), vec![]);
    }

    #[test]
    fn a_replica_that_returns_first_is_promoted_even_if_empty() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        healthy(&mut core, t0);
        let t1 = t0 + DETECT;
        all_silent(&mut core, t1);
        assert_eq!(core.decide(t1), vec![Command::Hold]);
        // Restarted empty, so it reports itself as a primary holding nothing: the journal fills it.
        core.observe("r:3", primary(0), t1 + DETECT);
        assert_eq!(core.decide(t1 + DETECT), vec![Command::Promote { node: "r:3".into() }]);
    }

    #[test]
    fn a_primary_behind_the_applied_prefix_is_rebuilt_even_if_no_check_saw_it_ahead() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        core.observe("p:1", primary(0), t0);
        assert_eq!(core.decide(t0), vec![], "an lsn no lower than the last check's is no loss by itself");
        core.primary_behind();
        core.observe("p:1", primary(0), t0);
        assert_eq!(core.decide(t0), vec![Command::Rebuild { node: "p:1".into() }]);
        core.rebuilt();
        assert_eq!(core.decide(t0), vec![]);
    }

    #[test]
    fn a_primary_that_restarted_empty_within_detection_is_rebuilt() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        healthy(&mut core, t0);
        core.observe("p:1", primary(0), t0 + DETECT / 2);
        assert_eq!(core.decide(t0 + DETECT / 2), vec![Command::Rebuild { node: "p:1".into() }]);
    }

    #[test]
    fn a_primary_never_heard_from_counts_as_silent_from_the_start() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        core.observe("r:2", replica("p:1", 3), t0);
        assert_eq!(core.decide(t0 + DETECT / 2), vec![]);
        assert_eq!(core.decide(t0 + DETECT), vec![Command::Promote { node: "r:2".into() }]);
    }

    #[test]
    fn switchover_targets_are_checked() {
        let t0 = Instant::now();
        let mut core = shard(t0);
        healthy(&mut core, t0);
        assert_eq!(core.switchover_target(None), Ok("r:2".into()));
        assert_eq!(core.switchover_target(Some("r:3")), Ok("r:3".into()));
        assert_eq!(core.switchover_target(Some("p:1")), Err(ManualError::AlreadyPrimary("p:1".into())));
        assert_eq!(core.switchover_target(Some("x:9")), Err(ManualError::UnknownNode("x:9".into())));
        core.observe("r:3", None, t0);
        assert_eq!(core.switchover_target(Some("r:3")), Err(ManualError::NotAnswering("r:3".into())));
    }
}
