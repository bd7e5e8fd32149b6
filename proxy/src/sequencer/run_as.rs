//! Scripts and functions run on the node with their caller's permissions (README, "Scripts and
//! functions run with their caller's permissions"). Redis checks every `redis.call` of a script
//! against the user who called it; the node, though, only knows memlog's own `[backend]` user,
//! which may do everything. So a call by a restricted user is journaled in a form that carries
//! the caller's rules as they were when it ran:
//!
//! ```text
//! __MEMLOG_RUN_AS <n> <rule 1> … <rule n> EVAL <script> <numkeys> <key>… <arg>…
//! ```
//!
//! and the applier sends it to the node (when applying and when replaying, so a rebuild applies
//! the same permissions at the same point in history) as
//!
//! ```text
//! ACL SETUSER __memlog_script_caller reset on #<hash of this proxy's secret>
//! ACL SETUSER __memlog_script_caller <rule 1> … <rule n>
//! AUTH __memlog_script_caller <secret>
//! EVAL <script> <numkeys> <key>… <arg>…
//! AUTH <backend user> <backend password>
//! ```
//!
//! inside the batch's `MULTI … EXEC`: Redis 7.0 checks each queued command against the user at
//! the time EXEC runs it, so the script runs as the caller, and `AUTH` itself needs no
//! permission (`CMD_NO_AUTH`), so the switch back always works. The order fails closed: the
//! first `SETUSER` (which cannot fail) leaves a user that may do nothing, so if the node refused
//! the caller's rules the script is denied, not run with memlog's rights. The secret is made at
//! start and never journaled; the user's password changes with every proxy process.
//!
//! The applier sends the journaled form of a command of another database (`databases`) the
//! same way: expanded into `SELECT n`, the command (itself maybe a run-as call), `SELECT 0`; and
//! a `SWAPDB` that moved `__memlog:lsn` out of database 0 followed by its deletion there.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::backend::BackendAuth;
use crate::databases;
use crate::keys::SCRIPT_CALLER_USER as CALLER;
use crate::resp::{encode_command, Request};

/// The journaled form's command name. No client can send it: the proxy refuses commands its
/// table does not know before they reach a sequencer.
const RUN_AS: &[u8] = b"__MEMLOG_RUN_AS";

/// Commands a run-as call is sent as, and which of them is the call.
const SENT: usize = 5;
const CALL_AT: usize = 3;

/// `call` (EVAL…, FCALL…) to run with `rules` (the caller's, `memlog_acl::User::node_rules`).
/// The request's arguments stay the call's, so its keys are found as usual; what is journaled
/// and applied (`raw`) is the run-as form.
pub(crate) fn run_as(call: Request, rules: &[Vec<u8>]) -> Request {
    let mut args: Vec<&[u8]> = Vec::with_capacity(2 + rules.len() + call.args.len());
    let count = rules.len().to_string();
    args.push(RUN_AS);
    args.push(count.as_bytes());
    args.extend(rules.iter().map(Vec::as_slice));
    args.extend(call.args.iter().map(|a| &a[..]));
    Request { raw: encode_command(&args), args: call.args }
}

/// How the applier sends run-as calls: with a secret of this process's.
pub(super) struct RunAs {
    /// `ACL SETUSER` of the caller user: enabled, this process's password, no permissions.
    reset: Bytes,
    /// `AUTH` as the caller user.
    to_caller: Bytes,
    /// `AUTH` back to the `[backend]` user.
    back: Bytes,
}

/// Where a command's reply is among the replies of what it was sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    pub count: usize,
    pub reply_at: usize,
    /// Where the user switches of a run-as call start (their replies are checked).
    pub run_as_at: Option<usize>,
}

impl Sent {
    /// Sent as it is.
    const AS_IS: Sent = Sent { count: 1, reply_at: 0, run_as_at: None };
}

impl RunAs {
    /// True when `command` (one RESP command) is a run-as call.
    pub(super) fn is_run_as(command: &[u8]) -> bool {
        // `*<n>\r\n$15\r\n__MEMLOG_RUN_AS\r\n`
        let Some(header_end) = command.iter().position(|&b| b == b'\n') else { return false };
        command[header_end + 1..].starts_with(b"$15\r\n") && command[header_end + 6..].starts_with(RUN_AS)
    }

