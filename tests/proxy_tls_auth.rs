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

/// A certificate authority of the tests, with what it signs written as PEM files in `dir`.
struct Authority {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    dir: std::path::PathBuf,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Authority { cert, key, dir }
    }

    fn ca_pem(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// A leaf certificate with common name `cn` and DNS names `sans`, for a server or a client;
    /// returns the paths of its certificate and key.
    fn issue(&self, file: &str, cn: &str, sans: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path.display().to_string(), key_path.display().to_string())
    }

    fn server(&self, file: &str) -> (String, String) {
        self.issue(file, "memlog proxy", &["localhost", "127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, file: &str, cn: &str) -> (String, String) {
        self.issue(file, cn, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// `redis-cli` over TLS trusting `server_ca`, presenting `client` (certificate, key) if given.
fn tls_cli(port: u16, server_ca: &str, client: Option<&(String, String)>, args: &[&str]) -> String {
    let mut all = vec!["--tls", "--cacert", server_ca, "--sni", "localhost"];
    if let Some((cert, key)) = client {
        all.extend_from_slice(&["--cert", cert, "--key", key]);
    }
    all.extend_from_slice(args);
    cli(port, &all)
}

/// The `[tls]` table of a proxy asking for client certificates of `client_ca`.
fn tls_toml(server: &(String, String), client_ca: &str, client_auth: &str) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {client_ca:?}\nclient_auth = {client_auth:?}\ncert_user = \"cn\"\n",
        server.0, server.1
    )
}

/// Users of the mutual-TLS tests: `svc` has no password (only its certificate logs it in) and
/// may read and write `svc:*` keys; `retired` is off.
const CERT_USERS: &str = "[[users]]\nname = \"default\"\npassword = \"adminpw\"\n\
[[users]]\nname = \"svc\"\nrules = \"on ~svc:* +@read +@write +acl|whoami -@dangerous\"\n\
[[users]]\nname = \"retired\"\nrules = \"off ~* +@all\"\n\
[[users]]\nname = \"app\"\npassword = \"apppw\"\n";

/// A proxy with [`CERT_USERS`] asking for client certificates of `client_ca`, in front of one
/// Redis node; `stranger_ca` signs certificates the proxy does not trust.
struct MutualTls {
    client_ca: Authority,
    stranger_ca: Authority,
    /// The CA of the proxy's certificate, which clients trust.
    server_ca_pem: String,
    proxy: Proc,
    redis: Proc,
    _dir: tempfile::TempDir,
}

impl MutualTls {
    fn start(client_auth: &str) -> MutualTls {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = Authority::new(dir.path(), "server-ca");
        let (client_ca, stranger_ca) =
            (Authority::new(dir.path(), "client-ca"), Authority::new(dir.path(), "stranger-ca"));
        let tls = tls_toml(&server_ca.server("proxy"), &client_ca.ca_pem(), client_auth);
        let redis = spawn_redis(dir.path(), &[]);
        let proxy = proxy_with(dir.path(), &redis, &format!("{tls}{CERT_USERS}"));
        MutualTls { client_ca, stranger_ca, server_ca_pem: server_ca.ca_pem(), proxy, redis, _dir: dir }
    }

    /// `redis-cli` over TLS presenting `client`, if given.
    fn cli(&self, client: Option<&(String, String)>, args: &[&str]) -> String {
        tls_cli(self.proxy.addr.port(), &self.server_ca_pem, client, args)
    }

    /// The proxy's configuration file.
    fn config(&self) -> std::path::PathBuf {
        self._dir.path().join("proxy.toml")
    }

    /// The Redis node's keys, read directly (not through the proxy).
    fn node_keys(&self) -> String {
        cli(self.redis.addr.port(), &["--no-raw", "KEYS", "*"])
    }
}

/// `redis-cli` arguments that AUTH as `user` before `args`.
fn as_user<'a>(user: &'a str, password: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    [&["--user", user, "--pass", password, "--no-auth-warning"][..], args].concat()
}

#[test]
fn a_client_certificate_logs_in_as_the_user_it_names() {
    let mtls = MutualTls::start("required");
    let svc = mtls.client_ca.client("svc", "svc");
    // The certificate alone logs in: no AUTH, and `svc` has no password to give.
    assert_eq!(mtls.cli(Some(&svc), &["ACL", "WHOAMI"]), "svc");
    assert_eq!(mtls.cli(Some(&svc), &["SET", "svc:1", "v"]), "OK");
    assert_eq!(mtls.cli(Some(&svc), &["GET", "svc:1"]), "v");
    // ... and the user's rules hold.
    assert_eq!(
        mtls.cli(Some(&svc), &["SET", "other", "v"]),
        "NOPERM this user has no permissions to access one of the keys used as arguments"
    );
    assert_eq!(
        mtls.cli(Some(&svc), &["FLUSHALL"]),
        "NOPERM this user has no permissions to run the 'flushall' command"
    );
    assert_eq!(mtls.node_keys(), "1) \"svc:1\"", "a refused command reached the node");
    // AUTH still switches to another user on the same connection.
    assert_eq!(mtls.cli(Some(&svc), &as_user("app", "apppw", &["ACL", "WHOAMI"])), "app");

    // Refused, and nothing written: a certificate naming no user, or a disabled one ...
    for cn in ["nobody", "retired"] {
        let refused = mtls.cli(Some(&mtls.client_ca.client(cn, cn)), &["SET", "svc:2", "x"]);
        assert_eq!(
            refused,
            format!("WRONGPASS the TLS client certificate names user '{cn}', which does not exist or is disabled")
        );
    }
    // ... no certificate (client_auth = "required"), or one of another CA.
    let stranger = mtls.stranger_ca.client("svc", "svc");
    for client in [None, Some(&stranger)] {
        let refused = mtls.cli(client, &["SET", "svc:2", "x"]);
        assert!(!refused.contains("OK"), "served without a certificate of the client CA: {refused}");
    }
    assert_eq!(mtls.node_keys(), "1) \"svc:1\"", "a refused connection wrote");
    // The refusals are counted as failed logins in ACL LOG, as failed AUTHs are.
    let log = mtls.cli(Some(&svc), &as_user("default", "adminpw", &["ACL", "LOG"]));
    assert!(log.contains("tls-client-certificate") && log.contains("retired") && log.contains("nobody"), "{log}");
}

#[test]
fn optional_client_certificates_leave_password_logins_open() {
    let mtls = MutualTls::start("optional");
    // Without a certificate the connection is served but must AUTH.
    assert!(mtls.cli(None, &["SET", "k", "v"]).starts_with("NOAUTH"));
    assert_eq!(mtls.cli(None, &as_user("app", "apppw", &["SET", "k", "v"])), "OK");
    // With one, the certificate's user.
    assert_eq!(mtls.cli(Some(&mtls.client_ca.client("svc", "svc")), &["ACL", "WHOAMI"]), "svc");
    // A certificate of another CA is refused even though none is required.
    let stranger = mtls.stranger_ca.client("svc", "svc");
    let refused = mtls.cli(Some(&stranger), &as_user("app", "apppw", &["SET", "k", "w"]));
    assert!(!refused.contains("OK"), "a certificate of another CA was accepted: {refused}");
    assert_eq!(cli(mtls.redis.addr.port(), &["GET", "k"]), "v");
}

/// A blocking TLS connection trusting `server_ca`, presenting `client`.
fn tls_connect(
    addr: SocketAddr,
    server_ca: &str,
    client: &(String, String),
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(server_ca).unwrap()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&client.0).unwrap()],
                PrivateKeyDer::from_pem_file(&client.1).unwrap(),
            )
            .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let socket = std::net::TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(connection, socket)
}

