//! The proxy's ACL state: the command catalog (from the backend's `COMMAND` reply, plus
//! `MEMLOG`), the compiled users every request is checked against, and the `ACL LOG` ring.
//! Rules, checks and replies are the `memlog-acl` crate's (Redis 7.0's semantics); this module
//! keeps them for the running proxy and in the metadata store.
//!
//! The store is the truth once it holds users: the configuration's `[[users]]` only seed an
//! empty store. Every change (`ACL SETUSER`, `DELUSER`) is written to the store before the
//! compiled copy changes; the compiled copy keeps being enforced while the store is
//! unreachable (a change is then refused).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use journal_service::meta::MetaStore;
use memlog_acl::{
    check, memlog_command, AclLog, AuthError, Catalog, CatalogError, Denial, DenialReason, LogContext, LogEvent,
    LogReason, SetUserError, User, Users, Value,
};

use crate::config::UserConfig;

/// Why the users could not be set up at start or reloaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    #[error("the backend's COMMAND reply: {0}")]
    Catalog(#[from] CatalogError),
    #[error("user {name:?}: {message}")]
    Rules { name: String, message: String },
    #[error("metadata store: {0}")]
    Store(String),
}

/// The users a change removed or replaced: their connections must close.
pub(crate) struct Removed(pub(crate) Vec<Vec<u8>>);

pub(crate) struct Access {
    catalog: Catalog,
    users: ArcSwap<Users>,
    log: Mutex<AclLog>,
    store: Option<Arc<MetaStore>>,
    /// One change at a time, so the store and the compiled copy change in the same order.
    changes: tokio::sync::Mutex<()>,
    auth_failures: metrics::Counter,
    /// Bumped by every change of users, so a transaction can tell its rules changed.
    generation: AtomicU64,
    /// `script_rules` of each user that called a script, for the users in force: computing them
    /// walks the whole catalog, and a script may be called thousands of times a second.
    script_rules: Mutex<HashMap<Vec<u8>, ScriptRules>>,
}

/// A user's rules for the scripts it calls (`None`: unrestricted).
type ScriptRules = Option<Arc<[Vec<u8>]>>;

