//! The engine against a stock `redis-server` 7.0 given the same users and requests: `ACL CAT`,
//! `ACL SETUSER` errors, `ACL LIST` and `ACL GETUSER` byte for byte, and a property test of
//! random rules and random commands checked against `ACL DRYRUN`.

mod support;

use std::cell::RefCell;
use std::time::Instant;

use memlog_acl::{category_commands, category_names, Catalog, Users, CATEGORY_NAMES};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::generators::{command_strategy, dryrun_reply, rule_pools, rules_strategy, Outcomes};
use support::resp::{Conn, Value as Resp};
use support::{to_resp2, Redis};

fn bulk_list(items: &[&str]) -> Resp {
    Resp::Array(Some(items.iter().map(|s| Resp::Bulk(Some(s.as_bytes().to_vec()))).collect()))
}

#[test]
fn acl_cat_lists_the_same_commands_in_the_same_order() {
    let redis = Redis::start();
    let catalog = redis.catalog();
    let mut conn = redis.conn();
    assert_eq!(conn.cmd(&["ACL", "CAT"]).unwrap(), bulk_list(category_names()));
    for category in CATEGORY_NAMES {
        let ours = category_commands(&catalog, category.to_uppercase().as_bytes()).unwrap();
        let theirs = conn.cmd(&["ACL", "CAT", category]).unwrap();
        assert_eq!(theirs.text(), bulk_list(&ours).text(), "ACL CAT {category}");
    }
    let unknown = conn.cmd(&["ACL", "CAT", "nosuch"]).unwrap();
    assert_eq!(unknown, Resp::Error(String::from_utf8(category_commands(&catalog, b"nosuch").unwrap_err()).unwrap()));
}

/// Rule strings of every kind, valid and not, each applied to a fresh user on both sides.
const RULE_SETS: &[&str] = &[
    "on >secret ~app:* &app:* +@all -@dangerous",
    "on nopass allkeys allchannels allcommands",
    "reset",
    "",
    "ON NOPASS ALLKEYS +GET +@READ ~K*",
    "+@read -get +config|get ~a* %R~r* %W~w*",
    "%R~x %W~x %R~y %RW~z %wr~v",
    "%RW~* &* -@all",
    "+select|0 +select|1 +SELECT|1",
    "+select|0 +select",
    "+@all -config +config|get -debug",
    "+@all -@write +set",
    "-@all +@hash +@string -hset",
    "+@slow",
    "+@admin -@dangerous",
    "+config -config|set",
    "+client -client|kill +acl|whoami +acl|cat",
    "+@all -@keyspace -@read -@write -@set -@sortedset -@list -@hash -@string",
    "-@all +@keyspace +@read +@write +@set +@sortedset +@list +@hash +@string +@bitmap +@hyperloglog +@geo",
    "allkeys resetkeys ~x",
    "&a &b resetchannels &c &c",
    ">a >b <a >c",
    ">a >a",
    "#2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
    "#2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b !2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
    "on >p nopass",
    "on >p resetpass",
    "skip-sanitize-payload",
    "sanitize-payload off",
    "(~a* +get) (%R~b* +@read &ch*)",
    "( ~a* +get )",
    "(~a* +set %W~w*) clearselectors (+get)",
    "+get (+set ~k*) ~r*",
    "(\"~a b\")",
    "(~'q' +get)",
    "(~\"x)",
    "()",
    "%R",
    "~a allkeys ~b",
    "&* &x",
    "(allchannels &x)",
    "+nosuch",
    "-nosuch",
    "+@nosuch",
    "-get|foo",
    "+config|get|x",
    "+config|nosuch",
    "-config|nosuch",
    "+get|",
    "+config|",
    "+",
    "-",
    "+@",
    "bogus",
    "#abc",
    "#2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B",
    "<notthere",
    "!2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
    "(+get",
    "~a (+get ~b",
    "(on)",
    "(reset)",
    "%X~a",
    "%RR~a",
    "~a\tb",
];

#[test]
fn setuser_getuser_and_list_are_byte_identical() {
    let redis = Redis::start();
    let catalog = redis.catalog();
    let mut conn = redis.conn();
    let mut users = Users::new(&catalog);
    for (i, rules) in RULE_SETS.iter().enumerate() {
        let name = format!("u{i}");
        let rules: Vec<&str> = rules.split(' ').filter(|r| !r.is_empty()).collect();
        let mut command = vec!["ACL", "SETUSER", &name];
        command.extend(&rules);
        let theirs = conn.cmd(&command).unwrap();
        let ours = match users.set_user(&catalog, name.as_bytes(), &rules) {
            Ok(_) => Resp::Simple("OK".into()),
            Err(e) => Resp::Error(String::from_utf8(e.reply()).unwrap()),
        };
        assert_eq!(ours, theirs, "ACL SETUSER {name} {rules:?}");
        let theirs = conn.cmd(&["ACL", "GETUSER", &name]).unwrap();
        assert_eq!(to_resp2(&users.getuser_reply(&catalog, name.as_bytes())), theirs, "ACL GETUSER after {rules:?}");
    }
    let ours = Resp::Array(Some(users.list(&catalog).into_iter().map(|l| Resp::Bulk(Some(l))).collect()));
    assert_eq!(ours, conn.cmd(&["ACL", "LIST"]).unwrap());
    assert_eq!(conn.cmd(&["ACL", "SETUSER", "a b"]).unwrap(), Resp::Error(setuser_error(&mut users, &catalog, "a b")));
    assert_eq!(
        conn.cmd(&["ACL", "DELUSER", "u1", "default"]).unwrap().text(),
        users.del_users(&["u1", "default"]).unwrap_err()
    );
}