    /// True when `command` is sent as more than itself: a run-as call, a command of another
    /// database, a `SWAPDB` with database 0.
    pub(super) fn expands(command: &[u8]) -> bool {
        RunAs::is_run_as(command) || databases::is_in_db(command) || databases::lsn_left_in(command).is_some()
    }

    pub(super) fn new(backend: Option<&BackendAuth>) -> RunAs {
        // A node without a password has `default` with `nopass`: any password is accepted.
        let (user, password) = match backend {
            Some(auth) => (auth.user.as_deref().unwrap_or("default"), auth.password.as_str()),
            None => ("default", "memlog"),
        };
        let secret = crate::backend::random_secret();
        let hash: String = Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        RunAs {
            reset: encode_command(&["ACL", "SETUSER", CALLER, "reset", "on", &format!("#{hash}")]),
            to_caller: encode_command(&["AUTH", CALLER, &secret]),
            back: encode_command(&["AUTH", user, password]),
        }
    }

    /// Appends `command` to `out` as it is sent to the node.
    pub(super) fn append(&self, command: &Bytes, out: &mut BytesMut) -> Sent {
        if let Some((db, inner)) = databases::split(command) {
            out.extend_from_slice(&databases::select(db));
            let inner = self.append(&inner, out);
            out.extend_from_slice(databases::SELECT_0);
            return Sent {
                count: inner.count + 2,
                reply_at: inner.reply_at + 1,
                run_as_at: inner.run_as_at.map(|at| at + 1),
            };
        }
        if let Some(db) = databases::lsn_left_in(command) {
            out.extend_from_slice(command);
            out.extend_from_slice(&databases::delete_moved_lsn(db));
            return Sent { count: 4, reply_at: 0, run_as_at: None };
        }
        if !RunAs::is_run_as(command) {
            out.extend_from_slice(command);
            return Sent::AS_IS;
        }
        let Some((rules, call)) = parse(command) else {
            // Not from this proxy's `run_as`: sent as it is, the node refuses the unknown command.
            out.extend_from_slice(command);
            return Sent::AS_IS;
        };
        out.extend_from_slice(&self.reset);
        let mut setuser: Vec<&[u8]> = vec![b"ACL", b"SETUSER", CALLER.as_bytes()];
        setuser.extend(rules.iter().map(|r| &r[..]));
        out.extend_from_slice(&encode_command(&setuser));
        out.extend_from_slice(&self.to_caller);
        out.extend_from_slice(&encode_command(&call));
        out.extend_from_slice(&self.back);
        Sent { count: SENT, reply_at: CALL_AT, run_as_at: Some(0) }
    }

    /// Appends `commands` to `out`; returns what each was sent as.
    pub(super) fn append_all<'a>(
        &self,
        commands: impl IntoIterator<Item = &'a Bytes>,
        out: &mut BytesMut,
    ) -> Vec<Sent> {
        commands.into_iter().map(|command| self.append(command, out)).collect()
    }
}

/// The rules and the call of a run-as command.
fn parse(command: &Bytes) -> Option<(Vec<Bytes>, Vec<Bytes>)> {
    let args = Request::reparse(command)?.args;
    let count: usize = std::str::from_utf8(args.get(1)?).ok()?.parse().ok()?;
    let rules = args.get(2..2 + count)?.to_vec();
    let call = args.get(2 + count..).filter(|call| !call.is_empty())?.to_vec();
    Some((rules, call))
}

