//! Nanoseconds per permission check, for a user with 20 key patterns and two selectors, on the
//! catalog of the installed `redis-server` 7.0 (`cargo bench -p memlog-acl --bench check`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use memlog_acl::{check, Users};

fn bench_check(c: &mut Criterion) {
    let redis = support::Redis::start();
    let catalog = redis.catalog();
    drop(redis);
    let mut rules: Vec<String> = (0..18).map(|i| format!("~tenant{i}:*")).collect();
    rules.extend(["%R~shared:*".to_string(), "%W~inbox:*".to_string()]);
    rules.extend(
        ["on", ">secret", "&events:*", "+@all", "-@dangerous", "(~audit:* +@read)", "(%W~log:* +xadd)"]
            .map(String::from),
    );
    let mut users = Users::new(&catalog);
    users.set_user(&catalog, b"app", &rules).unwrap();
    let user = users.get(b"app").unwrap();
    let requests: [(&str, &[&str]); 5] = [
        ("get, last root pattern", &["GET", "tenant17:user:1"]),
        ("set, write-only pattern", &["SET", "inbox:9", "v"]),
        ("get, second selector", &["GET", "audit:2024"]),
        ("mset 4 keys", &["MSET", "tenant0:a", "1", "tenant5:b", "2", "tenant9:c", "3", "tenant17:d", "4"]),
        ("get, denied key", &["GET", "nobody:1"]),
    ];
    let mut group = c.benchmark_group("acl_check");
    for (name, args) in requests {
        let command = catalog.lookup(args).unwrap();
        group.bench_function(name, |b| b.iter(|| black_box(check(user, command, black_box(args)).is_ok())));
    }
    let flushall = ["FLUSHALL"];
    let command = catalog.lookup(&flushall).unwrap();
    group
        .bench_function("flushall, denied command", |b| b.iter(|| check(user, command, black_box(&flushall)).is_err()));
    group.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
