//! The permission check of one request, as Redis 7.0's `ACLCheckAllUserCommandPerm`: each
//! selector in turn may allow it (command or first argument, then every key with the access its
//! key spec declares, then every channel); when none does, the denial reported is the most
//! specific one (channel over key over command) at the last argument position.

use crate::catalog::{Command, KeyFlags};
use crate::glob;
use crate::keys::{checked_channels, command_keys, KeyRef};
use crate::user::{Selector, User, READ, WRITE};

/// What a denial is about, ranked as Redis ranks them when selectors disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DenialReason {
    Command,
    Key,
    Channel,
}

impl DenialReason {
    /// The `reason` field of an `ACL LOG` entry.
    pub fn log_name(self) -> &'static str {
        match self {
            DenialReason::Command => "command",
            DenialReason::Key => "key",
            DenialReason::Channel => "channel",
        }
    }
}

/// Why a request was refused, with what `ACL LOG` and `ACL DRYRUN` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenialReason,
    /// The command's full name (`config|set`).
    pub command: String,
    /// For a key or channel denial, the position of that argument (0 is the command name).
    pub arg_pos: Option<usize>,
    /// The `object` of the `ACL LOG` entry: the command's full name, or the key or channel.
    pub object: Vec<u8>,
}

impl Denial {
    /// The error reply, without the leading `-` (Redis 7.0's `processCommand` texts).
    pub fn error_reply(&self) -> String {
        match self.reason {
            DenialReason::Command => {
                format!("NOPERM this user has no permissions to run the '{}' command", self.command)
            }
            DenialReason::Key => {
                "NOPERM this user has no permissions to access one of the keys used as arguments".into()
            }
            DenialReason::Channel => {
                "NOPERM this user has no permissions to access one of the channels used as arguments".into()
            }
        }
    }

    /// The bulk string `ACL DRYRUN` answers for this denial.
    pub fn dryrun_text(&self) -> Vec<u8> {
        let (what, kind): (&[u8], &[u8]) = match self.reason {
            DenialReason::Command => {
                return format!("This user has no permissions to run the '{}' command", self.command).into_bytes()
            }
            DenialReason::Key => (&self.object, b"key"),
            DenialReason::Channel => (&self.object, b"channel"),
        };
        [b"This user has no permissions to access the '", what, b"' ", kind].concat()
    }
}

/// Whether `user` may run `command` (as found by [`crate::Catalog::lookup`] for these `args`,
/// which include the command name; the user must be compiled against the same catalog).
pub fn check<A: AsRef<[u8]>>(user: &User, command: &Command, args: &[A]) -> Result<(), Denial> {
    let mut keys = None;
    let mut relevant = DenialReason::Command;
    let (mut local_pos, mut last_pos) = (0usize, 0usize);
    for selector in &user.selectors {
        match check_selector(selector, command, args, &mut keys) {
            Ok(()) => return Ok(()),
            Err((reason, pos)) => {
                // Redis keeps the last key/channel position across selectors (`local_idxptr`).
                if let Some(pos) = pos {
                    local_pos = pos;
                }
                if reason > relevant || (reason == relevant && local_pos > last_pos) {
                    relevant = reason;
                    last_pos = local_pos;
                }
            }
        }
    }
    let (arg_pos, object) = match relevant {
        DenialReason::Command => (None, command.name.clone().into_bytes()),
        _ => (Some(last_pos), args.get(last_pos).map(|a| a.as_ref().to_vec()).unwrap_or_default()),
    };
    Err(Denial { reason: relevant, command: command.name.clone(), arg_pos, object })
}

type SelectorDenial = (DenialReason, Option<usize>);

fn check_selector<A: AsRef<[u8]>>(
    selector: &Selector,
    command: &Command,
    args: &[A],
    keys: &mut Option<Vec<KeyRef>>,
) -> Result<(), SelectorDenial> {
    if !selector.all_commands && !command.no_auth && !selector.bit(command.id) {
        let arg_at = if command.parent.is_some() { 2 } else { 1 };
        let first_arg_allowed = selector.first_args.get(&command.id).is_some_and(|allowed| {
            args.len() >= 2
                && args.get(arg_at).is_some_and(|a| allowed.iter().any(|x| x.eq_ignore_ascii_case(a.as_ref())))
        });
        if !first_arg_allowed {
            return Err((DenialReason::Command, None));
        }
    }
    if !selector.all_keys && command.has_keys() {
        for key in keys.get_or_insert_with(|| command_keys(command, args)).iter() {
            if !key_allowed(selector, args[key.pos].as_ref(), key.flags) {
                return Err((DenialReason::Key, Some(key.pos)));
            }
        }
    }
    if !selector.all_channels {
        for channel in checked_channels(command, args.len()) {
            if !channel_allowed(&selector.channels, args[channel.pos].as_ref(), channel.pattern) {
                return Err((DenialReason::Channel, Some(channel.pos)));
            }
        }
    }
    Ok(())
}

