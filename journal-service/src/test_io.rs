//! Test doubles for byte streams.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// A writer that, like a TLS stream whose socket would block mid-write (tokio-rustls), accepts
/// every byte but delivers them to the peer only on `flush`. A writer that never flushes
/// strands its last frames here.
#[derive(Default)]
pub(crate) struct HeldUntilFlush {
    held: Vec<u8>,
    /// What the peer has received.
    pub(crate) delivered: Arc<Mutex<Vec<u8>>>,
}

impl AsyncWrite for HeldUntilFlush {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let held = std::mem::take(&mut self.held);
        self.delivered.lock().expect("delivered lock").extend_from_slice(&held);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Whether `delivered` comes to hold exactly `expected` within 5 s.
pub(crate) async fn delivers(delivered: &Mutex<Vec<u8>>, expected: &[u8]) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if delivered.lock().expect("delivered lock").as_slice() == expected {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    false
}
