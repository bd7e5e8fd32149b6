//! The proxy's script cache: SHA1 → body of every script loaded through it (SCRIPT LOAD, EVAL).
//! EVALSHA is sent, and journaled, as EVAL with the body, so nothing ever depends on what a
//! Redis node's own script cache holds (a node restarted empty, a new primary, a replay).
//! It also counts the journaled scripts in flight per shard, which SCRIPT KILL must not kill.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use super::body::{self, Form, Unjournalable};
use super::pin;

/// A cached script, with what it is journaled as when it writes, decided once when cached.
#[derive(Clone)]
pub(crate) struct Script {
    pub body: Bytes,
    pub journaled: Result<Journaled, Unjournalable>,
}

/// The body a writing script is journaled (and applied) with.
#[derive(Clone)]
pub(crate) enum Journaled {
    AsIs,
    /// This body, called with the time as one extra, last argument.
    PinnedTime(Bytes),
}

impl Script {
    fn new(body: Bytes) -> Script {
        let journaled = body::journal_form(&body).map(|form| match form {
            Form::AsIs => Journaled::AsIs,
            Form::PinnedTime => Journaled::PinnedTime(pin::pinned_body(&body)),
        });
        Script { body, journaled }
    }
}

/// Scripts loaded through the proxy (one cache per proxy, `Proxy::scripts`), and the journaled
/// scripts in flight per shard.
#[derive(Default)]
pub(crate) struct ScriptCache {
    /// By lower-case hex SHA1; unbounded, as Redis 7.0's own cache.
    scripts: DashMap<Vec<u8>, Script>,
    /// Per shard: journaled scripts sent to the sequencer and not answered yet.
    journaled: DashMap<usize, usize>,
}

impl ScriptCache {
    /// The cached script of `body`, cached now if it was not (scanned once, not per call).
    pub(crate) fn load(&self, body: Bytes) -> Script {
        let sha = body::sha1_hex(&body).into_bytes();
        self.scripts.entry(sha).or_insert_with(|| Script::new(body)).value().clone()
    }

    /// The script named `sha` (any case), as EVALSHA and SCRIPT EXISTS look it up.
    pub(crate) fn get(&self, sha: &[u8]) -> Option<Script> {
        self.scripts.get(&sha.to_ascii_lowercase()).map(|entry| entry.value().clone())
    }

    pub(crate) fn clear(&self) {
        self.scripts.clear();
    }

    /// Marks a journaled script in flight on `shard` until the returned guard drops.
    pub(crate) fn journaled_started(self: &Arc<Self>, shard: usize) -> JournaledInFlight {
        *self.journaled.entry(shard).or_insert(0) += 1;
        JournaledInFlight { cache: self.clone(), shard }
    }

    pub(crate) fn journaled_in_flight(&self, shard: usize) -> bool {
        self.journaled.get(&shard).is_some_and(|n| *n > 0)
    }
}

/// A journaled script sent to a shard's sequencer whose reply has not been handed back yet.
pub(crate) struct JournaledInFlight {
    cache: Arc<ScriptCache>,
    shard: usize,
}

impl Drop for JournaledInFlight {
    fn drop(&mut self) {
        if let Some(mut n) = self.cache.journaled.get_mut(&self.shard) {
            *n = n.saturating_sub(1);
        }
    }
}
