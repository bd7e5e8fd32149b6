//! Databases 1–15 of a standalone endpoint (`mode = "standalone"`), on nodes whose every
//! connection the proxy shares and keeps in database 0.
//!
//! A client's command in database `n ≠ 0` is sent to a node as `SELECT n`, the command,
//! `SELECT 0`, in one batch (or inside the apply batch's `MULTI … EXEC`), and the command's reply
//! is the middle one: the shared connection is back in database 0 before anyone else uses it,
//! and `__memlog:lsn`, which lives in database 0, is set where it always is.
//!
//! A write is journaled in the form
//!
//! ```text
//! __MEMLOG_IN_DB <n> <command> <arg>…
//! ```
//!
//! which the applier expands as above when it applies and when it replays, so a rebuild runs
//! every write in its database. A command in database 0 is journaled and sent as it is, so the
//! journal and the apply batches of database 0 (all of cluster mode) are what they were before
//! databases existed. No client can send the form: the proxy refuses commands its table does
//! not know before they reach a sequencer.
//!
//! `SWAPDB 0 n` moves `__memlog:lsn` into database `n`; the applier deletes it there right after
//! the swap (`lsn_left_in`), and the batch's `SET __memlog:lsn` puts it back in database 0.

use bytes::{Bytes, BytesMut};

use crate::keys::LSN_KEY;
use crate::resp::encode_command;

/// The databases of a standalone Redis 7.0 (`databases 16`).
pub(crate) const COUNT: u8 = 16;

/// The journaled form's command name.
const IN_DB: &[u8] = b"__MEMLOG_IN_DB";

/// `SELECT 0`, sent after every command of another database.
pub(crate) const SELECT_0: &[u8] = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n";

/// A key's name in the sequencer's registries of watched keys and blocked clients, which know
/// names, not databases: the key itself in database 0 (so cluster mode is unchanged), else
/// `__memlog:db:<n>:` and the key, a reserved name no client's key in database 0 can have.
pub(crate) fn registered_key(db: u8, key: &Bytes) -> Bytes {
    if db == 0 {
        return key.clone();
    }
    let mut name = BytesMut::with_capacity(key.len() + 16);
    name.extend_from_slice(format!("__memlog:db:{db}:").as_bytes());
    name.extend_from_slice(key);
    name.freeze()
}

/// The key a command writes in another database than the one it runs in, and that database:
/// `MOVE key db`'s key, `COPY source destination DB db`'s destination.
pub(crate) fn written_elsewhere<'a>(command: &str, args: &'a [Bytes]) -> Option<(u8, &'a Bytes)> {
    let index = |arg: &Bytes| crate::normalize::string2ll(arg).and_then(|i| u8::try_from(i).ok());
    match command {
        "move" => Some((index(args.get(2)?)?, args.get(1)?)),
        "copy" => {
            let at = args.iter().skip(3).position(|a| a.eq_ignore_ascii_case(b"DB"))? + 3;
            Some((index(args.get(at + 1)?)?, args.get(2)?))
        }
        _ => None,
    }
}

/// `SELECT db`
pub(crate) fn select(db: u8) -> Bytes {
    encode_command(&[&b"SELECT"[..], db.to_string().as_bytes()])
}

/// `command` (one RESP command) in the form journaled for database `db`; as it is in db 0.
pub(crate) fn in_db(command: &Bytes, db: u8) -> Bytes {
    if db == 0 {
        return command.clone();
    }
    let Some((count, args)) = header(command) else { return command.clone() };
    let db = db.to_string();
    let mut out = BytesMut::with_capacity(command.len() + 40);
    out.extend_from_slice(format!("*{}\r\n${}\r\n", count + 2, IN_DB.len()).as_bytes());
    out.extend_from_slice(IN_DB);
    out.extend_from_slice(format!("\r\n${}\r\n{db}\r\n", db.len()).as_bytes());
    out.extend_from_slice(args);
    out.freeze()
}

