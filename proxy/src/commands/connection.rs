//! Connection commands the proxy answers itself: PING, ECHO, QUIT, RESET, SELECT, HELLO, AUTH,
//! READONLY/READWRITE/ASKING, TIME, ROLE.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use memlog_acl::AuthError;

use crate::config::Mode;
use crate::context::ClientCtx;
use crate::replies::Pending;
use crate::resp::{reply, Proto, Request};

pub(crate) fn run(d: &mut ClientCtx, name: &str, request: &Request) -> Pending {
    let args = &request.args;
    let proto = d.proto();
    let ready = |build: &dyn Fn(&mut crate::resp::ReplyWriter)| Pending::Ready(reply(proto, |w| build(w)));
    match name {
        "ping" if d.pubsub.in_subscriber_mode(proto) => super::pubsub::subscriber_ping(request),
        "ping" => match args.get(1) {
            None => ready(&|w| {
                w.simple("PONG");
            }),
            Some(msg) => ready(&|w| {
                w.bulk(msg);
            }),
        },
        "echo" => ready(&|w| {
            w.bulk(&args[1]);
        }),
        "quit" | "readonly" | "readwrite" | "asking" => ready(&|w| {
            w.simple("OK");
        }),
        "reset" => {
            d.proxy.monitors.remove(d.client.id);
            crate::commands::transaction::reset(d);
            super::pubsub::reset(d);
            // RESET ends tracking too, as Redis's `clearClientConnectionState`.
            d.proxy.tracker.disable(d.client.id);
            set_proto(d, Proto::Resp2);
            d.client.set_db(0);
            *d.client.name.lock().unwrap() = None;
            *d.client.user.lock().unwrap() = "default".into();
            (d.replies_off, d.skip_next_reply) = (false, false);
            d.authenticated = !d.proxy.access.auth_required();
            if let Err(message) = certificate_login(d) {
                d.close_after_reply = true;
                return Pending::error(&message);
            }
            Pending::Ready(reply(Proto::Resp2, |w| {
                w.simple("RESET");
            }))
        }
        "select" => match select(d.proxy.cfg.mode, &args[1]) {
            Ok(db) => {
                d.client.set_db(db);
                ready(&|w| {
                    w.simple("OK");
                })
            }
            Err(error) => Pending::error(error),
        },
        "time" => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            ready(&|w| {
                w.array(2).bulk(now.as_secs().to_string().as_bytes()).bulk(now.subsec_micros().to_string().as_bytes());
            })
        }
        "role" => ready(&|w| {
            w.array(3).bulk(b"master").int(0).array(0);
        }),
        "auth" => {
            let (user, password) = match args.len() {
                2 => (&b"default"[..], &args[1]),
                _ => (&args[1][..], &args[2]),
            };
            let default_nopass = d.proxy.access.users().get(b"default").is_some_and(|u| u.nopass());
            if default_nopass && args.len() == 2 {
                return Pending::error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
            }
            match authenticate(d, user, password, &args[0]) {
                Ok(()) => ready(&|w| {
                    w.simple("OK");
                }),
                Err(msg) => Pending::error(msg),
            }
        }
        "hello" => hello(d, request),
        _ => Pending::error(&format!("ERR memlog: no local handler for '{name}'")),
    }
}

/// `SELECT index`: the database selected, or the error of Redis 7.0 in the endpoint's mode (a
/// Redis Cluster has database 0 only).
pub(super) fn select(mode: Mode, index: &[u8]) -> Result<u8, &'static str> {
    const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
    match mode {
        Mode::Cluster => match crate::resp::parse_int(index).ok_or(NOT_AN_INTEGER)? {
            0 => Ok(0),
            _ => Err("ERR SELECT is not allowed in cluster mode"),
        },
        Mode::Standalone => {
            // Redis reads the index as a `long long`, then wants a C `int`
            // (`getIntFromObjectOrReply`).
            let index = crate::normalize::string2ll(index).ok_or(NOT_AN_INTEGER)?;
            let index = i32::try_from(index)
                .map_err(|_| "ERR value is out of range, value must between -2147483648 and 2147483647")?;
            u8::try_from(index).ok().filter(|&db| db < crate::databases::COUNT).ok_or("ERR DB index is out of range")
        }
    }
}

