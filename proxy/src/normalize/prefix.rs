//! A probed command inside `MULTI` after writes to the same keys (`SADD s a b` then `SPOP s`,
//! `SET n 1.5` then `INCRBYFLOAT n 1`, `XADD x * …` twice): its outcome depends on the state the
//! earlier commands of the transaction leave, which the primary does not hold yet — and must not
//! hold before the transaction is journaled (a primary never holds what is not committed).
//!
//! So the probe runs on the primary inside one `MULTI … EXEC` that first saves every key the
//! earlier writes touch (`COPY` to a scratch key), applies those writes as they will be
//! journaled, runs the probe, then puts every key back (`DEL`, `COPY` from the scratch key, which
//! also restores the expiry, or leaves the key absent if it was) and deletes the scratch keys.
//! Nothing else runs in between, and the dataset's net state is unchanged; replicas get the same
//! block with the same net effect. Clients subscribed to keyspace notifications of those keys do
//! see the block's events. The caller must only pass earlier writes whose keys are all known
//! (no script, no `FLUSHALL`): a key the block does not save would keep the writes' effects.

use bytes::Bytes;

use super::args::word;
use super::replies::{array, array_of};
use super::{unresolved, Plan, Resolver};

/// The scratch key that saves the `i`-th key (hidden from clients like every `__memlog:` key).
fn saved(i: usize) -> Bytes {
    Bytes::from(format!("__memlog:txn:{i}"))
}

