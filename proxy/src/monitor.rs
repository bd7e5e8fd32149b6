//! `MONITOR`: every command the proxy accepts, from every client, streamed to the clients that
//! asked, in Redis's own line format. The proxy is the one place that sees every client's
//! commands (each Redis node only sees what the proxy sends it), so it answers MONITOR itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;

use crate::clients::PushSender;
use crate::resp::Request;
use crate::table::CommandInfo;

/// The clients in MONITOR mode.
#[derive(Default)]
pub(crate) struct Monitors {
    clients: DashMap<u64, PushSender>,
    /// `clients.len()`, read on every command without touching the map.
    count: AtomicUsize,
}

impl Monitors {
    /// Puts the client behind `push` in MONITOR mode.
    pub(crate) fn add(&self, push: PushSender) {
        if self.clients.insert(push.client().id, push).is_none() {
            self.count.fetch_add(1, Ordering::Release);
        }
    }

    /// Ends MONITOR mode for `client` (it disconnected or sent RESET).
    pub(crate) fn remove(&self, client: u64) {
        if self.clients.remove(&client).is_some() {
            self.count.fetch_sub(1, Ordering::Release);
        }
    }

    /// True while `client` is in MONITOR mode.
    pub(crate) fn has(&self, client: u64) -> bool {
        self.count.load(Ordering::Acquire) > 0 && self.clients.contains_key(&client)
    }

    /// Shows a command that `from` sent in database `db` to every monitoring client. Admin commands are not
    /// shown, as in Redis (they may carry secrets), and the arguments of `AUTH` and `HELLO …
    /// AUTH` are redacted.
    pub(crate) fn feed(&self, db: u8, from: SocketAddr, request: &Request, info: &CommandInfo) {
        if self.count.load(Ordering::Acquire) == 0 || info.flags.admin {
            return;
        }
        let line = monitor_line(SystemTime::now(), db, from, &request.args, redacted(&info.name, &request.args));
        for client in self.clients.iter() {
            client.push(line.clone());
        }
    }
}

/// The positions of the arguments Redis replaces with `(redacted)` in MONITOR output.
fn redacted(name: &str, args: &[Bytes]) -> Vec<usize> {
    match name {
        "auth" => (1..args.len()).collect(),
        "hello" => args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"auth"))
            .map_or_else(Vec::new, |auth| (auth + 1..(auth + 3).min(args.len())).collect()),
        _ => Vec::new(),
    }
}

/// One MONITOR line: `+<seconds>.<microseconds> [<db> <ip:port>] "arg" …`, each argument quoted
/// and escaped as Redis's `sdscatrepr` does.
fn monitor_line(at: SystemTime, db: u8, from: SocketAddr, args: &[Bytes], redacted: Vec<usize>) -> Bytes {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut line = BytesMut::with_capacity(64 + args.iter().map(|a| a.len() + 3).sum::<usize>());
    line.put_slice(format!("+{}.{:06} [{db} {from}]", since_epoch.as_secs(), since_epoch.subsec_micros()).as_bytes());
    for (i, arg) in args.iter().enumerate() {
        line.put_u8(b' ');
        if redacted.contains(&i) {
            line.put_slice(b"\"(redacted)\"");
        } else {
            quote(arg, &mut line);
        }
    }
    line.put_slice(b"\r\n");
    line.freeze()
}

/// `arg` between double quotes, with Redis's escapes; never a raw CR or LF, which would end
/// the simple-string frame.
fn quote(arg: &[u8], out: &mut BytesMut) {
    out.put_u8(b'"');
    for &byte in arg {
        match byte {
            b'\\' => out.put_slice(b"\\\\"),
            b'"' => out.put_slice(b"\\\""),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0x07 => out.put_slice(b"\\a"),
            0x08 => out.put_slice(b"\\b"),
            0x20..=0x7e => out.put_u8(byte),
            _ => out.put_slice(format!("\\x{byte:02x}").as_bytes()),
        }
    }
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(words: &[&[u8]]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::copy_from_slice(w)).collect()
    }

    #[test]
    fn lines_are_redis_format_with_every_byte_escaped() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042);
        let from: SocketAddr = "127.0.0.1:50123".parse().unwrap();
        let line = monitor_line(at, 0, from, &args(&[b"SET", b"k \"q\"", b"a\\b\r\n\t\x07\x08\x00\xff"]), Vec::new());
        assert_eq!(
            &line[..],
            &b"+1700000000.000042 [0 127.0.0.1:50123] \"SET\" \"k \\\"q\\\"\" \"a\\\\b\\r\\n\\t\\a\\b\\x00\\xff\"\r\n"
                [..]
        );
    }

    #[test]
    fn secrets_of_auth_and_hello_are_redacted() {
        assert_eq!(redacted("auth", &args(&[b"AUTH", b"user", b"pw"])), vec![1, 2]);
        assert_eq!(redacted("hello", &args(&[b"HELLO", b"3", b"auth", b"u", b"p", b"SETNAME", b"n"])), vec![3, 4]);
        assert_eq!(redacted("hello", &args(&[b"HELLO", b"3", b"AUTH"])), Vec::<usize>::new());
        assert_eq!(redacted("hello", &args(&[b"HELLO", b"3"])), Vec::<usize>::new());
        assert_eq!(redacted("get", &args(&[b"GET", b"auth"])), Vec::<usize>::new());
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let line = monitor_line(UNIX_EPOCH, 0, from, &args(&[b"AUTH", b"secret"]), vec![1]);
        assert_eq!(&line[..], &b"+0.000000 [0 127.0.0.1:1] \"AUTH\" \"(redacted)\"\r\n"[..]);
        let line = monitor_line(UNIX_EPOCH, 12, from, &args(&[b"GET", b"k"]), Vec::new());
        assert_eq!(&line[..], &b"+0.000000 [12 127.0.0.1:1] \"GET\" \"k\"\r\n"[..]);
    }
}
