//! Client-side caching (`CLIENT TRACKING`) as Redis 7.0 keeps it (its `src/tracking.c`): which
//! client may hold which key, the broadcast prefixes, each tracking client's options, and what a
//! change of a key means for whom. Pure: it decides who hears what; `pubsub::tracking` delivers
//! it. The proxy is the endpoint, so the table is the proxy's: memlog sees every write
//! (docs/architecture.md, invariant I4: one writer per shard), so it knows every change of a
//! key except an expiry, which it schedules from each tracked key's expire time (see
//! [`Table::schedule_expiry`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use bytes::Bytes;

/// What `CLIENT TRACKING ON …` asks for (the options after `ON|OFF`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// The client that receives the invalidations (0: the client itself).
    pub redirect: u64,
    pub bcast: bool,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
    pub prefixes: Vec<Bytes>,
}

/// `CLIENT TRACKING ON|OFF [REDIRECT id] [BCAST] [PREFIX p …] [OPTIN] [OPTOUT] [NOLOOP]`, parsed in
/// Redis's order (options first, then `ON`/`OFF`), with its error texts; `exists` says whether a
/// client id is connected (a redirect must name one). `Some` options for `ON`, `None` for `OFF`.
pub(crate) fn parse(args: &[Bytes], exists: impl Fn(u64) -> bool) -> Result<Option<Options>, String> {
    let mut options = Options::default();
    let mut j = 3;
    while j < args.len() {
        let more = j + 1 < args.len();
        let arg = &args[j];
        if arg.eq_ignore_ascii_case(b"redirect") && more {
            j += 1;
            if options.redirect != 0 {
                return Err("ERR A client can only redirect to a single other client".into());
            }
            let id = crate::resp::parse_int(&args[j]).ok_or("ERR value is not an integer or out of range")?;
            // Redis keeps the id as a long long and looks it up as an unsigned one.
            let id = id as u64;
            if id == 0 || !exists(id) {
                return Err("ERR The client ID you want redirect to does not exist".into());
            }
            options.redirect = id;
        } else if arg.eq_ignore_ascii_case(b"bcast") {
            options.bcast = true;
        } else if arg.eq_ignore_ascii_case(b"optin") {
            options.optin = true;
        } else if arg.eq_ignore_ascii_case(b"optout") {
            options.optout = true;
        } else if arg.eq_ignore_ascii_case(b"noloop") {
            options.noloop = true;
        } else if arg.eq_ignore_ascii_case(b"prefix") && more {
            j += 1;
            options.prefixes.push(args[j].clone());
        } else {
            return Err("ERR syntax error".into());
        }
        j += 1;
    }
    if args[2].eq_ignore_ascii_case(b"on") {
        Ok(Some(options))
    } else if args[2].eq_ignore_ascii_case(b"off") {
        Ok(None)
    } else {
        Err("ERR syntax error".into())
    }
}

/// One tracking client's state (Redis's `CLIENT_TRACKING_*` flags).
#[derive(Debug, Default, Clone)]
struct Client {
    redirect: u64,
    bcast: bool,
    optin: bool,
    optout: bool,
    noloop: bool,
    /// `CLIENT CACHING yes|no` given for the next command.
    caching: bool,
    /// The redirect client was gone when an invalidation was due (`flags=R`).
    broken_redirect: bool,
    prefixes: BTreeSet<Bytes>,
}

/// What a client is told: these keys changed, or every key may have (a flush).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Keys(Vec<Bytes>),
    Flush,
}

/// One invalidation due to tracking client `client` (sent to it, or to its redirect client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub client: u64,
    pub redirect: u64,
    pub message: Message,
}

/// What `CLIENT LIST` shows of a client's tracking (`flags=t/R/B`, `redir=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shown {
    pub on: bool,
    pub broken_redirect: bool,
    pub bcast: bool,
    pub redirect: u64,
}

/// A tracked key and the generation of its table entry: an expiry scheduled for an entry that
/// was invalidated (and maybe made again) since is stale.
type Entry = (HashSet<u64>, u64);

