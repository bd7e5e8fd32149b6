//! The command table, loaded from the backend's own `COMMAND` reply at start, so every command
//! of the Redis version in use is known with its arity, flags and key specs. Keys are found
//! with Redis 7's key-spec rules (`getKeysUsingKeySpecs`); commands whose specs are incomplete
//! ask a backend (`COMMAND GETKEYS`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use crate::stats::{CommandKind, CommandStats};

/// Per-command metric handles, made once so the hot path does no label lookups.
#[derive(Clone)]
pub(crate) struct CommandMetrics {
    pub ok: metrics::Counter,
    pub err: metrics::Counter,
    pub latency: metrics::Histogram,
}

impl CommandMetrics {
    pub(crate) fn new(name: &str) -> CommandMetrics {
        let name = name.to_string();
        CommandMetrics {
            ok: metrics::counter!("memlog_commands_total", "command" => name.clone(), "result" => "ok"),
            err: metrics::counter!("memlog_commands_total", "command" => name.clone(), "result" => "err"),
            latency: metrics::histogram!("memlog_command_duration_seconds", "command" => name),
        }
    }
}

/// Where a spec's key search begins.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BeginSearch {
    Index(i64),
    Keyword { keyword: Vec<u8>, start_from: i64 },
    Unknown,
}

/// How a spec's keys are found from where the search began.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FindKeys {
    Range { last_key: i64, key_step: i64, limit: i64 },
    KeyNum { key_num_index: i64, first_key: i64, key_step: i64 },
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeySpec {
    pub begin: BeginSearch,
    pub find: FindKeys,
    pub incomplete: bool,
}

/// A command's flags that change what the proxy does with it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Flags {
    pub write: bool,
    /// Reads keys without changing them: a tracking client's keys are remembered (`tracking`).
    pub readonly: bool,
    /// May add data: refused with `-OOM` over `maxmemory`.
    pub denyoom: bool,
    pub admin: bool,
    pub pubsub: bool,
    pub blocking: bool,
    pub movable_keys: bool,
    pub fast: bool,
    pub skip_slowlog: bool,
}

pub(crate) struct CommandInfo {
    /// Lower-case full name: `get`, `client|kill`.
    pub name: String,
    pub arity: i64,
    pub flags: Flags,
    pub key_specs: Vec<KeySpec>,
    /// Specs cannot name every key: ask the backend with `COMMAND GETKEYS`.
    pub needs_getkeys: bool,
    pub subcommands: HashMap<String, Arc<CommandInfo>>,
    pub metrics: CommandMetrics,
    /// What INFO commandstats/latencystats report, counted at the proxy.
    pub stats: CommandStats,
}

impl CommandInfo {
    /// A command the proxy serves itself that the backend's table lacks (e.g. `client|setinfo`
    /// on Redis 7.0).
    pub(crate) fn local(name: &str, arity: i64) -> CommandInfo {
        CommandInfo {
            name: name.into(),
            arity,
            flags: Flags::default(),
            key_specs: Vec::new(),
            needs_getkeys: false,
            subcommands: HashMap::new(),
            metrics: CommandMetrics::new(name),
            stats: CommandStats::default(),
        }
    }

    /// The flags that decide where the command's time is recorded.
    pub(crate) fn kind(&self) -> CommandKind {
        CommandKind { fast: self.flags.fast, blocking: self.flags.blocking, skip_slowlog: self.flags.skip_slowlog }
    }

    /// Whether Redis refuses the command at its memory limit: its `denyoom` flag, or a script
    /// or function call (those that reach the journal are the ones that may write). Redis refuses
    /// a script without a shebang only at its first write (`-OOM … script: …`); memlog cannot
    /// know in advance whether it writes and treats it as one that does.
    pub(crate) fn may_add_data(&self) -> bool {
        self.flags.denyoom || matches!(self.name.as_str(), "eval" | "evalsha" | "fcall")
    }