/// True when `command` is in the journaled form (checked without parsing it, as every command
/// the applier sends is).
pub(crate) fn is_in_db(command: &[u8]) -> bool {
    // `*<n>\r\n$14\r\n__MEMLOG_IN_DB\r\n`
    let Some(header_end) = command.iter().take(24).position(|&b| b == b'\n') else { return false };
    command[header_end + 1..].strip_prefix(b"$14\r\n").is_some_and(|rest| rest.starts_with(IN_DB))
}

/// The database and the command of a command in the journaled form; `None` for any other
/// command (database 0).
pub(crate) fn split(command: &Bytes) -> Option<(u8, Bytes)> {
    if !is_in_db(command) {
        return None;
    }
    let (count, rest) = header(command)?;
    let rest = rest.strip_prefix(format!("${}\r\n", IN_DB.len()).as_bytes())?.strip_prefix(IN_DB)?;
    let rest = rest.strip_prefix(b"\r\n$")?;
    let (len, rest) = rest.split_at(rest.iter().position(|&b| b == b'\r')?);
    let len: usize = std::str::from_utf8(len).ok()?.parse().ok()?;
    let rest = rest.strip_prefix(b"\r\n")?;
    let db: u8 = std::str::from_utf8(rest.get(..len)?).ok()?.parse().ok()?;
    let args = rest.get(len..)?.strip_prefix(b"\r\n")?;
    if !(1..COUNT).contains(&db) || count < 3 {
        return None;
    }
    let mut inner = BytesMut::with_capacity(args.len() + 16);
    inner.extend_from_slice(format!("*{}\r\n", count - 2).as_bytes());
    inner.extend_from_slice(args);
    Some((db, inner.freeze()))
}

/// The batch that runs `commands` (back to back) in database `db` on a shared connection:
/// `SELECT db` before them and `SELECT 0` after, as it is in database 0. Returns it and how many
/// replies it adds (`batch_replies` leaves them out again).
pub(crate) fn batch_in(db: u8, commands: Bytes) -> (Bytes, usize) {
    if db == 0 {
        return (commands, 0);
    }
    let mut out = BytesMut::with_capacity(commands.len() + 48);
    out.extend_from_slice(&select(db));
    out.extend_from_slice(&commands);
    out.extend_from_slice(SELECT_0);
    (out.freeze(), 2)
}

/// The replies of the commands of a `batch_in(db, …)` batch, out of all its replies.
pub(crate) fn batch_replies(db: u8, mut replies: Vec<Bytes>) -> Vec<Bytes> {
    if db != 0 && replies.len() >= 2 {
        replies.pop();
        replies.remove(0);
    }
    replies
}

/// For `SWAPDB 0 n` (or `SWAPDB n 0`) with `n` another database: `n`, which holds
/// `__memlog:lsn` after the swap. `None` for any other command, and for a `SWAPDB` Redis refuses.
pub(crate) fn lsn_left_in(command: &[u8]) -> Option<u8> {
    let rest = command.strip_prefix(b"*3\r\n$6\r\n")?;
    if !rest.get(..6)?.eq_ignore_ascii_case(b"SWAPDB") {
        return None;
    }
    let mut buf = BytesMut::from(command);
    let limits = crate::resp::Limits { max_bulk_len: 64, max_args: 3 };
    let request = crate::resp::RequestParser::default().next(&mut buf, limits).ok()??;
    // Redis's reading of an index (`getIntFromObjectOrReply`), then its range check.
    let index = |arg: &[u8]| crate::normalize::string2ll(arg).and_then(|i| u8::try_from(i).ok()).filter(|&i| i < COUNT);
    match (index(&request.args[1])?, index(&request.args[2])?) {
        (0, other) | (other, 0) if other != 0 => Some(other),
        _ => None,
    }
}

/// `SELECT n`, `DEL __memlog:lsn`, `SELECT 0`: what follows a `SWAPDB` that moved the LSN into
/// database `n` (three commands, whose replies nobody reads).
pub(crate) fn delete_moved_lsn(db: u8) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&select(db));
    out.extend_from_slice(&encode_command(&[&b"DEL"[..], LSN_KEY]));
    out.extend_from_slice(SELECT_0);
    out.freeze()
}

