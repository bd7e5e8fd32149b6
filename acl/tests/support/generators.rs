//! Random ACL rules and random requests for the parity tests: the crate's against stock Redis
//! (`acl/tests/redis_parity.rs`) and the proxy's (`tests/acl_property.rs`), so both draw from
//! the same rules and commands and count their outcomes alike.

use memlog_acl::{Catalog, DryRun, CATEGORY_NAMES};
use proptest::prelude::*;

use super::resp::Value as Resp;

/// What random rules are made of, by kind.
pub struct RulePools {
    grants: Vec<String>,
    revokes: Vec<String>,
    commands: Vec<String>,
    keys: Vec<String>,
    channels: Vec<String>,
    others: Vec<String>,
}

pub fn rule_pools(catalog: &Catalog) -> RulePools {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut grants = strings(&["+@all", "allcommands"]);
    let mut revokes = strings(&["-@all", "nocommands"]);
    for category in CATEGORY_NAMES {
        grants.push(format!("+@{category}"));
        revokes.push(format!("-@{category}"));
    }
    let mut commands = Vec::new();
    for command in catalog.iter() {
        commands.push(format!("+{}", command.name));
        commands.push(format!("-{}", command.name));
        if command.parent.is_none() && command.subcommands.is_empty() && command.arity != 1 {
            commands.push(format!("+{}|k1", command.name));
        }
    }
    RulePools {
        grants,
        revokes,
        commands,
        keys: strings(&[
            "~k*",
            "~k1",
            "%R~r*",
            "%W~w*",
            "%RW~rw*",
            "%R~k*",
            "%W~k*",
            "~[kr]*",
            "%R~*",
            "%W~*",
            "~ch*",
            "resetkeys",
        ]),
        channels: strings(&["&ch*", "&ch1", "&c*", "&k*", "&ch\\*", "resetchannels"]),
        others: strings(&["allkeys", "~*", "allchannels", "&*", "clearselectors", "on", "off", "nopass"]),
    }
}

pub fn rules_strategy(pools: &RulePools) -> impl Strategy<Value = Vec<String>> {
    let select = |pool: &Vec<String>| prop::sample::select(pool.clone());
    let selector_op = prop_oneof![
        4 => select(&pools.grants),
        1 => select(&pools.revokes),
        2 => select(&pools.commands),
        3 => select(&pools.keys),
        2 => select(&pools.channels),
    ];
    let selector = prop::collection::vec(selector_op, 1..5).prop_map(|ops| format!("({})", ops.join(" ")));
    let rule = prop_oneof![
        4 => select(&pools.grants),
        1 => select(&pools.revokes),
        2 => select(&pools.commands),
        3 => select(&pools.keys),
        2 => select(&pools.channels),
        1 => select(&pools.others),
        2 => selector,
    ];
    // Most users start from broad grants, so that allowed requests are not rare.
    let starts = prop::sample::select(vec![vec![], vec!["+@all"], vec!["+@all", "~k*", "~r*", "%R~*", "&ch*"]]);
    (starts, prop::collection::vec(rule, 1..9))
        .prop_map(|(start, rules)| start.into_iter().map(String::from).chain(rules).collect::<Vec<_>>())
}

/// A random request: a command of the catalog (key-bearing ones weighted up), with as many
/// arguments as its arity allows, drawn from keys, channels, numbers and keywords.
pub fn command_strategy(catalog: &Catalog) -> impl Strategy<Value = Vec<String>> {
    let mut commands = Vec::new();
    for command in catalog.iter() {
        let (name, sub) = match command.parent {
            Some(parent) => (catalog.get(parent).name.clone(), command.name.split('|').nth(1).map(String::from)),
            None => (command.name.clone(), None),
        };
        let fixed = 1 + usize::from(sub.is_some());
        let (min, extra) = if command.arity > 0 {
            ((command.arity as usize).saturating_sub(fixed), 0)
        } else {
            (((-command.arity) as usize).saturating_sub(fixed), 4)
        };
        let weight = match command.name.as_str() {
            "publish" | "spublish" | "subscribe" | "ssubscribe" | "psubscribe" => 60,
            _ if command.has_keys() => 4,
            _ => 1,
        };
        for _ in 0..weight {
            commands.push((name.clone(), sub.clone(), min, extra));
        }
    }
    let args = [
        "k1", "k2", "kx", "r1", "rw1", "w1", "other", "ch1", "chx", "ch*", "c*", "k*", "0", "1", "2", "3", "STORE",
        "GET", "BY", "STREAMS", "KEYS", "LIMIT", "COUNT", "SET", "",
    ];
    (prop::sample::select(commands), any::<bool>()).prop_flat_map(move |((name, sub, min, extra), upper)| {
        let name = if upper { name.to_uppercase() } else { name };
        prop::collection::vec(prop::sample::select(args.to_vec()), min..=min + extra).prop_map(move |rest| {
            let mut request = vec![name.clone()];
            request.extend(sub.clone());
            request.extend(rest.into_iter().map(String::from));
            request
        })
    })
}

/// Stock Redis's `ACL DRYRUN` reply as the crate's answer.
pub fn dryrun_reply(reply: Resp) -> DryRun {
    match reply {
        Resp::Simple(ok) if ok == "OK" => DryRun::Allowed,
        Resp::Bulk(Some(text)) => DryRun::Denied(text),
        Resp::Error(text) => DryRun::Error(text.into_bytes()),
        other => panic!("unexpected DRYRUN reply {other:?}"),
    }
}

/// How the random cases turned out.
#[derive(Default, Debug)]
pub struct Outcomes {
    pub allowed: u32,
    pub denied_command: u32,
    pub denied_key: u32,
    pub denied_channel: u32,
    pub command_errors: u32,
    pub rule_errors: u32,
}

impl Outcomes {
    pub fn count(&mut self, dryrun: &DryRun) {
        match dryrun {
            DryRun::Allowed => self.allowed += 1,
            DryRun::Denied(text) if text.starts_with(b"This user has no permissions to run") => {
                self.denied_command += 1
            }
            DryRun::Denied(text) if text.ends_with(b"' key") => self.denied_key += 1,
            DryRun::Denied(_) => self.denied_channel += 1,
            DryRun::Error(_) => self.command_errors += 1,
        }
    }

    /// Both outcomes well represented among `total` cases, every kind of denial among them.
    pub fn assert_balanced(&self, total: u32) {
        let denied = self.denied_command + self.denied_key + self.denied_channel;
        assert!(self.allowed >= total / 5, "too few allowed: {self:?}");
        assert!(denied >= total / 5, "too few denied: {self:?}");
        assert!(self.denied_key >= total / 20, "too few key denials: {self:?}");
        assert!(self.denied_channel >= total / 200, "too few channel denials: {self:?}");
    }
}
