//! One conformance suite for every metadata-store backend: the same checks run against
//! `file:` and against a real PostgreSQL started by the harness. Each check gets a fresh,
//! empty store (a new file / a new database) and opens as many independent handles as it needs.

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use journal_service::cluster_ca::ClusterCa;

use journal_service::meta::{MetaError, MetaStore, ShardEpoch, ShardTopology, SnapshotRecord, Topology};
use serde_json::json;

/// Every check, by name; each takes the URL of an empty store.
macro_rules! for_each_check {
    ($run:ident) => {
        $run!(epochs_compare_and_set);
        $run!(concurrent_epoch_claims_have_one_winner);
        $run!(topology_compare_and_set);
        $run!(concurrent_topology_puts_have_one_winner);
        $run!(users_crud);
        $run!(parameter_group);
        $run!(aborted_entries);
        $run!(snapshot_catalog);
        $run!(event_log);
        $run!(state_survives_reopen);
    };
}

async fn open(url: &str) -> MetaStore {
    MetaStore::open(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

fn conflict(result: Result<u64, MetaError>) -> u64 {
    match result {
        Err(MetaError::Conflict { current }) => current,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn topology(primary: &str) -> Topology {
    Topology {
        shards: vec![ShardTopology {
            id: 0,
            slots: vec![(0, 8191), (8192, 16383)],
            primary: primary.to_string(),
            replicas: vec!["127.0.0.1:7001".into()],
        }],
    }
}

async fn epochs_compare_and_set(url: String) {
    let store = open(&url).await;
    assert_eq!(store.epoch(7).await.unwrap(), ShardEpoch { epoch: 0, writer: None });
    assert_eq!(conflict(store.claim_epoch(7, 3, "w").await), 0, "no epoch 3 to move from");
    assert_eq!(store.claim_epoch(7, 0, "writer-a").await.unwrap(), 1);
    assert_eq!(conflict(store.claim_epoch(7, 0, "writer-b").await), 1);
    assert_eq!(store.claim_epoch(7, 1, "writer-b").await.unwrap(), 2);
    assert_eq!(store.epoch(7).await.unwrap(), ShardEpoch { epoch: 2, writer: Some("writer-b".into()) });
    assert_eq!(conflict(store.claim_epoch(7, 1, "writer-a").await), 2, "epochs never go back");
    assert_eq!(store.epoch(8).await.unwrap().epoch, 0, "shards are independent");
    let other = open(&url).await;
    assert_eq!(other.epoch(7).await.unwrap().epoch, 2, "a second handle sees the claim");
    assert_eq!(other.claim_epoch(7, 2, "writer-c").await.unwrap(), 3);
    assert_eq!(store.epoch(7).await.unwrap().writer.as_deref(), Some("writer-c"));
}

/// Runs `attempt(handle, i)` from `n` tasks, each on its own handle, all released at once.
async fn race<F, Fut>(url: &str, n: usize, attempt: F) -> Vec<Result<u64, MetaError>>
where
    F: Fn(Arc<MetaStore>, usize) -> Fut,
    Fut: Future<Output = Result<u64, MetaError>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = Arc::new(open(url).await);
        let barrier = barrier.clone();
        let fut = attempt(store, i);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            fut.await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

async fn concurrent_epoch_claims_have_one_winner(url: String) {
    for round in 0..5u64 {
        let results =
            race(&url, 6, |store, i| async move { store.claim_epoch(1, round, &format!("writer-{i}")).await }).await;
        let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one claim wins, got {results:?}");
        for result in &results {
            match result {
                Ok(epoch) => assert_eq!(*epoch, round + 1),
                Err(MetaError::Conflict { current }) => assert_eq!(*current, round + 1),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        let stored = open(&url).await.epoch(1).await.unwrap();
        assert_eq!(stored, ShardEpoch { epoch: round + 1, writer: Some(format!("writer-{}", winners[0])) });
    }
}

async fn topology_compare_and_set(url: String) {
    let store = open(&url).await;
    assert_eq!(store.get_topology().await.unwrap(), None);
    assert_eq!(conflict(store.put_topology(1, &topology("a:1")).await), 0);
    assert_eq!(store.get_topology().await.unwrap(), None, "a failed CAS stores nothing");
    assert_eq!(store.put_topology(0, &topology("a:1")).await.unwrap(), 1);
    assert_eq!(conflict(store.put_topology(0, &topology("b:1")).await), 1);
    assert_eq!(store.put_topology(1, &topology("b:1")).await.unwrap(), 2);
    assert_eq!(store.get_topology().await.unwrap(), Some((2, topology("b:1"))));
    assert_eq!(conflict(store.put_topology(1, &topology("c:1")).await), 2);
    assert_eq!(open(&url).await.get_topology().await.unwrap(), Some((2, topology("b:1"))));
}

async fn concurrent_topology_puts_have_one_winner(url: String) {
    open(&url).await.put_topology(0, &topology("seed:1")).await.unwrap();
    let results =
        race(&url, 6, |store, i| async move { store.put_topology(1, &topology(&format!("p{i}:1"))).await }).await;
    let winner = results.iter().position(|r| r.is_ok()).expect("one put wins");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(2) | Err(MetaError::Conflict { current: 2 }))), "{results:?}");
    assert_eq!(open(&url).await.get_topology().await.unwrap(), Some((2, topology(&format!("p{winner}:1")))));
}

async fn parameter_group(url: String) {
    let store = open(&url).await;
    assert!(store.get_parameters().await.unwrap().is_empty());
    let group = std::collections::BTreeMap::from([
        ("hash-max-listpack-entries".to_string(), "64".to_string()),
        ("maxmemory-policy".to_string(), "allkeys-lru".to_string()),
    ]);
    store.put_parameters(&group).await.unwrap();
    assert_eq!(open(&url).await.get_parameters().await.unwrap(), group);
    let replaced = std::collections::BTreeMap::from([("hz".to_string(), "20".to_string())]);
    store.put_parameters(&replaced).await.unwrap();
    assert_eq!(store.get_parameters().await.unwrap(), replaced);
}

async fn aborted_entries(url: String) {
    let store = open(&url).await;
    assert!(store.aborted_entries(0).await.unwrap().is_empty());
    store.abort_entry(0, 17).await.unwrap();
    store.abort_entry(0, 17).await.unwrap();
    store.abort_entry(0, 5).await.unwrap();
    store.abort_entry(2, 9).await.unwrap();
    assert_eq!(open(&url).await.aborted_entries(0).await.unwrap(), [5, 17].into());
    assert_eq!(store.aborted_entries(2).await.unwrap(), [9].into());
    assert!(store.aborted_entries(1).await.unwrap().is_empty());
}

async fn users_crud(url: String) {
    let store = open(&url).await;
    assert_eq!(store.get_user("alice").await.unwrap(), None);
    assert!(store.list_users().await.unwrap().is_empty());
    store.put_user("bob", &json!({"rules": "+@read ~*", "passwords": ["h1"]})).await.unwrap();
    store.put_user("alice", &json!({"rules": "+@all ~*"})).await.unwrap();
    store.put_user("bob", &json!({"rules": "+@all ~*", "passwords": ["h2"]})).await.unwrap();
    assert_eq!(store.get_user("bob").await.unwrap(), Some(json!({"rules": "+@all ~*", "passwords": ["h2"]})));
    let names: Vec<String> = store.list_users().await.unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(store.delete_user("alice").await.unwrap());
    assert!(!store.delete_user("alice").await.unwrap());
    assert_eq!(open(&url).await.list_users().await.unwrap().len(), 1);
}

async fn snapshot_catalog(url: String) {
    let store = open(&url).await;
    let snap =
        |shard, lsn, location: &str| SnapshotRecord { shard, lsn, location: location.into(), timestamp_ms: lsn * 10 };
    assert!(store.list_snapshots(0).await.unwrap().is_empty());
    store.add_snapshot(&snap(0, 200, "s3://b/0-200")).await.unwrap();
    store.add_snapshot(&snap(1, 50, "s3://b/1-50")).await.unwrap();
    store.add_snapshot(&snap(0, 100, "s3://b/0-100")).await.unwrap();
    store.add_snapshot(&snap(0, 200, "s3://b/0-200-again")).await.unwrap();
    assert_eq!(
        store.list_snapshots(0).await.unwrap(),
        vec![snap(0, 100, "s3://b/0-100"), snap(0, 200, "s3://b/0-200-again")]
    );
    assert_eq!(store.list_snapshots(1).await.unwrap(), vec![snap(1, 50, "s3://b/1-50")]);
    assert!(store.remove_snapshot(0, 100).await.unwrap());
    assert!(!store.remove_snapshot(0, 100).await.unwrap());
    assert!(!store.remove_snapshot(1, 200).await.unwrap(), "another shard's LSN is not this one's");
    assert_eq!(open(&url).await.list_snapshots(0).await.unwrap(), vec![snap(0, 200, "s3://b/0-200-again")]);
    assert_eq!(store.list_snapshots(1).await.unwrap(), vec![snap(1, 50, "s3://b/1-50")]);
}

async fn event_log(url: String) {
    let store = open(&url).await;
    assert!(store.list_events(0, 10).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(store.append_event("failover", &json!({"shard": i})).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let all = store.list_events(0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(all[3].body, json!({"shard": 3}));
    assert_eq!(all[3].kind, "failover");
    let page = store.list_events(ids[1], 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), &ids[2..4]);
    let concurrent = race(&url, 4, |store, i| async move { store.append_event("race", &json!(i)).await }).await;
    let mut fresh: Vec<u64> = concurrent.into_iter().map(Result::unwrap).collect();
    fresh.sort();
    fresh.dedup();
    assert_eq!(fresh.len(), 4, "concurrent appends get distinct ids");
    assert!(fresh[0] > ids[4]);
}

async fn state_survives_reopen(url: String) {
    {
        let store = open(&url).await;
        store.claim_epoch(3, 0, "w").await.unwrap();
        store.put_topology(0, &topology("a:1")).await.unwrap();
        store.put_user("u", &json!({"x": 1})).await.unwrap();
    }
    let store = open(&url).await;
    assert_eq!(store.epoch(3).await.unwrap().epoch, 1);
    assert_eq!(store.get_topology().await.unwrap().map(|(v, _)| v), Some(1));
    assert_eq!(store.get_user("u").await.unwrap(), Some(json!({"x": 1})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_backend_conformance() {
    let dir = tempfile::tempdir().unwrap();
    macro_rules! run {
        ($check:ident) => {
            let url = format!("file:{}", dir.path().join(concat!(stringify!($check), ".json")).display());
            eprintln!("file: {}", stringify!($check));
            $check(url).await;
        };
    }
    for_each_check!(run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_backend_conformance() {
    let Some(server) = support::postgres::Postgres::start().await else { return };
    macro_rules! run {
        ($check:ident) => {
            let url = server.create_database(stringify!($check)).await;
            eprintln!("postgres: {}", stringify!($check));
            $check(url).await;
        };
    }
    for_each_check!(run);
}

/// A PostgreSQL with `ssl = on` (TCP only over TLS) showing a certificate for `names`,
/// issued by `ca`.
async fn postgres_with_tls(ca: &ClusterCa, names: &[&str]) -> Option<support::postgres::Postgres> {
    let issued = ca.issue_for_names(names.iter().map(|n| n.to_string()).collect()).unwrap();
    support::postgres::Postgres::start_tls(&support::postgres::ServerCert { cert: issued.cert, key: issued.key }).await
}

/// `ca`'s certificate written to a file, for `sslrootcert`.
fn root_cert_file(dir: &Path, ca: &ClusterCa) -> PathBuf {
    let path = dir.join("root.pem");
    std::fs::write(&path, ca.cert_pem()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_backend_conformance_over_verify_full() {
    let ca = ClusterCa::generate().unwrap();
    let Some(server) = postgres_with_tls(&ca, &["127.0.0.1"]).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = root_cert_file(dir.path(), &ca);
    macro_rules! run {
        ($check:ident) => {
            let url = server.create_database(stringify!($check)).await;
            let url = format!("{url}?sslmode=verify-full&sslrootcert={}", root.display());
            eprintln!("postgres verify-full: {}", stringify!($check));
            $check(url).await;
        };
    }
    for_each_check!(run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_certificate_of_another_ca_or_name_as_sslmode_says() {
    let (ours, theirs) = (ClusterCa::generate().unwrap(), ClusterCa::generate().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let root = root_cert_file(dir.path(), &ours);
    let with = |url: &str, mode: &str| format!("{url}?sslmode={mode}&sslrootcert={}", root.display());
    let refused = |result: Result<MetaStore, MetaError>, what: &str| match result {
        Err(e) => assert!(e.to_string().contains("certificate"), "{what}: {e}"),
        Ok(_) => panic!("{what}: the store was opened"),
    };

    // Another CA's certificate: neither verifying mode takes it; `require` encrypts anyway.
    let Some(impostor) = postgres_with_tls(&theirs, &["127.0.0.1"]).await else { return };
    let url = impostor.create_database("impostor").await;
    refused(MetaStore::open(&with(&url, "verify-full")).await, "another CA, verify-full");
    refused(MetaStore::open(&with(&url, "verify-ca")).await, "another CA, verify-ca");
    let store = MetaStore::open(&format!("{url}?sslmode=require")).await.expect("require takes any certificate");
    assert_eq!(store.claim_epoch(0, 0, "w").await.unwrap(), 1, "and works (over TLS: the server takes nothing else)");

    // Our CA, but for another name: verify-full refuses it, verify-ca (chain only) takes it.
    let Some(misnamed) = postgres_with_tls(&ours, &["db.example"]).await else { return };
    let url = misnamed.create_database("misnamed").await;
    refused(MetaStore::open(&with(&url, "verify-full")).await, "wrong name, verify-full");
    MetaStore::open(&with(&url, "verify-ca")).await.expect("verify-ca checks the chain, not the name");

    // A server that only speaks TLS refuses `disable`.
    assert!(MetaStore::open(&format!("{url}?sslmode=disable")).await.is_err());
}

#[tokio::test]
async fn postgres_schema_is_versioned_and_migrates_once() {
    let Some(server) = support::postgres::Postgres::start().await else { return };
    let url = server.create_database("schema").await;
    let opens: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { MetaStore::open(&url).await.map(|_| ()) })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("concurrent opens all migrate or find the schema current");
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let versions: Vec<i32> = client
        .query("SELECT version FROM memlog_schema_version ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3], "each migration is recorded exactly once");
}

#[tokio::test]
async fn bad_urls_are_refused() {
    for url in ["mysql://x", "file:", "", "/tmp/x.json"] {
        assert!(matches!(MetaStore::open(url).await, Err(MetaError::BadUrl(_))), "{url}");
    }
    assert!(matches!(MetaStore::open("file:/nonexistent-dir/x.json").await, Err(MetaError::Io(_))));
}

/// Environment variable that turns `file_claimer_child` into a worker of `file_claims_from_two_processes`.
const CHILD_URL_VAR: &str = "MEMLOG_META_CHILD_URL";

/// Two processes race read-then-claim on one file: with the lock and re-read, no claim is lost
/// or doubled, so the final epoch equals the number of wins reported by both.
#[test]
fn file_claims_from_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file:{}", dir.path().join("meta.json").display());
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "file_claimer_child", "--ignored", "--nocapture", "--test-threads=1"])
                .env(CHILD_URL_VAR, &url)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut wins = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stdout));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let reported = stdout.split("WINS ").nth(1).expect("child reports its wins");
        wins += reported.split_whitespace().next().unwrap().parse::<u64>().unwrap();
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let epoch = runtime.block_on(async { open(&url).await.epoch(0).await.unwrap().epoch });
    assert!(wins > 0, "some claims win: {wins}");
    assert_eq!(epoch, wins, "every win moved the epoch by exactly one");
}

/// The worker half of `file_claims_from_two_processes` (does nothing unless started by it).
#[test]
#[ignore = "run as a child process by file_claims_from_two_processes"]
fn file_claimer_child() {
    let Ok(url) = std::env::var(CHILD_URL_VAR) else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wins = runtime.block_on(async {
        let store = open(&url).await;
        let mut wins = 0u64;
        for _ in 0..40 {
            let current = store.epoch(0).await.unwrap().epoch;
            match store.claim_epoch(0, current, &format!("pid-{}", std::process::id())).await {
                Ok(_) => wins += 1,
                Err(MetaError::Conflict { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        wins
    });
    println!("WINS {wins}");
}