/// Authenticates the client as `user` (a failure is counted and logged to `ACL LOG` under
/// `command`, the command as the client spelt it).
fn authenticate(d: &mut ClientCtx, user: &[u8], password: &[u8], command: &[u8]) -> Result<(), &'static str> {
    let client_info = d.client_info();
    d.proxy.access.authenticate(user, password, command, &client_info).map_err(|_| AuthError::REPLY)?;
    d.authenticated = true;
    *d.client.user.lock().unwrap() = String::from_utf8_lossy(user).into_owned();
    Ok(())
}

/// Logs the client in as the user its TLS certificate names, if it names one: refused (and
/// counted and logged as a failed `AUTH`) when that user does not exist or is off.
pub(crate) fn certificate_login(d: &mut ClientCtx) -> Result<(), String> {
    let Some(user) = d.certificate_user.clone() else { return Ok(()) };
    let client_info = d.client_info();
    d.proxy.access.certificate_login(user.as_bytes(), &client_info).map_err(|_| {
        format!("WRONGPASS the TLS client certificate names user '{user}', which does not exist or is disabled")
    })?;
    d.authenticated = true;
    *d.client.user.lock().unwrap() = user;
    Ok(())
}

fn set_proto(d: &mut ClientCtx, proto: Proto) {
    d.client.set_proto(proto);
}

/// A client name may not hold spaces or control characters, as in Redis.
pub(crate) fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`
fn hello(d: &mut ClientCtx, request: &Request) -> Pending {
    let args = &request.args;
    let mut proto = d.proto();
    if let Some(version) = args.get(1) {
        proto = match crate::resp::parse_int(version) {
            Some(2) => Proto::Resp2,
            Some(3) => Proto::Resp3,
            Some(_) => return Pending::error("NOPROTO sorry, this protocol version is not supported."),
            None => return Pending::error("ERR Protocol version is not an integer or out of range"),
        };
    }
    let mut i = 2;
    let mut auth: Option<(Bytes, Bytes)> = None;
    let mut name: Option<Bytes> = None;
    while i < args.len() {
        let more = args.len() - i - 1;
        if args[i].eq_ignore_ascii_case(b"auth") && more >= 2 {
            auth = Some((args[i + 1].clone(), args[i + 2].clone()));
            i += 3;
        } else if args[i].eq_ignore_ascii_case(b"setname") && more >= 1 {
            name = Some(args[i + 1].clone());
            i += 2;
        } else {
            return Pending::error(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            ));
        }
    }
    if let Some((user, password)) = auth {
        if let Err(msg) = authenticate(d, &user, &password, &args[0]) {
            return Pending::error(msg);
        }
    }
    if !d.authenticated {
        return Pending::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if let Some(name) = name {
        if !valid_client_name(&name) {
            return Pending::error("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        *d.client.name.lock().unwrap() = Some(String::from_utf8_lossy(&name).into_owned());
    }
    set_proto(d, proto);
    let version = d.proxy.redis_version.clone();
    let id = d.client.id as i64;
    Pending::Ready(reply(proto, |w| {
        w.map(7);
        w.bulk(b"server").bulk(b"redis");
        w.bulk(b"version").bulk(version.as_bytes());
        w.bulk(b"proto").int(if proto == Proto::Resp3 { 3 } else { 2 });
        w.bulk(b"id").int(id);
        w.bulk(b"mode").bulk(b"standalone");
        w.bulk(b"role").bulk(b"master");
        w.bulk(b"modules").array(0);
    }))
}
