//! Compiled users: Redis 7.0's rule language applied to a user (`ACL SETUSER`), rule by rule as
//! `ACLSetUser`/`ACLSetSelector` apply them, to the same state (command bitmap by command id,
//! allowed first arguments, key patterns with read/write permission, channel patterns,
//! selectors, password hashes).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::catalog::{Catalog, Category, Command, CommandId};

/// Why one rule was refused; the texts are Redis 7.0's (`ACLSetUserStringError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("Unknown command or category name in ACL")]
    UnknownName,
    #[error("Syntax error")]
    Syntax,
    #[error(
        "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. \
         Try 'resetkeys' to start with an empty list of patterns"
    )]
    KeyPatternAfterAllKeys,
    #[error(
        "Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does not have any \
         effect. Try 'resetchannels' to start with an empty list of channels"
    )]
    ChannelPatternAfterAllChannels,
    #[error("The password you are trying to remove from the user does not exist")]
    NoSuchPassword,
    #[error("The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters")]
    BadHash,
    #[error("Allowing first-arg of a subcommand is not supported")]
    FirstArgOfSubcommand,
}

/// Why `ACL SETUSER` was refused (nothing of it is then applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetUserError {
    Rule { rule: Vec<u8>, error: RuleError },
    UnmatchedParenthesis { at: Vec<u8> },
    BadUsername,
}

impl SetUserError {
    /// The error text without the `ERR ` prefix, as Redis 7.0 words it.
    pub fn message(&self) -> Vec<u8> {
        match self {
            SetUserError::Rule { rule, error } => {
                [b"Error in ACL SETUSER modifier '", rule.as_slice(), b"': ", error.to_string().as_bytes()].concat()
            }
            SetUserError::UnmatchedParenthesis { at } => {
                [b"Unmatched parenthesis in acl selector starting at '", at.as_slice(), b"'."].concat()
            }
            SetUserError::BadUsername => b"Usernames can't contain spaces or null characters".to_vec(),
        }
    }

    /// The error reply's text (`ERR ...`, line breaks made spaces as Redis does).
    pub fn reply(&self) -> Vec<u8> {
        let mut reply = b"ERR ".to_vec();
        reply.extend(self.message().into_iter().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        reply
    }
}

impl std::fmt::Display for SetUserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.message()))
    }
}

impl std::error::Error for SetUserError {}

pub(crate) const READ: u8 = 1;
pub(crate) const WRITE: u8 = 2;
const READ_WRITE: u8 = READ | WRITE;

/// A key pattern with the access it grants (`~` both, `%R~` read, `%W~` write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    pub pattern: Vec<u8>,
    pub(crate) perms: u8,
}

impl KeyPattern {
    /// The rule that adds it back (`~p`, `%R~p`, `%W~p`).
    pub fn rule(&self) -> Vec<u8> {
        let prefix: &[u8] = match self.perms {
            READ => b"%R~",
            WRITE => b"%W~",
            _ => b"~",
        };
        [prefix, self.pattern.as_slice()].concat()
    }
}

/// One set of permissions: the root selector (rules outside parentheses) or a `(...)` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub(crate) all_keys: bool,
    pub(crate) all_channels: bool,
    /// Set by `+@all`, cleared by any rule that takes a command away.
    pub(crate) all_commands: bool,
    /// Redis's reserved bitmap bit: `+@all` also grants commands added later.
    pub(crate) future_commands: bool,
    pub(crate) allowed: Vec<u64>,
    /// `+cmd|arg` for commands without subcommands: allowed when the first argument is one of
    /// these (compared case-insensitively).
    pub(crate) first_args: BTreeMap<CommandId, Vec<Vec<u8>>>,
    pub(crate) keys: Vec<KeyPattern>,
    pub(crate) channels: Vec<Vec<u8>>,
}

impl Selector {
    /// A selector that allows nothing (Redis 7.0's default `acl-pubsub-default resetchannels`).
    pub(crate) fn new(catalog: &Catalog) -> Selector {
        Selector {
            all_keys: false,
            all_channels: false,
            all_commands: false,
            future_commands: false,
            allowed: vec![0; catalog.len().div_ceil(64)],
            first_args: BTreeMap::new(),
            keys: Vec::new(),
            channels: Vec::new(),
        }
    }

