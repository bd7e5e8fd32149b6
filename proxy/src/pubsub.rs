//! The pub/sub hub: which client listens to which channel, pattern and shard channel, and the
//! delivery of PUBLISH, SPUBLISH and the shards' keyspace notifications to them.
//!
//! The proxy is the only endpoint clients publish to, so it delivers messages itself, exactly
//! as one Redis would (same frames, same receiver counts), whatever shard a channel hashes to.
//! Keyspace notifications are born in the Redis shards: while some subscription can receive
//! them, the `relay` follows every shard's primary and feeds them into the hub.
//!
//! Every change and delivery happens under one lock, and frames go to a client's push queue
//! under it too, so a client sees a subscription's confirmation before its first message and
//! an unsubscription's confirmation after its last one.

pub(crate) mod glob;
mod relay;
pub(crate) mod tracking;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{NodeAccess, NodeTarget};
use crate::clients::{PushSender, SubscriptionCounts};
use crate::keys::RESERVED_PREFIX;
use crate::resp::{Proto, ReplyWriter};

/// Channel prefixes of the notifications Redis publishes about keys and events.
const KEYSPACE_PREFIXES: [&[u8]; 2] = [b"__keyspace@", b"__keyevent@"];

/// The three kinds of subscription, each with its own words on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// SUBSCRIBE: a channel, by exact name.
    Channel,
    /// PSUBSCRIBE: every channel a glob pattern matches.
    Pattern,
    /// SSUBSCRIBE: a shard channel (SPUBLISH only; patterns never see them).
    ShardChannel,
}

impl Kind {
    fn subscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"subscribe",
            Kind::Pattern => b"psubscribe",
            Kind::ShardChannel => b"ssubscribe",
        }
    }

    fn unsubscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"unsubscribe",
            Kind::Pattern => b"punsubscribe",
            Kind::ShardChannel => b"sunsubscribe",
        }
    }

    /// Whether such a subscription may receive a shard's keyspace notification.
    fn hears_keyspace(self, name: &[u8]) -> bool {
        match self {
            Kind::Channel => KEYSPACE_PREFIXES.iter().any(|prefix| name.starts_with(prefix)),
            Kind::Pattern => KEYSPACE_PREFIXES.iter().any(|prefix| glob::may_match_prefix(name, prefix)),
            Kind::ShardChannel => false,
        }
    }
}

/// One client as the hub sees it: where its frames go and how many subscriptions it holds.
pub(crate) struct Subscriber {
    push: PushSender,
    /// Counts kept beside the hub's sets so that every command of the client (subscriber mode)
    /// and CLIENT LIST read them without the hub's lock.
    channels: AtomicUsize,
    patterns: AtomicUsize,
    shard_channels: AtomicUsize,
}

impl Subscriber {
    /// A client with no subscription yet, whose frames go to `push`.
    pub(crate) fn new(push: PushSender) -> Subscriber {
        Subscriber {
            push,
            channels: AtomicUsize::new(0),
            patterns: AtomicUsize::new(0),
            shard_channels: AtomicUsize::new(0),
        }
    }

    /// Where the client's pushed frames go (MONITOR lines share the queue).
    pub(crate) fn push(&self) -> &PushSender {
        &self.push
    }

    /// How many subscriptions of each kind the client holds.
    pub(crate) fn counts(&self) -> SubscriptionCounts {
        SubscriptionCounts {
            channels: self.channels.load(Ordering::Acquire),
            patterns: self.patterns.load(Ordering::Acquire),
            shard_channels: self.shard_channels.load(Ordering::Acquire),
        }
    }

    /// True while the client holds any subscription: a RESP2 client is then in subscriber mode.
    pub(crate) fn subscribed(&self) -> bool {
        let counts = self.counts();
        counts.channels + counts.patterns + counts.shard_channels > 0
    }

    fn id(&self) -> u64 {
        self.push.client().id
    }

    fn proto(&self) -> Proto {
        self.push.client().proto()
    }

    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Channel => &self.channels,
            Kind::Pattern => &self.patterns,
            Kind::ShardChannel => &self.shard_channels,
        }
    }

    /// The count a (un)subscription confirmation reports, as Redis computes it: channels and
    /// patterns together, shard channels apart.
    fn reported_count(&self, kind: Kind) -> i64 {
        let counts = self.counts();
        match kind {
            Kind::Channel | Kind::Pattern => (counts.channels + counts.patterns) as i64,
            Kind::ShardChannel => counts.shard_channels as i64,
        }
    }
}

/// One item of a pub/sub frame.
enum Item<'a> {
    Bulk(&'a [u8]),
    Null,
    Int(i64),
}

