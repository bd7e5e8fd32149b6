//! The Grafana dashboards in `deploy/grafana/` may only use metric names the binary exports:
//! a dashboard panel over a misspelt or renamed metric shows "No data" exactly when someone
//! needs it. The proxy's names are checked against a real scrape of a real `memlog proxy` in
//! front of a real Redis, after traffic that makes every proxy metric appear (ok and failing
//! commands, a connection over `maxclients`, a backend that dies).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, memlog_bin, spawn_journal, spawn_listening, spawn_redis};
use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `memlog_…` metric name in any dashboard in deploy/grafana/: in query expressions,
/// template variables (`label_values(…)`) and descriptions alike.
fn dashboard_metric_names() -> BTreeSet<String> {
    let dir = repo_root().join("deploy/grafana");
    let mut names = BTreeSet::new();
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            dashboards += 1;
            let json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()), "{} has no panels", path.display());
            let mut strings = Vec::new();
            collect_strings(&json, "", &mut strings);
            assert!(strings.iter().any(|(key, _)| key == "expr"), "{} has no PromQL expressions", path.display());
            for (_, text) in strings {
                names.extend(metric_names_in(&text));
            }
        }
    }
    assert!(dashboards > 0, "no dashboards in {}", dir.display());
    names
}

/// Names in `wanted` that the scrape lacks. A histogram's family name (as a description may
/// say `memlog_command_duration_seconds`) counts as exported when its `_bucket` series is.
fn not_exported<'a>(wanted: &'a BTreeSet<String>, exposed: &BTreeSet<String>) -> Vec<&'a String> {
    wanted.iter().filter(|name| !exposed.contains(*name) && !exposed.contains(&format!("{name}_bucket"))).collect()
}

/// Every string in a JSON document with the key it is stored under, however deeply nested.
fn collect_strings(value: &Value, key: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(text) => out.push((key.to_string(), text.clone())),
        Value::Object(map) => map.iter().for_each(|(k, v)| collect_strings(v, k, out)),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, key, out)),
        _ => {}
    }
}