    pub(crate) fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Positions of the keys in `args`, by the command's key specs. `None` when an argument the
    /// specs rely on is malformed (e.g. a non-numeric `numkeys`): Redis then answers the error.
    pub(crate) fn key_positions(&self, args: &[Bytes]) -> Option<Vec<usize>> {
        let argc = args.len() as i64;
        let mut keys = Vec::new();
        for spec in &self.key_specs {
            let first = match &spec.begin {
                BeginSearch::Index(pos) => *pos,
                BeginSearch::Keyword { keyword, start_from } => {
                    let (start, end, step) =
                        if *start_from > 0 { (*start_from, argc - 1, 1) } else { (argc + start_from, 0, -1) };
                    let mut found = None;
                    let mut i = start;
                    while (step > 0 && i <= end) || (step < 0 && i >= end) {
                        let arg = usize::try_from(i).ok().and_then(|i| args.get(i));
                        if arg.is_some_and(|arg| arg.eq_ignore_ascii_case(keyword)) {
                            found = Some(i + 1);
                            break;
                        }
                        i += step;
                    }
                    match found {
                        Some(first) => first,
                        None => continue,
                    }
                }
                BeginSearch::Unknown => continue,
            };
            if first >= argc {
                continue;
            }
            let (first, last, step) = match &spec.find {
                FindKeys::Range { last_key, key_step, limit } => {
                    let last = if *last_key >= 0 {
                        first + last_key
                    } else if *limit == 0 {
                        argc + last_key
                    } else {
                        first + ((argc - first) / limit + last_key)
                    };
                    (first, last, *key_step)
                }
                FindKeys::KeyNum { key_num_index, first_key, key_step } => {
                    let idx = first + key_num_index;
                    if idx >= argc {
                        return None;
                    }
                    let num = crate::resp::parse_int(args.get(usize::try_from(idx).ok()?)?).filter(|n| *n >= 0)?;
                    let first = first + first_key;
                    (first, first + num - 1, *key_step)
                }
                FindKeys::Unknown => continue,
            };
            let step = step.max(1);
            let mut i = first;
            while i <= last {
                if let Some(key) = usize::try_from(i).ok().filter(|key| *key < args.len()) {
                    keys.push(key);
                }
                i += step;
            }
        }
        Some(keys)
    }
}

/// Every command of the backend's Redis, by lower-case name.
pub(crate) struct CommandTable {
    commands: HashMap<String, Arc<CommandInfo>>,
}