/// A pub/sub frame: a RESP2 array, or a RESP3 push.
fn frame(proto: Proto, items: &[Item]) -> Bytes {
    let mut w = ReplyWriter::new(proto);
    match proto {
        Proto::Resp2 => w.array(items.len()),
        Proto::Resp3 => w.raw(format!(">{}\r\n", items.len()).as_bytes()),
    };
    for item in items {
        match item {
            Item::Bulk(data) => w.bulk(data),
            Item::Null => w.null(),
            Item::Int(n) => w.int(*n),
        };
    }
    w.finish()
}

/// A message encoded at most once per protocol, however many clients receive it.
struct Encoded<F: Fn(Proto) -> Bytes> {
    encode: F,
    resp2: Option<Bytes>,
    resp3: Option<Bytes>,
}

impl<F: Fn(Proto) -> Bytes> Encoded<F> {
    fn new(encode: F) -> Self {
        Encoded { encode, resp2: None, resp3: None }
    }

    fn get(&mut self, proto: Proto) -> Bytes {
        let slot = match proto {
            Proto::Resp2 => &mut self.resp2,
            Proto::Resp3 => &mut self.resp3,
        };
        slot.get_or_insert_with(|| (self.encode)(proto)).clone()
    }
}

/// What one client is subscribed to; patterns keep their order (PUNSUBSCRIBE without
/// arguments confirms them in subscription order, as Redis does).
#[derive(Default)]
struct ClientSubscriptions {
    channels: HashSet<Bytes>,
    patterns: Vec<Bytes>,
    shard_channels: HashSet<Bytes>,
}

impl ClientSubscriptions {
    fn insert(&mut self, kind: Kind, name: &Bytes) -> bool {
        match kind {
            Kind::Channel => self.channels.insert(name.clone()),
            Kind::ShardChannel => self.shard_channels.insert(name.clone()),
            Kind::Pattern if self.patterns.contains(name) => false,
            Kind::Pattern => {
                self.patterns.push(name.clone());
                true
            }
        }
    }

    fn remove(&mut self, kind: Kind, name: &[u8]) -> bool {
        match kind {
            Kind::Channel => self.channels.remove(name),
            Kind::ShardChannel => self.shard_channels.remove(name),
            Kind::Pattern => match self.patterns.iter().position(|p| p == name) {
                Some(at) => {
                    self.patterns.remove(at);
                    true
                }
                None => false,
            },
        }
    }

    fn names(&self, kind: Kind) -> Vec<Bytes> {
        match kind {
            Kind::Channel => self.channels.iter().cloned().collect(),
            Kind::ShardChannel => self.shard_channels.iter().cloned().collect(),
            Kind::Pattern => self.patterns.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.patterns.is_empty() && self.shard_channels.is_empty()
    }
}

/// Subscribers of each name, in the order they subscribed (the order messages go out in).
type Registry = HashMap<Bytes, Vec<Arc<Subscriber>>>;

#[derive(Default)]
struct HubState {
    channels: Registry,
    patterns: Registry,
    shard_channels: Registry,
    clients: HashMap<u64, ClientSubscriptions>,
    /// Subscriptions (one per client and name) that may receive keyspace notifications.
    keyspace_interest: usize,
    /// Follows the shards' notifications while `keyspace_interest > 0`.
    relay: Option<relay::Relay>,
}

impl HubState {
    fn registry(&mut self, kind: Kind) -> &mut Registry {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::ShardChannel => &mut self.shard_channels,
        }
    }

    /// Unsubscribes `sub` from `name`, if it was subscribed.
    fn remove(&mut self, sub: &Subscriber, kind: Kind, name: &[u8]) {
        let Some(client) = self.clients.get_mut(&sub.id()) else { return };
        if !client.remove(kind, name) {
            return;
        }
        if client.is_empty() {
            self.clients.remove(&sub.id());
        }
        let registry = self.registry(kind);
        if let Some(subscribers) = registry.get_mut(name) {
            subscribers.retain(|s| s.id() != sub.id());
            if subscribers.is_empty() {
                registry.remove(name);
            }
        }
        sub.counter(kind).fetch_sub(1, Ordering::AcqRel);
        if kind.hears_keyspace(name) {
            self.keyspace_interest -= 1;
        }
    }

    /// Stops following the shards once nobody can receive their notifications.
    fn drop_idle_relay(&mut self) {
        if self.keyspace_interest == 0 {
            self.relay = None;
        }
    }
}

/// Waits until the keyspace relay follows every shard (bounded by a timeout), so that a
/// subscription confirmed after it misses no notification of a later write.
pub(crate) type RelayReady = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the hub follows of one shard: the node its primary is now (it moves on failover).
pub(crate) struct ShardNodes {
    target: Arc<NodeTarget>,
}

