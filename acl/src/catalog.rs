//! The command catalog: every command and subcommand of the Redis behind the proxy, with its ACL
//! categories and key specs, built from that Redis's own `COMMAND` reply so categories and keys
//! match its version.
//!
//! Commands are stored in the reply's order, each container followed by its subcommands. Redis
//! describes a user's command rules (`ACL GETUSER`, `ACL LIST`) and lists `ACL CAT <category>` by
//! walking its command table in that same order, so keeping it makes those replies identical.

use std::collections::HashMap;

use crate::keys::{channel_spec_for, fallback_for, ChannelSpec, KeysFallback};
use crate::value::Value;

/// Redis 7.0's ACL categories, in the order Redis lists them (`ACL CAT`) and tries them when it
/// describes a user's commands.
pub const CATEGORY_NAMES: [&str; 21] = [
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// One ACL category: an index into [`CATEGORY_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Category(u8);

impl Category {
    /// The category of that name (case-insensitive, without the `@`), as `+@name` accepts it.
    pub fn by_name(name: &[u8]) -> Option<Category> {
        CATEGORY_NAMES
            .iter()
            .position(|c| c.as_bytes().eq_ignore_ascii_case(name))
            .and_then(|i| u8::try_from(i).ok())
            .map(Category)
    }

    pub fn name(self) -> &'static str {
        CATEGORY_NAMES[self.0 as usize]
    }

    pub fn all() -> impl Iterator<Item = Category> {
        (0..=u8::MAX).take(CATEGORY_NAMES.len()).map(Category)
    }

    fn bit(self) -> u32 {
        1 << self.0
    }
}

/// The categories of one command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Categories(u32);

impl Categories {
    pub fn contains(self, category: Category) -> bool {
        self.0 & category.bit() != 0
    }

    pub fn with(self, category: Category) -> Categories {
        Categories(self.0 | category.bit())
    }
}

/// Key-spec flags, as `COMMAND` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyFlags(u16);

impl KeyFlags {
    pub const RO: KeyFlags = KeyFlags(1 << 0);
    pub const RW: KeyFlags = KeyFlags(1 << 1);
    pub const OW: KeyFlags = KeyFlags(1 << 2);
    pub const RM: KeyFlags = KeyFlags(1 << 3);
    pub const ACCESS: KeyFlags = KeyFlags(1 << 4);
    pub const UPDATE: KeyFlags = KeyFlags(1 << 5);
    pub const INSERT: KeyFlags = KeyFlags(1 << 6);
    pub const DELETE: KeyFlags = KeyFlags(1 << 7);
    pub const NOT_KEY: KeyFlags = KeyFlags(1 << 8);
    pub const INCOMPLETE: KeyFlags = KeyFlags(1 << 9);
    pub const VARIABLE_FLAGS: KeyFlags = KeyFlags(1 << 10);
    pub const NONE: KeyFlags = KeyFlags(0);

    const NAMES: [(&'static str, KeyFlags); 11] = [
        ("RO", KeyFlags::RO),
        ("RW", KeyFlags::RW),
        ("OW", KeyFlags::OW),
        ("RM", KeyFlags::RM),
        ("access", KeyFlags::ACCESS),
        ("update", KeyFlags::UPDATE),
        ("insert", KeyFlags::INSERT),
        ("delete", KeyFlags::DELETE),
        ("not_key", KeyFlags::NOT_KEY),
        ("incomplete", KeyFlags::INCOMPLETE),
        ("variable_flags", KeyFlags::VARIABLE_FLAGS),
    ];

    pub fn by_name(name: &[u8]) -> Option<KeyFlags> {
        KeyFlags::NAMES.iter().find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name)).map(|(_, f)| *f)
    }

    pub fn contains(self, other: KeyFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: KeyFlags) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for KeyFlags {
    type Output = KeyFlags;
    fn bitor(self, other: KeyFlags) -> KeyFlags {
        KeyFlags(self.0 | other.0)
    }
}

