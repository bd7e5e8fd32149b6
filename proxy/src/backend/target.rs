//! The node a shard's connections follow (its current primary) and the shard's hold.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

/// What a connection carries, which decides the hold that stops it and what it may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Client reads: held until a new primary has caught up; a read lost with its connection
    /// is sent again.
    Read,
    /// The sequencer's apply connections: released first during a failover, so the applier
    /// catches the new primary up; a batch is refused until the node's `__memlog:lsn` was read
    /// on a connection opened since the last (re)connect, so nothing is applied onto a node whose
    /// journal prefix is unknown (I3).
    Apply,
    /// A connection of its own to one fixed node (health checks, administration): never held,
    /// nothing retried.
    Direct,
}

/// Which holds are on and how many times the target moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TargetState {
    pub(super) generation: u64,
    pub(super) reads_held: bool,
    pub(super) applies_held: bool,
}

impl TargetState {
    pub(super) fn held(&self, role: Role) -> bool {
        match role {
            Role::Read => self.reads_held,
            Role::Apply => self.applies_held,
            Role::Direct => false,
        }
    }
}

/// The node every connection of a shard points at (its current primary), shared by them all,
/// with the shard's hold: the failover controller moves it and holds/releases it.
pub(crate) struct NodeTarget {
    pub(super) shard: usize,
    pub(super) addr: ArcSwap<String>,
    pub(super) state: watch::Sender<TargetState>,
    /// How long a request waits for a held or unreachable node before it fails.
    pub(super) hold_for: Duration,
    /// False from each apply connection's (re)connect until one reads `__memlog:lsn` (see [`Role::Apply`]).
    pub(super) apply_checked: AtomicBool,
    /// Batches sent on apply connections whose replies have not come back.
    pub(super) applies_in_flight: AtomicU64,
    /// The highest journal prefix the primary was seen with or the applier applied (so at least
    /// every acknowledged write); reads wait for a node below it.
    pub(super) lsn_floor: AtomicU64,
}

impl NodeTarget {
    pub(crate) fn new(shard: usize, addr: &str, hold_for: Duration) -> Arc<NodeTarget> {
        Arc::new(NodeTarget {
            shard,
            addr: ArcSwap::from_pointee(addr.to_string()),
            state: watch::Sender::new(TargetState::default()),
            hold_for,
            apply_checked: AtomicBool::new(false),
            applies_in_flight: AtomicU64::new(0),
            lsn_floor: AtomicU64::new(0),
        })
    }

    /// A target that never moves and never holds: requests to an unreachable node fail at once.
    pub(super) fn fixed(addr: &str) -> Arc<NodeTarget> {
        NodeTarget::new(usize::MAX, addr, Duration::ZERO)
    }

    pub(crate) fn addr(&self) -> Arc<String> {
        self.addr.load_full()
    }

    /// True while reads or writes are held.
    pub(crate) fn is_held(&self) -> bool {
        let state = *self.state.borrow();
        state.reads_held || state.applies_held
    }

    /// Batches sent to the node on apply connections and not answered yet: a switchover waits
    /// for none, so no batch's reply is lost with the old primary's connections.
    pub(crate) fn applies_in_flight(&self) -> u64 {
        self.applies_in_flight.load(Ordering::Acquire)
    }

    /// Stops every connection of the shard from sending: requests wait (up to the hold time).
    pub(crate) fn hold(&self) {
        self.state.send_modify(|s| {
            s.reads_held = true;
            s.applies_held = true;
        });
    }

    /// Points every connection at `addr`: each drops its connection and reconnects there.
    pub(crate) fn retarget(&self, addr: &str) {
        self.addr.store(Arc::new(addr.to_string()));
        self.apply_checked.store(false, Ordering::Release);
        self.state.send_modify(|s| s.generation += 1);
    }

    /// Lets the apply connections send again (the applier catches the primary up first).
    pub(crate) fn release_applies(&self) {
        self.state.send_modify(|s| s.applies_held = false);
    }

    /// Lets everything send again.
    pub(crate) fn release(&self) {
        self.state.send_modify(|s| {
            s.reads_held = false;
            s.applies_held = false;
        });
    }

    /// The primary holds the journal prefix up to `lsn`: a read connection that (re)connects
    /// waits until its node holds at least that much. (Every later primary is caught up to the
    /// journal's commit point, which is at least this, so the floor only rises.)
    pub(crate) fn primary_holds(&self, lsn: u64) {
        self.lsn_floor.fetch_max(lsn, Ordering::AcqRel);
    }

    /// The highest journal prefix the primary was known to hold: every acknowledged write is in it.
    pub(crate) fn lsn_floor(&self) -> u64 {
        self.lsn_floor.load(Ordering::Acquire)
    }

    pub(super) fn batch_answered(&self, role: Role) {
        if role == Role::Apply {
            self.applies_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(super) fn current(&self) -> TargetState {
        *self.state.borrow()
    }
}
