//! Free TCP ports on 127.0.0.1.
//!
//! A port is "free" when the kernel hands it out for `bind(127.0.0.1:0)`. The listener is dropped
//! before the port is returned, so another process can still take it before our child binds it;
//! [`super::Cluster::start`] retries when a child fails with "address already in use".

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// How many times a port the process already handed out may come back from the kernel before we
/// give up; the kernel picks ephemeral ports at random, so this is never reached in practice.
const MAX_REPEATS: usize = 1000;

/// Ports handed out by this process. Tests run in parallel threads of one process and each starts
/// its own cluster: without this set, two clusters could be given the same (then released) port.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns `n` distinct ports that were free on 127.0.0.1 a moment ago and that this process has
/// never handed out before.
pub fn pick_free_ports(n: usize) -> io::Result<Vec<u16>> {
    // Every listener stays bound until all `n` ports are chosen, so the kernel cannot return the
    // same port twice within one call.
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let mut repeats = 0;
    let mut handed_out = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    while ports.len() < n {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        listeners.push(listener);
        if handed_out.insert(port) {
            ports.push(port);
        } else {
            repeats += 1;
            if repeats > MAX_REPEATS {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "the kernel keeps returning ports this process already handed out",
                ));
            }
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests;
