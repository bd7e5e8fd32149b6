//! A small hand-made catalog for unit tests (the integration tests use a real Redis's).

use crate::catalog::{BeginSearch, Catalog, Categories, Category, CommandSpec, FindKeys, KeyFlags, KeySpec};

fn categories(names: &[&str]) -> Categories {
    names.iter().map(|n| Category::by_name(n.as_bytes()).unwrap()).fold(Categories::default(), Categories::with)
}

fn one_key(flags: KeyFlags) -> KeySpec {
    KeySpec {
        flags,
        begin_search: BeginSearch::Index(1),
        find_keys: FindKeys::Range { last_key: 0, key_step: 1, limit: 0 },
    }
}

fn command(name: &str, arity: i64, cats: &[&str], key_specs: Vec<KeySpec>) -> CommandSpec {
    CommandSpec {
        name: name.into(),
        arity,
        flags: Vec::new(),
        categories: categories(cats),
        key_specs,
        subcommands: Vec::new(),
    }
}

pub(crate) fn catalog() -> Catalog {
    let mut auth = command("auth", -2, &["fast", "connection"], vec![]);
    auth.flags.push("no_auth".into());
    let mut config = command("config", -2, &["slow"], vec![]);
    config.subcommands = vec![
        command("config|get", -3, &["admin", "slow", "dangerous"], vec![]),
        command("config|set", -4, &["admin", "slow", "dangerous"], vec![]),
    ];
    let mset = KeySpec {
        flags: KeyFlags::OW | KeyFlags::UPDATE,
        begin_search: BeginSearch::Index(1),
        find_keys: FindKeys::Range { last_key: -1, key_step: 2, limit: 0 },
    };
    let sort_by = KeySpec {
        flags: KeyFlags::RO | KeyFlags::ACCESS,
        begin_search: BeginSearch::Unknown,
        find_keys: FindKeys::Unknown,
    };
    let eval = KeySpec {
        flags: KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE,
        begin_search: BeginSearch::Index(2),
        find_keys: FindKeys::KeyNum { key_num_idx: 0, first_key: 1, key_step: 1 },
    };
    Catalog::from_specs(vec![
        command("get", 2, &["read", "string", "fast"], vec![one_key(KeyFlags::RO | KeyFlags::ACCESS)]),
        command(
            "set",
            -3,
            &["write", "string", "slow"],
            vec![one_key(KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE | KeyFlags::VARIABLE_FLAGS)],
        ),
        command("mset", -3, &["write", "string", "slow"], vec![mset]),
        command(
            "sort",
            -2,
            &["write", "list", "slow", "dangerous"],
            vec![one_key(KeyFlags::RO | KeyFlags::ACCESS), sort_by],
        ),
        command("eval", -3, &["slow", "scripting"], vec![eval]),
        command("publish", 3, &["pubsub", "fast"], vec![]),
        command("psubscribe", -2, &["pubsub", "slow"], vec![]),
        command("select", 2, &["fast", "connection"], vec![]),
        auth,
        config,
    ])
    .unwrap()
}