impl ShardNodes {
    pub(crate) fn new(target: Arc<NodeTarget>) -> ShardNodes {
        ShardNodes { target }
    }

    /// The primary the relay follows (it moves on failover).
    fn primary(&self) -> String {
        self.target.addr().to_string()
    }
}

/// The proxy's pub/sub state (one per proxy).
pub(crate) struct Hub {
    state: Mutex<HubState>,
    shards: Vec<ShardNodes>,
    /// How long a call to a shard's node may take.
    timeout: Duration,
    /// How the relay's connections reach the nodes (TLS, credentials).
    access: NodeAccess,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub(crate) fn new(shards: Vec<ShardNodes>, timeout: Duration, access: NodeAccess) -> Hub {
        Hub { state: Mutex::default(), shards, timeout, access }
    }

    /// Subscribes `sub` to `names` and queues one confirmation per name. When a name may
    /// receive keyspace notifications, returns what to await before confirming to the client.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        sub: &Arc<Subscriber>,
        kind: Kind,
        names: &[Bytes],
    ) -> Option<RelayReady> {
        let mut state = lock(&self.state);
        let mut hears_keyspace = false;
        for name in names {
            let added = state.clients.entry(sub.id()).or_default().insert(kind, name);
            if added {
                state.registry(kind).entry(name.clone()).or_default().push(sub.clone());
                sub.counter(kind).fetch_add(1, Ordering::AcqRel);
                if kind.hears_keyspace(name) {
                    state.keyspace_interest += 1;
                }
            }
            hears_keyspace |= kind.hears_keyspace(name);
            let proto = sub.proto();
            let word = kind.subscribe_word();
            sub.push.push(frame(proto, &[Item::Bulk(word), Item::Bulk(name), Item::Int(sub.reported_count(kind))]));
        }
        if !hears_keyspace {
            return None;
        }
        let relay = state.relay.get_or_insert_with(|| relay::Relay::start(Arc::downgrade(self), self.shards.len()));
        Some(relay.ready(self.timeout))
    }

    /// Unsubscribes `sub` from `names` (from all of this kind when empty) and queues one
    /// confirmation per name, or one naming no channel when there was nothing to leave.
    pub(crate) fn unsubscribe(&self, sub: &Subscriber, kind: Kind, names: &[Bytes]) {
        let mut state = lock(&self.state);
        let all;
        let names = if names.is_empty() {
            all = state.clients.get(&sub.id()).map(|c| c.names(kind)).unwrap_or_default();
            if all.is_empty() {
                let count = Item::Int(sub.reported_count(kind));
                sub.push.push(frame(sub.proto(), &[Item::Bulk(kind.unsubscribe_word()), Item::Null, count]));
                return;
            }
            &all[..]
        } else {
            names
        };
        for name in names {
            state.remove(sub, kind, name);
            let count = Item::Int(sub.reported_count(kind));
            sub.push.push(frame(sub.proto(), &[Item::Bulk(kind.unsubscribe_word()), Item::Bulk(name), count]));
        }
        state.drop_idle_relay();
    }

    /// Removes every subscription of `sub` without confirmations (RESET, a closed session).
    /// What client `id` is subscribed to: each channel or shard channel (`false`) and pattern
    /// (`true`).
    pub(crate) fn subscriptions_of(&self, id: u64) -> Vec<(Bytes, bool)> {
        let state = lock(&self.state);
        let Some(client) = state.clients.get(&id) else { return Vec::new() };
        let names = |kind: Kind, pattern: bool| client.names(kind).into_iter().map(move |name| (name, pattern));
        names(Kind::Channel, false).chain(names(Kind::ShardChannel, false)).chain(names(Kind::Pattern, true)).collect()
    }

    pub(crate) fn remove_client(&self, sub: &Subscriber) {
        // Counts change only through the client's own commands, none of which runs now.
        if !sub.subscribed() {
            return;
        }
        let mut state = lock(&self.state);
        let Some(client) = state.clients.get(&sub.id()) else { return };
        let held: Vec<(Kind, Bytes)> = [Kind::Channel, Kind::Pattern, Kind::ShardChannel]
            .into_iter()
            .flat_map(|kind| client.names(kind).into_iter().map(move |name| (kind, name)))
            .collect();
        for (kind, name) in held {
            state.remove(sub, kind, &name);
        }
        state.drop_idle_relay();
    }

    /// Delivers `message` to the subscribers of `channel` (and, unless sharded, of every
    /// pattern matching it); returns the receiver count PUBLISH/SPUBLISH reply, where a client
    /// that listens twice (a channel and a pattern) counts twice, as in Redis.
    pub(crate) fn publish(&self, channel: &[u8], message: &[u8], sharded: bool) -> usize {
        let state = lock(&self.state);
        let mut receivers = 0;
        let (registry, word): (_, &[u8]) =
            if sharded { (&state.shard_channels, b"smessage") } else { (&state.channels, b"message") };
        if let Some(subscribers) = registry.get(channel) {
            let mut encoded =
                Encoded::new(|proto| frame(proto, &[Item::Bulk(word), Item::Bulk(channel), Item::Bulk(message)]));
            for sub in subscribers {
                sub.push.push(encoded.get(sub.proto()));
                receivers += 1;
            }
        }
        if sharded {
            return receivers;
        }
        for (pattern, subscribers) in &state.patterns {
            if !glob::matches(pattern, channel) {
                continue;
            }
            let mut encoded = Encoded::new(|proto| {
                let items = [Item::Bulk(b"pmessage"), Item::Bulk(pattern), Item::Bulk(channel), Item::Bulk(message)];
                frame(proto, &items)
            });
            for sub in subscribers {
                sub.push.push(encoded.get(sub.proto()));
                receivers += 1;
            }
        }
        receivers
    }

    /// Delivers a keyspace notification a shard published, unless it is about one of
    /// memlog's own keys (its LSN key changes with every batch), which clients never see.
    fn deliver_notification(&self, channel: &[u8], message: &[u8]) {
        let about_reserved_key = match channel.iter().position(|&b| b == b':') {
            Some(colon) if channel.starts_with(b"__keyspace@") => channel[colon + 1..].starts_with(RESERVED_PREFIX),
            _ => channel.starts_with(b"__keyevent@") && message.starts_with(RESERVED_PREFIX),
        };
        if !about_reserved_key {
            self.publish(channel, message, false);
        }
    }

    /// Channels (or shard channels) with at least one subscriber, matching `pattern` if given.
    pub(crate) fn active_channels(&self, sharded: bool, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let state = lock(&self.state);
        let registry = if sharded { &state.shard_channels } else { &state.channels };
        registry.keys().filter(|name| pattern.is_none_or(|p| glob::matches(p, name))).cloned().collect()
    }

    /// Subscriber count of each of `channels` (patterns not included, as in Redis).
    pub(crate) fn subscriber_counts(&self, sharded: bool, channels: &[Bytes]) -> Vec<usize> {
        let state = lock(&self.state);
        let registry = if sharded { &state.shard_channels } else { &state.channels };
        channels.iter().map(|c| registry.get(c).map_or(0, Vec::len)).collect()
    }

    /// Number of distinct patterns subscribed to (PUBSUB NUMPAT).
    pub(crate) fn pattern_count(&self) -> usize {
        lock(&self.state).patterns.len()
    }

    /// A connected client's subscription counts (zeros for a client with none).
    pub(crate) fn client_counts(&self, client_id: u64) -> SubscriptionCounts {
        let state = lock(&self.state);
        state.clients.get(&client_id).map_or_else(SubscriptionCounts::default, |c| SubscriptionCounts {
            channels: c.channels.len(),
            patterns: c.patterns.len(),
            shard_channels: c.shard_channels.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_redis() {
        let items = [Item::Bulk(b"subscribe"), Item::Bulk(b"ch"), Item::Int(1)];
        assert_eq!(&frame(Proto::Resp2, &items)[..], b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
        assert_eq!(&frame(Proto::Resp3, &items)[..], b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
        let none = [Item::Bulk(b"unsubscribe"), Item::Null, Item::Int(0)];
        assert_eq!(&frame(Proto::Resp2, &none)[..], b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n");
        assert_eq!(&frame(Proto::Resp3, &none)[..], b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");
    }

    #[test]
    fn keyspace_interest() {
        assert!(Kind::Channel.hears_keyspace(b"__keyspace@0__:k"));
        assert!(Kind::Channel.hears_keyspace(b"__keyevent@0__:set"));
        assert!(!Kind::Channel.hears_keyspace(b"news"));
        assert!(!Kind::ShardChannel.hears_keyspace(b"__keyspace@0__:k"));
        for pattern in ["*", "__key*", "_?keyspace@*", "__key[e-s]*", "*:k", "__keyevent@0__:set"] {
            assert!(Kind::Pattern.hears_keyspace(pattern.as_bytes()), "{pattern}");
        }
        for pattern in ["news.*", "__keyx*", "_[a-z]*", "__keyspace"] {
            assert!(!Kind::Pattern.hears_keyspace(pattern.as_bytes()), "{pattern}");
        }
    }
}