/// The replies a client gets, out of the replies to what `sent` describes.
pub(super) fn own_replies(sent: &[Sent], mut replies: Vec<Bytes>) -> Vec<Bytes> {
    if sent.iter().all(|s| s.count == 1) {
        return replies;
    }
    let mut own = Vec::with_capacity(sent.len());
    let mut at = 0;
    for s in sent {
        if let Some(switches) = s.run_as_at {
            // The switches to and from the caller (the caller's own rules may be refused: the
            // call is then denied, failing closed).
            for switch in [0, 2, 4] {
                if let Some(bad) = replies.get(at + switches + switch).filter(|r| !r.starts_with(b"+OK")) {
                    tracing::error!(reply = %String::from_utf8_lossy(bad).trim(), "a node refused switching a script to its caller's user");
                }
            }
        }
        let reply = replies.get_mut(at + s.reply_at).map(std::mem::take).unwrap_or_default();
        own.push(reply);
        at += s.count;
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{RequestParser, NO_LIMITS};

    /// The commands in what was sent, each as its arguments.
    fn sent_commands(mut out: BytesMut) -> Vec<Vec<String>> {
        let mut parser = RequestParser::default();
        let mut commands = Vec::new();
        while let Some(request) = parser.next(&mut out, NO_LIMITS).unwrap() {
            commands.push(request.args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect());
        }
        commands
    }

    #[test]
    fn a_run_as_call_keeps_its_arguments_and_is_sent_as_its_caller() {
        let call = Request::from_args(&["EVAL", "return 1", "1", "k"]);
        let rules = vec![b"~app:*".to_vec(), b"(~x +get)".to_vec()];
        let wrapped = run_as(call.clone(), &rules);
        assert_eq!(wrapped.args, call.args);
        assert!(RunAs::is_run_as(&wrapped.raw) && !RunAs::is_run_as(&call.raw));

        let backend = BackendAuth { user: Some("memlog".into()), password: "pw".into() };
        let run_as = RunAs::new(Some(&backend));
        let mut out = BytesMut::new();
        let sent = run_as.append_all([&call.raw, &wrapped.raw, &call.raw], &mut out);
        assert_eq!(sent, [Sent::AS_IS, Sent { count: 5, reply_at: 3, run_as_at: Some(0) }, Sent::AS_IS]);
        let commands = sent_commands(out);
        assert_eq!(commands.len(), 7);
        assert_eq!(commands[1][..5], ["ACL", "SETUSER", CALLER, "reset", "on"]);
        assert_eq!(commands[2], ["ACL", "SETUSER", CALLER, "~app:*", "(~x +get)"]);
        assert_eq!(commands[3][..2], ["AUTH", CALLER]);
        let hash: String = Sha256::digest(commands[3][2].as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(commands[1][5], format!("#{hash}"));
        assert_eq!(commands[4], ["EVAL", "return 1", "1", "k"]);
        assert_eq!(commands[5], ["AUTH", "memlog", "pw"]);

        let replies: Vec<Bytes> = (0..7).map(|i| Bytes::from(format!("r{i}"))).collect();
        assert_eq!(own_replies(&sent, replies), ["r0", "r4", "r6"]);
    }

    #[test]
    fn a_command_of_another_database_runs_in_it_and_a_swap_with_database_0_leaves_no_lsn_behind() {
        let sender = RunAs::new(None);
        let set = Request::from_args(&["SET", "k", "v"]).raw;
        let in_3 = databases::in_db(&set, 3);
        let swap = encode_command(&["SWAPDB", "0", "4"]);
        let call = run_as(Request::from_args(&["EVAL", "return 1", "0"]), &[b"~*".to_vec()]);
        let call_in_2 = databases::in_db(&call.raw, 2);
        let mut out = BytesMut::new();
        let sent = sender.append_all([&set, &in_3, &swap, &call_in_2], &mut out);
        assert_eq!(
            sent,
            [
                Sent::AS_IS,
                Sent { count: 3, reply_at: 1, run_as_at: None },
                Sent { count: 4, reply_at: 0, run_as_at: None },
                Sent { count: 7, reply_at: 4, run_as_at: Some(1) },
            ]
        );
        let commands = sent_commands(out);
        let names: Vec<String> = commands.iter().map(|c| c[..c.len().min(2)].join(" ")).collect();
        assert_eq!(
            names,
            [
                "SET k",
                "SELECT 3",
                "SET k",
                "SELECT 0",
                "SWAPDB 0",
                "SELECT 4",
                "DEL __memlog:lsn",
                "SELECT 0",
                "SELECT 2",
                "ACL SETUSER",
                "ACL SETUSER",
                "AUTH __memlog_script_caller",
                "EVAL return 1",
                "AUTH default",
                "SELECT 0",
            ]
        );
        let replies: Vec<Bytes> = (0..15).map(|i| Bytes::from(format!("r{i}"))).collect();
        assert_eq!(own_replies(&sent, replies), ["r0", "r2", "r4", "r12"]);
    }
}
