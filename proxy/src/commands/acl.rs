//! `ACL …` about the proxy's users, which clients authenticate as and every request is checked
//! against (`access`). Replies are Redis 7.0's, built by the `memlog-acl` crate. A change is
//! written to the metadata store before it takes effect; `ACL SAVE` has nothing left to do and
//! `ACL LOAD` reloads the store. `ACL GENPASS` goes to Redis, which has a random source.
//!
//! As in Redis 7.0, removing a user (`DELUSER`, or `LOAD` when the store no longer has it)
//! closes its connections, and taking a channel away from a user closes those of its
//! connections subscribed to a channel it may no longer use.

use bytes::Bytes;
use memlog_acl::{category_commands, category_names, subscription_survives, DryRun, User, Value};

use crate::context::ClientCtx;
use crate::replies::Pending;
use crate::resp::{reply, ReplyWriter};

const HELP: &[&str] = &[
    "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CAT [<category>]",
    "    List all commands that belong to <category>, or all command categories",
    "    when no category is specified.",
    "DELUSER <username> [<username> ...]",
    "    Delete a list of users.",
    "DRYRUN <username> <command> [<arg> ...]",
    "    Returns whether the user can execute the given command without executing the command.",
    "GETUSER <username>",
    "    Get the user's details.",
    "GENPASS [<bits>]",
    "    Generate a secure 256-bit user password. The optional `bits` argument can",
    "    be used to specify a different size.",
    "LIST",
    "    Show users details in config file format.",
    "LOAD",
    "    Reload users from the metadata store.",
    "LOG [<count> | RESET]",
    "    Show the ACL log entries.",
    "SAVE",
    "    Users are stored in the metadata store as they change: nothing to do.",
    "SETUSER <username> <attribute> [<attribute> ...]",
    "    Create or modify a user with the specified attributes.",
    "USERS",
    "    List all the registered usernames.",
    "WHOAMI",
    "    Return the current connection username.",
    "HELP",
    "    Prints this help.",
];

pub(crate) async fn run(d: &mut ClientCtx, sub: &str, args: &[Bytes]) -> Pending {
    let proxy = d.proxy.clone();
    let access = &proxy.access;
    let proto = d.proto();
    let value = |value: Value| Pending::Ready(reply(proto, |w| write_value(w, &value)));
    match sub {
        "whoami" => {
            let user = d.client.user.lock().unwrap().clone();
            value(Value::bulk(user))
        }
        "users" => value(Value::Array(access.users().names().map(Value::bulk).collect())),
        "list" => value(Value::Array(access.users().list(access.catalog()).into_iter().map(Value::Bulk).collect())),
        "getuser" => value(access.users().getuser_reply(access.catalog(), &args[2])),
        "cat" => match args.get(2) {
            None => value(Value::Array(category_names().iter().map(|c| Value::bulk(*c)).collect())),
            Some(category) => match category_commands(access.catalog(), category) {
                Ok(names) => value(Value::Array(names.into_iter().map(Value::bulk).collect())),
                Err(error) => Pending::error(&String::from_utf8_lossy(&error)),
            },
        },
        "dryrun" => match access.users().dryrun(access.catalog(), &args[2], &args[3..]) {
            DryRun::Allowed => value(Value::Simple("OK".into())),
            DryRun::Denied(text) => value(Value::Bulk(text)),
            DryRun::Error(error) => Pending::error(&String::from_utf8_lossy(&error)),
        },
        "log" => match args.get(2) {
            None => value(access.log_reply(None)),
            Some(arg) if arg.eq_ignore_ascii_case(b"reset") => {
                access.log_reset();
                value(Value::Simple("OK".into()))
            }
            Some(arg) => match crate::resp::parse_int(arg) {
                Some(count) => value(access.log_reply(Some(count))),
                None => Pending::error("ERR value is not an integer or out of range"),
            },
        },
        "setuser" => match access.set_user(&args[2], &args[3..]).await {
            Ok((Some(before), after)) => {
                close_revoked_subscribers(d, &before, &after);
                value(Value::Simple("OK".into()))
            }
            Ok((None, _)) => value(Value::Simple("OK".into())),
            Err(error) => Pending::error(&String::from_utf8_lossy(&error)),
        },
        "deluser" => match access.del_users(&args[2..]).await {
            Ok(removed) => {
                let count = removed.0.len() as i64;
                close_connections_of(d, &removed.0);
                value(Value::Integer(count))
            }
            Err(error) => Pending::error(&String::from_utf8_lossy(&error)),
        },
        "load" => match access.load().await {
            Ok(removed) => {
                close_connections_of(d, &removed.0);
                value(Value::Simple("OK".into()))
            }
            Err(error) => Pending::error(&format!("ERR {error}")),
        },
        "save" => value(Value::Simple("OK".into())),
        "help" => value(Value::Array(HELP.iter().map(|line| Value::Simple(line.to_string())).collect())),
        _ => Pending::error(&format!("ERR memlog: no local handler for 'acl|{sub}'")),
    }
}

/// Closes every connection authenticated as one of `users` (this client's own after its reply).
fn close_connections_of(d: &mut ClientCtx, users: &[Vec<u8>]) {
    close_where(d, |client| users.iter().any(|u| u.as_slice() == client.user.lock().unwrap().as_bytes()));
}

/// After `ACL SETUSER` changed `before` into `after`: the user's connections subscribed to a
/// channel or pattern it may no longer use are closed (Redis 7.0).
fn close_revoked_subscribers(d: &mut ClientCtx, before: &User, after: &User) {
    let Some(survives) = subscription_survives(before, after) else { return };
    let name = String::from_utf8_lossy(after.name()).into_owned();
    let hub = d.proxy.pubsub.clone();
    close_where(d, |client| {
        *client.user.lock().unwrap() == name
            && hub.subscriptions_of(client.id).iter().any(|(name, pattern)| !survives(name, *pattern))
    });
}

fn close_where(d: &mut ClientCtx, closes: impl Fn(&crate::clients::ClientHandle) -> bool) {
    for client in d.proxy.clients.iter() {
        if !closes(client.value()) {
            continue;
        }
        if client.id == d.client.id {
            d.close_after_reply = true;
        } else {
            client.kill.cancel();
        }
    }
}

/// Writes a reply of the ACL crate in the client's protocol (maps flattened and doubles as bulk
/// strings for RESP2, as Redis 7.0 sends them).
fn write_value(w: &mut ReplyWriter, value: &Value) {
    match value {
        Value::Bulk(bytes) => {
            w.bulk(bytes);
        }
        Value::Simple(text) => {
            w.simple(text);
        }
        Value::Error(text) => {
            w.error(text);
        }
        Value::Integer(n) => {
            w.int(*n);
        }
        Value::Double(x) => {
            w.double(*x);
        }
        Value::Null => {
            w.null();
        }
        Value::Array(items) => {
            w.array(items.len());
            items.iter().for_each(|item| write_value(w, item));
        }
        Value::Set(items) => {
            w.set(items.len());
            items.iter().for_each(|item| write_value(w, item));
        }
        Value::Map(pairs) => {
            w.map(pairs.len());
            for (key, value) in pairs {
                write_value(w, key);
                write_value(w, value);
            }
        }
    }
}
