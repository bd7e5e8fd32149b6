//! Users described as Redis 7.0 describes them: the `ACL LIST` line and the `ACL GETUSER` reply.
//!
//! Redis keeps no rule text: it rebuilds the command rules from the bitmap, starting from
//! `+@all` or `-@all`, then greedily the category that fits best, then single commands in
//! command-table order (`ACLDescribeSelectorCommandRules`). The same steps over the catalog's
//! order give the same text. Key and channel patterns keep the order they were added in.

use crate::catalog::{Catalog, Category, CATEGORY_NAMES};
use crate::user::{Selector, User, FLAG_NAMES};
use crate::value::Value;

/// The command rules of a selector (`+@all -@dangerous +config|get`, ...).
pub fn command_rules(catalog: &Catalog, selector: &Selector) -> String {
    let additive = !selector.future_commands;
    let mut rules = String::from(if additive { "-@all " } else { "+@all " });
    let mut fake = Selector::new(catalog);
    fake.set_all(!additive);
    let mut temp = Selector::new(catalog);
    temp.allowed.clone_from(&selector.allowed);

    let mut applied = [false; CATEGORY_NAMES.len()];
    loop {
        let mut best = None;
        let (mut min_diff, mut max_same) = (usize::MAX, 0);
        for (j, category) in Category::all().enumerate() {
            if applied[j] {
                continue;
            }
            let (on, off) = count_category(catalog, &temp, category);
            let (diff, same) = if additive { (off, on) } else { (on, off) };
            if same > diff && (diff < min_diff || (diff == min_diff && same > max_same)) {
                best = Some((j, category));
                min_diff = diff;
                max_same = same;
            }
        }
        let Some((j, category)) = best else { break };
        fake.set_category(catalog, category, additive);
        temp.set_category(catalog, category, !additive);
        rules.push_str(if additive { "+@" } else { "-@" });
        rules.push_str(category.name());
        rules.push(' ');
        applied[j] = true;
    }

    for command in catalog.iter() {
        let user_bit = selector.bit(command.id);
        if user_bit != fake.bit(command.id) {
            rules.push(if user_bit { '+' } else { '-' });
            rules.push_str(&command.name);
            rules.push(' ');
            fake.change_perm(command, user_bit);
        }
        if !user_bit {
            for arg in selector.first_args.get(&command.id).into_iter().flatten() {
                rules.push('+');
                rules.push_str(&command.name);
                rules.push('|');
                rules.push_str(&String::from_utf8_lossy(arg));
                rules.push(' ');
            }
        }
    }
    rules.pop();
    rules
}

fn count_category(catalog: &Catalog, selector: &Selector, category: Category) -> (usize, usize) {
    catalog.iter().filter(|c| c.categories.contains(category)).fold((0, 0), |(on, off), c| {
        if selector.bit(c.id) {
            (on + 1, off)
        } else {
            (on, off + 1)
        }
    })
}

/// A selector as `ACL LIST` shows it: keys, channels, then command rules.
fn describe_selector(catalog: &Catalog, selector: &Selector) -> Vec<u8> {
    let mut out = Vec::new();
    if selector.all_keys {
        out.extend_from_slice(b"~* ");
    } else {
        for key in &selector.keys {
            out.extend(key.rule());
            out.push(b' ');
        }
    }
    if selector.all_channels {
        out.extend_from_slice(b"&* ");
    } else {
        out.extend_from_slice(b"resetchannels ");
        for channel in &selector.channels {
            out.push(b'&');
            out.extend_from_slice(channel);
            out.push(b' ');
        }
    }
    out.extend(command_rules(catalog, selector).into_bytes());
    out
}

/// A selector's rules as separate `ACL SETUSER` arguments, without the command rules `keep`
/// refuses.
fn selector_rules(catalog: &Catalog, selector: &Selector, keep: &impl Fn(&str) -> bool) -> Vec<Vec<u8>> {
    let mut rules = Vec::new();
    if selector.all_keys {
        rules.push(b"~*".to_vec());
    } else {
        rules.extend(selector.keys.iter().map(|key| key.rule()));
    }
    rules.push(b"resetchannels".to_vec());
    if selector.all_channels {
        rules.push(b"&*".to_vec());
    } else {
        rules.extend(selector.channels.iter().map(|channel| [b"&", channel.as_slice()].concat()));
    }
    let commands = command_rules(catalog, selector);
    for rule in commands.split(' ') {
        let named = rule.get(1..).filter(|_| !rule[1..].starts_with('@'));
        if named.is_none_or(|name| keep(name.split('|').next().unwrap_or_default())) {
            rules.push(rule.as_bytes().to_vec());
        }
    }
    rules
}