/// Sends one command and reads a one-line reply (or a bulk string's first line).
fn send<S: std::io::Read + std::io::Write>(stream: &mut S, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).unwrap();
    let line = |stream: &mut S| {
        let mut bytes = Vec::new();
        let mut byte = [0u8];
        while !bytes.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).expect("a reply");
            bytes.push(byte[0]);
        }
        String::from_utf8_lossy(&bytes[..bytes.len() - 2]).into_owned()
    };
    let first = line(stream);
    if first.starts_with('$') && first != "$-1" {
        line(stream)
    } else {
        first
    }
}

#[test]
fn sighup_reloads_the_certificates_and_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Authority::new(dir.path(), "server-ca"), Authority::new(dir.path(), "client-ca"));
    let server = server_ca.server("proxy");
    // The proxy reads its files from paths of their own, rewritten to rotate.
    let files = dir.path().join("tls");
    std::fs::create_dir_all(&files).unwrap();
    let (cert, key, clients) = (files.join("cert.pem"), files.join("key.pem"), files.join("clients.pem"));
    let install = |server: &(String, String), client_ca: &Authority| {
        std::fs::copy(&server.0, &cert).unwrap();
        std::fs::copy(&server.1, &key).unwrap();
        std::fs::copy(client_ca.ca_pem(), &clients).unwrap();
    };
    install(&server, &client_ca);
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let redis = spawn_redis(dir.path(), &[]);
    let toml = tls_toml(&(path(&cert), path(&key)), &path(&clients), "required");
    let proxy = proxy_with(dir.path(), &redis, &format!("{toml}{CERT_USERS}"));
    let port = proxy.addr.port();
    let svc = client_ca.client("svc", "svc");
    let mut old = tls_connect(proxy.addr, &server_ca.ca_pem(), &svc);
    assert_eq!(send(&mut old, &["SET", "svc:old", "1"]), "+OK");

    // New certificates from new CAs, then SIGHUP.
    let (new_server_ca, new_client_ca) =
        (Authority::new(dir.path(), "server-ca-2"), Authority::new(dir.path(), "client-ca-2"));
    install(&new_server_ca.server("proxy"), &new_client_ca);
    proxy.signal(libc::SIGHUP);
    let new_svc = new_client_ca.client("svc", "svc");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tls_cli(port, &new_server_ca.ca_pem(), Some(&new_svc), &["ACL", "WHOAMI"]) != "svc" {
        assert!(std::time::Instant::now() < deadline, "the new certificates are not served after SIGHUP");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // New connections get the new server certificate and need a certificate of the new client CA.
    let old_server = tls_cli(port, &server_ca.ca_pem(), Some(&new_svc), &["ACL", "WHOAMI"]);
    assert_ne!(old_server, "svc", "the old server certificate is still served");
    let old_client = tls_cli(port, &new_server_ca.ca_pem(), Some(&svc), &["ACL", "WHOAMI"]);
    assert_ne!(old_client, "svc", "a certificate of the replaced client CA is still accepted");
    // The connection made before keeps working.
    assert_eq!(send(&mut old, &["SET", "svc:old", "2"]), "+OK");
    assert_eq!(send(&mut old, &["GET", "svc:old"]), "2");

    // Files that do not load leave the certificates in use.
    std::fs::write(&key, "not a key").unwrap();
    proxy.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&proxy.log).unwrap().contains("client TLS certificates NOT reloaded") {
        assert!(std::time::Instant::now() < deadline, "no word of the failed reload in the log");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(tls_cli(port, &new_server_ca.ca_pem(), Some(&new_svc), &["GET", "svc:old"]), "2");
    assert_eq!(send(&mut old, &["GET", "svc:old"]), "2");
}