fn setuser_error(users: &mut Users, catalog: &Catalog, name: &str) -> String {
    let error = users.set_user::<&str>(catalog, name.as_bytes(), &[]).unwrap_err();
    String::from_utf8(error.reply()).unwrap()
}

#[test]
fn auth_accepts_and_refuses_as_redis() {
    let redis = Redis::start();
    let catalog = redis.catalog();
    let mut admin = redis.conn();
    let mut users = Users::new(&catalog);
    let setups: &[&[&str]] =
        &[&["on", ">pw1", ">pw2"], &["off", ">pw1"], &["on", "nopass"], &["on"], &["on", ">pw1", "<pw1"]];
    for (i, rules) in setups.iter().enumerate() {
        let name = format!("auth{i}");
        let mut command = vec!["ACL", "SETUSER", &name];
        command.extend(rules.iter());
        assert_eq!(admin.cmd(&command).unwrap().text(), "OK");
        users.set_user(&catalog, name.as_bytes(), rules).unwrap();
        for password in ["pw1", "pw2", "", "wrong"] {
            let theirs = redis.conn().cmd(&["AUTH", &name, password]).unwrap();
            let ours = users.authenticate(name.as_bytes(), password.as_bytes());
            match ours {
                Ok(_) => assert_eq!(theirs.text(), "OK", "{name} {password}"),
                Err(_) => assert_eq!(theirs, Resp::Error(memlog_acl::AuthError::REPLY.into()), "{name} {password}"),
            }
        }
    }
    let theirs = redis.conn().cmd(&["AUTH", "nosuch", "x"]).unwrap();
    assert_eq!(theirs, Resp::Error(memlog_acl::AuthError::REPLY.into()));
    assert!(users.authenticate(b"nosuch", b"x").is_err());
}

fn cases() -> u32 {
    std::env::var("ACL_PARITY_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(10_000)
}

#[test]
fn random_rules_and_commands_match_acl_dryrun() {
    let redis = Redis::start();
    let catalog = redis.catalog();
    let pools = rule_pools(&catalog);
    let strategy = (rules_strategy(&pools), command_strategy(&catalog));
    let conn = RefCell::new(redis.conn());
    let users = RefCell::new(Users::new(&catalog));
    let outcomes = RefCell::new(Outcomes::default());
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    let started = Instant::now();
    TestRunner::new(config)
        .run(&strategy, |(rules, request)| {
            compare_one(&catalog, &mut conn.borrow_mut(), &mut users.borrow_mut(), &rules, &request, &outcomes)
        })
        .unwrap();
    let outcomes = outcomes.into_inner();
    let total = cases();
    println!("{total} cases in {:.1} s: {outcomes:?}", started.elapsed().as_secs_f64());
    outcomes.assert_balanced(total);
}

fn compare_one(
    catalog: &Catalog,
    conn: &mut Conn,
    users: &mut Users,
    rules: &[String],
    request: &[String],
    outcomes: &RefCell<Outcomes>,
) -> Result<(), TestCaseError> {
    let mut outcomes = outcomes.borrow_mut();
    let mut rules_with_reset = vec!["reset".to_string()];
    rules_with_reset.extend(rules.iter().cloned());
    let mut setuser = vec!["ACL".to_string(), "SETUSER".into(), "u".into()];
    setuser.extend(rules_with_reset.iter().cloned());
    let theirs = conn.cmd(&setuser).unwrap();
    match users.set_user(catalog, b"u", &rules_with_reset) {
        Ok(_) => prop_assert_eq!(theirs.text(), "OK", "rules {:?}", rules),
        Err(e) => {
            outcomes.rule_errors += 1;
            prop_assert_eq!(theirs, Resp::Error(String::from_utf8(e.reply()).unwrap()), "rules {:?}", rules);
        }
    }
    let theirs = conn.cmd(&["ACL", "GETUSER", "u"]).unwrap();
    let ours = to_resp2(&users.getuser_reply(catalog, b"u"));
    prop_assert!(ours == theirs, "GETUSER after {:?}:\n ours {}\n redis {}", rules, ours.text(), theirs.text());

    let mut dryrun = vec!["ACL".to_string(), "DRYRUN".into(), "u".into()];
    dryrun.extend(request.iter().cloned());
    let theirs = dryrun_reply(conn.cmd(&dryrun).unwrap());
    let ours = users.dryrun(catalog, b"u", request);
    prop_assert_eq!(&ours, &theirs, "rules {:?} request {:?}", rules, request);
    outcomes.count(&ours);
    Ok(())
}