/// The proxy's tracking table.
#[derive(Default)]
pub(crate) struct Table {
    clients: HashMap<u64, Client>,
    /// Key → the clients that may hold it (default mode), and the entry's generation.
    keys: HashMap<Bytes, Entry>,
    /// Client ids summed over the keys (`tracking_total_items`).
    items: usize,
    /// Prefix → the BCAST clients registered for it.
    prefixes: BTreeMap<Bytes, BTreeSet<u64>>,
    /// Tracked keys with an expire time: (when, in Unix ms; key; generation).
    expiries: BinaryHeap<Reverse<(u64, Bytes, u64)>>,
    next_generation: u64,
    /// `tracking-table-max-keys` (0: no limit).
    max_keys: usize,
}

impl Table {
    /// `CLIENT TRACKING ON`: the checks Redis makes before enabling (in its order), then the
    /// options; a client already tracking keeps its prefixes and adds the new ones.
    pub(crate) fn enable(&mut self, id: u64, options: Options) -> Result<(), String> {
        if !options.bcast && !options.prefixes.is_empty() {
            return Err("ERR PREFIX option requires BCAST mode to be enabled".into());
        }
        let current = self.clients.get(&id);
        if current.is_some_and(|c| c.bcast != options.bcast) {
            return Err("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.".into());
        }
        if options.bcast && (options.optin || options.optout) {
            return Err("ERR OPTIN and OPTOUT are not compatible with BCAST".into());
        }
        if options.optin && options.optout {
            return Err("ERR You can't specify both OPTIN mode and OPTOUT mode".into());
        }
        if current.is_some_and(|c| (options.optin && c.optout) || (options.optout && c.optin)) {
            return Err("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.".into());
        }
        if options.bcast {
            check_prefix_collisions(current.map(|c| &c.prefixes), &options.prefixes)?;
        }
        let client = self.clients.entry(id).or_default();
        client.redirect = options.redirect;
        client.bcast = options.bcast;
        client.optin = options.optin;
        client.optout = options.optout;
        client.noloop = options.noloop;
        client.broken_redirect = false;
        if options.bcast {
            let prefixes = if options.prefixes.is_empty() { vec![Bytes::new()] } else { options.prefixes };
            for prefix in prefixes {
                if self.prefixes.entry(prefix.clone()).or_default().insert(id) {
                    client.prefixes.insert(prefix);
                }
            }
        }
        Ok(())
    }

    /// `CLIENT TRACKING OFF` (or the client is gone). As in Redis, its ids stay in the key table
    /// and are dropped lazily, when the key is invalidated.
    pub(crate) fn disable(&mut self, id: u64) {
        let Some(client) = self.clients.remove(&id) else { return };
        for prefix in client.prefixes {
            if let Some(clients) = self.prefixes.get_mut(&prefix) {
                clients.remove(&id);
                if clients.is_empty() {
                    self.prefixes.remove(&prefix);
                }
            }
        }
    }

    pub(crate) fn is_tracking(&self, id: u64) -> bool {
        self.clients.contains_key(&id)
    }

    /// How many clients track (`tracking_clients`).
    pub(crate) fn clients(&self) -> usize {
        self.clients.len()
    }

    /// `(tracking_total_keys, tracking_total_items, tracking_total_prefixes)` of INFO.
    pub(crate) fn totals(&self) -> (usize, usize, usize) {
        (self.keys.len(), self.items, self.prefixes.len())
    }

    /// `CLIENT CACHING YES|NO`, with Redis's errors.
    pub(crate) fn caching(&mut self, id: u64, yes: bool) -> Result<(), String> {
        let Some(client) = self.clients.get_mut(&id) else {
            return Err("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled".into());
        };
        match (yes, client.optin, client.optout) {
            (true, true, _) | (false, _, true) => {
                client.caching = true;
                Ok(())
            }
            (true, ..) => Err("ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.".into()),
            (false, ..) => Err("ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.".into()),
        }
    }

    /// After a command: `CLIENT CACHING` lasts for the next command only (or the transaction),
    /// so it ends unless `keep` (a `CLIENT` command, or in `MULTI`), as Redis's `resetClient`.
    pub(crate) fn command_done(&mut self, id: u64, keep: bool) {
        if keep {
            return;
        }
        if let Some(client) = self.clients.get_mut(&id) {
            client.caching = false;
        }
    }