/// A Redis node on `port` that accepts only TLS: the certificate `node`, and clients with a
/// certificate signed by `authority`.
fn spawn_tls_redis(dir: &Path, port: u16, authority: &Authority, node: &(String, String)) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    cmd.args(["--tls-cert-file", &node.0, "--tls-key-file", &node.1, "--tls-ca-cert-file", &authority.ca_pem()]);
    cmd.arg("--dir").arg(dir);
    spawn_listening(&format!("redis-{port}"), cmd, addr, &dir.join(format!("redis-{port}.log")))
}

/// Waits until `log` holds `line`.
fn wait_for_log(log: &Path, line: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(log).unwrap().contains(line) {
        assert!(std::time::Instant::now() < deadline, "no {line:?} in the log");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `SET key value` through the proxy until it answers OK (the proxy reconnects to a restarted
/// node on its own); panics with the last answer after 20 s.
fn set_until_served(port: u16, key: &str, value: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let reply = cli(port, &["SET", key, value]);
        if reply == "OK" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the proxy does not serve: {reply}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `[backend] tls` rotated by SIGHUP: the proxy's files for the nodes (their CA, its client
/// certificate) are rewritten in place and reloaded; the connections it had keep going, the
/// ones it opens to a node restarted with the new CA's certificates use the new files; files
/// that do not load are refused with the file named, and the ones in use stay.
#[test]
fn sighup_reloads_the_backend_tls_files_for_new_node_connections() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("backend-tls");
    std::fs::create_dir_all(&files).unwrap();
    let (ca, cert, key) = (files.join("ca.pem"), files.join("proxy.pem"), files.join("proxy.key"));
    // Each CA signs a node's certificate and the proxy's; the proxy's are copied over its files.
    let generation = |name: &str| {
        let authority = Authority::new(dir.path(), name);
        let (node, proxy) = (authority.server("node"), authority.client("proxy", "memlog proxy"));
        (authority, node, proxy)
    };
    let install = |authority: &Authority, proxy: &(String, String)| {
        std::fs::copy(authority.ca_pem(), &ca).unwrap();
        std::fs::copy(&proxy.0, &cert).unwrap();
        std::fs::copy(&proxy.1, &key).unwrap();
    };
    let (first, first_node, first_proxy) = generation("nodes-ca-1");
    install(&first, &first_proxy);
    let redis_port = free_port();
    let mut redis = spawn_tls_redis(dir.path(), redis_port, &first, &first_node);
    let backend = format!("[backend]\ntls = true\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}");
    let proxy = proxy_with(dir.path(), &redis, &backend);
    let port = proxy.addr.port();
    assert_eq!(cli(port, &["SET", "k", "1"]), "OK");

    // The second CA's files, then SIGHUP: the connections open to the node keep theirs.
    let (second, second_node, second_proxy) = generation("nodes-ca-2");
    install(&second, &second_proxy);
    proxy.signal(libc::SIGHUP);
    wait_for_log(&proxy.log, "SIGHUP: backend TLS certificates reloaded");
    assert_eq!(cli(port, &["SET", "k", "2"]), "OK");
    assert_eq!(cli(port, &["GET", "k"]), "2");

    // The node restarted with the second CA's certificate, wanting client certificates of it:
    // the proxy's new connections to it carry the reloaded files.
    redis.kill9();
    let redis = spawn_tls_redis(dir.path(), redis_port, &second, &second_node);
    set_until_served(port, "k", "3");
    assert_eq!(cli(port, &["GET", "k"]), "3");

    // A key file that does not load: refused, named, and the second CA's files stay in use —
    // the node restarted again is reached with them.
    std::fs::write(&key, "not a key\n").unwrap();
    proxy.signal(libc::SIGHUP);
    wait_for_log(&proxy.log, "SIGHUP: backend TLS certificates NOT reloaded, the old ones stay");
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(log.contains(&key.display().to_string()), "the failed reload does not name the file: {log}");
    let mut redis = redis;
    redis.kill9();
    let _redis = spawn_tls_redis(dir.path(), redis_port, &second, &second_node);
    set_until_served(port, "k", "4");
    assert_eq!(cli(port, &["GET", "k"]), "4");
}

/// `memlog ARGS` with `env` set and no TLS or credentials from the test's own environment.
fn memlog(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(memlog_bin());
    for var in ["MEMLOG_TLS_CA", "MEMLOG_TLS_CERT", "MEMLOG_TLS_KEY", "MEMLOG_USER", "MEMLOG_PASSWORD"] {
        cmd.env_remove(var);
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().expect("run memlog");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn status_and_failover_reach_a_proxy_that_requires_client_certificates() {
    let mtls = MutualTls::start("required");
    let config = mtls.config().display().to_string();
    let (cert, key) = mtls.client_ca.client("ops", "app");
    let proxy = mtls.proxy.addr.to_string();
    let server_ca = mtls.server_ca_pem.clone();
    let flags = ["--tls-ca", &server_ca, "--tls-cert", &cert, "--tls-key", &key];
    let answered = "topology: from the proxy (MEMLOG TOPOLOGY)";

    // The CA, the certificate and its key by flags, then from the environment.
    let (_, table, stderr) = memlog(&[&["status", "--config", &config][..], &flags].concat(), &[]);
    assert!(table.contains(answered) && table.contains(&mtls.redis.addr.to_string()), "{table}{stderr}");
    assert!(table.contains(&format!("proxy {proxy}: ")) && !table.contains("NOT ANSWERING"), "{table}");
    let env = [("MEMLOG_TLS_CA", server_ca.as_str()), ("MEMLOG_TLS_CERT", &cert), ("MEMLOG_TLS_KEY", &key)];
    let (_, table, stderr) = memlog(&["status", "--config", &config], &env);
    assert!(table.contains(answered), "{table}{stderr}");

    // failover asks the proxy's topology over the same TLS (shard 9 does not exist, so nothing
    // is switched): by the config, and by the address alone with --tls-ca turning TLS on.
    let (ok, _, stderr) = memlog(&[&["failover", "--shard", "9", "--config", &config][..], &flags].concat(), &[]);
    assert!(!ok && stderr.contains("the proxy knows no shard 9 (it has 0)"), "{stderr}");
    let by_addr = [&["failover", "--shard", "9", "--proxy", &proxy, "--user", "default"][..], &flags].concat();
    let (ok, _, stderr) = memlog(&by_addr, &[("MEMLOG_PASSWORD", "adminpw")]);
    assert!(!ok && stderr.contains("the proxy knows no shard 9 (it has 0)"), "{stderr}");

    // A CA that did not sign the proxy's certificate — the config's client CA (the default)
    // or a stranger's — fails the handshake, with the CA named.
    let client_only = ["--tls-cert", &cert, "--tls-key", &key];
    let (ok, table, stderr) = memlog(&[&["status", "--config", &config][..], &client_only].concat(), &[]);
    let refused = format!("TLS handshake with the proxy at {proxy} failed: invalid peer certificate: UnknownIssuer");
    assert!(!ok && stderr.contains(&refused) && stderr.contains(&mtls.client_ca.ca_pem()), "{stderr}");
    assert!(table.contains("NOT ANSWERING") && !table.contains(answered), "{table}");
    let stranger = mtls.stranger_ca.ca_pem();
    let wrong_ca = [&["failover", "--shard", "0", "--config", &config, "--tls-ca", &stranger][..], &client_only];
    let (ok, stdout, stderr) = memlog(&wrong_ca.concat(), &[]);
    assert!(!ok && stderr.contains(&refused) && stderr.contains(&stranger), "{stdout}{stderr}");

    // Without a client certificate, the command says what the proxy requires before connecting.
    let (ok, _, stderr) = memlog(&["status", "--config", &config, "--tls-ca", &server_ca], &[]);
    assert!(!ok && stderr.contains("the proxy requires a client certificate"), "{stderr}");
}

/// Over TLS to a node, a 14 MiB pipeline written while the node is frozen (SIGSTOP, so the
/// proxy's writes to it block mid-write) is answered in full, in order, once it resumes. (It
/// passed here with and without the flush of 6557b0a too: loopback rarely leaves a write's last
/// TLS records unsent; the flush itself is tested in `backend::admin`.)
#[test]
fn a_pipeline_to_a_frozen_tls_node_is_answered_in_full_once_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "nodes-ca");
    let (node, proxy_cert) = (authority.server("node"), authority.client("proxy", "memlog proxy"));
    let redis = spawn_tls_redis(dir.path(), free_port(), &authority, &node);
    let backend = format!(
        "[backend]\ntls = true\nca = {:?}\ncert = {:?}\nkey = {:?}",
        authority.ca_pem(),
        proxy_cert.0,
        proxy_cert.1
    );
    let proxy = proxy_with(dir.path(), &redis, &backend);
    assert_eq!(cli(proxy.addr.port(), &["SET", "warm", "up"]), "OK");

    const REQUESTS: usize = 300;
    let value = "v".repeat(48 * 1024);
    let mut pipeline = Vec::new();
    for i in 0..REQUESTS {
        let key = format!("frozen:{i}");
        pipeline.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len()).as_bytes(),
        );
    }
    let mut client = std::net::TcpStream::connect(proxy.addr).unwrap();
    client.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    redis.stop();
    let mut writer = client.try_clone().unwrap();
    let writing = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &pipeline).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(500));
    redis.cont();
    writing.join().unwrap();
    let mut replies = Vec::new();
    let mut buf = [0u8; 4096];
    while replies.len() < REQUESTS * 5 {
        let n = std::io::Read::read(&mut client, &mut buf).expect("every reply within 30 s");
        assert!(n > 0, "the proxy closed the connection");
        replies.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&replies), "+OK\r\n".repeat(REQUESTS));
}
