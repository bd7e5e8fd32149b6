//! SPOP: Redis picks the members at random, so the sequencer asks Redis which ones first
//! (SRANDMEMBER, at SPOP's place in the shard order) and journals their removal, as Redis
//! propagates SPOP as SREM (`spopCommand`, `spopWithCountCommand`).

use bytes::Bytes;

use super::args::{int, word};
use super::replies::{array, bulk};
use super::{Plan, Resolved};

pub(super) fn spop(args: &[Bytes]) -> Plan {
    let key = args[1].clone();
    match args.len() {
        2 => Plan::probe(vec![vec![word("SRANDMEMBER"), key.clone()]], move |replies| {
            let reply = replies[0].clone();
            let commands = match bulk(&reply) {
                Some(member) => vec![vec![word("SREM"), key, member]],
                None => Vec::new(), // nil (no such key) or an error (wrong type): nothing changes
            };
            Resolved { commands, reply: Some(reply) }
        }),
        // SPOP k 0 changes nothing; a bad count is Redis's error: deterministic as sent.
        3 => match int(&args[2]) {
            Some(count) if count > 0 => {
                Plan::probe(vec![vec![word("SRANDMEMBER"), key.clone(), args[2].clone()]], move |replies| {
                    let reply = replies[0].clone();
                    let members: Vec<Bytes> = array(&reply).unwrap_or_default().iter().filter_map(bulk).collect();
                    let commands = if members.is_empty() {
                        Vec::new()
                    } else {
                        vec![[word("SREM"), key].into_iter().chain(members).collect()]
                    };
                    Resolved { commands, reply: Some(reply) }
                })
            }
            _ => Plan::AsIs,
        },
        _ => Plan::AsIs, // syntax error
    }
}
