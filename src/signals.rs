//! Graceful-shutdown signal shared by every long-running subcommand.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on SIGTERM or SIGINT (Ctrl-C), so every server drains gracefully on either.
///
/// The handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives while a subcommand is still starting up is not lost. Must be called
/// inside the tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
}
