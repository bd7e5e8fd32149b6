//! `ACL …` about the proxy's own users. Clients authenticate against the proxy, whose users are
//! its `[[users]]` (a password each, every command, key and channel allowed); the Redis nodes
//! behind it have users of their own that clients never see. So the proxy answers the
//! subcommands that read its users, and refuses those that would change them (the
//! configuration is where users live). `ACL CAT` and `ACL GENPASS` go to Redis, which knows
//! its command categories and has a random source.

use sha2::{Digest, Sha256};

use crate::context::ClientCtx;
use crate::replies::Pending;
use crate::resp::reply;

pub(crate) fn run(d: &mut ClientCtx, sub: &str) -> Pending {
    match sub {
        "whoami" => {
            let user = d.client.user.lock().unwrap().clone();
            Pending::Ready(reply(d.proto(), |w| {
                w.bulk(user.as_bytes());
            }))
        }
        "users" => {
            let names = user_rules(d).into_iter().map(|(name, _)| name).collect::<Vec<_>>();
            Pending::Ready(reply(d.proto(), |w| {
                w.array(names.len());
                for name in &names {
                    w.bulk(name.as_bytes());
                }
            }))
        }
        "list" => {
            let users = user_rules(d);
            Pending::Ready(reply(d.proto(), |w| {
                w.array(users.len());
                for (name, password) in &users {
                    w.bulk(describe(name, password.as_deref()).as_bytes());
                }
            }))
        }
        _ => Pending::error(&format!("ERR memlog: no local handler for 'acl|{sub}'")),
    }
}

/// Every user and its password, sorted by name as Redis lists them; without `[[users]]`, the
/// `default` user with no password, as in a stock Redis.
fn user_rules(d: &ClientCtx) -> Vec<(String, Option<String>)> {
    let mut users: Vec<(String, Option<String>)> =
        d.proxy.cfg.users.iter().map(|u| (u.name.clone(), Some(u.password.clone()))).collect();
    if users.is_empty() {
        users.push(("default".into(), None));
    }
    users.sort();
    users
}

/// A user as Redis 7's `ACL LIST` describes one allowed everything: its password as a SHA-256
/// hash, never in clear.
fn describe(name: &str, password: Option<&str>) -> String {
    let password = match password {
        None => "nopass".to_string(),
        Some(password) => {
            let hash = Sha256::digest(password.as_bytes());
            format!("#{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    };
    format!("user {name} on {password} ~* &* +@all")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_described_as_redis_acl_list_does() {
        assert_eq!(describe("default", None), "user default on nopass ~* &* +@all");
        // As redis-server 7.0 shows `ACL SETUSER app on >password ~* &* +@all`.
        assert_eq!(
            describe("app", Some("password")),
            "user app on #5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8 ~* &* +@all"
        );
    }
}