impl User {
    /// Rules that give another user this user's permissions, for running a script as its caller
    /// on a Redis node: the payload-sanitizing flags, the root selector's rules one argument each
    /// and every other selector as one `(...)` argument — no `on`/`off`, `nopass` or passwords.
    /// Command rules naming a command `keep` refuses (memlog's own, which nodes do not have) are
    /// left out. `None` when the user may run every command on every key and channel: its
    /// scripts need no restriction.
    pub fn node_rules(&self, catalog: &Catalog, keep: impl Fn(&str) -> bool) -> Option<Vec<Vec<u8>>> {
        let root = self.selectors.first()?;
        if root.all_commands && root.all_keys && root.all_channels {
            return None;
        }
        let mut rules: Vec<Vec<u8>> = FLAG_NAMES
            .iter()
            .filter(|(name, flag)| name.ends_with("sanitize-payload") && self.flags & flag != 0)
            .map(|(name, _)| name.as_bytes().to_vec())
            .collect();
        rules.extend(selector_rules(catalog, root, &keep));
        for selector in &self.selectors[1..] {
            let inner = selector_rules(catalog, selector, &keep).join(&b' ');
            rules.push([b"(", inner.as_slice(), b")"].concat());
        }
        Some(rules)
    }

    /// The user's rules as `ACL LIST` shows them after `user <name> `.
    pub fn describe(&self, catalog: &Catalog) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, flag) in FLAG_NAMES {
            if self.flags & flag != 0 {
                out.extend_from_slice(name.as_bytes());
                out.push(b' ');
            }
        }
        for hash in self.password_hashes() {
            out.push(b'#');
            out.extend_from_slice(hash.as_bytes());
            out.push(b' ');
        }
        for (i, selector) in self.selectors.iter().enumerate() {
            if i == 0 {
                out.extend(describe_selector(catalog, selector));
            } else {
                out.extend_from_slice(b" (");
                out.extend(describe_selector(catalog, selector));
                out.push(b')');
            }
        }
        out
    }

    /// The user's `ACL LIST` line.
    pub fn acl_list_line(&self, catalog: &Catalog) -> Vec<u8> {
        [b"user ", self.name.as_slice(), b" ", &self.describe(catalog)].concat()
    }

    /// The `ACL GETUSER` reply (a map; RESP2 clients get it as a flat array, and the flags as
    /// an array).
    pub fn getuser_reply(&self, catalog: &Catalog) -> Value {
        let field = |name: &str| Value::bulk(name);
        let flags =
            FLAG_NAMES.iter().filter(|(_, flag)| self.flags & flag != 0).map(|(name, _)| Value::bulk(*name)).collect();
        let mut fields = vec![
            (field("flags"), Value::Set(flags)),
            (field("passwords"), Value::Array(self.password_hashes().map(Value::bulk).collect())),
        ];
        fields.extend(selector_fields(catalog, &self.selectors[0]));
        let selectors = self.selectors[1..].iter().map(|s| Value::Map(selector_fields(catalog, s))).collect();
        fields.push((field("selectors"), Value::Array(selectors)));
        Value::Map(fields)
    }
}

fn selector_fields(catalog: &Catalog, selector: &Selector) -> Vec<(Value, Value)> {
    let keys = if selector.all_keys {
        b"~*".to_vec()
    } else {
        selector.keys.iter().map(|k| k.rule()).collect::<Vec<_>>().join(&b' ')
    };
    let channels = if selector.all_channels {
        b"&*".to_vec()
    } else {
        selector.channels.iter().map(|c| [b"&", c.as_slice()].concat()).collect::<Vec<_>>().join(&b' ')
    };
    vec![
        (Value::bulk("commands"), Value::bulk(command_rules(catalog, selector))),
        (Value::bulk("keys"), Value::Bulk(keys)),
        (Value::bulk("channels"), Value::Bulk(channels)),
    ]
}

#[cfg(test)]
mod tests {
    use crate::test_catalog::catalog;
    use crate::user::User;

    fn user(rules: &[&str]) -> User {
        let mut user = User::new(&catalog(), b"u");
        user.apply_rules(&catalog(), rules).unwrap();
        user
    }

    #[test]
    fn node_rules_give_another_user_the_same_permissions() {
        for rules in [
            &["on", ">p", "~app:*", "&news", "+@all", "-@dangerous"][..],
            &["on", "%R~r:*", "%W~w:*", "resetchannels", "+@read", "+set"],
            &["allkeys", "allchannels", "-@all", "+get", "(~x:* +set)", "(%R~y:* +@read -get)"],
            &["on", "nopass", "skip-sanitize-payload", "~*", "&*", "+@all", "-get"],
            &["reset"],
        ] {
            let original = user(rules);
            let node_rules = original.node_rules(&catalog(), |_| true).unwrap();
            let mut copy = User::new(&catalog(), b"copy");
            copy.apply_rules(&catalog(), &[&b"reset"[..]]).unwrap();
            copy.apply_rules(&catalog(), &node_rules).unwrap();
            assert_eq!(copy.selectors, original.selectors, "{rules:?} -> {node_rules:?}");
            assert!(!node_rules
                .iter()
                .any(|r| r.starts_with(b">") || r.starts_with(b"#") || r == b"on" || r == b"nopass"));
        }
        // A user who may do everything needs no restriction; one without a command is restricted.
        assert_eq!(user(&["on", "nopass", "~*", "&*", "+@all"]).node_rules(&catalog(), |_| true), None);
        let without_get = user(&["~*", "&*", "+@all", "-get"]).node_rules(&catalog(), |name| name != "get").unwrap();
        assert!(!without_get.iter().any(|r| r.ends_with(b"get")), "{without_get:?}");
    }
}
