//! The set of users and the `ACL` subcommands that read or change it (`SETUSER`, `DELUSER`,
//! `GETUSER`, `LIST`, `USERS`, `DRYRUN`, `CAT`), plus authentication, with Redis 7.0's replies.

use std::collections::BTreeMap;

use crate::catalog::{Catalog, Category, CATEGORY_NAMES};
use crate::check::{channel_allowed, check};
use crate::user::{has_spaces, SetUserError, User};
use crate::value::Value;

/// Why `AUTH` failed; both answer `WRONGPASS invalid username-password pair or user is
/// disabled.` and are logged to `ACL LOG` as `auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no such user")]
    NoSuchUser,
    #[error("wrong password or user disabled")]
    Refused,
}

impl AuthError {
    pub const REPLY: &'static str = "WRONGPASS invalid username-password pair or user is disabled.";
}

/// The reply to `ACL DRYRUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRun {
    /// `+OK`
    Allowed,
    /// A bulk string saying what is denied.
    Denied(Vec<u8>),
    /// An error reply (`ERR User 'x' not found`, ...), without the leading `-`.
    Error(Vec<u8>),
}

/// Every user, by name (in byte order, as Redis lists them).
#[derive(Debug, Clone)]
pub struct Users {
    users: BTreeMap<Vec<u8>, User>,
}

impl Users {
    /// Only Redis's `default` user (`on nopass ~* &* +@all`).
    pub fn new(catalog: &Catalog) -> Users {
        let default = User::default_user(catalog);
        Users { users: BTreeMap::from([(default.name().to_vec(), default)]) }
    }

    pub fn get(&self, name: &[u8]) -> Option<&User> {
        self.users.get(name)
    }

    /// `ACL SETUSER name rules...`: creates or changes the user; all rules apply or none.
    /// Returns the user as it was before (so a caller can compare channel permissions).
    pub fn set_user<A: AsRef<[u8]>>(
        &mut self,
        catalog: &Catalog,
        name: &[u8],
        rules: &[A],
    ) -> Result<Option<User>, SetUserError> {
        if has_spaces(name) {
            return Err(SetUserError::BadUsername);
        }
        let mut user = self.users.get(name).cloned().unwrap_or_else(|| User::new(catalog, name));
        user.apply_rules(catalog, rules)?;
        Ok(self.users.insert(name.to_vec(), user))
    }

    /// `ACL DELUSER names...`: the removed users (their connections must be closed).
    pub fn del_users<A: AsRef<[u8]>>(&mut self, names: &[A]) -> Result<Vec<User>, &'static str> {
        if names.iter().any(|n| n.as_ref() == b"default") {
            return Err("ERR The 'default' user cannot be removed");
        }
        Ok(names.iter().filter_map(|n| self.users.remove(n.as_ref())).collect())
    }

    /// `ACL USERS`.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.users.keys().map(Vec::as_slice)
    }

    /// `ACL LIST`.
    pub fn list(&self, catalog: &Catalog) -> Vec<Vec<u8>> {
        self.users.values().map(|u| u.acl_list_line(catalog)).collect()
    }

    /// `ACL GETUSER name` (`Null` for no such user).
    pub fn getuser_reply(&self, catalog: &Catalog, name: &[u8]) -> Value {
        self.users.get(name).map_or(Value::Null, |u| u.getuser_reply(catalog))
    }

    /// `AUTH name password`.
    pub fn authenticate(&self, name: &[u8], password: &[u8]) -> Result<&User, AuthError> {
        let user = self.users.get(name).ok_or(AuthError::NoSuchUser)?;
        if user.password_matches(password) {
            Ok(user)
        } else {
            Err(AuthError::Refused)
        }
    }

    /// `ACL DRYRUN name command args...` (`args` from the command name on).
    pub fn dryrun<A: AsRef<[u8]>>(&self, catalog: &Catalog, name: &[u8], args: &[A]) -> DryRun {
        let error = |parts: &[&[u8]]| DryRun::Error(parts.concat());
        let Some(user) = self.users.get(name) else {
            return error(&[b"ERR User '", name, b"' not found"]);
        };
        let Ok(command) = catalog.lookup(args) else {
            return error(&[b"ERR Command '", args.first().map_or(&b""[..], |a| a.as_ref()), b"' not found"]);
        };
        if !command.arity_ok(args.len()) {
            return error(&[b"ERR wrong number of arguments for '", command.name.as_bytes(), b"' command"]);
        }
        match check(user, command, args) {
            Ok(()) => DryRun::Allowed,
            Err(denial) => DryRun::Denied(denial.dryrun_text()),
        }
    }
}

/// `ACL CAT`: the category names.
pub fn category_names() -> &'static [&'static str] {
    &CATEGORY_NAMES
}

/// `ACL CAT category`: its commands, or the error reply for an unknown category.
pub fn category_commands<'a>(catalog: &'a Catalog, name: &[u8]) -> Result<Vec<&'a str>, Vec<u8>> {
    match Category::by_name(name) {
        Some(category) => Ok(catalog.commands_in(category)),
        None => Err([b"ERR Unknown category '", &name[..name.len().min(128)], b"'"].concat()),
    }
}

/// After `ACL SETUSER` changed `old` into `new`: `None` when every channel `old` could use is
/// still allowed (Redis then keeps the user's subscribers), else the test a subscriber of `old`
/// must pass to stay connected (Redis 7.0 closes those that fail it).
pub fn subscription_survives<'a>(old: &User, new: &'a User) -> Option<impl Fn(&[u8], bool) -> bool + 'a> {
    if new.selectors.iter().any(|s| s.all_channels) {
        return None;
    }
    let upcoming: Vec<Vec<u8>> = new.selectors.iter().flat_map(|s| s.channels.iter().cloned()).collect();
    let superset = old.selectors.iter().all(|s| !s.all_channels && s.channels.iter().all(|c| upcoming.contains(c)));
    if superset {
        return None;
    }
    Some(move |channel: &[u8], is_pattern: bool| channel_allowed(&upcoming, channel, is_pattern))
}