    /// `CLIENT GETREDIR`: the redirect client, 0 for none, -1 when not tracking.
    pub(crate) fn redirect(&self, id: u64) -> i64 {
        self.clients.get(&id).map_or(-1, |c| c.redirect as i64)
    }

    /// `CLIENT TRACKINGINFO`: flags, redirect, prefixes.
    pub(crate) fn info(&self, id: u64) -> (Vec<&'static str>, i64, Vec<Bytes>) {
        let Some(c) = self.clients.get(&id) else { return (vec!["off"], -1, Vec::new()) };
        let mut flags = vec!["on"];
        for (set, flag) in [
            (c.bcast, "bcast"),
            (c.optin, "optin"),
            (c.optin && c.caching, "caching-yes"),
            (c.optout, "optout"),
            (c.optout && c.caching, "caching-no"),
            (c.noloop, "noloop"),
            (c.broken_redirect, "broken_redirect"),
        ] {
            if set {
                flags.push(flag);
            }
        }
        (flags, c.redirect as i64, c.prefixes.iter().cloned().collect())
    }

    /// What `CLIENT LIST` shows of client `id`.
    pub(crate) fn shown(&self, id: u64) -> Shown {
        self.clients.get(&id).map_or_else(Shown::default, |c| Shown {
            on: true,
            broken_redirect: c.broken_redirect,
            bcast: c.bcast,
            redirect: c.redirect,
        })
    }

