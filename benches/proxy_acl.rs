//! What an ACL user costs on the data path: `redis-benchmark` GET and SET through one `memlog
//! proxy`, alternating between `default` (`+@all ~*`, the cheapest check) and a user with 20
//! key patterns (the keys match only the 20th) and a selector, in one run. The figure is the
//! ratio user/default of the medians of interleaved rounds (issue 12's bench; the permission
//! check alone is `cargo bench -p memlog-acl --bench check`).
//!
//! ```text
//! cargo bench --bench proxy_acl                        # ~4 s per measurement
//! MEMLOG_BENCH_QUICK=1 cargo bench --bench proxy_acl   # a short run for a loaded machine
//! MEMLOG_BENCH_ROUNDS=5 cargo bench --bench proxy_acl  # more interleaved rounds (default 3)
//! ```

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{ensure, Result};

use support::{Client, Settings, Target, Workload};

/// The user with many patterns, and its (throwaway) password.
const USER: &str = "tenant";
const PASSWORD: &str = "bench-pw";

/// 19 patterns redis-benchmark's keys (`key:…`) do not match, then one they do; a selector for
/// another key space; every command.
fn tenant_rules() -> String {
    let misses: Vec<String> = (0..19).map(|i| format!("~app{i}:*")).collect();
    format!("on >{PASSWORD} {} ~key:* &* +@all (+get ~other:*)", misses.join(" "))
}

fn main() -> Result<()> {
    let Settings { quick, rounds } = Settings::from_env()?;
    let dir = tempfile::tempdir()?;
    let redis_addr = support::free_addr();
    let redis = support::start_redis(redis_addr, dir.path(), support::NO_PERSISTENCE)?;
    // `default` open, and the tenant.
    let users = format!(
        "[[users]]\nname = \"default\"\nrules = \"on nopass ~* &* +@all\"\n[[users]]\nname = \"{USER}\"\nrules = \"{}\"\n",
        tenant_rules()
    );
    let (proxy_addr, proxy) = support::start_routing_proxy(dir.path(), redis_addr, &users)?;
    check_login(proxy_addr)?;
    println!("memlog proxy {proxy_addr} in front of {redis_addr}; {rounds} interleaved rounds, quick={quick}");
    println!("user {USER}: {}", tenant_rules().replace(PASSWORD, "…"));

    let scale = if quick { 10 } else { 1 };
    let pids = vec![proxy.pid(), redis.pid()];
    let mut rows = Vec::new();
    for (test, pipeline, requests) in
        [("set", 1, 250_000), ("get", 1, 250_000), ("set", 16, 1_500_000), ("get", 16, 1_500_000)]
    {
        let workload = Workload { test, pipeline };
        let requests = requests / scale;
        let targets = [
            Target { name: "default", addr: proxy_addr, requests, pids: pids.clone(), client: Client::default() },
            Target {
                name: USER,
                addr: proxy_addr,
                requests,
                pids: pids.clone(),
                client: Client { login: Some((USER, PASSWORD)), ..Client::default() },
            },
        ];
        let medians = support::interleaved(&workload, &targets, rounds)?;
        rows.push((test, pipeline, medians[0], medians[1]));
    }
    println!(
        "\n{:<5} {:>8} {:>14} {:>14} {:>13} {:>12} {:>12}",
        "test", "pipeline", "default ops/s", "tenant ops/s", "tenant/default", "default p50", "tenant p50"
    );
    for (test, pipeline, default, tenant) in rows {
        println!(
            "{:<5} {:>8} {:>14.0} {:>14.0} {:>13.2} {:>10.3}ms {:>10.3}ms",
            test.to_uppercase(),
            pipeline,
            default.ops_per_sec,
            tenant.ops_per_sec,
            tenant.ops_per_sec / default.ops_per_sec,
            default.p50_ms,
            tenant.p50_ms
        );
    }
    Ok(())
}

/// The tenant may SET and GET redis-benchmark's keys, and no other (so its runs measure served
/// requests, not refusals).
fn check_login(proxy: SocketAddr) -> Result<()> {
    let cli = |args: &[&str]| -> Result<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &proxy.port().to_string(), "--user", USER, "--pass", PASSWORD, "--no-auth-warning"])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    ensure!(cli(&["SET", "key:000000000001", "v"])? == "OK", "the tenant cannot SET key:…");
    ensure!(cli(&["GET", "key:000000000001"])? == "v", "the tenant cannot GET key:…");
    let denied = cli(&["SET", "elsewhere", "v"])?;
    ensure!(denied.starts_with("NOPERM"), "the tenant may write any key: {denied}");
    Ok(())
}