    pub(crate) fn bit(&self, id: CommandId) -> bool {
        self.allowed.get(id.index() / 64).is_some_and(|w| w & (1 << (id.index() % 64)) != 0)
    }

    fn set_bit(&mut self, id: CommandId, allow: bool) {
        if let Some(word) = self.allowed.get_mut(id.index() / 64) {
            if allow {
                *word |= 1 << (id.index() % 64);
            } else {
                *word &= !(1 << (id.index() % 64));
            }
        }
        if !allow {
            self.all_commands = false;
        }
    }

    pub(crate) fn set_all(&mut self, allow: bool) {
        self.allowed.fill(if allow { u64::MAX } else { 0 });
        self.all_commands = allow;
        self.future_commands = allow;
        self.first_args.clear();
    }

    /// Allows or blocks a command, and with a container all its subcommands.
    pub(crate) fn change_perm(&mut self, command: &Command, allow: bool) {
        self.set_bit(command.id, allow);
        self.first_args.remove(&command.id);
        for sub in &command.subcommands {
            self.set_bit(*sub, allow);
        }
    }

    pub(crate) fn set_category(&mut self, catalog: &Catalog, category: Category, allow: bool) {
        for command in catalog.iter().filter(|c| !c.module && c.categories.contains(category)) {
            self.change_perm(command, allow);
        }
    }

    /// One selector rule (Redis's `ACLSetSelector`).
    pub(crate) fn apply(&mut self, catalog: &Catalog, op: &[u8]) -> Result<(), RuleError> {
        let is = |word: &str| op.eq_ignore_ascii_case(word.as_bytes());
        let second = op.get(1).copied().unwrap_or(0);
        if op.is_empty() {
            return Err(RuleError::Syntax);
        }
        if is("allkeys") || is("~*") {
            self.all_keys = true;
            self.keys.clear();
        } else if is("resetkeys") {
            self.all_keys = false;
            self.keys.clear();
        } else if is("allchannels") || is("&*") {
            self.all_channels = true;
            self.channels.clear();
        } else if is("resetchannels") {
            self.all_channels = false;
            self.channels.clear();
        } else if is("allcommands") || is("+@all") {
            self.set_all(true);
        } else if is("nocommands") || is("-@all") {
            self.set_all(false);
        } else if op[0] == b'~' || op[0] == b'%' {
            self.add_key_pattern(op)?;
        } else if op[0] == b'&' {
            if self.all_channels {
                return Err(RuleError::ChannelPatternAfterAllChannels);
            }
            let pattern = &op[1..];
            if has_spaces(pattern) {
                return Err(RuleError::Syntax);
            }
            if !self.channels.iter().any(|c| c == pattern) {
                self.channels.push(pattern.to_vec());
            }
        } else if op[0] == b'+' && second != b'@' {
            self.allow_command(catalog, &op[1..])?;
        } else if op[0] == b'-' && second != b'@' {
            let command = catalog.lookup_rule_name(&op[1..]).ok_or(RuleError::UnknownName)?;
            self.change_perm(command, false);
        } else if (op[0] == b'+' || op[0] == b'-') && second == b'@' {
            let category = Category::by_name(&op[2..]).ok_or(RuleError::UnknownName)?;
            self.set_category(catalog, category, op[0] == b'+');
        } else {
            return Err(RuleError::Syntax);
        }
        Ok(())
    }

