//! Redis 7.0's ACLs without I/O, for the proxy to enforce before a request is queued,
//! journaled or forwarded.
//!
//! - [`Catalog`]: the backend's commands with categories and key specs, from its `COMMAND` reply
//!   (plus memlog's own, [`memlog_command`]).
//! - [`User`] / [`Users`]: users compiled from Redis's rule language (`ACL SETUSER`), described
//!   back as Redis does (`ACL LIST`, `ACL GETUSER`), authenticated with SHA-256 hashes.
//! - [`check`]: may this user run this request; a [`Denial`] carries the `NOPERM` text and what
//!   `ACL LOG` records. [`Users::dryrun`] answers `ACL DRYRUN`.
//! - [`AclLog`]: the `ACL LOG` ring.
//!
//! Behaviour follows Redis 7.0's `src/acl.c` and `src/db.c` (key extraction) rule for rule; the
//! differences are listed in the crate's README.

// No count or position is narrowed by an `as` cast, which would wrap silently (positions come
// from clients' requests): conversions go through `try_from` (tests' fixtures aside).
#![cfg_attr(not(test), deny(clippy::cast_possible_truncation))]

mod catalog;
mod check;
mod describe;
mod glob;
mod keys;
mod log;
#[cfg(test)]
mod test_catalog;
mod user;
mod users;
mod value;

pub use catalog::{
    memlog_command, BeginSearch, Catalog, CatalogError, Categories, Category, Command, CommandId, CommandSpec,
    FindKeys, KeyFlags, KeySpec, LookupError, CATEGORY_NAMES,
};
pub use check::{check, Denial, DenialReason};
pub use describe::command_rules;
pub use glob::matches as glob_matches;
pub use keys::{checked_channels, command_keys, ChannelRef, KeyRef};
pub use log::{AclLog, LogContext, LogEntry, LogEvent, LogReason, DEFAULT_MAX_LEN};
pub use user::{KeyPattern, RuleError, Selector, SetUserError, User};
pub use users::{category_commands, category_names, subscription_survives, AuthError, DryRun, Users};
pub use value::Value;
