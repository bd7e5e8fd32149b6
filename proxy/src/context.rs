//! One client's state, held in one place: its connection to the proxy (protocol, authenticated
//! user, pub/sub link), the transaction it is queuing, the keys it watches, and its lanes to the
//! shards. Commands get this context; they never call back into the dispatcher.

use std::sync::Arc;

use bytes::Bytes;

use crate::clients::{ClientHandle, PushSender};
use crate::proxy::Proxy;
use crate::pubsub::Subscriber;
use crate::replies::Lanes;
use crate::resp::Proto;
use crate::sequencer::{QueuedCommand, SequencerOp, SequencerRequest, Watch};
use crate::table::CommandInfo;

pub(crate) struct ClientCtx {
    pub proxy: Arc<Proxy>,
    pub client: Arc<ClientHandle>,
    pub lanes: Arc<Lanes>,
    pub authenticated: bool,
    /// The user the client's TLS certificate names (`[tls] cert_user`): the connection starts,
    /// and `RESET` returns, logged in as that user.
    pub(crate) certificate_user: Option<String>,
    /// The client's link to the pub/sub hub.
    pub pubsub: ClientPubSub,
    /// The command being dispatched: the sequencer locates the keys a write touches with it.
    pub command: Option<Arc<CommandInfo>>,
    /// Commands queued since MULTI.
    pub multi: Option<Multi>,
    /// Keys watched since WATCH.
    pub watching: Option<Watching>,
    /// Set when the command dispatched blocks: the client's next command waits for its reply.
    pub(crate) blocks: bool,
    /// Set by a command that closes the client's own connection once its reply is written
    /// (`ACL DELUSER` of its own user, as Redis closes it after the command).
    pub(crate) close_after_reply: bool,
    /// `CLIENT REPLY OFF`: no reply is sent until `CLIENT REPLY ON`.
    pub(crate) replies_off: bool,
    /// `CLIENT REPLY SKIP`: the next command's reply is not sent.
    pub(crate) skip_next_reply: bool,
}

impl ClientCtx {
    pub(crate) fn new(proxy: Arc<Proxy>, client: Arc<ClientHandle>) -> ClientCtx {
        let lanes = Arc::new(Lanes::new(proxy.shards.len()));
        let authenticated = !proxy.access.auth_required();
        ClientCtx {
            proxy,
            client,
            lanes,
            authenticated,
            certificate_user: None,
            pubsub: Default::default(),
            command: None,
            multi: None,
            watching: None,
            blocks: false,
            close_after_reply: false,
            replies_off: false,
            skip_next_reply: false,
        }
    }

    /// The protocol the client speaks (HELLO changes it); held by its `ClientHandle`, which
    /// CLIENT LIST and its push queue read too.
    pub(crate) fn proto(&self) -> Proto {
        self.client.proto()
    }

    /// The client's `CLIENT LIST` line, as `ACL LOG` records it.
    pub(crate) fn client_info(&self) -> Vec<u8> {
        self.client.info_line(&self.proxy.pubsub.client_counts(self.client.id)).into_bytes()
    }

    /// Stops watching (UNWATCH, EXEC, DISCARD, RESET, disconnect).
    pub(crate) fn unwatch(&mut self) {
        if let Some(watching) = self.watching.take() {
            let reply = tokio::sync::oneshot::channel().0;
            let write = SequencerRequest {
                proto: self.proto(),
                db: 0,
                client: self.client.id,
                op: SequencerOp::Unwatch(watching.watch),
                reply,
            };
            // A full queue drops it: the registry forgets a watch once its client dropped it.
            self.proxy.shards[watching.shard].sequencer.try_submit(write);
        }
    }
}

impl Drop for ClientCtx {
    /// A client that disconnects stops watching. (If it was blocked, its session drops the
    /// pending reply, and the sequencer serves nothing to a reply nobody awaits.)
    fn drop(&mut self) {
        self.unwatch();
    }
}

/// A transaction being queued.
#[derive(Default)]
pub(crate) struct Multi {
    pub(crate) queued: Vec<QueuedCommand>,
    /// Bytes of the commands queued, bounded by what one journal entry takes.
    pub(crate) queued_bytes: usize,
    /// A command was refused while queuing: EXEC answers EXECABORT.
    pub(crate) failed: bool,
    /// The shard every key so far lives on, and a key's slot (cluster-compatible mode: one slot).
    pub(crate) shard: Option<usize>,
    pub(crate) slot_key: Option<Bytes>,
    /// The ACL generation when MULTI began: EXEC checks the commands again if it changed.
    pub(crate) acl_generation: u64,
    /// The database the next queued command runs in (a queued `SELECT` changes it).
    pub(crate) db: u8,
}

/// The client's watch, on the shard its watched keys live on.
pub(crate) struct Watching {
    pub(crate) shard: usize,
    pub(crate) watch: Arc<Watch>,
}

/// A client's link to the hub (set by the session; absent for a dispatcher without one).
#[derive(Default)]
pub(crate) struct ClientPubSub {
    pub(crate) subscriber: Option<Arc<Subscriber>>,
}

impl ClientPubSub {
    /// Links a session's client to the hub through its push queue.
    pub(crate) fn new(subscriber: Arc<Subscriber>) -> ClientPubSub {
        ClientPubSub { subscriber: Some(subscriber) }
    }

    /// The client's push queue (MONITOR lines go there too); None for a dispatcher without a
    /// session.
    pub(crate) fn push(&self) -> Option<PushSender> {
        self.subscriber.as_ref().map(|s| s.push().clone())
    }

    /// True while the client holds a subscription of any kind.
    pub(crate) fn subscribed(&self) -> bool {
        self.subscriber.as_ref().is_some_and(|s| s.subscribed())
    }

    /// RESP2 with a subscription: only (un)subscribing, PING, QUIT and RESET are allowed, and
    /// PING answers differently.
    pub(crate) fn in_subscriber_mode(&self, proto: Proto) -> bool {
        proto == Proto::Resp2 && self.subscribed()
    }
}
