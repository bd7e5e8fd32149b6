//! Loopback ports for the servers a test or bench starts.
//!
//! They come from below the kernel's ephemeral range. A port the OS hands out for `bind(:0)`
//! lies inside that range, and between the probe and the server's own bind any outgoing
//! connection on the machine (a parallel test's client) may take it as its local port; the
//! server then fails to bind or, worse, the test talks to whatever holds the port.

use std::net::TcpListener;
use std::sync::Mutex;

/// Where the kernel's ephemeral ports begin; the usual Linux default if it cannot be read.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// The first of `count` consecutive loopback ports that are free now and were never handed out
/// before by this process (two parallel tests must not start servers on the same port).
pub fn free_port_range(count: u16) -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let high = ephemeral_low();
    let low = high.saturating_sub(20_000).max(1024);
    let span = u64::from(high - low - count);
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    // Processes started together (test binaries, a developer's second run) start far apart.
    let mut state = clock ^ u64::from(std::process::id()) << 32;
    for _ in 0..1000 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let base = low + ((state >> 33) % span) as u16;
        let ports = base..base + count;
        if ports.clone().any(|p| handed_out.contains(&p)) {
            continue;
        }
        if ports.clone().all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            handed_out.extend(ports);
            return base;
        }
    }
    panic!("no {count} consecutive free ports in {low}..{high}");
}

/// One free loopback port (see the module comment for why not `bind(:0)`).
pub fn free_port() -> u16 {
    free_port_range(1)
}