/// Where a key spec's search begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginSearch {
    Index(i64),
    Keyword { keyword: Vec<u8>, start_from: i64 },
    Unknown,
}

/// How a key spec finds its keys from where the search began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindKeys {
    Range { last_key: i64, key_step: i64, limit: i64 },
    KeyNum { key_num_idx: i64, first_key: i64, key_step: i64 },
    Unknown,
}

/// One key spec of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub flags: KeyFlags,
    pub begin_search: BeginSearch,
    pub find_keys: FindKeys,
}

/// A command as the catalog receives it: one entry of a `COMMAND` reply, or one of memlog's own.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    /// Lower-case full name: `get`, or `config|get` for a subcommand.
    pub name: String,
    pub arity: i64,
    /// Command flags as `COMMAND` shows them (`write`, `no_auth`, `module`, ...).
    pub flags: Vec<String>,
    pub categories: Categories,
    pub key_specs: Vec<KeySpec>,
    pub subcommands: Vec<CommandSpec>,
}

/// Index of a command in its catalog (and of its bit in a compiled user's command bitmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub(crate) u32);

impl CommandId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A command of the catalog.
#[derive(Debug, Clone)]
pub struct Command {
    pub id: CommandId,
    /// Lower-case full name (`config|get`), as Redis shows it in errors and rules.
    pub name: String,
    pub arity: i64,
    pub categories: Categories,
    pub key_specs: Vec<KeySpec>,
    pub parent: Option<CommandId>,
    pub subcommands: Vec<CommandId>,
    /// Always allowed, whatever the user's rules (`AUTH`, `HELLO`).
    pub no_auth: bool,
    /// Module commands are left out of `+@category` rules, as in Redis.
    pub module: bool,
    pub(crate) keys_fallback: Option<KeysFallback>,
    pub(crate) channels: Option<ChannelSpec>,
}

impl Command {
    /// Whether the command may name keys (Redis's `doesCommandHaveKeys`).
    pub fn has_keys(&self) -> bool {
        self.keys_fallback.is_some() || self.key_specs.iter().any(|s| !s.flags.contains(KeyFlags::NOT_KEY))
    }

    /// Whether an argument count passes the command's arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity > 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }
}

/// Why `COMMAND` could not be read into a catalog.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogError {
    #[error("COMMAND reply: {0}")]
    Malformed(String),
    #[error("command {0} is defined twice")]
    Duplicate(String),
    #[error("COMMAND reply: more commands than a u32 numbers")]
    TooMany,
}

/// Why a request names no command (the errors of Redis's `lookupCommand` callers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// No such command, or a container without a known subcommand.
    Unknown,
}

/// Every command and subcommand, in `COMMAND` order.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    commands: Vec<Command>,
    by_name: HashMap<Vec<u8>, CommandId>,
}

