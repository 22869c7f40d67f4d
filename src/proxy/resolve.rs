//! Backend addresses, resolved on the thread of the request that needs
//! them, never on an engine loop: a slow or dead DNS server would
//! otherwise hold every backend connection of that loop (all proxied
//! streams of the child) for as long as the lookup takes. A request's
//! thread may block, as mod_proxy_http's does for its own lookup.
//!
//! Names are kept for `TTL` (mod_proxy keeps a worker's address for the
//! life of the child by default; a short time lets a changed name take
//! effect without a restart); while a lookup fails, the last address is
//! used. An address literal needs no lookup.

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long a looked-up address is used.
const TTL: Duration = Duration::from_secs(60);
/// Names kept at most: forward proxying (H2ProxyRequests) can name any
/// host, and the cache must not grow with them.
const MAX_NAMES: usize = 256;

static CACHE: Lazy<Mutex<HashMap<String, (SocketAddr, Instant)>>> = Lazy::new(Default::default);

/// The address to connect to for `connect` ("host:port").
pub fn resolve(connect: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = connect.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let now = Instant::now();
    if let Some(&(addr, at)) = CACHE.lock().get(connect) {
        if now.duration_since(at) < TTL {
            return Ok(addr);
        }
    }
    let found = match connect.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("no address for {connect}")),
        Err(e) => Err(format!("cannot resolve {connect}: {e}")),
    };
    let mut cache = CACHE.lock();
    let addr = match (found, cache.get(connect)) {
        (Ok(addr), _) => addr,
        // The name's last address while its lookup fails (a DNS server
        // down): most likely still right, and better than no backend.
        (Err(_), Some(&(stale, _))) => return Ok(stale),
        (Err(e), None) => return Err(e),
    };
    if cache.len() >= MAX_NAMES {
        cache.retain(|_, (_, at)| now.duration_since(*at) < TTL);
        if cache.len() >= MAX_NAMES {
            cache.clear();
        }
    }
    cache.insert(connect.to_string(), (addr, now));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_literals_need_no_lookup() {
        assert_eq!(resolve("127.0.0.1:8080"), Ok("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(resolve("[::1]:443"), Ok("[::1]:443".parse().unwrap()));
    }

    #[test]
    fn names_are_looked_up_and_kept() {
        let addr = resolve("localhost:8080").expect("localhost resolves");
        assert!(addr.ip().is_loopback() && addr.port() == 8080, "{addr}");
        assert_eq!(CACHE.lock().get("localhost:8080").map(|e| e.0), Some(addr));
    }

    #[test]
    fn an_unknown_name_is_an_error_that_names_it() {
        let e = resolve("no-such-host.invalid:80").unwrap_err();
        assert!(e.contains("no-such-host.invalid:80"), "{e}");
    }
}