    /// Client `id`'s redirect client was gone when an invalidation was due for it.
    pub(crate) fn redirect_broken(&mut self, id: u64) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.broken_redirect = true;
        }
    }

    /// Remembers the keys a read of client `id` serves (default mode; under OPTIN only after
    /// `CACHING yes`, under OPTOUT unless `CACHING no`). Returns the keys whose entry is new (with
    /// its generation): their expire time is to be looked up ([`Table::schedule_expiry`]).
    pub(crate) fn remember(&mut self, id: u64, keys: &[Bytes]) -> Vec<(Bytes, u64)> {
        let Some(client) = self.clients.get(&id) else { return Vec::new() };
        if client.bcast || (client.optin && !client.caching) || (client.optout && client.caching) {
            return Vec::new();
        }
        let mut new = Vec::new();
        for key in keys {
            let entry = match self.keys.get_mut(key) {
                Some(entry) => entry,
                None => {
                    self.next_generation += 1;
                    new.push((key.clone(), self.next_generation));
                    self.keys.entry(key.clone()).or_insert_with(|| (HashSet::new(), self.next_generation))
                }
            };
            if entry.0.insert(id) {
                self.items += 1;
            }
        }
        new
    }

    /// Keys written by client `writer` (None: not by a client) were applied: every client that
    /// may hold one is told, as Redis's `trackingInvalidateKey` (one message per key, the entry
    /// dropped) and, for BCAST clients, one message per matching prefix with the keys.
    pub(crate) fn invalidate(&mut self, writer: Option<u64>, keys: &[Bytes]) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        for key in keys {
            self.invalidate_entry(writer, key, &mut deliveries);
        }
        if self.prefixes.is_empty() {
            return deliveries;
        }
        for (prefix, clients) in &self.prefixes {
            // In key order, each key once, as Redis builds the message from a radix tree.
            let matching: BTreeSet<&Bytes> = keys.iter().filter(|k| k.starts_with(prefix)).collect();
            let matching: Vec<Bytes> = matching.into_iter().cloned().collect();
            if matching.is_empty() {
                continue;
            }
            for id in clients {
                let Some(client) = self.clients.get(id) else { continue };
                // NOLOOP: the keys this client changed itself are left out.
                if client.noloop && writer == Some(*id) {
                    continue;
                }
                deliveries.push(Delivery {
                    client: *id,
                    redirect: client.redirect,
                    message: Message::Keys(matching.clone()),
                });
            }
        }
        deliveries
    }

    fn invalidate_entry(&mut self, writer: Option<u64>, key: &Bytes, deliveries: &mut Vec<Delivery>) {
        let Some((ids, _)) = self.keys.remove(key) else { return };
        self.items -= ids.len();
        let mut ids: Vec<u64> = ids.into_iter().collect();
        ids.sort_unstable();
        for id in ids {
            // A client that stopped tracking, or switched to BCAST, hears nothing of old entries.
            let Some(client) = self.clients.get(&id).filter(|c| !c.bcast) else { continue };
            if client.noloop && writer == Some(id) {
                continue;
            }
            deliveries.push(Delivery {
                client: id,
                redirect: client.redirect,
                message: Message::Keys(vec![key.clone()]),
            });
        }
    }

    /// Every key may have changed (FLUSHALL, FLUSHDB): every tracking client is told with a null,
    /// and the table is emptied, as Redis's `trackingInvalidateKeysOnFlush`.
    pub(crate) fn flush(&mut self) -> Vec<Delivery> {
        self.keys.clear();
        self.items = 0;
        self.expiries.clear();
        let mut ids: Vec<u64> = self.clients.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| Delivery { client: id, redirect: self.clients[&id].redirect, message: Message::Flush })
            .collect()
    }

    /// `tracking-table-max-keys` (0: no limit); the table is brought under it at the next
    /// [`Table::limit`].
    pub(crate) fn set_max_keys(&mut self, max_keys: usize) {
        self.max_keys = max_keys;
    }

    /// Over `tracking-table-max-keys`: keys are dropped from the table (arbitrary ones, as
    /// Redis's random walk) and their clients told as if the keys changed, so they stop
    /// caching what the table no longer follows (`trackingLimitUsedSlots`).
    pub(crate) fn limit(&mut self) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        if self.max_keys == 0 {
            return deliveries;
        }
        while self.keys.len() > self.max_keys {
            let Some(key) = self.keys.keys().next().cloned() else { break };
            self.invalidate_entry(None, &key, &mut deliveries);
        }
        deliveries
    }

    /// Tracked `key` (its entry of generation `generation`) expires at `at_ms` (Unix ms): it is
    /// invalidated then ([`Table::expire_due`]), unless the entry was invalidated before. A key
    /// that was written meanwhile was invalidated by the write, which ends the entry, so an
    /// expire time read before the write is never acted on.
    pub(crate) fn schedule_expiry(&mut self, key: Bytes, generation: u64, at_ms: u64) {
        if self.keys.get(&key).is_some_and(|(_, g)| *g == generation) {
            self.expiries.push(Reverse((at_ms, key, generation)));
        }
        // Entries invalidated before their time stay in the heap until then; keep it bounded by
        // the table it serves.
        if self.expiries.len() > 2 * self.keys.len() + 1024 {
            let keys = &self.keys;
            self.expiries.retain(|Reverse((_, key, g))| keys.get(key).is_some_and(|(_, current)| current == g));
        }
    }

    /// The earliest scheduled expiry, in Unix ms.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.expiries.peek().map(|Reverse((at, ..))| *at)
    }

    /// Invalidates the tracked keys whose expire time is `now_ms` or earlier.
    pub(crate) fn expire_due(&mut self, now_ms: u64) -> Vec<Delivery> {
        let mut due = Vec::new();
        while let Some(Reverse((at, ..))) = self.expiries.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((_, key, generation))) = self.expiries.pop() else { break };
            if self.keys.get(&key).is_some_and(|(_, g)| *g == generation) {
                due.push(key);
            }
        }
        self.invalidate(None, &due)
    }
}

