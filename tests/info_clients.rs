//! INFO, SLOWLOG, LATENCY, CONFIG RESETSTAT and the CLIENT subcommands the proxy answers itself
//! (issue 13), against a stock `redis-server` 7.0 started by the test and through memlog:
//! INFO's field names section by section, replies compared where they are deterministic, and
//! the values INFO derives from the cluster (the keyspace and memory summed over the primaries,
//! the proxy's own command counts). A peer that has not authenticated can neither reset the
//! statistics nor pause the clients.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{redis_conn, ClusterOptions, DurableCluster, CLIENT_TIMEOUT};
use common::pair::{cmd, connect, Pair};
use common::resp::{Conn, Value};

fn ok() -> Value {
    Value::Simple("OK".into())
}

/// INFO's text as (section title, [(field, value)]) in order.
fn sections(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.split("\r\n") {
        if let Some(title) = line.strip_prefix("# ") {
            out.push((title.to_string(), Vec::new()));
        } else if let Some((field, value)) = line.split_once(':') {
            out.last_mut().expect("a field before any section").1.push((field.to_string(), value.to_string()));
        }
    }
    out
}

fn info(conn: &mut Conn, args: &[&str]) -> String {
    let mut full = vec!["INFO"];
    full.extend_from_slice(args);
    match cmd(conn, &full) {
        Value::Bulk(Some(text)) => String::from_utf8(text).unwrap(),
        other => panic!("INFO {args:?}: {other:?}"),
    }
}

fn field(text: &str, name: &str) -> String {
    sections(text)
        .into_iter()
        .flat_map(|(_, fields)| fields)
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .1
}

fn number(text: &str, name: &str) -> i64 {
    field(text, name).parse().unwrap_or_else(|_| panic!("{name} is not a number in {text}"))
}

/// The same traffic to both: calls, a failed call, a rejected call, errors of two kinds.
fn traffic(conn: &mut Conn) {
    assert_eq!(cmd(conn, &["CONFIG", "RESETSTAT"]), ok());
    cmd(conn, &["SET", "k", "v"]);
    cmd(conn, &["GET", "k"]);
    cmd(conn, &["GET", "missing"]);
    assert!(cmd(conn, &["LPUSH", "k", "x"]).is_error());
    assert!(cmd(conn, &["INCR", "k"]).is_error());
    assert!(cmd(conn, &["GET"]).is_error());
}

/// The field names of `text`, section by section; the dynamic sections as sets.
fn names(text: &str) -> Vec<(String, Vec<String>)> {
    sections(text)
        .into_iter()
        .map(|(title, fields)| {
            let mut names: Vec<String> = fields.into_iter().map(|(n, _)| n).collect();
            if matches!(title.as_str(), "Commandstats" | "Errorstats" | "Latencystats") {
                names.sort();
            }
            (title, names)
        })
        .collect()
}

#[test]
fn info_has_the_fields_of_stock_redis_section_by_section() {
    // With an append-only file, as memlog journals every write (`aof_enabled:1`).
    let pair = Pair::start_with(&["--appendonly", "yes"]);
    let mut conns = pair.addrs().map(connect);
    for conn in &mut conns {
        traffic(conn);
    }
    let requests: &[&[&str]] = &[
        &[],
        &["everything"],
        &["all"],
        &["default"],
        &["server"],
        &["clients"],
        &["memory"],
        &["persistence"],
        &["stats"],
        &["replication"],
        &["cpu"],
        &["modules"],
        &["commandstats"],
        &["errorstats"],
        &["latencystats"],
        &["cluster"],
        &["keyspace"],
        &["server", "keyspace", "Stats"],
        &["nosuchsection"],
    ];
    for request in requests {
        let [stock, memlog] = [0, 1].map(|i| info(&mut conns[i], request));
        assert_eq!(names(&memlog), names(&stock), "INFO {request:?}:\n{memlog}\n--- stock ---\n{stock}");
        assert_eq!(memlog.matches("\r\n\r\n").count(), stock.matches("\r\n\r\n").count(), "INFO {request:?} layout");
    }
    // What describes the Redis build the shards run is the stock server's.
    let [stock, memlog] = [0, 1].map(|i| info(&mut conns[i], &["server", "memory"]));
    for name in ["redis_version", "redis_git_sha1", "redis_build_id", "gcc_version", "arch_bits", "mem_allocator"] {
        assert_eq!(field(&memlog, name), field(&stock, name), "{name}");
    }
    // What the traffic counted, as stock Redis counts it.
    let [stock, memlog] = [0, 1].map(|i| info(&mut conns[i], &["commandstats", "errorstats"]));
    for line in ["cmdstat_get", "cmdstat_set", "cmdstat_lpush", "cmdstat_incr", "errorstat_ERR", "errorstat_WRONGTYPE"]
    {
        let counts = |text: &str| {
            field(text, line).split(',').filter(|kv| !kv.starts_with("usec")).collect::<Vec<_>>().join(",")
        };
        assert_eq!(counts(&memlog), counts(&stock), "{line}");
    }
    // CLIENT INFO: Redis 7.0's fields in its order.
    let client_fields = |conn: &mut Conn| -> Vec<String> {
        cmd(conn, &["CLIENT", "INFO"])
            .text()
            .split_whitespace()
            .map(|kv| kv.split('=').next().unwrap().to_string())
            .collect()
    };
    let [stock, memlog] = [0, 1].map(|i| client_fields(&mut conns[i]));
    assert_eq!(memlog, stock, "CLIENT INFO fields");
}

