//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port, stopped by pid when the guard drops.
//!
//! initdb and postgres refuse to run as root, so when the tests run as root the temp dir is
//! given to the `postgres` system user and both run under its uid. Without that user the
//! Postgres tests are skipped with a loud message — unless `CI=true`, where they fail: CI
//! installs the `postgresql` package, which creates the user.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use journal_service::meta::postgres_tls;

/// A running PostgreSQL; dropping it stops the server (SIGQUIT, then SIGKILL) by pid.
pub struct Postgres {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The certificate and key (PEM) a server shows with `ssl = on`.
pub struct ServerCert {
    pub cert: String,
    pub key: String,
}

impl Postgres {
    /// Starts a server without TLS, or returns `None` (after a loud warning) when the host
    /// cannot run one and this is not CI.
    pub async fn start() -> Option<Postgres> {
        Postgres::start_with(None).await
    }

    /// Starts a server with `ssl = on` showing `cert`, which accepts TCP clients only over TLS
    /// (`hostssl` in pg_hba.conf), so whatever works against it was encrypted.
    pub async fn start_tls(cert: &ServerCert) -> Option<Postgres> {
        Postgres::start_with(Some(cert)).await
    }

    async fn start_with(tls: Option<&ServerCert>) -> Option<Postgres> {
        let bin = match postgres_bin_dir() {
            Some(bin) => bin,
            None => return skip_or_fail("no PostgreSQL binaries (initdb) found under /usr/lib/postgresql"),
        };
        let owner = if unsafe { libc::geteuid() } == 0 {
            match system_user("postgres") {
                Some(ids) => Some(ids),
                None => return skip_or_fail("running as root and there is no `postgres` system user"),
            }
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let log = dir.path().join("initdb.log");
        let status = as_owner(Command::new(bin.join("initdb")), owner, dir.path())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("initdb.err")).unwrap()))
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed: {}", read(&dir.path().join("initdb.err")));
        let mut settings = vec!["listen_addresses=127.0.0.1".to_string(), "fsync=off".to_string()];
        if let Some(cert) = tls {
            install_tls(&data, cert, owner);
            settings.extend(["ssl=on", "ssl_cert_file=server.crt", "ssl_key_file=server.key"].map(String::from));
        }

        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server_log = dir.path().join("postgres.log");
        let child = as_owner(Command::new(bin.join("postgres")), owner, dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(settings.iter().flat_map(|setting| ["-c", setting.as_str()]))
            .arg("-k")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&server_log).unwrap()))
            .spawn()
            .expect("start postgres");
        let mut server = Postgres { child, port, _dir: dir };
        server.wait_ready(&server_log).await;
        Some(server)
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database and returns its URL.
    pub async fn create_database(&self, db: &str) -> String {
        let (client, conn) = self.admin_connect().await.unwrap();
        let driver = tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
        drop(client);
        let _ = driver.await;
        self.url(db)
    }

    /// A connection as the superuser, over TLS when the server has it (`sslmode=prefer`).
    async fn admin_connect(
        &self,
    ) -> Result<(tokio_postgres::Client, impl std::future::Future<Output = Result<(), tokio_postgres::Error>>), String>
    {
        let url = format!("{}?sslmode=prefer", self.url("postgres"));
        let postgres_tls::Connection { config, tls, .. } = postgres_tls::Connection::from_url(&url).unwrap();
        config.connect(tls).await.map_err(|e| e.to_string())
    }

    /// Polls until a real connection succeeds (postgres accepts TCP before it is ready).
    async fn wait_ready(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((client, conn)) = self.admin_connect().await {
                let driver = tokio::spawn(conn);
                let ok = client.simple_query("SELECT 1").await.is_ok();
                drop(client);
                let _ = driver.await;
                if ok {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited with {status}; log:\n{}", read(log));
            }
            assert!(Instant::now() < deadline, "postgres not ready after 30s; log:\n{}", read(log));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SIGQUIT is postgres' immediate shutdown: the postmaster takes its backends down with it.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the server's certificate and key into the data directory (the key 0600 and owned
/// by the server's user, or postgres refuses it) and lets TCP clients in only over TLS.
fn install_tls(data: &Path, cert: &ServerCert, owner: Option<(u32, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    for (name, pem) in [("server.crt", &cert.cert), ("server.key", &cert.key)] {
        let path = data.join(name);
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
    }
    std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
}

/// Skips (None) with a loud message outside CI; fails inside CI.
fn skip_or_fail(reason: &str) -> Option<Postgres> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but the PostgreSQL tests cannot run: {reason}");
    }
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPING the PostgreSQL metadata-store tests: {reason}");
    eprintln!("!!! (install the `postgresql` package; with CI=true this is a failure)");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
    None
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` (or `$PG_BIN`).
fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The uid and gid of a system user.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy the ids out at once.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        None
    } else {
        Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    }
}

/// Runs `cmd` in `dir`, as `owner` when given (the command is exec'd directly, so its pid is ours).
fn as_owner(mut cmd: Command, owner: Option<(u32, u32)>, dir: &Path) -> Command {
    cmd.current_dir(dir).env("LC_ALL", "C").env_remove("PGDATA");
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