/// Identifiers starting with `memlog_` in a PromQL expression.
fn metric_names_in(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("memlog_") {
        let preceded_by_ident = rest[..start].chars().next_back().is_some_and(is_ident);
        let tail = &rest[start..];
        let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !preceded_by_ident {
            names.push(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// The metric names with at least one sample in a Prometheus text exposition.
fn exposed_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to /metrics");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// A raw RESP connection, so the test depends on no client library's behaviour.
struct Resp {
    reader: BufReader<TcpStream>,
}

impl Resp {
    /// Connects and waits until the connection is served (answers PING), retrying while an
    /// earlier, already-closed connection (the start-up probe) may still count against maxclients.
    fn connect_served(addr: SocketAddr) -> Resp {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut conn = Resp::connect(addr);
            let pong = conn.call(&["PING"]);
            if pong == "+PONG" {
                return conn;
            }
            assert!(Instant::now() < deadline, "proxy does not serve a connection: {pong}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn connect(addr: SocketAddr) -> Resp {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to proxy");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Resp { reader: BufReader::new(stream) }
    }

    /// Sends one command and returns its reply's first line (plus the bulk payload, if any),
    /// or "<closed>" if the proxy closed the connection.
    fn call(&mut self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        if self.reader.get_mut().write_all(request.as_bytes()).is_err() {
            return "<closed>".into();
        }
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => return "<closed>".into(),
            Ok(_) => {}
        }
        let line = line.trim_end().to_string();
        match line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(len) => {
                let mut payload = vec![0; len + 2];
                self.reader.read_exact(&mut payload).expect("bulk payload");
                String::from_utf8_lossy(&payload[..len]).into_owned()
            }
            None => line,
        }
    }
}

/// Polls the scrape until `wanted` all appear (metrics may be recorded just after a reply).
fn wait_for_names(metrics: SocketAddr, wanted: &BTreeSet<String>) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposed = exposed_names(&scrape(metrics));
        if wanted.is_subset(&exposed) || Instant::now() > deadline {
            return exposed;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dashboards_use_only_metric_names_the_proxy_exports() {
    let wanted: BTreeSet<String> =
        dashboard_metric_names().into_iter().filter(|n| !n.starts_with("memlog_journal_")).collect();
    assert!(!wanted.is_empty(), "the dashboards chart no proxy metric");

    let tmp = tempfile::tempdir().unwrap();
    let mut redis = spawn_redis(tmp.path(), &[]);
    // A journal and snapshots after every entry, so the snapshot metrics have samples.
    let journal = spawn_journal(&tmp.path().join("journal"), 0);
    let (port, metrics_port) = (free_port(), free_port());
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let config = tmp.path().join("memlog.toml");
    let maxclients = 2;
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\nmetrics_listen = \"{metrics}\"\nmaxclients = {maxclients}\n\
             backend_timeout_ms = 2000\n\n[journal]\nnodes = [\"{}\"]\nmetadata = \"file:{}\"\n\
             write_wait_ms = 1000\n\n[failover]\nhold_ms = 1000\n\n[snapshot]\ndir = \"{}\"\nevery_entries = 1\n\n\
             [[shards]]\nslots = \"0-16383\"\nprimary = \"{}\"\n{}",
            journal.addr,
            tmp.path().join("metadata.json").display(),
            tmp.path().join("snapshots").display(),
            redis.addr,
            common::cluster_tls::proxy_toml()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(memlog_bin());
    cmd.arg("proxy").arg("--config").arg(&config);
    // The proxy reads every MEMLOG_… variable as a config key; keep the caller's out.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MEMLOG_") {
            cmd.env_remove(key);
        }
    }
    let _proxy = spawn_listening("memlog-proxy", cmd, listen, &tmp.path().join("proxy.log"));

    // Successful and failing commands, through one client; a second client fills maxclients.
    let mut client = Resp::connect_served(listen);
    assert_eq!(client.call(&["SET", "deploy-metrics", "v"]), "+OK");
    assert_eq!(client.call(&["GET", "deploy-metrics"]), "v");
    assert!(client.call(&["INCR", "deploy-metrics"]).starts_with("-ERR"), "INCR of a non-integer must fail");
    let _second = Resp::connect_served(listen);
    // Over maxclients: refused, which the rejected-connections counter must show.
    let mut third = Resp::connect(listen);
    let refused = third.call(&["PING"]);
    assert!(refused == "<closed>" || refused.starts_with("-ERR max number of clients"), "{refused}");

    // The write above is one journal entry beyond no snapshot: one is taken.
    let snapshot_metrics = BTreeSet::from(["memlog_snapshot_lsn".to_string()]);
    assert!(wait_for_names(metrics, &snapshot_metrics).is_superset(&snapshot_metrics), "no snapshot was taken");

    // A backend that dies: the next command to it fails and counts as a backend error.
    redis.kill9();
    let reply = client.call(&["GET", "deploy-metrics"]);
    assert!(reply.starts_with('-') || reply == "<closed>", "GET with its Redis dead answered {reply:?}");

    let exposed = wait_for_names(metrics, &wanted);
    let missing = not_exported(&wanted, &exposed);
    assert!(
        missing.is_empty(),
        "dashboards use metric names the proxy does not export: {missing:?}\nexported: {exposed:?}\nproxy log:\n{}",
        std::fs::read_to_string(tmp.path().join("proxy.log")).unwrap_or_default()
    );
}

/// The journal's names are checked against a real scrape of `memlog journal --metrics-listen`
/// after appends that succeed, one refused by fencing, and one whose fsync fails (the node's
/// `MEMLOG_FAILPOINT` fault injection), so every journal metric has a sample.
#[cfg_attr(not(feature = "failpoints"), ignore = "needs `--features failpoints` (scripts/test enables it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_use_only_metric_names_the_journal_exports() {
    let wanted: BTreeSet<String> =
        dashboard_metric_names().into_iter().filter(|n| n.starts_with("memlog_journal_")).collect();
    assert!(!wanted.is_empty(), "the dashboards chart no journal metric");

    let tmp = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let mut cmd = Command::new(memlog_bin());
    cmd.arg("journal").arg("--dir").arg(tmp.path().join("node")).arg("--listen").arg(listen.to_string());
    cmd.arg("--metrics-listen").arg(metrics.to_string()).args(common::cluster_tls::journal_args());
    // Two data fsyncs succeed, then every one fails.
    cmd.env("MEMLOG_FAILPOINT", "fsync-after=2");
    let _journal = spawn_listening("memlog-journal", cmd, listen, &tmp.path().join("journal.log"));

    let client = journal_service::NodeClient::new(listen, common::cluster_tls::proxy_transport());
    let entry = |epoch: u64, lsn: u64| journal_service::Entry {
        epoch,
        lsn,
        timestamp_ms: 1_700_000_000_000 + lsn,
        commit_lsn: lsn - 1,
        payload: format!("*1\r\n$4\r\nPING\r\n#{lsn}").into_bytes().into(),
    };
    client.append("shard-0", entry(1, 1)).await.expect("first append");
    client.append("shard-0", entry(1, 2)).await.expect("second append");
    client.fence("shard-0", 2).await.expect("fence at epoch 2");
    assert!(client.append("shard-0", entry(1, 3)).await.is_err(), "a fenced epoch may not append");
    assert!(client.append("shard-0", entry(2, 3)).await.is_err(), "an append whose fsync fails must fail");

    let exposed = tokio::task::spawn_blocking({
        let wanted = wanted.clone();
        move || wait_for_names(metrics, &wanted)
    })
    .await
    .unwrap();
    let missing = not_exported(&wanted, &exposed);
    assert!(
        missing.is_empty(),
        "dashboards use metric names the journal node does not export: {missing:?}\nexported: {exposed:?}"
    );
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let expr = "histogram_quantile(0.99, sum by (le) (rate(memlog_command_duration_seconds_bucket{command=~\"get\"}[1m]))) / x_memlog_not";
    assert_eq!(metric_names_in(expr), vec!["memlog_command_duration_seconds_bucket"]);
    let body = "# TYPE memlog_connected_clients gauge\nmemlog_connected_clients 3\nmemlog_commands_total{command=\"get\",result=\"ok\"} 1\n";
    assert_eq!(
        exposed_names(body),
        BTreeSet::from(["memlog_connected_clients".to_string(), "memlog_commands_total".to_string()])
    );
}

/// The example config in deploy/ is one the proxy accepts (keys, slot coverage).
#[test]
fn example_config_in_deploy_loads() {
    let cfg = memlog_proxy::config::ProxyConfig::load(Some(&repo_root().join("deploy/memlog.toml")))
        .expect("deploy/memlog.toml must load");
    assert_eq!(cfg.shards.len(), 3);
    assert_eq!(cfg.metrics_listen.as_deref(), Some("0.0.0.0:9121"));
    let parameters = cfg.parameter_entries();
    assert_eq!(parameters.get("hash-max-listpack-entries").map(String::as_str), Some("128"));
    assert_eq!(parameters.get("maxmemory-policy").map(String::as_str), Some("volatile-lru"));
}