    fn add_key_pattern(&mut self, op: &[u8]) -> Result<(), RuleError> {
        if self.all_keys {
            return Err(RuleError::KeyPatternAfterAllKeys);
        }
        let mut perms = 0;
        let mut offset = 1;
        if op[0] == b'%' {
            while offset < op.len() {
                match op[offset].to_ascii_uppercase() {
                    b'R' if perms & READ == 0 => perms |= READ,
                    b'W' if perms & WRITE == 0 => perms |= WRITE,
                    b'~' => {
                        offset += 1;
                        break;
                    }
                    _ => return Err(RuleError::Syntax),
                }
                offset += 1;
            }
            // Redis 7.0 accepts `%~p` and then panics when it describes the user; refuse it as
            // later Redis versions do.
            if perms == 0 {
                return Err(RuleError::Syntax);
            }
        } else {
            perms = READ_WRITE;
        }
        let pattern = &op[offset.min(op.len())..];
        if has_spaces(pattern) {
            return Err(RuleError::Syntax);
        }
        match self.keys.iter_mut().find(|k| k.pattern == pattern) {
            Some(existing) => existing.perms |= perms,
            None => self.keys.push(KeyPattern { pattern: pattern.to_vec(), perms }),
        }
        Ok(())
    }

    /// `+cmd`, `+container|sub`, or `+cmd|first-arg` (Redis's deprecated first-argument rule).
    fn allow_command(&mut self, catalog: &Catalog, name: &[u8]) -> Result<(), RuleError> {
        let Some(bar) = name.iter().rposition(|b| *b == b'|') else {
            let command = catalog.lookup_rule_name(name).ok_or(RuleError::UnknownName)?;
            self.change_perm(command, true);
            return Ok(());
        };
        let (base, arg) = (&name[..bar], &name[bar + 1..]);
        let command = catalog.lookup_rule_name(base).ok_or(RuleError::UnknownName)?;
        if command.parent.is_some() {
            return Err(RuleError::FirstArgOfSubcommand);
        }
        if arg.is_empty() {
            return Err(RuleError::Syntax);
        }
        if command.subcommands.is_empty() {
            let args = self.first_args.entry(command.id).or_default();
            if !args.iter().any(|a| a.eq_ignore_ascii_case(arg)) {
                args.push(arg.to_vec());
            }
        } else {
            let sub = catalog.lookup_rule_name(name).ok_or(RuleError::UnknownName)?;
            self.change_perm(sub, true);
        }
        Ok(())
    }
}

/// Redis's `ACLStringHasSpaces`: C `isspace` bytes or NUL.
pub(crate) fn has_spaces(s: &[u8]) -> bool {
    s.iter().any(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0))
}

/// User flags in the order Redis shows them.
pub(crate) const FLAG_NAMES: [(&str, u8); 5] = [
    ("on", User::ENABLED),
    ("off", User::DISABLED),
    ("nopass", User::NOPASS),
    ("skip-sanitize-payload", User::SKIP_SANITIZE),
    ("sanitize-payload", User::SANITIZE),
];

/// A user compiled against one catalog (after a catalog change, apply its `ACL LIST` rules to a
/// fresh user: command ids are positions in the catalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub(crate) name: Vec<u8>,
    pub(crate) flags: u8,
    pub(crate) passwords: Vec<[u8; 32]>,
    /// The root selector first, then the `(...)` ones in the order they were added.
    pub(crate) selectors: Vec<Selector>,
}

impl User {
    const ENABLED: u8 = 1;
    const DISABLED: u8 = 2;
    const NOPASS: u8 = 4;
    const SKIP_SANITIZE: u8 = 8;
    const SANITIZE: u8 = 16;

    /// A new user as `ACL SETUSER name` creates it: off, no password, no permissions.
    pub fn new(catalog: &Catalog, name: &[u8]) -> User {
        User {
            name: name.to_vec(),
            flags: User::DISABLED,
            passwords: Vec::new(),
            selectors: vec![Selector::new(catalog)],
        }
    }

    /// Redis's `default` user: `on nopass ~* &* +@all`.
    pub fn default_user(catalog: &Catalog) -> User {
        let mut user = User::new(catalog, b"default");
        for rule in ["+@all", "~*", "&*", "on", "nopass"] {
            user.apply_one(catalog, rule.as_bytes()).expect("the default user's rules are valid");
        }
        user
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }

    pub fn enabled(&self) -> bool {
        self.flags & User::ENABLED != 0
    }

    pub fn nopass(&self) -> bool {
        self.flags & User::NOPASS != 0
    }