impl Access {
    /// The catalog of `command_reply` (a `COMMAND` reply) and the users: those in `store` if it
    /// holds any, else the configured ones (written to `store`).
    pub(crate) async fn start(
        command_reply: &Value,
        configured: &[UserConfig],
        store: Option<Arc<MetaStore>>,
    ) -> Result<Access, AccessError> {
        let mut catalog = Catalog::from_command_reply(command_reply)?;
        catalog.add(memlog_command())?;
        let seed = compile_config(&catalog, configured)?;
        let users = match &store {
            Some(store) => {
                let stored = store.list_users().await.map_err(|e| AccessError::Store(e.to_string()))?;
                if stored.is_empty() {
                    for user in seed.names() {
                        let user = seed.get(user).expect("a listed user");
                        put(store, &catalog, user).await?;
                    }
                    seed
                } else {
                    compile_stored(&catalog, &stored)?
                }
            }
            None => seed,
        };
        Ok(Access {
            catalog,
            users: ArcSwap::from_pointee(users),
            log: Mutex::new(AclLog::default()),
            store,
            changes: tokio::sync::Mutex::new(()),
            auth_failures: metrics::counter!("memlog_auth_failures_total"),
            generation: AtomicU64::new(0),
            script_rules: Mutex::default(),
        })
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The users as they are now.
    pub(crate) fn users(&self) -> Arc<Users> {
        self.users.load_full()
    }

    /// Changes with every change of users.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `users` in force.
    fn replace(&self, users: Users) {
        let mut script_rules = self.script_rules.lock().unwrap();
        self.users.store(Arc::new(users));
        self.generation.fetch_add(1, Ordering::AcqRel);
        script_rules.clear();
    }

    /// A new connection must authenticate unless `default` is on with no password (Redis).
    pub(crate) fn auth_required(&self) -> bool {
        !self.users.load().get(b"default").is_some_and(|u| u.enabled() && u.nopass())
    }

    /// `AUTH`/`HELLO … AUTH`: a failure is counted and logged to `ACL LOG` (`object` is the
    /// command as the client spelt it, as Redis logs it).
    pub(crate) fn authenticate(
        &self,
        name: &[u8],
        password: &[u8],
        object: &[u8],
        client_info: &[u8],
    ) -> Result<(), AuthError> {
        let users = self.users.load();
        match users.authenticate(name, password) {
            Ok(_) => Ok(()),
            Err(error) => {
                self.auth_failures.increment(1);
                let event = LogEvent {
                    reason: LogReason::Auth,
                    context: LogContext::Toplevel,
                    object: object.to_vec(),
                    username: name.to_vec(),
                    client_info: client_info.to_vec(),
                };
                self.log_event(event);
                Err(error)
            }
        }
    }

    /// A TLS client certificate names `name` (`[tls] cert_user`): the certificate stands for the
    /// password, so the user must exist and be on. A refusal is counted and logged to `ACL LOG`
    /// as a failed `AUTH` (object `tls-client-certificate`).
    pub(crate) fn certificate_login(&self, name: &[u8], client_info: &[u8]) -> Result<(), AuthError> {
        let users = self.users.load();
        match users.get(name) {
            Some(user) if user.enabled() => Ok(()),
            found => {
                self.auth_failures.increment(1);
                self.log_event(LogEvent {
                    reason: LogReason::Auth,
                    context: LogContext::Toplevel,
                    object: b"tls-client-certificate".to_vec(),
                    username: name.to_vec(),
                    client_info: client_info.to_vec(),
                });
                Err(if found.is_some() { AuthError::Refused } else { AuthError::NoSuchUser })
            }
        }
    }

    /// May `user` run this request (`args` from the command name on)? A command the catalog
    /// lacks (one the proxy serves itself that this Redis does not have) is held to its
    /// container's permissions. A user removed meanwhile may run nothing.
    pub(crate) fn check(&self, user: &[u8], args: &[Bytes]) -> Result<(), Denial> {
        let users = self.users.load();
        let command = match self.catalog.lookup(args) {
            Ok(command) => command,
            Err(_) => match self.catalog.by_full_name(&args[0]) {
                Some(container) => container,
                None => return Ok(()), // Unknown commands were refused before the check.
            },
        };
        match users.get(user) {
            Some(user) => check(user, command, args),
            None => Err(Denial {
                reason: DenialReason::Command,
                command: command.name.clone(),
                arg_pos: None,
                object: command.name.clone().into_bytes(),
            }),
        }
    }

    /// The rules a script or function called by `user` runs with on the node
    /// (`crate::sequencer::run_as`): `None` for a user who may do everything. A user that no
    /// longer exists gets no rules at all, so its call is denied rather than run unrestricted.
    pub(crate) fn script_rules(&self, user: &[u8]) -> ScriptRules {
        // Held while computing, so a change of users (which clears the cache) cannot slip in
        // between reading the users and caching what they gave.
        let mut cached = self.script_rules.lock().unwrap();
        if let Some(rules) = cached.get(user) {
            return rules.clone();
        }
        // The nodes have no `MEMLOG` command: rules naming it would be refused there.
        let node_has = |name: &str| name != memlog_command().name;
        let rules: ScriptRules = match self.users.load().get(user) {
            Some(found) => found.node_rules(&self.catalog, node_has).map(Arc::from),
            None => Some(Arc::from(Vec::new())),
        };
        cached.insert(user.to_vec(), rules.clone());
        rules
    }

    pub(crate) fn log_denial(&self, denial: &Denial, context: LogContext, user: &[u8], client_info: &[u8]) {
        self.log_event(LogEvent::denied(denial, context, user, client_info));
    }

    fn log_event(&self, event: LogEvent) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).add(event, crate::units::unix_ms());
    }

    /// `ACL LOG [count]`.
    pub(crate) fn log_reply(&self, count: Option<i64>) -> Value {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).reply(count, crate::units::unix_ms())
    }

    /// `ACL LOG RESET`.
    pub(crate) fn log_reset(&self) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).reset();
    }

    /// `ACL SETUSER`: stored, then in force. Returns the user before and after.
    pub(crate) async fn set_user(&self, name: &[u8], rules: &[Bytes]) -> Result<(Option<User>, User), Vec<u8>> {
        let _change = self.changes.lock().await;
        let mut users = Users::clone(&self.users.load());
        let before = users.set_user(&self.catalog, name, rules).map_err(|e: SetUserError| e.reply())?;
        let after = users.get(name).expect("just set").clone();
        if let Some(store) = &self.store {
            stored_name(name)?;
            put(store, &self.catalog, &after).await.map_err(|e| format!("ERR memlog: {e}").into_bytes())?;
        }
        self.replace(users);
        Ok((before, after))
    }

    /// `ACL DELUSER`: the names of the users removed (their connections must close).
    pub(crate) async fn del_users(&self, names: &[Bytes]) -> Result<Removed, Vec<u8>> {
        let _change = self.changes.lock().await;
        let mut users = Users::clone(&self.users.load());
        let removed = users.del_users(names).map_err(|e| e.as_bytes().to_vec())?;
        if let Some(store) = &self.store {
            for user in &removed {
                let name = stored_name(user.name())?;
                store.delete_user(name).await.map_err(|e| format!("ERR memlog: metadata store: {e}").into_bytes())?;
            }
        }
        self.replace(users);
        Ok(Removed(removed.iter().map(|u| u.name().to_vec()).collect()))
    }

    /// `ACL LOAD`: the users of the store replace the compiled ones (without a store, the
    /// configured ones are all there is: nothing changes). Returns every user replaced but
    /// `default`: Redis 7.0 frees each user of the old set and closes its connections, except
    /// `default`, whose rules it copies into the user its connections already hold
    /// (`ACLLoadFromFile`, `ACLFreeUserAndKillClients` in src/acl.c).
    pub(crate) async fn load(&self) -> Result<Removed, AccessError> {
        let _change = self.changes.lock().await;
        let Some(store) = &self.store else { return Ok(Removed(Vec::new())) };
        let stored = store.list_users().await.map_err(|e| AccessError::Store(e.to_string()))?;
        let users = compile_stored(&self.catalog, &stored)?;
        let replaced = self.users.load().names().filter(|n| *n != b"default").map(<[u8]>::to_vec).collect();
        self.replace(users);
        Ok(Removed(replaced))
    }
}

