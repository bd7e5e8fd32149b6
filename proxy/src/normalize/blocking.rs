//! Blocking pops journal as their non-blocking pop, as Redis propagates a served blocked
//! client (`serveClientBlockedOnList`, `blockingPopGenericCommand`, `bzpopminmax`). The
//! sequencer hands a blocking pop on only once one of its keys has data; an apply connection
//! must never block. A timeout Redis refuses keeps the command as sent (Redis answers the
//! error at once, without blocking).

use bytes::Bytes;

use super::args::{valid_timeout, word};
use super::replies::{array, array_of, bulk, bulk_of, error_of, status, NIL_ARRAY, WRONGTYPE};
use super::{unresolved, Plan, Resolved};

/// Which end a BLPOP/BRPOP/BZPOPMIN/BZPOPMAX pops from.
#[derive(Clone, Copy)]
pub(super) enum Pop {
    ListLeft,
    ListRight,
    ZsetMin,
    ZsetMax,
}

impl Pop {
    fn type_name(self) -> &'static [u8] {
        match self {
            Pop::ListLeft | Pop::ListRight => b"list",
            Pop::ZsetMin | Pop::ZsetMax => b"zset",
        }
    }

    /// The read that shows what the pop will take.
    fn peek(self, key: &Bytes) -> Vec<Bytes> {
        match self {
            Pop::ListLeft => vec![word("LINDEX"), key.clone(), word("0")],
            Pop::ListRight => vec![word("LINDEX"), key.clone(), word("-1")],
            Pop::ZsetMin => vec![word("ZRANGE"), key.clone(), word("0"), word("0"), word("WITHSCORES")],
            Pop::ZsetMax => vec![word("ZRANGE"), key.clone(), word("-1"), word("-1"), word("WITHSCORES")],
        }
    }

    fn pop(self, key: Bytes) -> Vec<Bytes> {
        let name = match self {
            Pop::ListLeft => "LPOP",
            Pop::ListRight => "RPOP",
            Pop::ZsetMin => "ZPOPMIN",
            Pop::ZsetMax => "ZPOPMAX",
        };
        vec![word(name), key]
    }

    /// The blocking command's reply (`[key, element]`, `[key, member, score]`) from the peek.
    fn reply(self, key: &Bytes, peeked: &Bytes) -> Option<Bytes> {
        let key = bulk_of(key);
        match self {
            Pop::ListLeft | Pop::ListRight => {
                bulk(peeked)?;
                Some(array_of(&[&key, peeked]))
            }
            Pop::ZsetMin | Pop::ZsetMax => match array(peeked)?.as_slice() {
                [member, score] => Some(array_of(&[&key, member, score])),
                _ => None,
            },
        }
    }
}

/// BLPOP/BRPOP/BZPOPMIN/BZPOPMAX k… timeout → LPOP/RPOP/ZPOPMIN/ZPOPMAX of the first key that
/// exists (Redis serves the first non-empty key in argument order, and answers WRONGTYPE if
/// that key has another type). The probe is `TYPE` and a peek per key; the client gets the
/// blocking command's reply shape. If no key has data the client gets the timeout reply (nil
/// array) and nothing is journaled.
pub(super) fn pop(args: &[Bytes], end: Pop) -> Plan {
    let Some((timeout, keys)) = args[1..].split_last() else { return Plan::AsIs };
    if keys.is_empty() || !valid_timeout(timeout) {
        return Plan::AsIs;
    }
    let keys = keys.to_vec();
    let probe = keys.iter().flat_map(|k| [vec![word("TYPE"), k.clone()], end.peek(k)]).collect();
    Plan::probe(probe, move |replies| {
        for (key, pair) in keys.into_iter().zip(replies.chunks(2)) {
            match status(&pair[0]) {
                Some(b"none") => continue,
                Some(t) if t == end.type_name() => {
                    return match end.reply(&key, &pair[1]) {
                        Some(reply) => Resolved { commands: vec![end.pop(key)], reply: Some(reply) },
                        None => unresolved(replies),
                    }
                }
                Some(_) => return Resolved { commands: Vec::new(), reply: Some(error_of(WRONGTYPE)) },
                None => return unresolved(replies),
            }
        }
        Resolved { commands: Vec::new(), reply: Some(Bytes::from_static(NIL_ARRAY)) }
    })
}

/// Blocking commands whose non-blocking twin has the same arguments (less the timeout) and the
/// same reply: BRPOPLPUSH → RPOPLPUSH, BLMOVE → LMOVE (timeout last), BLMPOP → LMPOP,
/// BZMPOP → ZMPOP (timeout first).
pub(super) fn twin(args: &[Bytes], twin_name: &'static str, timeout_first: bool) -> Plan {
    let split = if timeout_first { args[1..].split_first() } else { args[1..].split_last() };
    let Some((timeout, rest)) = split else { return Plan::AsIs };
    if !valid_timeout(timeout) {
        return Plan::AsIs;
    }
    Plan::Rewrite([word(twin_name)].into_iter().chain(rest.iter().cloned()).collect())
}
