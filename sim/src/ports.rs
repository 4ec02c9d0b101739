//! Free loopback ports for processes we start.
//!
//! We ask the kernel for a free port by binding port 0, then release it and hand the number to
//! the child. Another process can grab the port in between; callers retry on "address in use"
//! (see `Cluster::start`). Within this process a port is never handed out twice, which removes
//! the common case of two clusters in one test binary colliding.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::error::{Result, SimError};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback address whose port was free a moment ago and has not been returned by this
/// function before in this process.
pub fn free_loopback_addr() -> Result<SocketAddr> {
    const ATTEMPTS: usize = 64;
    for _ in 0..ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| SimError::io("binding 127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SimError::io("reading a bound address", e))?;
        drop(listener);
        let mut ports = handed_out()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ports.insert(addr.port()) {
            return Ok(addr);
        }
    }
    Err(SimError::Process(format!(
        "no fresh loopback port after {ATTEMPTS} attempts"
    )))
}

/// Whether `text` (a process log) says a listener could not bind.
pub fn mentions_address_in_use(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("address already in use")
        || lower.contains("addrinuse")
        || lower.contains("address in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_within_the_process() {
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let addr = free_loopback_addr().expect("free port");
            assert!(addr.ip().is_loopback());
            assert!(
                seen.insert(addr.port()),
                "port {} handed out twice",
                addr.port()
            );
        }
    }

    #[test]
    fn recognises_bind_failures() {
        assert!(mentions_address_in_use(
            "Error: Address already in use (os error 98)"
        ));
        assert!(mentions_address_in_use("bind: AddrInUse"));
        assert!(!mentions_address_in_use("connection refused"));
    }
}