/// `probe`/`resolve` (a command's plan) run after `earlier` (the transaction's earlier writes, as
/// journaled), which touch exactly `keys`.
pub fn after_earlier_writes(earlier: &[Vec<Bytes>], keys: &[Bytes], probe: Vec<Vec<Bytes>>, resolve: Resolver) -> Plan {
    let is = |command: Option<&Vec<Bytes>>, name: &str| {
        command.and_then(|c| c.first()).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    };
    // A probe that is a `MULTI … EXEC` block itself is inlined: Redis does not nest MULTI.
    let block = probe.len() >= 2 && is(probe.first(), "MULTI") && is(probe.last(), "EXEC");
    let inner = if block { probe[1..probe.len() - 1].to_vec() } else { probe };
    let mut commands = vec![vec![word("MULTI")]];
    for (i, key) in keys.iter().enumerate() {
        commands.push(vec![word("DEL"), saved(i)]);
        commands.push(vec![word("COPY"), key.clone(), saved(i)]);
    }
    commands.extend(earlier.iter().cloned());
    // Index of the probe's first reply in the EXEC array (MULTI has no entry there).
    let first = commands.len() - 1;
    let count = inner.len();
    commands.extend(inner);
    for (i, key) in keys.iter().enumerate() {
        commands.push(vec![word("DEL"), key.clone()]);
        commands.push(vec![word("COPY"), saved(i), key.clone()]);
        commands.push(vec![word("DEL"), saved(i)]);
    }
    commands.push(vec![word("EXEC")]);
    Plan::probe(commands, move |replies| {
        let exec = replies.last().and_then(array);
        let Some(own) = exec.as_ref().and_then(|exec| exec.get(first..first + count)) else {
            return unresolved(replies);
        };
        if !block {
            return resolve(own);
        }
        // What the block would have answered on its own: +OK, +QUEUED per command, the array.
        let mut as_block = vec![Bytes::from_static(b"+OK\r\n")];
        as_block.extend((0..count).map(|_| Bytes::from_static(b"+QUEUED\r\n")));
        as_block.push(array_of(&own.iter().map(|r| &r[..]).collect::<Vec<_>>()));
        resolve(&as_block)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{plan, Resolved};

    fn args(words: &str) -> Vec<Bytes> {
        words.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
    }

    #[test]
    fn the_probe_sees_the_earlier_writes_and_every_key_is_put_back() {
        let Plan::Probe { probe, resolve } = plan(&args("SPOP s"), 0) else { panic!("SPOP is probed") };
        let earlier = vec![args("SADD s a"), args("SMOVE t s b")];
        let keys = [Bytes::from_static(b"s"), Bytes::from_static(b"t")];
        let Plan::Probe { probe, resolve } = after_earlier_writes(&earlier, &keys, probe, resolve) else {
            panic!("still a probe")
        };
        let words: Vec<String> = probe
            .iter()
            .map(|c| c.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            words,
            [
                "MULTI",
                "DEL __memlog:txn:0",
                "COPY s __memlog:txn:0",
                "DEL __memlog:txn:1",
                "COPY t __memlog:txn:1",
                "SADD s a",
                "SMOVE t s b",
                "SRANDMEMBER s",
                "DEL s",
                "COPY __memlog:txn:0 s",
                "DEL __memlog:txn:0",
                "DEL t",
                "COPY __memlog:txn:1 t",
                "DEL __memlog:txn:1",
                "EXEC",
            ]
        );
        // The EXEC array: 4 saves, 2 writes, the probe's reply, 6 restores.
        let exec = b"*13\r\n:0\r\n:1\r\n:0\r\n:1\r\n:1\r\n:1\r\n$1\r\nb\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n";
        let mut replies = vec![Bytes::from_static(b"+OK\r\n")];
        replies.extend((0..13).map(|_| Bytes::from_static(b"+QUEUED\r\n")));
        replies.push(Bytes::from_static(exec));
        let Resolved { commands, reply } = resolve(&replies);
        assert_eq!(commands, [args("SREM s b")]);
        assert_eq!(reply.as_deref(), Some(&b"$1\r\nb\r\n"[..]));
        // An aborted block resolves to its error, nothing journaled.
        let Plan::Probe { probe, resolve } = plan(&args("SPOP s"), 0) else { panic!() };
        let Plan::Probe { resolve, .. } = after_earlier_writes(&earlier, &keys, probe, resolve) else { panic!() };
        let aborted = resolve(&[Bytes::from_static(b"-EXECABORT Transaction discarded\r\n")]);
        assert!(aborted.commands.is_empty());
    }

    #[test]
    fn a_probe_that_is_a_block_is_inlined_and_gets_its_own_replies_back() {
        let Plan::Probe { probe, resolve } = plan(&args("INCRBYFLOAT n 1.5"), 0) else { panic!("probed") };
        assert!(probe.first().is_some_and(|c| c[0] == "MULTI"), "INCRBYFLOAT probes a dry run block: {probe:?}");
        let inner = probe.len() - 2;
        let earlier = vec![args("SET n 1")];
        let keys = [Bytes::from_static(b"n")];
        let Plan::Probe { probe, resolve } = after_earlier_writes(&earlier, &keys, probe, resolve) else { panic!() };
        assert_eq!(probe.iter().filter(|c| c[0] == "MULTI").count(), 1);
        assert_eq!(probe.len(), 1 + 2 + 1 + inner + 3 + 1);
        // The EXEC array: save n (2), SET n 1, the dry run (DEL scratch, COPY n scratch,
        // INCRBYFLOAT scratch, DEL scratch), restore n (3).
        assert_eq!(inner, 4, "the dry run block has four commands");
        let exec = b"*10\r\n:0\r\n:1\r\n+OK\r\n:0\r\n:1\r\n$3\r\n2.5\r\n:1\r\n:1\r\n:1\r\n:1\r\n";
        let mut replies: Vec<Bytes> = vec![Bytes::from_static(b"+OK\r\n")];
        replies.extend((0..10).map(|_| Bytes::from_static(b"+QUEUED\r\n")));
        replies.push(Bytes::from_static(exec));
        let Resolved { commands, reply } = resolve(&replies);
        assert_eq!(commands, [args("SET n 2.5 KEEPTTL")]);
        assert_eq!(reply.as_deref(), Some(&b"$3\r\n2.5\r\n"[..]));
    }
}
