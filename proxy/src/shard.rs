//! One shard: its failover controller, its sequencer, its snapshots and its read pools, started
//! together and followed by every connection of the shard.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::backend::{BackendConn, BackendOptions, NodeTarget, Role};
use crate::failover::shell::{Controller, ControllerSetup};
use crate::failover::{FailoverSettings, SwitchoverRequest};
use crate::prepare::NodePreparation;
use crate::resp::Proto;
use crate::sequencer::{JournalSetup, Sequencer};
use crate::snapshot::ShardSnapshots;
use crate::stats::ShardMemory;
use crate::status::{NodeStatus, ShardStatus, ShardView};

/// One shard: its sequencer, its read pools and its failover controller. Every connection of
/// the shard follows `primary`, which the controller moves when it fails over.
pub(crate) struct Shard {
    pub id: usize,
    /// The node every connection of the shard follows: the current primary.
    pub target: Arc<NodeTarget>,
    /// The nodes as the failover controller last saw them (`MEMLOG TOPOLOGY`).
    pub status: Arc<ShardStatus>,
    pub sequencer: Sequencer,
    /// `MEMLOG FAILOVER` requests to the shard's controller.
    pub switchover: mpsc::UnboundedSender<SwitchoverRequest>,
    /// The shard's snapshots, when `[snapshot]` is configured.
    pub snapshots: Option<Arc<ShardSnapshots>>,
    /// The primary's memory against memlog's `maxmemory` (the evictor keeps it current).
    pub memory: Arc<ShardMemory>,
    reads_resp2: Vec<BackendConn>,
    reads_resp3: OnceLock<Vec<BackendConn>>,
    opts: BackendOptions,
}

/// A shard's read connections: following the primary, or (a refused shard's) answering its
/// refusal without a node.
fn read_pool(
    target: &Arc<NodeTarget>,
    refusal: Option<&Bytes>,
    connections: usize,
    proto: Proto,
    opts: &BackendOptions,
) -> Vec<BackendConn> {
    match refusal {
        Some(reply) => vec![BackendConn::answering(&target.addr(), reply.clone())],
        None => {
            (0..connections).map(|_| BackendConn::follow(target.clone(), Role::Read, proto, opts.clone())).collect()
        }
    }
}

/// What a shard starts from.
pub(crate) struct ShardStart {
    pub(crate) id: usize,
    pub(crate) slots: Vec<(u16, u16)>,
    /// The primary to start with (the recorded one after a failover).
    pub(crate) primary: String,
    /// Every configured node, primary first.
    pub(crate) nodes: Vec<String>,
    /// The shard's epoch at start (the topology version recorded at start-up).
    pub(crate) epoch: u64,
}

impl Shard {
    pub(crate) async fn start(
        start: ShardStart,
        connections: usize,
        opts: BackendOptions,
        prepare: Arc<NodePreparation>,
        journal: Option<JournalSetup>,
        settings: FailoverSettings,
    ) -> anyhow::Result<Shard> {
        let ShardStart { id, slots, primary, nodes, epoch } = start;
        let target = NodeTarget::new(id, &primary, settings.hold);
        let meta = journal.as_ref().map(|j| j.meta.clone());
        // Unknown until the controller's first health check.
        let node = |addr: &str| NodeStatus { addr: addr.to_string(), lsn: None, up: false };
        let status = Arc::new(ShardStatus::new(ShardView {
            id,
            slots: crate::status::slots_text(&slots),
            epoch,
            held: false,
            primary: node(&primary),
            replicas: nodes.iter().filter(|n| **n != primary).map(|n| node(n)).collect(),
            refused: None,
        }));
        metrics::gauge!("memlog_shard_epoch", "shard" => id.to_string()).set(epoch as f64);
        // The controller watches the nodes while the sequencer recovers and catches the primary
        // up, so a primary found dead at start-up is failed over instead of waited for.
        let (started, sequencer) = watch::channel(None);
        let switchover = Controller::spawn(ControllerSetup {
            shard: id,
            slots: slots.clone(),
            nodes,
            target: target.clone(),
            sequencer,
            meta,
            status: status.clone(),
            settings,
            prepare: prepare.clone(),
        });
        let snapshots = journal.as_ref().and_then(|setup| {
            let settings = setup.snapshots.clone()?;
            let journal = (setup.nodes.clone(), setup.quorum.transport.clone());
            Some(Arc::new(ShardSnapshots::new(id, settings, setup.meta.clone(), journal, prepare.clone())))
        });
        // The start-up catch-up replays under the node's preparation (the parameter group):
        // the controller's first check may come after it. A primary that does not answer yet
        // is prepared by the controller once it does.
        if let Err(e) = prepare.prepare_at(&primary).await {
            tracing::warn!(shard = id, "primary not prepared before the start-up catch-up: {e}");
        }
        let memory = Arc::new(ShardMemory::default());
        let sequencer =
            Sequencer::start(id, target.clone(), opts.clone(), journal, snapshots.clone(), &slots, memory.clone())
                .await?;
        started.send_replace(Some(sequencer.clone()));
        let refusal = sequencer.refusal_reply();
        status.update(|view| view.refused = sequencer.refusal().map(str::to_string));
        // A refused shard's node stays as it is: no snapshot is taken of it.
        match &snapshots {
            Some(snapshots) if refusal.is_none() => snapshots.clone().spawn_scheduler(status.clone(), target.clone()),
            _ => {}
        }
        let reads = |proto| read_pool(&target, refusal.as_ref(), connections, proto, &opts);
        Ok(Shard {
            id,
            reads_resp2: reads(Proto::Resp2),
            target,
            status,
            sequencer,
            switchover,
            snapshots,
            memory,
            reads_resp3: OnceLock::new(),
            opts,
        })
    }

    /// The read connection a client uses: always the same one for a client, so its reads of
    /// this shard stay in order among themselves.
    pub(crate) fn read_conn(&self, proto: Proto, client_id: u64) -> &BackendConn {
        let pool = match proto {
            Proto::Resp2 => &self.reads_resp2,
            Proto::Resp3 => self.reads_resp3.get_or_init(|| {
                let refusal = self.refusal_reply();
                read_pool(&self.target, refusal.as_ref(), self.reads_resp2.len(), Proto::Resp3, &self.opts)
            }),
        };
        // The remainder is below `pool.len()`, so it fits a usize.
        &pool[usize::try_from(client_id % pool.len() as u64).unwrap_or_default()]
    }

    /// Why the shard does not serve (its primary's data refused at start-up). `None` while it
    /// serves.
    pub(crate) fn refusal(&self) -> Option<&str> {
        self.sequencer.refusal()
    }

    /// The error every command routed to a shard that does not serve gets.
    pub(crate) fn refusal_reply(&self) -> Option<Bytes> {
        self.sequencer.refusal_reply()
    }

    /// The shard's primary now (it moves when the controller fails over).
    pub(crate) fn current_primary(&self) -> String {
        self.target.addr().to_string()
    }

    /// The shard's other nodes now.
    pub(crate) fn current_replicas(&self) -> Vec<String> {
        crate::status::replicas_besides(&self.status, &self.target.addr())
    }
}