/// `*<count>\r\n` and what follows it.
fn header(command: &[u8]) -> Option<(usize, &[u8])> {
    let rest = command.strip_prefix(b"*")?;
    let end = rest.iter().position(|&b| b == b'\r')?;
    let count = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    Some((count, rest[end..].strip_prefix(b"\r\n")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::Request;

    #[test]
    fn a_command_in_another_database_is_journaled_with_it_and_found_again() {
        let set = Request::from_args(&["SET", "k", "v"]).raw;
        assert_eq!(in_db(&set, 0), set, "database 0 is journaled as it always was");
        let wrapped = in_db(&set, 12);
        assert_eq!(wrapped, encode_command(&["__MEMLOG_IN_DB", "12", "SET", "k", "v"]));
        assert_eq!(split(&wrapped), Some((12, set.clone())));
        assert_eq!(split(&in_db(&set, 3)), Some((3, set.clone())));
        assert_eq!(split(&set), None);
        assert!(is_in_db(&wrapped) && !is_in_db(&set));
        // Only databases 1–15 are a journaled form.
        assert_eq!(split(&encode_command(&["__MEMLOG_IN_DB", "0", "SET", "k", "v"])), None);
        assert_eq!(split(&encode_command(&["__MEMLOG_IN_DB", "16", "SET", "k", "v"])), None);
        assert_eq!(split(&encode_command(&["__MEMLOG_IN_DB", "3"])), None);
    }

    #[test]
    fn a_batch_runs_in_its_database_and_returns_to_0() {
        let get = encode_command(&["GET", "k"]);
        assert_eq!(batch_in(0, get.clone()), (get.clone(), 0), "database 0 as it is");
        let (batch, added) = batch_in(5, get.clone());
        assert_eq!(added, 2);
        assert_eq!(batch, [&select(5)[..], &get[..], SELECT_0].concat());
        let replies = |n: usize| (0..n).map(|i| Bytes::from(format!("r{i}"))).collect::<Vec<_>>();
        assert_eq!(batch_replies(5, replies(3)), ["r1"]);
        assert_eq!(batch_replies(0, replies(1)), ["r0"]);
    }

    #[test]
    fn move_and_copy_write_in_another_database() {
        let args = |a: &[&str]| a.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect::<Vec<_>>();
        let (k, d) = (Bytes::from_static(b"k"), Bytes::from_static(b"d"));
        assert_eq!(written_elsewhere("move", &args(&["MOVE", "k", "4"])), Some((4, &k)));
        assert_eq!(written_elsewhere("move", &args(&["MOVE", "k", "x"])), None);
        assert_eq!(written_elsewhere("copy", &args(&["COPY", "k", "d", "REPLACE", "db", "9"])), Some((9, &d)));
        assert_eq!(written_elsewhere("copy", &args(&["COPY", "k", "d"])), None);
        assert_eq!(written_elsewhere("set", &args(&["SET", "k", "DB", "3"])), None);
    }

    #[test]
    fn a_key_is_registered_under_its_database() {
        let key = Bytes::from_static(b"k");
        assert_eq!(registered_key(0, &key), key);
        assert_eq!(registered_key(7, &key), Bytes::from_static(b"__memlog:db:7:k"));
        assert_ne!(registered_key(7, &key), registered_key(1, &Bytes::from_static(b"7:k")));
        assert!(registered_key(3, &key).starts_with(crate::keys::RESERVED_PREFIX));
    }

    #[test]
    fn a_swap_with_database_0_leaves_the_lsn_in_the_other_database() {
        let swap = |a: &str, b: &str| lsn_left_in(&encode_command(&["SWAPDB", a, b]));
        assert_eq!(swap("0", "5"), Some(5));
        assert_eq!(lsn_left_in(&encode_command(&["swapdb", "15", "0"])), Some(15));
        assert_eq!(swap("0", "0"), None);
        assert_eq!(swap("1", "2"), None);
        assert_eq!(swap("0", "16"), None, "refused by Redis: nothing moved");
        assert_eq!(swap("0", "01"), None, "not an integer to Redis");
        assert_eq!(lsn_left_in(&encode_command(&["SET", "0", "5"])), None);
    }
}
