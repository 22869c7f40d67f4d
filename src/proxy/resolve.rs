//! Backend addresses, resolved on the thread of the request that needs
//! them, never on an engine loop: a slow or dead DNS server would
//! otherwise hold every backend connection of that loop (all proxied
//! streams of the child) for as long as the lookup takes. A request's
//! thread may block, as mod_proxy_http's does for its own lookup.
//!
//! Names are kept for `TTL` (mod_proxy keeps a worker's address for the
//! life of the child by default; a short time lets a changed name take
//! effect without a restart). One request looks an expired name up again
//! while the others go on with its last address; when the lookup fails,
//! that address (or the error) stands for `RETRY`, so a DNS server that is
//! down costs one lookup per name every few seconds, not one per request.
//! An address literal needs no lookup.
//!
//! A name gives every address it has, in the resolver's order, and the
//! engine tries them in turn, as mod_proxy does: on Debian (and in Docker)
//! `localhost` is ::1 first, and a backend listening on 127.0.0.1 only
//! must still be reached by that name. A backend on a Unix domain socket
//! (`unix:/path|h2c://...`) has its path as its one address.

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a looked-up address is used.
const TTL: Duration = Duration::from_secs(60);
/// How long a failed lookup's outcome (the last address, or the error)
/// stands before the next lookup: with a DNS server down, each lookup
/// takes the resolver's whole timeout on a worker.
const RETRY: Duration = Duration::from_secs(10);
/// Names kept at most: forward proxying (H2ProxyRequests) can name any
/// host, and the cache must not grow with them.
const MAX_NAMES: usize = 256;

/// One address of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A Unix domain socket's path.
    Unix(Arc<Path>),
}