/// Redis's `checkPrefixCollisionsOrReply`: two prefixes collide when one starts the other.
fn check_prefix_collisions(existing: Option<&BTreeSet<Bytes>>, new: &[Bytes]) -> Result<(), String> {
    let overlaps = |a: &[u8], b: &[u8]| {
        let n = a.len().min(b.len());
        a[..n] == b[..n]
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (i, prefix) in new.iter().enumerate() {
        if let Some(old) = existing.into_iter().flatten().find(|old| overlaps(old, prefix)) {
            return Err(format!(
                "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                text(prefix),
                text(old)
            ));
        }
        if let Some(other) = new[i + 1..].iter().find(|other| overlaps(prefix, other)) {
            return Err(format!(
                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                text(prefix),
                text(other)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(b).collect()
    }

    fn on(table: &mut Table, id: u64, line: &str) -> Result<(), String> {
        let options = parse(&args(line), |id| id < 100)?.expect("ON");
        table.enable(id, options)
    }

    fn only(mut new: Vec<(Bytes, u64)>) -> (Bytes, u64) {
        assert_eq!(new.len(), 1, "{new:?}");
        new.remove(0)
    }

    fn keys(keys: &[&str]) -> Message {
        Message::Keys(keys.iter().map(|k| b(k)).collect())
    }

    #[test]
    fn parsing_follows_redis_order_and_errors() {
        let exists = |id: u64| id == 7;
        assert_eq!(parse(&args("client tracking off"), exists), Ok(None));
        assert_eq!(parse(&args("client tracking maybe"), exists).unwrap_err(), "ERR syntax error");
        // Options are parsed (and a redirect looked up) before ON/OFF is read.
        assert!(parse(&args("client tracking off redirect 8"), exists).unwrap_err().contains("does not exist"));
        assert!(parse(&args("client tracking on redirect x"), exists).unwrap_err().contains("not an integer"));
        assert!(parse(&args("client tracking on redirect 7 redirect 7"), exists).unwrap_err().contains("single"));
        assert_eq!(parse(&args("client tracking on prefix"), exists).unwrap_err(), "ERR syntax error");
        let options = parse(&args("client tracking ON redirect 7 BCAST prefix a prefix b noloop"), exists).unwrap();
        assert_eq!(
            options,
            Some(Options {
                redirect: 7,
                bcast: true,
                noloop: true,
                prefixes: vec![b("a"), b("b")],
                ..Options::default()
            })
        );
    }

    #[test]
    fn enabling_checks_as_redis_does() {
        let mut t = Table::default();
        assert!(on(&mut t, 1, "client tracking on prefix a").unwrap_err().contains("requires BCAST"));
        assert!(on(&mut t, 1, "client tracking on bcast optin").unwrap_err().contains("not compatible with BCAST"));
        assert!(on(&mut t, 1, "client tracking on optin optout").unwrap_err().contains("both OPTIN"));
        let err = on(&mut t, 1, "client tracking on bcast prefix ab prefix a").unwrap_err();
        assert_eq!(
            err,
            "ERR Prefix 'ab' overlaps with another provided prefix 'a'. Prefixes for a single client must not overlap."
        );
        on(&mut t, 1, "client tracking on bcast prefix ab").unwrap();
        let err = on(&mut t, 1, "client tracking on bcast prefix abc").unwrap_err();
        assert!(err.contains("overlaps with an existing prefix 'ab'"), "{err}");
        assert!(on(&mut t, 1, "client tracking on").unwrap_err().contains("switch BCAST"));
        on(&mut t, 2, "client tracking on optin").unwrap();
        assert!(on(&mut t, 2, "client tracking on optout").unwrap_err().contains("switch OPTIN/OPTOUT"));
        assert_eq!(t.info(1), (vec!["on", "bcast"], 0, vec![b("ab")]));
        t.disable(1);
        assert_eq!(t.info(1), (vec!["off"], -1, vec![]));
        assert_eq!(t.totals().2, 0);
    }

    #[test]
    fn a_write_invalidates_each_tracked_key_once_and_ends_the_entry() {
        let mut t = Table::default();
        on(&mut t, 1, "client tracking on").unwrap();
        on(&mut t, 2, "client tracking on redirect 9").unwrap();
        assert_eq!(t.remember(1, &[b("a"), b("b")]).len(), 2);
        assert!(t.remember(2, &[b("a")]).is_empty(), "the entry exists already");
        assert_eq!(t.totals(), (2, 3, 0));
        let delivered = t.invalidate(Some(3), &[b("a"), b("c")]);
        assert_eq!(
            delivered,
            vec![
                Delivery { client: 1, redirect: 0, message: keys(&["a"]) },
                Delivery { client: 2, redirect: 9, message: keys(&["a"]) },
            ]
        );
        assert!(t.invalidate(Some(3), &[b("a")]).is_empty(), "told once until read again");
        assert_eq!(t.totals(), (1, 1, 0));
    }

    #[test]
    fn noloop_skips_the_writers_own_changes() {
        let mut t = Table::default();
        on(&mut t, 1, "client tracking on noloop").unwrap();
        on(&mut t, 2, "client tracking on bcast noloop").unwrap();
        t.remember(1, &[b("k")]);
        assert!(t.invalidate(Some(1), &[b("k")]).iter().all(|d| d.client != 1));
        assert_eq!(t.invalidate(Some(2), &[b("x")]), vec![]);
        assert_eq!(t.invalidate(Some(1), &[b("x")]), vec![Delivery { client: 2, redirect: 0, message: keys(&["x"]) }]);
    }

    #[test]
    fn bcast_sends_one_message_per_matching_prefix() {
        let mut t = Table::default();
        on(&mut t, 1, "client tracking on bcast prefix user: prefix obj:").unwrap();
        let delivered = t.invalidate(None, &[b("user:1"), b("other"), b("user:2"), b("obj:9")]);
        assert_eq!(
            delivered,
            vec![
                Delivery { client: 1, redirect: 0, message: keys(&["obj:9"]) },
                Delivery { client: 1, redirect: 0, message: keys(&["user:1", "user:2"]) },
            ]
        );
        // BCAST clients are not remembered per key.
        assert!(t.remember(1, &[b("user:1")]).is_empty());
    }

    #[test]
    fn optin_remembers_only_after_caching_yes_for_one_command() {
        let mut t = Table::default();
        assert!(t.caching(1, true).unwrap_err().contains("OPTIN or OPTOUT"));
        on(&mut t, 1, "client tracking on optin").unwrap();
        assert!(t.caching(1, false).unwrap_err().contains("CACHING NO is only valid"));
        assert!(t.remember(1, &[b("a")]).is_empty());
        t.caching(1, true).unwrap();
        assert_eq!(t.info(1).0, vec!["on", "optin", "caching-yes"]);
        t.command_done(1, true);
        assert_eq!(t.remember(1, &[b("b")]).len(), 1);
        t.command_done(1, false);
        assert!(t.remember(1, &[b("c")]).is_empty());
        on(&mut t, 2, "client tracking on optout").unwrap();
        t.caching(2, false).unwrap();
        assert!(t.remember(2, &[b("d")]).is_empty());
        t.command_done(2, false);
        assert_eq!(t.remember(2, &[b("d")]).len(), 1);
    }

    #[test]
    fn a_flush_tells_every_tracking_client_and_empties_the_table() {
        let mut t = Table::default();
        on(&mut t, 1, "client tracking on").unwrap();
        on(&mut t, 2, "client tracking on bcast").unwrap();
        t.remember(1, &[b("a")]);
        let flushed = t.flush();
        assert_eq!(
            flushed.iter().map(|d| (d.client, &d.message)).collect::<Vec<_>>(),
            [(1, &Message::Flush), (2, &Message::Flush)]
        );
        assert_eq!(t.totals(), (0, 0, 1));
    }

    #[test]
    fn over_max_keys_entries_are_dropped_and_their_clients_told() {
        let mut t = Table::default();
        on(&mut t, 1, "client tracking on").unwrap();
        t.remember(1, &(0..10).map(|i| b(&format!("k{i}"))).collect::<Vec<_>>());
        t.set_max_keys(4);
        let told = t.limit();
        assert_eq!(told.len(), 6);
        assert_eq!(t.totals(), (4, 4, 0));
        t.set_max_keys(0);
        assert!(t.limit().is_empty());
    }

    #[test]
    fn an_expiry_invalidates_only_the_entry_it_was_read_for() {
        let mut t = Table::default();
        on(&mut t, 1, "client tracking on").unwrap();
        let (key, generation) = only(t.remember(1, &[b("a")]));
        t.schedule_expiry(key.clone(), generation, 1_000);
        assert_eq!(t.next_expiry(), Some(1_000));
        assert!(t.expire_due(999).is_empty());
        assert_eq!(t.expire_due(1_000), vec![Delivery { client: 1, redirect: 0, message: keys(&["a"]) }]);
        // Written (entry ended) and read again: the old expire time no longer applies.
        let (key, generation) = only(t.remember(1, &[b("a")]));
        t.schedule_expiry(key.clone(), generation, 2_000);
        t.invalidate(Some(2), &[b("a")]);
        let (key, new_generation) = only(t.remember(1, &[b("a")]));
        assert_ne!(generation, new_generation);
        assert!(t.expire_due(3_000).is_empty());
        t.schedule_expiry(key, generation, 4_000);
        assert_eq!(t.next_expiry(), None, "a stale generation is not scheduled");
    }
}