/// Users are keyed by name in the store, as text.
fn stored_name(name: &[u8]) -> Result<&str, Vec<u8>> {
    std::str::from_utf8(name).map_err(|_| b"ERR memlog: user names must be UTF-8 to be stored".to_vec())
}

/// What makes an existing user (`default`) like a new one before its configured or stored rules
/// apply: Redis's `reset` without `sanitize-payload`, which `reset` adds and which then shows in
/// the user's description.
const BLANK: [&str; 6] = ["off", "resetpass", "resetkeys", "resetchannels", "clearselectors", "-@all"];

/// The configured users, each from [`BLANK`] (so `default` takes exactly its configured rules).
/// With users configured and no `default` among them, `default` is off: connections must
/// authenticate as one of the configured users.
fn compile_config(catalog: &Catalog, configured: &[UserConfig]) -> Result<Users, AccessError> {
    let mut users = Users::new(catalog);
    let rules_error = |name: &str, message: String| AccessError::Rules { name: name.to_string(), message };
    if !configured.is_empty() && !configured.iter().any(|u| u.name == "default") {
        users.set_user(catalog, b"default", &["off", "resetpass"]).expect("valid rules");
    }
    for user in configured {
        let mut rules: Vec<String> = BLANK.iter().map(|r| r.to_string()).collect();
        rules.extend(user.rules().map_err(|e| rules_error(&user.name, e))?);
        users
            .set_user(catalog, user.name.as_bytes(), &rules)
            .map_err(|e| rules_error(&user.name, String::from_utf8_lossy(&e.reply()).into_owned()))?;
    }
    Ok(users)
}

/// Users from the store's records (`{"rules": "<ACL LIST rules>"}`).
fn compile_stored(catalog: &Catalog, stored: &[(String, serde_json::Value)]) -> Result<Users, AccessError> {
    let mut users = Users::new(catalog);
    for (name, record) in stored {
        let rules = record.get("rules").and_then(|r| r.as_str()).ok_or_else(|| AccessError::Rules {
            name: name.clone(),
            message: "the stored record has no rules".into(),
        })?;
        let rules: Vec<&str> = BLANK.into_iter().chain(rules.split_whitespace()).collect();
        users.set_user(catalog, name.as_bytes(), &rules).map_err(|e| AccessError::Rules {
            name: name.clone(),
            message: String::from_utf8_lossy(&e.reply()).into_owned(),
        })?;
    }
    Ok(users)
}

/// Writes `user` as its `ACL LIST` rules (passwords only as SHA-256 hashes).
async fn put(store: &MetaStore, catalog: &Catalog, user: &User) -> Result<(), AccessError> {
    let line = user.acl_list_line(catalog);
    let prefix = b"user ".len() + user.name().len() + 1;
    let rules = String::from_utf8_lossy(line.get(prefix..).unwrap_or_default()).into_owned();
    let name = String::from_utf8_lossy(user.name()).into_owned();
    store.put_user(&name, &serde_json::json!({ "rules": rules })).await.map_err(|e| AccessError::Store(e.to_string()))
}