#[test]
fn info_values_describe_the_cluster() {
    let cluster = DurableCluster::start(ClusterOptions {
        journal_nodes: 1,
        shards: 2,
        snapshot_every: Some(20),
        ..Default::default()
    });
    let mut conn = cluster.client();
    assert_eq!(field(&info(&mut conn, &["persistence"]), "rdb_saves"), "0");
    assert_eq!(cmd(&mut conn, &["CONFIG", "RESETSTAT"]), ok());
    for i in 0..50 {
        assert_eq!(cmd(&mut conn, &["SET", &format!("key:{i}"), &"x".repeat(1000)]), ok());
    }
    for i in 0..10 {
        cmd(&mut conn, &["EXPIRE", &format!("key:{i}"), "1000"]);
        cmd(&mut conn, &["GET", &format!("missing:{i}")]);
    }
    let text = info(&mut conn, &["everything"]);
    // The keyspace: the primaries summed, memlog's own key left out.
    let Value::Int(dbsize) = cmd(&mut conn, &["DBSIZE"]) else { panic!("DBSIZE") };
    assert_eq!(dbsize, 50);
    let db0 = field(&text, "db0");
    assert!(db0.starts_with(&format!("keys={dbsize},expires=10,avg_ttl=")), "{db0}");
    let per_node: i64 = (0..2)
        .map(|s| {
            let mut node = redis_conn(cluster.redis_addr(s)).unwrap();
            let Value::Int(keys) = cmd(&mut node, &["DBSIZE"]) else { panic!("DBSIZE") };
            keys - 1 // memlog's own `__memlog:lsn`
        })
        .sum();
    assert_eq!(per_node, dbsize);
    // Commands as the proxy counted them.
    assert!(field(&text, "cmdstat_set").starts_with("calls=50,"), "{text}");
    assert!(field(&text, "cmdstat_expire").starts_with("calls=10,"), "{text}");
    assert!(field(&text, "latency_percentiles_usec_set").starts_with("p50="), "{text}");
    assert!(number(&text, "total_commands_processed") >= 71, "{text}");
    // The server is the proxy.
    assert_eq!(number(&text, "tcp_port"), cluster.proxy_addr().port() as i64);
    let run_id = field(&text, "run_id");
    assert!(run_id.len() == 40 && run_id.bytes().all(|b| b.is_ascii_hexdigit()), "{run_id}");
    assert!(field(&text, "executable").ends_with("memlog"), "{text}");
    assert!(field(&text, "config_file").ends_with("proxy.toml"), "{text}");
    assert_eq!(field(&text, "redis_mode"), "cluster");
    assert_eq!(number(&text, "arch_bits"), 64);
    assert_eq!(field(&text, "aof_enabled"), "1");
    assert_eq!(field(&text, "role"), "master");
    // Persistence: the journal, and the snapshots each shard took beyond 20 entries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let persistence = loop {
        let persistence = info(&mut conn, &["persistence"]);
        if number(&persistence, "rdb_saves") >= 2 {
            break persistence;
        }
        assert!(Instant::now() < deadline, "no snapshot of each shard: {persistence}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(field(&persistence, "rdb_last_bgsave_status"), "ok");
    assert!(number(&persistence, "rdb_last_save_time") > 0);
    assert!(number(&persistence, "rdb_changes_since_last_save") < 70, "{persistence}");
    // Nodes' figures summed over the primaries.
    let mut nodes: Vec<Conn> = (0..2).map(|s| redis_conn(cluster.redis_addr(s)).unwrap()).collect();
    for node in &mut nodes {
        assert_ne!(field(&info(node, &["server"]), "run_id"), run_id);
    }
    let misses: i64 = nodes.iter_mut().map(|n| number(&info(n, &["stats"]), "keyspace_misses")).sum();
    let text = info(&mut conn, &["stats", "memory"]);
    assert_eq!(number(&text, "keyspace_misses"), misses);
    let node_memory: Vec<i64> = nodes.iter_mut().map(|n| number(&info(n, &["memory"]), "used_memory")).collect();
    let used = number(&text, "used_memory");
    let sum: i64 = node_memory.iter().sum();
    // Each node's figure moves a little between two reads (client buffers): within 5%.
    assert!((used - sum).abs() * 20 < sum, "used_memory {used} vs the primaries' {node_memory:?}");
    let human = field(&text, "used_memory_human");
    assert!(human.ends_with('M') || human.ends_with('K'), "{human}");
    // connected_clients is the proxy's client table, as CLIENT LIST shows it (connections of
    // the start-up check may still be leaving: read both until they agree).
    let mut others = [cluster.client(), cluster.client()];
    for other in &mut others {
        assert_eq!(cmd(other, &["PING"]), Value::Simple("PONG".into()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let connected = number(&info(&mut conn, &["clients"]), "connected_clients");
        let listed = cmd(&mut conn, &["CLIENT", "LIST"]).text().lines().count() as i64;
        if connected == listed && connected >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "connected_clients {connected}, CLIENT LIST {listed}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // INFO memlog only on request.
    assert!(!info(&mut conn, &["everything"]).contains("# Memlog"));
    let memlog = info(&mut conn, &["memlog"]);
    assert_eq!(number(&memlog, "shards"), 2);

    // CONFIG RESETSTAT: the proxy's figures and every node's.
    assert!(cmd(&mut conn, &["INCR", "key:1"]).is_error());
    for node in &mut nodes {
        assert_eq!(cmd(node, &["SET", "node-local", "v"]), ok());
        assert!(cmd(node, &["LPUSH", "node-local", "x"]).is_error());
    }
    assert_eq!(cmd(&mut conn, &["CONFIG", "RESETSTAT"]), ok());
    let text = info(&mut conn, &["commandstats", "errorstats", "persistence"]);
    assert!(!text.contains("cmdstat_set") && !text.contains("errorstat_"), "{text}");
    assert_eq!(field(&text, "rdb_saves"), "0");
    for node in &mut nodes {
        let errors = info(node, &["errorstats"]);
        assert!(!errors.contains("errorstat_WRONGTYPE"), "{errors}");
        let _ = cmd(node, &["DEL", "node-local"]);
    }
}

#[test]
fn client_reply_off_skip_and_on_as_stock() {
    let pair = Pair::start_with(&["--appendonly", "yes"]);
    pair.same("CLIENT REPLY", |addr| {
        let mut conn = connect(addr);
        for args in [
            &["CLIENT", "REPLY", "OFF"][..],
            &["SET", "reply:a", "1"],
            &["GET", "reply:a"],
            &["CLIENT", "REPLY", "SKIP"],
            &["NOSUCHCOMMAND"],
            &["CLIENT", "REPLY", "ON"],
            &["GET", "reply:a"],
            &["CLIENT", "REPLY", "SKIP"],
            &["SET", "reply:b", "2"],
            &["GET", "reply:b"],
            &["CLIENT", "REPLY", "MAYBE"],
            &["CLIENT", "NO-EVICT", "ON"],
            &["CLIENT", "NO-EVICT", "maybe"],
            &["CLIENT", "PAUSE", "abc"],
            &["CLIENT", "PAUSE", "-1"],
            &["CLIENT", "PAUSE", "10", "SOME"],
            &["CLIENT", "KILL", "USER", "nosuchuser"],
            &["CLIENT", "KILL", "ADDR", "10.0.0.1:1"],
            &["CLIENT", "KILL", "10.0.0.1:1"],
            &["CLIENT", "KILL", "ID", "0"],
            &["SLOWLOG", "HELP"],
            &["SLOWLOG", "GET", "-2"],
            &["SLOWLOG", "RESET"],
            &["SLOWLOG", "LEN"],
            &["LATENCY", "HELP"],
            &["LATENCY", "LATEST"],
            &["LATENCY", "HISTORY", "command"],
            &["LATENCY", "DOCTOR"],
            &["LATENCY", "RESET"],
            &["DEL", "reply:a", "reply:b"],
        ] {
            conn.queue(args);
        }
        conn.flush().unwrap();
        // OFF, SET, GET, SKIP and the command after it answer nothing.
        let replies = conn.read_n(23).unwrap();
        let flags = cmd(&mut conn, &["CLIENT", "INFO"]).text();
        let flags = flags.split_whitespace().find(|kv| kv.starts_with("flags=")).unwrap().to_string();
        [replies, vec![Value::Simple(flags)]].concat()
    });
}

/// Whether a reply arrives within `wait`: the connection's read timeout is `wait`.
fn replies_within(addr: SocketAddr, args: &[&str], wait: Duration) -> (Conn, bool) {
    let mut conn = Conn::connect(addr, wait).unwrap();
    conn.queue(args);
    conn.flush().unwrap();
    let answered = conn.read().is_ok();
    (conn, answered)
}

#[test]
fn client_pause_holds_writes_or_everything_until_unpaused_or_over() {
    let cluster = DurableCluster::start(ClusterOptions { journal_nodes: 1, shards: 2, ..Default::default() });
    let addr = cluster.proxy_addr();
    let mut admin = cluster.client();
    assert_eq!(cmd(&mut admin, &["SET", "pause:read", "r"]), ok());

    // WRITE: a write waits (shown blocked), a read goes on, UNPAUSE releases the write.
    assert_eq!(cmd(&mut admin, &["CLIENT", "PAUSE", "20000", "WRITE"]), ok());
    let (mut writer, answered) = replies_within(addr, &["SET", "pause:w", "1"], Duration::from_millis(500));
    assert!(!answered, "a write ran during CLIENT PAUSE WRITE");
    for args in [&["PUBLISH", "c", "m"][..], &["EVAL", "return 1", "0"]] {
        let (_, answered) = replies_within(addr, args, Duration::from_millis(300));
        assert!(!answered, "{args:?} ran during CLIENT PAUSE WRITE");
    }
    let (mut reader, answered) = replies_within(addr, &["GET", "pause:read"], Duration::from_secs(5));
    assert!(answered, "a read waited during CLIENT PAUSE WRITE");
    assert_eq!(cmd(&mut reader, &["GET", "pause:w"]), Value::Bulk(None), "the held write must not have run");
    let list = cmd(&mut admin, &["CLIENT", "LIST"]).text();
    assert!(list.lines().any(|l| l.contains("cmd=set") && l.contains("flags=b")), "{list}");
    let released = Instant::now();
    assert_eq!(cmd(&mut admin, &["CLIENT", "UNPAUSE"]), ok());
    assert_eq!(writer.read().expect("the held write's reply after UNPAUSE"), ok());
    assert!(released.elapsed() < Duration::from_secs(5));
    let mut writer_late = Conn::connect(addr, CLIENT_TIMEOUT).unwrap();
    assert_eq!(cmd(&mut writer_late, &["GET", "pause:w"]).text(), "1");

    // A transaction queued before the pause: its EXEC holds writes, so it waits.
    let mut queuing = Conn::connect(addr, Duration::from_millis(500)).unwrap();
    assert_eq!(cmd(&mut queuing, &["MULTI"]), ok());
    assert_eq!(cmd(&mut queuing, &["SET", "pause:x", "1"]), Value::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut admin, &["CLIENT", "PAUSE", "20000", "WRITE"]), ok());
    queuing.queue(&["EXEC"]);
    queuing.flush().unwrap();
    assert!(queuing.read().is_err(), "EXEC of a write ran during CLIENT PAUSE WRITE");
    assert_eq!(cmd(&mut admin, &["CLIENT", "UNPAUSE"]), ok());
    assert_eq!(queuing.read().expect("EXEC after UNPAUSE"), Value::Array(Some(vec![ok()])));

    // The pause ends by itself after its timeout.
    assert_eq!(cmd(&mut admin, &["CLIENT", "PAUSE", "700", "WRITE"]), ok());
    let started = Instant::now();
    assert_eq!(cmd(&mut writer_late, &["SET", "pause:t", "1"]), ok());
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(500) && held < Duration::from_secs(5), "held {held:?}");

    // A timeout as large as Redis takes is a pause, not a crash; UNPAUSE ends it.
    assert_eq!(cmd(&mut admin, &["CLIENT", "PAUSE", &i64::MAX.to_string(), "WRITE"]), ok());
    assert_eq!(cmd(&mut admin, &["CLIENT", "UNPAUSE"]), ok());
    assert_eq!(cmd(&mut admin, &["SET", "pause:t", "2"]), ok());

    // ALL: reads wait too, the pausing client's own included.
    assert_eq!(cmd(&mut admin, &["CLIENT", "PAUSE", "700", "ALL"]), ok());
    let started = Instant::now();
    assert_eq!(cmd(&mut admin, &["GET", "pause:read"]).text(), "r");
    assert!(started.elapsed() >= Duration::from_millis(500), "a read ran during CLIENT PAUSE ALL");
}

#[test]
fn slowlog_and_latency_report_the_proxys_measurements() {
    let cluster = DurableCluster::start(ClusterOptions { journal_nodes: 1, shards: 1, ..Default::default() });
    let mut conn = cluster.client();
    assert_eq!(cmd(&mut conn, &["CLIENT", "SETNAME", "slowpoke"]), ok());
    assert_eq!(cmd(&mut conn, &["SLOWLOG", "RESET"]), ok());
    // A script busy for well over slowlog-log-slower-than's default 10 ms.
    let script = "local i = 0 while i < 5000000 do i = i + 1 end return i";
    assert_eq!(cmd(&mut conn, &["EVAL", script, "0"]), Value::Int(5_000_000));
    cmd(&mut conn, &["PING"]);
    let Value::Int(len) = cmd(&mut conn, &["SLOWLOG", "LEN"]) else { panic!("SLOWLOG LEN") };
    assert!(len >= 1);
    let Value::Array(Some(entries)) = cmd(&mut conn, &["SLOWLOG", "GET", "-1"]) else { panic!("SLOWLOG GET") };
    let eval = entries
        .iter()
        .find_map(|entry| match entry {
            Value::Array(Some(fields)) if fields[3].text().contains("EVAL") => Some(fields.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no EVAL in {entries:?}"));
    let Value::Int(usec) = eval[2] else { panic!("{eval:?}") };
    assert!(usec >= 10_000, "{eval:?}");
    assert_eq!(
        eval[3],
        Value::Array(Some(vec![
            Value::Bulk(Some(b"EVAL".to_vec())),
            Value::Bulk(Some(script.into())),
            Value::Bulk(Some(b"0".to_vec()))
        ]))
    );
    assert_eq!(eval[5].text(), "slowpoke");
    let Value::Array(Some(histogram)) = cmd(&mut conn, &["LATENCY", "HISTOGRAM", "eval", "nosuch"]) else {
        panic!("LATENCY HISTOGRAM")
    };
    assert_eq!(histogram[0].text(), "eval");
    let Value::Array(Some(detail)) = &histogram[1] else { panic!("{histogram:?}") };
    assert_eq!((detail[0].text(), detail[1].clone()), ("calls".to_string(), Value::Int(1)));
    assert_eq!(cmd(&mut conn, &["SLOWLOG", "RESET"]), ok());
    assert_eq!(cmd(&mut conn, &["SLOWLOG", "LEN"]), Value::Int(0));
    // The thresholds are the parameter group's: 0 logs every command, -1 none.
    assert_eq!(cmd(&mut conn, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]), ok());
    cmd(&mut conn, &["PING"]);
    let Value::Int(logged) = cmd(&mut conn, &["SLOWLOG", "LEN"]) else { panic!("SLOWLOG LEN") };
    assert!(logged >= 1, "a PING at threshold 0 is logged");
    assert_eq!(cmd(&mut conn, &["CONFIG", "SET", "slowlog-log-slower-than", "-1"]), ok());
    assert_eq!(cmd(&mut conn, &["SLOWLOG", "RESET"]), ok());
    assert_eq!(cmd(&mut conn, &["EVAL", script, "0"]), Value::Int(5_000_000));
    assert_eq!(cmd(&mut conn, &["SLOWLOG", "LEN"]), Value::Int(0), "-1 logs nothing");
}

#[test]
fn a_peer_not_authenticated_cannot_reset_stats_or_pause() {
    let users = "auth_timeout_ms = 5000\n[[users]]\nname = \"default\"\npassword = \"pw\"\n\
                 [[users]]\nname = \"reader\"\nrules = \"on >rp +@read\"\n";
    let cluster = DurableCluster::start(ClusterOptions {
        journal_nodes: 1,
        shards: 1,
        proxy_extra: users.into(),
        ..Default::default()
    });
    let addr = cluster.proxy_addr();
    let mut admin = connect(addr);
    assert_eq!(cmd(&mut admin, &["AUTH", "pw"]), ok());
    cmd(&mut admin, &["SET", "k", "v"]);
    let mut stranger = connect(addr);
    for args in [&["CONFIG", "RESETSTAT"][..], &["CLIENT", "PAUSE", "20000", "ALL"], &["CLIENT", "NO-EVICT", "ON"]] {
        assert_eq!(cmd(&mut stranger, args), Value::Error("NOAUTH Authentication required.".into()));
    }
    let mut reader = connect(addr);
    assert_eq!(cmd(&mut reader, &["AUTH", "reader", "rp"]), ok());
    for args in [&["CONFIG", "RESETSTAT"][..], &["CLIENT", "PAUSE", "20000", "ALL"]] {
        let denied = cmd(&mut reader, args);
        assert!(denied.text().starts_with("NOPERM"), "{args:?}: {denied:?}");
    }
    // Nothing was paused, nothing was reset.
    let started = Instant::now();
    assert_eq!(cmd(&mut admin, &["SET", "k", "w"]), ok());
    assert!(started.elapsed() < Duration::from_secs(2));
    let stats = info(&mut admin, &["commandstats"]);
    assert!(field(&stats, "cmdstat_set").starts_with("calls=2,"), "{stats}");
    assert!(field(&stats, "cmdstat_config|resetstat").contains("rejected_calls=2"), "{stats}");
}

/// `LATENCY GRAPH` against a stock `redis-server`: the same error for an event without samples,
/// and for one slow command the same layout — header, rule, the four sparkline rows, the blank
/// line and the age label written downwards — with only the numbers differing (each side
/// measures its own latency).
#[test]
fn latency_graph_is_laid_out_as_stock_redis_lays_it_out() {
    let pair = Pair::start();
    let [stock, memlog] = pair.addrs().map(connect);
    let graphs = [(stock, "stock"), (memlog, "memlog")].map(|(mut conn, side)| {
        // Well above what a fast command takes on a loaded machine, well below the slow ones.
        assert_eq!(cmd(&mut conn, &["CONFIG", "SET", "latency-monitor-threshold", "50"]), ok());
        // The CONFIG SET itself may have been slow (memlog journals it on every shard).
        cmd(&mut conn, &["LATENCY", "RESET"]);
        let missing = cmd(&mut conn, &["LATENCY", "GRAPH", "command"]);
        assert_eq!(missing, Value::Error("ERR No samples available for event 'command'".into()), "{side}");
        let arity = cmd(&mut conn, &["LATENCY", "GRAPH"]);
        assert_eq!(arity, Value::Error("ERR wrong number of arguments for 'latency|graph' command".into()), "{side}");
        let busy = "local i = 0 while i < 20000000 do i = i + 1 end return i";
        assert_eq!(cmd(&mut conn, &["EVAL", busy, "0"]), Value::Int(20_000_000), "{side}");
        cmd(&mut conn, &["LATENCY", "GRAPH", "command"]).text()
    });
    // Each side's numbers are its own: compare with every run of digits read as one number.
    let shape = |graph: &str| -> Vec<String> {
        graph
            .lines()
            .map(|line| {
                let mut out = String::new();
                for c in line.chars() {
                    match (c.is_ascii_digit(), out.ends_with('N')) {
                        (true, true) => {}
                        (true, false) => out.push('N'),
                        (false, _) => out.push(c),
                    }
                }
                out
            })
            .collect()
    };
    let [stock, memlog] = graphs.map(|graph| shape(&graph));
    assert_eq!(memlog[0], "command - high N ms, low N ms (all time high N ms)");
    assert_eq!(memlog[1], "-".repeat(80));
    assert_eq!(memlog, stock);
}
