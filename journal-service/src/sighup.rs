//! Certificates rotated without a restart: on every SIGHUP a process re-reads the PEM files of
//! each of its TLS settings (a journal node's and a proxy's `[cluster_tls]`, the proxy's `[tls]`
//! and `[backend] tls`). Each setting keeps what it loaded behind an `ArcSwap`: connections made
//! afterwards use the new files, open ones keep theirs, and files that do not load leave the old
//! ones in use (docs/cluster-tls.md, "Rotation").

use std::fmt::Display;

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The certificate files were read again and are in use for new connections.
    Certificates,
    /// The process runs without these certificates: there was nothing to read.
    NothingConfigured,
}

/// Calls `reload` on every SIGHUP and logs the outcome, naming `what` was (or was not)
/// reloaded; a failed reload's error names the file.
///
/// SIGHUP's default action ends the process: once one hook is installed it no longer does, so
/// a process that runs without certificates installs its hook anyway (it then logs that there
/// was nothing to reload), and a rotation that signals every member of a cluster stops none.
pub fn reload_on_sighup<E: Display>(
    what: &'static str,
    reload: impl Fn() -> Result<Reloaded, E> + Send + 'static,
) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reload() {
                Ok(Reloaded::Certificates) => tracing::info!("SIGHUP: {what} reloaded"),
                Ok(Reloaded::NothingConfigured) => tracing::info!("SIGHUP: no {what} configured, nothing to reload"),
                Err(e) => tracing::error!("SIGHUP: {what} NOT reloaded, the old ones stay: {e}"),
            }
        }
    });
    Ok(())
}