    /// Applies `ACL SETUSER` rules: all of them or, on the first bad one, none.
    pub fn apply_rules<A: AsRef<[u8]>>(&mut self, catalog: &Catalog, rules: &[A]) -> Result<(), SetUserError> {
        let rules = merge_selector_arguments(rules)?;
        let mut staged = self.clone();
        for rule in &rules {
            staged.apply_one(catalog, rule).map_err(|error| SetUserError::Rule { rule: rule.clone(), error })?;
        }
        *self = staged;
        Ok(())
    }

    /// One rule (Redis's `ACLSetUser`).
    fn apply_one(&mut self, catalog: &Catalog, op: &[u8]) -> Result<(), RuleError> {
        let is = |word: &str| op.eq_ignore_ascii_case(word.as_bytes());
        if op.is_empty() {
            return Ok(());
        }
        if is("on") {
            self.flags = (self.flags | User::ENABLED) & !User::DISABLED;
        } else if is("off") {
            self.flags = (self.flags | User::DISABLED) & !User::ENABLED;
        } else if is("skip-sanitize-payload") {
            self.flags = (self.flags | User::SKIP_SANITIZE) & !User::SANITIZE;
        } else if is("sanitize-payload") {
            self.flags = (self.flags | User::SANITIZE) & !User::SKIP_SANITIZE;
        } else if is("nopass") {
            self.flags |= User::NOPASS;
            self.passwords.clear();
        } else if is("resetpass") {
            self.flags &= !User::NOPASS;
            self.passwords.clear();
        } else if op[0] == b'>' || op[0] == b'#' {
            let hash = if op[0] == b'>' { hash_password(&op[1..]) } else { parse_hash(&op[1..])? };
            if !self.passwords.contains(&hash) {
                self.passwords.push(hash);
            }
            self.flags &= !User::NOPASS;
        } else if op[0] == b'<' || op[0] == b'!' {
            let hash = if op[0] == b'<' { hash_password(&op[1..]) } else { parse_hash(&op[1..])? };
            let at = self.passwords.iter().position(|p| *p == hash).ok_or(RuleError::NoSuchPassword)?;
            self.passwords.remove(at);
        } else if op[0] == b'(' && op[op.len() - 1] == b')' {
            let mut selector = Selector::new(catalog);
            // An opset Redis cannot split (unbalanced quotes) gives an empty selector, no error.
            for inner in split_args(&op[1..op.len() - 1]).unwrap_or_default() {
                selector.apply(catalog, &inner)?;
            }
            self.selectors.push(selector);
        } else if is("clearselectors") {
            self.selectors.truncate(1);
        } else if is("reset") {
            for rule in
                ["resetpass", "resetkeys", "resetchannels", "off", "sanitize-payload", "clearselectors", "-@all"]
            {
                self.apply_one(catalog, rule.as_bytes())?;
            }
        } else {
            self.selectors[0].apply(catalog, op)?;
        }
        Ok(())
    }

    /// Whether this password opens this user (on, and nopass or a matching hash). The hashes
    /// are compared in constant time, as Redis compares them.
    pub fn password_matches(&self, password: &[u8]) -> bool {
        if !self.enabled() {
            return false;
        }
        if self.nopass() {
            return true;
        }
        let hash = hash_password(password);
        self.passwords.iter().fold(false, |found, stored| found | constant_time_eq(stored, &hash))
    }

    /// The stored password hashes, as hex (`ACL GETUSER` shows them so).
    pub fn password_hashes(&self) -> impl Iterator<Item = String> + '_ {
        self.passwords.iter().map(|h| hex(h))
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

pub(crate) fn hash_password(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `#`/`!` hash: exactly 64 lower-case hex digits.
fn parse_hash(text: &[u8]) -> Result<[u8; 32], RuleError> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if text.len() != 64 {
        return Err(RuleError::BadHash);
    }
    let mut hash = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        hash[i] = digit(pair[0]).zip(digit(pair[1])).map(|(h, l)| h << 4 | l).ok_or(RuleError::BadHash)?;
    }
    Ok(hash)
}