/// A key against the selector's patterns, each of which must grant the access the key spec
/// declares (`access` needs read; `insert`, `update`, `delete` need write).
fn key_allowed(selector: &Selector, key: &[u8], flags: KeyFlags) -> bool {
    let mut needed = 0;
    if flags.contains(KeyFlags::ACCESS) {
        needed |= READ;
    }
    if flags.intersects(KeyFlags::INSERT | KeyFlags::DELETE | KeyFlags::UPDATE) {
        needed |= WRITE;
    }
    selector.keys.iter().any(|p| p.perms & needed == needed && glob::matches(&p.pattern, key))
}

/// A channel against channel rules: a channel name is globbed, a `PSUBSCRIBE` pattern must
/// equal a rule literally.
pub(crate) fn channel_allowed(rules: &[Vec<u8>], channel: &[u8], is_pattern: bool) -> bool {
    rules.iter().any(|rule| if is_pattern { rule == channel } else { glob::matches(rule, channel) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_catalog::catalog;
    use crate::Users;

    fn verdict(rules: &[&str], args: &[&str]) -> Result<(), Denial> {
        let catalog = catalog();
        let mut users = Users::new(&catalog);
        users.set_user(&catalog, b"u", rules).unwrap();
        check(users.get(b"u").unwrap(), catalog.lookup(args).unwrap(), args)
    }

    #[test]
    fn read_and_write_patterns_follow_the_key_specs() {
        assert!(verdict(&["+@all", "%R~r*"], &["GET", "r1"]).is_ok());
        assert_eq!(verdict(&["+@all", "%R~r*"], &["SET", "r1", "v"]).unwrap_err().reason, DenialReason::Key);
        // SET without GET only writes (its own key finder says OW update): %W~ is enough.
        assert!(verdict(&["+@all", "%W~w*"], &["SET", "w1", "v"]).is_ok());
        assert!(verdict(&["+@all", "%W~w*"], &["SET", "w1", "v", "GET"]).is_err());
        let denial = verdict(&["+@all", "~a*"], &["MSET", "a1", "x", "b1", "y"]).unwrap_err();
        assert_eq!((denial.arg_pos, denial.object.as_slice()), (Some(3), &b"b1"[..]));
        assert_eq!(denial.dryrun_text(), b"This user has no permissions to access the 'b1' key");
    }

    #[test]
    fn a_selector_may_allow_what_the_root_does_not() {
        assert!(verdict(&["+get", "~a*", "(+set ~b*)"], &["SET", "b1", "v"]).is_ok());
        let denial = verdict(&["+get", "~a*", "(+set ~b*)"], &["GET", "b1"]).unwrap_err();
        // Root: key denied; selector: command denied. The key denial ranks higher.
        assert_eq!(denial.reason, DenialReason::Key);
        assert_eq!(
            denial.error_reply(),
            "NOPERM this user has no permissions to access one of the keys used as arguments"
        );
    }

    #[test]
    fn subcommands_first_args_and_no_auth_commands() {
        assert!(verdict(&["+config|get"], &["CONFIG", "GET", "x"]).is_ok());
        let denial = verdict(&["+config|get"], &["CONFIG", "SET", "x", "y"]).unwrap_err();
        assert_eq!(denial.error_reply(), "NOPERM this user has no permissions to run the 'config|set' command");
        assert!(verdict(&["+select|0"], &["SELECT", "0"]).is_ok());
        assert!(verdict(&["+select|0"], &["SELECT", "1"]).is_err());
        assert!(verdict(&[], &["AUTH", "u", "p"]).is_ok());
        // +@slow takes the config container, and with it every subcommand (as Redis 7.0).
        assert!(verdict(&["+@slow"], &["CONFIG", "SET", "x", "y"]).is_ok());
    }

    #[test]
    fn channels_glob_but_patterns_must_match_literally() {
        assert!(verdict(&["+@all", "&news.*"], &["PUBLISH", "news.1", "m"]).is_ok());
        assert_eq!(
            verdict(&["+@all", "&news.*"], &["PUBLISH", "sport", "m"]).unwrap_err().reason,
            DenialReason::Channel
        );
        assert!(verdict(&["+@all", "&news.*"], &["PSUBSCRIBE", "news.*"]).is_ok());
        assert!(verdict(&["+@all", "&news.*"], &["PSUBSCRIBE", "news.1"]).is_err());
    }

    #[test]
    fn keys_of_commands_with_incomplete_specs_come_from_their_own_finder() {
        assert!(verdict(&["+@all", "~s*"], &["SORT", "s1", "BY", "x", "STORE", "s2"]).is_ok());
        let denial = verdict(&["+@all", "~s*"], &["SORT", "s1", "LIMIT", "0", "1", "STORE", "t"]).unwrap_err();
        assert_eq!(denial.arg_pos, Some(6));
        assert!(verdict(&["+@all", "~e*"], &["EVAL", "return 1", "2", "e1", "e2", "x"]).is_ok());
        assert!(verdict(&["+@all", "~e*"], &["EVAL", "return 1", "2", "e1", "x"]).is_err());
        // A bad key count: the specs fail, EVAL's own finder finds no keys.
        assert!(verdict(&["+@all", "~e*"], &["EVAL", "return 1", "x1", "k"]).is_ok());
    }
}
