//! TLS termination and ACL users at the proxy, checked with the real `redis-cli`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::{free_port, memlog_bin, spawn_listening, spawn_redis, Proc};

/// Starts `memlog proxy` in front of one Redis node with `extra` TOML appended to its config.
fn proxy_with(dir: &Path, redis: &Proc, extra: &str) -> Proc {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!("listen = \"{addr}\"\n{extra}\n[[shards]]\nslots = \"0-16383\"\nprimary = \"{}\"\n", redis.addr),
    )
    .unwrap();
    let mut cmd = Command::new(memlog_bin());
    cmd.arg("proxy").arg("--config").arg(&config);
    spawn_listening("memlog-proxy", cmd, addr, &dir.join("proxy.log"))
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string() + String::from_utf8_lossy(&out.stderr).trim()
}

#[test]
fn users_must_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let redis = spawn_redis(dir.path(), &[]);
    let proxy = proxy_with(
        dir.path(),
        &redis,
        "[[users]]\nname = \"default\"\npassword = \"s3cret\"\n[[users]]\nname = \"app\"\npassword = \"apppass\"",
    );
    let port = proxy.addr.port();
    assert!(cli(port, &["SET", "k", "v"]).starts_with("NOAUTH"), "a command before AUTH is refused");
    assert!(cli(port, &["-a", "wrong", "--no-auth-warning", "PING"]).contains("WRONGPASS"));
    assert_eq!(cli(port, &["-a", "s3cret", "--no-auth-warning", "SET", "k", "v"]), "OK");
    assert_eq!(cli(port, &["--user", "app", "--pass", "apppass", "--no-auth-warning", "GET", "k"]), "v");
    // HELLO 3 AUTH authenticates and switches protocol in one step.
    let hello = cli(port, &["HELLO", "3", "AUTH", "app", "apppass"]);
    assert!(hello.contains("proto") && hello.contains('3'), "HELLO 3 AUTH: {hello}");
    assert!(cli(port, &["HELLO", "3", "AUTH", "app", "nope"]).contains("WRONGPASS"));
    // ACL reads the proxy's users: who I am, every user, passwords only as SHA-256 hashes.
    let app = |args: &[&str]| cli(port, &[&["--user", "app", "--pass", "apppass", "--no-auth-warning"], args].concat());
    assert_eq!(app(&["ACL", "WHOAMI"]), "app");
    assert_eq!(app(&["ACL", "USERS"]), "app\ndefault");
    let list = app(&["ACL", "LIST"]);
    assert!(list.starts_with("user app on #") && list.contains("~* &* +@all\nuser default on #"), "{list}");
    assert!(!list.contains("apppass") && !list.contains("s3cret"), "a password in clear: {list}");
    assert_eq!(app(&["ACL", "SETUSER", "eve", "on"]), "OK", "users change at run time, as in Redis");
}

#[test]
fn tls_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let redis = spawn_redis(dir.path(), &[]);
    let proxy = proxy_with(
        dir.path(),
        &redis,
        &format!("[tls]\ncert = {:?}\nkey = {:?}", cert_path.display(), key_path.display()),
    );
    let port = proxy.addr.port();
    let cacert = cert_path.to_str().unwrap();
    let tls = |args: &[&str]| {
        let mut all = vec!["--tls", "--cacert", cacert, "--sni", "localhost"];
        all.extend_from_slice(args);
        cli(port, &all)
    };
    assert_eq!(tls(&["SET", "secure", "yes"]), "OK");
    assert_eq!(tls(&["GET", "secure"]), "yes");
    // A plaintext client cannot talk to a TLS port; the proxy keeps serving TLS clients.
    let plain = cli(port, &["PING"]);
    assert_ne!(plain, "PONG");
    assert_eq!(tls(&["PING"]), "PONG");
}