/// Joins a selector spread over several arguments (`(~a` `+get)`) into one, as Redis's
/// `ACLMergeSelectorArguments` does.
pub(crate) fn merge_selector_arguments<A: AsRef<[u8]>>(args: &[A]) -> Result<Vec<Vec<u8>>, SetUserError> {
    let mut merged = Vec::new();
    // The selector being joined, and the argument it started at (for the error).
    let mut open: Option<(Vec<u8>, &[u8])> = None;
    for arg in args {
        let arg = arg.as_ref();
        if arg.first() == Some(&b'(') && arg.last() != Some(&b')') {
            open = Some((arg.to_vec(), arg));
            continue;
        }
        if let Some((selector, _)) = open.as_mut() {
            selector.push(b' ');
            selector.extend_from_slice(arg);
            if arg.last() == Some(&b')') {
                merged.extend(open.take().map(|(selector, _)| selector));
            }
            continue;
        }
        merged.push(arg.to_vec());
    }
    match open {
        Some((_, at)) => Err(SetUserError::UnmatchedParenthesis { at: at.to_vec() }),
        None => Ok(merged),
    }
}

/// Redis's `sdssplitargs`: blank-separated words, `"..."` with escapes, `'...'`; `None` for
/// unbalanced quotes.
pub(crate) fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let is_space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let hex_value = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while at(i) != 0 && is_space(at(i)) {
            i += 1;
        }
        if at(i) == 0 {
            return Some(words);
        }
        let (mut in_double, mut in_single) = (false, false);
        let mut word = Vec::new();
        loop {
            let c = at(i);
            if in_double {
                if c == b'\\' && at(i + 1) == b'x' && hex_value(at(i + 2)).is_some() && hex_value(at(i + 3)).is_some() {
                    word.push(hex_value(at(i + 2))? * 16 + hex_value(at(i + 3))?);
                    i += 3;
                } else if c == b'\\' && at(i + 1) != 0 {
                    i += 1;
                    word.push(match at(i) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(i + 1) != 0 && !is_space(at(i + 1)) {
                        return None;
                    }
                    i += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    word.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(i + 1) == b'\'' {
                    i += 1;
                    word.push(b'\'');
                } else if c == b'\'' {
                    if at(i + 1) != 0 && !is_space(at(i + 1)) {
                        return None;
                    }
                    i += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    word.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        if c != 0 {
                            i += 1;
                        }
                        break;
                    }
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => word.push(other),
                }
            }
            if at(i) != 0 {
                i += 1;
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_selector_words_as_redis() {
        assert_eq!(split_args(b" ~a  +get ").unwrap(), [b"~a".to_vec(), b"+get".to_vec()]);
        assert_eq!(split_args(b"\"~a b\" '~c\\'d'").unwrap(), [b"~a b".to_vec(), b"~c'd".to_vec()]);
        assert_eq!(split_args(b"\"\\x41\\n\"").unwrap(), [b"A\n".to_vec()]);
        assert_eq!(split_args(b"\"unterminated"), None);
        assert_eq!(split_args(b"\"a\"b"), None);
    }

    #[test]
    fn merges_selectors_spread_over_arguments() {
        let merged = merge_selector_arguments(&["on", "(~a", "+get)", "(+set)"]).unwrap();
        assert_eq!(merged, [b"on".to_vec(), b"(~a +get)".to_vec(), b"(+set)".to_vec()]);
        let error = merge_selector_arguments(&["(~a", "+get"]).unwrap_err();
        assert_eq!(error.reply(), b"ERR Unmatched parenthesis in acl selector starting at '(~a'.");
    }

    #[test]
    fn passwords_are_hashed_and_compared_whole() {
        let catalog = crate::test_catalog::catalog();
        let mut user = User::new(&catalog, b"u");
        user.apply_rules(&catalog, &["on", ">secret"]).unwrap();
        assert!(user.password_matches(b"secret"));
        assert!(!user.password_matches(b"secre"));
        assert_eq!(user.password_hashes().next().unwrap(), hex(&hash_password(b"secret")));
        let error = user.apply_rules(&catalog, &["<nope"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Error in ACL SETUSER modifier '<nope': The password you are trying to remove from the user does not exist"
        );
        user.apply_rules(&catalog, &["off"]).unwrap();
        assert!(!user.password_matches(b"secret"), "a disabled user cannot authenticate");
    }
}