impl Catalog {
    /// The catalog of these commands (subcommands nested), in this order.
    pub fn from_specs(specs: Vec<CommandSpec>) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::default();
        for spec in specs {
            catalog.add(spec)?;
        }
        Ok(catalog)
    }

    /// The catalog of a `COMMAND` (or `COMMAND INFO`) reply, RESP2 or RESP3.
    pub fn from_command_reply(reply: &Value) -> Result<Catalog, CatalogError> {
        let entries = reply.as_list().ok_or_else(|| malformed("not an array"))?;
        let specs = entries.iter().filter(|e| **e != Value::Null).map(parse_command).collect::<Result<_, _>>()?;
        Catalog::from_specs(specs)
    }

    /// Adds a command (and its subcommands) after the others, e.g. memlog's own.
    pub fn add(&mut self, spec: CommandSpec) -> Result<CommandId, CatalogError> {
        self.insert(spec, None)
    }

    fn insert(&mut self, spec: CommandSpec, parent: Option<CommandId>) -> Result<CommandId, CatalogError> {
        let name = spec.name.to_ascii_lowercase();
        if self.by_name.contains_key(name.as_bytes()) {
            return Err(CatalogError::Duplicate(name));
        }
        let id = CommandId(u32::try_from(self.commands.len()).map_err(|_| CatalogError::TooMany)?);
        let has = |flag: &str| spec.flags.iter().any(|f| f.eq_ignore_ascii_case(flag));
        self.commands.push(Command {
            id,
            keys_fallback: fallback_for(&name),
            channels: channel_spec_for(&name),
            name: name.clone(),
            arity: spec.arity,
            categories: spec.categories,
            key_specs: spec.key_specs,
            parent,
            subcommands: Vec::new(),
            no_auth: has("no_auth"),
            module: has("module"),
        });
        self.by_name.insert(name.into_bytes(), id);
        for sub in spec.subcommands {
            let sub_id = self.insert(sub, Some(id))?;
            self.commands[id.index()].subcommands.push(sub_id);
        }
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn get(&self, id: CommandId) -> &Command {
        &self.commands[id.index()]
    }

    /// Every command and subcommand, containers before their subcommands.
    pub fn iter(&self) -> impl Iterator<Item = &Command> {
        self.commands.iter()
    }

    /// The command of a full name (`get`, `config|get`), case-insensitive.
    pub fn by_full_name(&self, name: &[u8]) -> Option<&Command> {
        self.by_name.get(&name.to_ascii_lowercase()).map(|id| self.get(*id))
    }

    /// The command a request runs, as Redis's `lookupCommand`: a container with arguments
    /// names its subcommand, a container alone names itself (and then fails its arity).
    pub fn lookup<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<&Command, LookupError> {
        let base = args.first().and_then(|name| self.by_full_name(name.as_ref())).ok_or(LookupError::Unknown)?;
        if args.len() == 1 || base.subcommands.is_empty() {
            return Ok(base);
        }
        self.subcommand(base, args[1].as_ref()).ok_or(LookupError::Unknown)
    }

    fn subcommand(&self, base: &Command, sub: &[u8]) -> Option<&Command> {
        if sub.contains(&b'|') {
            return None;
        }
        let mut full = base.name.as_bytes().to_vec();
        full.push(b'|');
        full.extend_from_slice(sub);
        self.by_full_name(&full)
    }

    /// The command an ACL rule names (`get`, `config|get`), as Redis's `ACLLookupCommand`:
    /// `a|b` only for a container's subcommand, one level deep.
    pub fn lookup_rule_name(&self, name: &[u8]) -> Option<&Command> {
        let mut parts = name.split(|b| *b == b'|');
        let base = self.by_full_name(parts.next()?)?;
        match (parts.next(), parts.next()) {
            (None, _) => Some(base),
            (Some(sub), None) if !base.subcommands.is_empty() => self.subcommand(base, sub),
            _ => None,
        }
    }

    /// `ACL CAT <category>`: the full names of its commands, in catalog order.
    pub fn commands_in(&self, category: Category) -> Vec<&str> {
        self.commands.iter().filter(|c| !c.module && c.categories.contains(category)).map(|c| c.name.as_str()).collect()
    }
}

/// memlog's own `MEMLOG` command and subcommands, in `@admin @slow @dangerous` like Redis's
/// administrative commands (Redis adds `@slow` to every command not flagged fast).
pub fn memlog_command() -> CommandSpec {
    let categories = ["admin", "slow", "dangerous"]
        .iter()
        .filter_map(|c| Category::by_name(c.as_bytes()))
        .fold(Categories::default(), Categories::with);
    let command = |name: &str, arity: i64, subcommands| CommandSpec {
        name: name.to_string(),
        arity,
        flags: vec!["admin".into(), "noscript".into()],
        categories,
        key_specs: Vec::new(),
        subcommands,
    };
    command(
        "memlog",
        -2,
        vec![
            command("memlog|topology", 2, vec![]),
            command("memlog|failover", -3, vec![]),
            command("memlog|snapshot", 3, vec![]),
            command("memlog|abort", 4, vec![]),
        ],
    )
}