impl CommandTable {
    /// Builds the table from the RESP2 reply of `COMMAND`.
    pub(crate) fn from_command_reply(reply: &BytesFrame) -> anyhow::Result<CommandTable> {
        let BytesFrame::Array(entries) = reply else {
            anyhow::bail!("COMMAND did not return an array");
        };
        let mut commands = HashMap::new();
        for entry in entries {
            let info = parse_entry(entry)?;
            commands.insert(info.name.clone(), Arc::new(info));
        }
        anyhow::ensure!(commands.contains_key("get"), "COMMAND reply has no GET: not a Redis server?");
        Ok(CommandTable { commands })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<CommandInfo>> {
        self.commands.get(name)
    }

    pub(crate) fn insert_local(&mut self, info: CommandInfo) {
        match info.name.split_once('|') {
            Some((container, sub)) => {
                if let Some(parent) = self.commands.get_mut(container) {
                    if let Some(parent) = Arc::get_mut(parent) {
                        parent.subcommands.entry(sub.to_string()).or_insert_with(|| Arc::new(info));
                    }
                }
            }
            None => {
                self.commands.entry(info.name.clone()).or_insert_with(|| Arc::new(info));
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.commands.len()
    }

    /// Every command and subcommand, by name (`client|list` after `client`).
    pub(crate) fn all(&self) -> Vec<Arc<CommandInfo>> {
        let mut all = Vec::new();
        for command in self.commands.values() {
            all.push(command.clone());
            all.extend(command.subcommands.values().cloned());
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

fn text(frame: &BytesFrame) -> Option<String> {
    match frame {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

fn int(frame: &BytesFrame) -> Option<i64> {
    match frame {
        BytesFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

fn array(frame: &BytesFrame) -> &[BytesFrame] {
    match frame {
        BytesFrame::Array(items) => items,
        _ => &[],
    }
}

/// Looks `key` up in a flat `[key, value, key, value…]` array, as key specs are encoded in RESP2.
fn field<'a>(items: &'a [BytesFrame], key: &str) -> Option<&'a BytesFrame> {
    items.chunks(2).find(|pair| text(&pair[0]).as_deref() == Some(key)).and_then(|pair| pair.get(1))
}

fn parse_entry(entry: &BytesFrame) -> anyhow::Result<CommandInfo> {
    let items = array(entry);
    anyhow::ensure!(items.len() >= 6, "short COMMAND entry");
    let name = text(&items[0]).ok_or_else(|| anyhow::anyhow!("COMMAND entry without a name"))?.to_ascii_lowercase();
    let arity = int(&items[1]).unwrap_or(-1);
    let mut flags = Flags::default();
    for flag in array(&items[2]).iter().filter_map(text) {
        match flag.as_str() {
            "write" => flags.write = true,
            "denyoom" => flags.denyoom = true,
            "readonly" => flags.readonly = true,
            "admin" => flags.admin = true,
            "pubsub" => flags.pubsub = true,
            "blocking" => flags.blocking = true,
            "movablekeys" => flags.movable_keys = true,
            "fast" => flags.fast = true,
            "skip_slowlog" => flags.skip_slowlog = true,
            _ => {}
        }
    }
    let mut key_specs = Vec::new();
    if let Some(specs) = items.get(8) {
        for spec in array(specs) {
            key_specs.push(parse_key_spec(array(spec)));
        }
    } else {
        // Before Redis 7: first key, last key, step.
        let (first, last, step) =
            (int(&items[3]).unwrap_or(0), int(&items[4]).unwrap_or(0), int(&items[5]).unwrap_or(0));
        if first > 0 {
            key_specs.push(KeySpec {
                begin: BeginSearch::Index(first),
                find: FindKeys::Range {
                    last_key: if last < 0 { last } else { last - first },
                    key_step: step,
                    limit: 0,
                },
                incomplete: flags.movable_keys,
            });
        }
    }
    let needs_getkeys =
        key_specs.iter().any(|s| s.incomplete || s.begin == BeginSearch::Unknown || s.find == FindKeys::Unknown);
    let mut subcommands = HashMap::new();
    if let Some(subs) = items.get(9) {
        for sub in array(subs) {
            let info = parse_entry(sub)?;
            let short = info.name.split_once('|').map(|(_, s)| s.to_string()).unwrap_or_else(|| info.name.clone());
            subcommands.insert(short, Arc::new(info));
        }
    }
    let metrics = CommandMetrics::new(&name);
    Ok(CommandInfo {
        name,
        arity,
        flags,
        key_specs,
        needs_getkeys,
        subcommands,
        metrics,
        stats: CommandStats::default(),
    })
}

fn parse_key_spec(spec: &[BytesFrame]) -> KeySpec {
    let incomplete =
        field(spec, "flags").map(|f| array(f).iter().filter_map(text).any(|f| f == "incomplete")).unwrap_or(false);
    let begin = field(spec, "begin_search").map(array).unwrap_or(&[]);
    let begin = match (field(begin, "type").and_then(text).as_deref(), field(begin, "spec").map(array)) {
        (Some("index"), Some(s)) => BeginSearch::Index(field(s, "index").and_then(int).unwrap_or(0)),
        (Some("keyword"), Some(s)) => BeginSearch::Keyword {
            keyword: field(s, "keyword").and_then(text).unwrap_or_default().into_bytes(),
            start_from: field(s, "startfrom").and_then(int).unwrap_or(1),
        },
        _ => BeginSearch::Unknown,
    };
    let find = field(spec, "find_keys").map(array).unwrap_or(&[]);
    let find = match (field(find, "type").and_then(text).as_deref(), field(find, "spec").map(array)) {
        (Some("range"), Some(s)) => FindKeys::Range {
            last_key: field(s, "lastkey").and_then(int).unwrap_or(0),
            key_step: field(s, "keystep").and_then(int).unwrap_or(1),
            limit: field(s, "limit").and_then(int).unwrap_or(0),
        },
        (Some("keynum"), Some(s)) => FindKeys::KeyNum {
            key_num_index: field(s, "keynumidx").and_then(int).unwrap_or(0),
            first_key: field(s, "firstkey").and_then(int).unwrap_or(1),
            key_step: field(s, "keystep").and_then(int).unwrap_or(1),
        },
        _ => FindKeys::Unknown,
    };
    KeySpec { begin, find, incomplete }
}

/// Commands the proxy serves that the backend's table may lack (newer than its Redis).
pub(crate) fn add_local_commands(table: &mut CommandTable) {
    table.insert_local(CommandInfo::local("client|setinfo", 4));
    table.insert_local(CommandInfo::local("memlog", -2));
}

/// A script or function call (by the table's name): it may touch keys it does not declare.
pub(crate) fn is_script_call(name: &str) -> bool {
    matches!(name, "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro")
}

/// `client|kill` → `CLIENT KILL`, as users type it.
pub(crate) fn display_name(name: &str) -> String {
    name.replace('|', " ").to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(specs: Vec<KeySpec>) -> CommandInfo {
        let mut info = CommandInfo::local("t", -1);
        info.key_specs = specs;
        info
    }

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    #[test]
    fn range_keynum_and_keyword_specs() {
        let mset = info(vec![KeySpec {
            begin: BeginSearch::Index(1),
            find: FindKeys::Range { last_key: -1, key_step: 2, limit: 0 },
            incomplete: false,
        }]);
        assert_eq!(mset.key_positions(&args("MSET a 1 b 2")).unwrap(), vec![1, 3]);
        let zunion = info(vec![KeySpec {
            begin: BeginSearch::Index(1),
            find: FindKeys::KeyNum { key_num_index: 0, first_key: 1, key_step: 1 },
            incomplete: false,
        }]);
        assert_eq!(zunion.key_positions(&args("ZUNION 2 a b WEIGHTS 1 2")).unwrap(), vec![2, 3]);
        assert!(zunion.key_positions(&args("ZUNION x a b")).is_none());
        let xread = info(vec![KeySpec {
            begin: BeginSearch::Keyword { keyword: b"STREAMS".to_vec(), start_from: 1 },
            find: FindKeys::Range { last_key: -1, key_step: 1, limit: 2 },
            incomplete: false,
        }]);
        assert_eq!(xread.key_positions(&args("XREAD COUNT 2 STREAMS a b 0 0")).unwrap(), vec![4, 5]);
    }
}