/// Also the text a backend's connections are shared by, so it names one
/// socket path only: bytes other than printable ASCII, and `%`, are
/// percent-escaped (a lossy UTF-8 conversion gave two such paths one
/// text).
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix(path) => {
                f.write_str("unix:")?;
                for &b in path.as_os_str().as_bytes() {
                    if (b.is_ascii_graphic() || b == b' ') && b != b'%' {
                        write!(f, "{}", char::from(b))?;
                    } else {
                        write!(f, "%{b:02X}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A backend's addresses, in the order to try them (never empty).
pub type Addrs = Arc<[Peer]>;

/// What is known of one name.
struct Entry<T> {
    found: Result<T, String>,
    fresh_until: Instant,
    /// A request is looking the name up again; others use `found`
    /// meanwhile instead of waiting for a lookup of their own.
    refreshing: bool,
}

type Cache<T> = Mutex<HashMap<String, Entry<T>>>;

static CACHE: Lazy<Cache<Addrs>> = Lazy::new(Default::default);

/// The addresses to connect to for `connect` ("host:port").
pub fn resolve(connect: &str) -> Result<Addrs, String> {
    if let Ok(addr) = connect.parse::<SocketAddr>() {
        return Ok(Arc::from([Peer::Tcp(addr)]));
    }
    resolve_in(&CACHE, connect, Instant::now(), |name| match name.to_socket_addrs() {
        Ok(found) => {
            let mut addrs: Vec<Peer> = Vec::new();
            for addr in found.map(Peer::Tcp) {
                // A name listed twice in /etc/hosts gives its address twice.
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
            if addrs.is_empty() {
                return Err(format!("no address for {name}"));
            }
            Ok(Arc::from(addrs))
        }
        Err(e) => Err(format!("cannot resolve {name}: {e}")),
    })
}

fn resolve_in<T: Clone>(
    cache: &Cache<T>,
    connect: &str,
    now: Instant,
    lookup: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, String> {
    let last = match cache.lock().get_mut(connect) {
        Some(e) if now < e.fresh_until || e.refreshing => return e.found.clone(),
        Some(e) => {
            e.refreshing = true;
            e.found.as_ref().ok().cloned()
        }
        None => None,
    };
    let found = lookup(connect);
    let mut cache = cache.lock();
    let entry = match (found, last) {
        (Ok(addr), _) => Entry { found: Ok(addr), fresh_until: now + TTL, refreshing: false },
        // The name's last address while its lookup fails (a DNS server
        // down): most likely still right, and better than no backend.
        (Err(_), Some(addr)) => Entry { found: Ok(addr), fresh_until: now + RETRY, refreshing: false },
        (Err(e), None) => Entry { found: Err(e), fresh_until: now + RETRY, refreshing: false },
    };
    let found = entry.found.clone();
    if cache.len() >= MAX_NAMES && !cache.contains_key(connect) {
        cache.retain(|_, e| now < e.fresh_until);
        if cache.len() >= MAX_NAMES {
            cache.clear();
        }
    }
    cache.insert(connect.to_string(), entry);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_are_named_apart() {
        use std::ffi::OsStr;
        let unix = |b: &[u8]| Peer::Unix(Arc::from(Path::new(OsStr::from_bytes(b)))).to_string();
        assert_eq!(unix(b"/run/app.sock"), "unix:/run/app.sock");
        assert_ne!(unix(b"/run/\xff.sock"), unix(b"/run/\xfe.sock"));
        assert_ne!(unix(b"/run/\xff.sock"), unix(b"/run/%FF.sock"));
        assert_eq!(unix(b"/run/%\xff"), "unix:/run/%25%FF");
    }

    #[test]
    fn address_literals_need_no_lookup() {
        let one = |s: &str| Ok(Arc::from([Peer::Tcp(s.parse().unwrap())]));
        assert_eq!(resolve("127.0.0.1:8080"), one("127.0.0.1:8080"));
        assert_eq!(resolve("[::1]:443"), one("[::1]:443"));
    }

    #[test]
    fn names_are_looked_up_and_kept() {
        let addrs = resolve("localhost:8080").expect("localhost resolves");
        assert!(
            addrs.iter().all(|a| matches!(a, Peer::Tcp(a) if a.ip().is_loopback() && a.port() == 8080)),
            "{addrs:?}"
        );
        assert_eq!(CACHE.lock().get("localhost:8080").map(|e| e.found.clone()), Some(Ok(addrs)));
    }

    #[test]
    fn an_unknown_name_is_an_error_that_names_it() {
        let e = resolve("no-such-host.invalid:80").unwrap_err();
        assert!(e.contains("no-such-host.invalid:80"), "{e}");
    }

    #[test]
    fn a_failing_lookup_keeps_the_last_address_and_is_not_repeated_per_request() {
        let cache = Cache::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(resolve_in(&cache, "b:80", t0, |_| Ok(a)), Ok(a));
        let no_lookup = |_: &str| -> Result<SocketAddr, String> { panic!("looked up while fresh") };
        assert_eq!(resolve_in(&cache, "b:80", t0 + TTL / 2, no_lookup), Ok(a));
        // Expired, and the DNS server is down: the last address, kept
        // for RETRY before the next lookup.
        let down = |_: &str| Err("cannot resolve b:80".to_string());
        assert_eq!(resolve_in(&cache, "b:80", t0 + TTL, down), Ok(a));
        assert_eq!(resolve_in(&cache, "b:80", t0 + TTL + RETRY / 2, no_lookup), Ok(a));
        // A name never found: its error stands for RETRY as well.
        assert!(resolve_in(&cache, "c:80", t0, down).is_err());
        assert!(resolve_in(&cache, "c:80", t0 + RETRY / 2, no_lookup).is_err());
    }

    #[test]
    fn one_request_refreshes_an_expired_name_while_others_use_the_last_address() {
        let cache = Cache::default();
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
        let t0 = Instant::now();
        resolve_in(&cache, "n:80", t0, |_| Ok(a)).unwrap();
        let got = resolve_in(&cache, "n:80", t0 + TTL, |name| {
            // Meanwhile another request for the name: no lookup of its own.
            let other = resolve_in(&cache, name, t0 + TTL, |_| panic!("a second lookup"));
            assert_eq!(other, Ok(a));
            Ok(b)
        });
        assert_eq!(got, Ok(b));
    }
}