fn malformed(what: impl Into<String>) -> CatalogError {
    CatalogError::Malformed(what.into())
}

fn text(value: &Value, what: &str) -> Result<String, CatalogError> {
    value
        .as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .ok_or_else(|| malformed(format!("{what} is not a string")))
}

fn integer(value: Option<&Value>, what: &str) -> Result<i64, CatalogError> {
    value.and_then(Value::as_integer).ok_or_else(|| malformed(format!("{what} is not an integer")))
}

fn list<'a>(value: Option<&'a Value>, what: &str) -> Result<&'a [Value], CatalogError> {
    value.and_then(Value::as_list).ok_or_else(|| malformed(format!("{what} is not an array")))
}

/// One `COMMAND` entry: name, arity, flags, first, last, step, categories, tips, key specs,
/// subcommands.
fn parse_command(entry: &Value) -> Result<CommandSpec, CatalogError> {
    let fields = entry.as_list().ok_or_else(|| malformed("command entry is not an array"))?;
    let name = text(fields.first().ok_or_else(|| malformed("empty command entry"))?, "command name")?;
    let arity = integer(fields.get(1), "arity")?;
    let flags = list(fields.get(2), "flags")?.iter().map(|f| text(f, "flag")).collect::<Result<_, _>>()?;
    let mut categories = Categories::default();
    for category in list(fields.get(6), "categories")? {
        let category = text(category, "category")?;
        // A category this Redis has and 7.0 does not cannot be named in a 7.0 rule: skip it.
        if let Some(c) = Category::by_name(category.trim_start_matches('@').as_bytes()) {
            categories = categories.with(c);
        }
    }
    let key_specs = match fields.get(8) {
        Some(specs) => list(Some(specs), "key specs")?.iter().map(parse_key_spec).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let subcommands = match fields.get(9) {
        Some(subs) => list(Some(subs), "subcommands")?.iter().map(parse_command).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(CommandSpec { name: name.to_ascii_lowercase(), arity, flags, categories, key_specs, subcommands })
}

fn parse_key_spec(spec: &Value) -> Result<KeySpec, CatalogError> {
    let mut flags = KeyFlags::NONE;
    for flag in list(spec.field("flags"), "key spec flags")? {
        let flag = flag.as_bytes().ok_or_else(|| malformed("key spec flag is not a string"))?;
        flags = flags | KeyFlags::by_name(flag).ok_or_else(|| malformed("unknown key spec flag"))?;
    }
    let begin = spec.field("begin_search").ok_or_else(|| malformed("key spec without begin_search"))?;
    let begin_spec = begin.field("spec");
    let begin_search = match begin.field("type").and_then(Value::as_bytes) {
        Some(b"index") => BeginSearch::Index(integer(begin_spec.and_then(|s| s.field("index")), "index")?),
        Some(b"keyword") => BeginSearch::Keyword {
            keyword: begin_spec
                .and_then(|s| s.field("keyword"))
                .and_then(Value::as_bytes)
                .ok_or_else(|| malformed("keyword"))?
                .to_vec(),
            start_from: integer(begin_spec.and_then(|s| s.field("startfrom")), "startfrom")?,
        },
        _ => BeginSearch::Unknown,
    };
    let find = spec.field("find_keys").ok_or_else(|| malformed("key spec without find_keys"))?;
    let find_spec = find.field("spec");
    let field = |name: &str| integer(find_spec.and_then(|s| s.field(name)), name);
    let find_keys = match find.field("type").and_then(Value::as_bytes) {
        Some(b"range") => {
            FindKeys::Range { last_key: field("lastkey")?, key_step: field("keystep")?, limit: field("limit")? }
        }
        Some(b"keynum") => FindKeys::KeyNum {
            key_num_idx: field("keynumidx")?,
            first_key: field("firstkey")?,
            key_step: field("keystep")?,
        },
        _ => FindKeys::Unknown,
    };
    Ok(KeySpec { flags, begin_search, find_keys })
}
