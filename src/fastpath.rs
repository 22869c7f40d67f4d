//! Which requests c1 runs on its own thread instead of a worker's.
//!
//! Handing a stream to a worker and its response back to c1 costs two
//! thread hand-offs (a futex wake and an eventfd wake, each a context
//! switch on a loaded machine): measured 44 against 27 µs of CPU per 1 KiB
//! static file at `h2load -c 100 -m 10`, more than the request itself.
//! HTTP/1.1 pays one hand-off per request.
//!
//! A request may run inline only when it can neither block nor take long:
//! a GET or HEAD without a body whose URL was, the last time it ran, a
//! regular file served by httpd's default handler through pass-through
//! output filters, quickly. Its size does not matter: a body of 16 KiB or
//! more is queued as a file reference that c1 reads when it sends, as it
//! would after a worker; a smaller one is copied. Which handler and
//! filters a request gets is known only once httpd has processed it, so
//! this module remembers those outcomes per (virtual host, authority,
//! path) and predicts from them. An inline run that turns out otherwise
//! (slow, another handler) unlearns the URL: at most one request per URL
//! stalls its connection before the URL goes back to workers. The table
//! is per child process (a graceful restart, with a new configuration,
//! starts empty) and bounded.

use crate::request::RequestHead;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Duration;

/// A run longer than this (wall clock, so a handler waiting on anything
/// counts) is not "fast". Generous: on a loaded machine a 10 µs request
/// can be preempted for a few milliseconds.
pub const MAX_RUN: Duration = Duration::from_millis(10);
/// URLs remembered per process; the table starts over when full.
const CAPACITY: usize = 8192;

/// How a request that could have run inline went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// httpd's default handler served a regular file.
    pub static_file: bool,
    /// Wall-clock time from the start of processing to the handler's end.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn is_fast(&self) -> bool {
        self.static_file && self.elapsed <= MAX_RUN
    }
}

/// The URLs known to be fast static files.
pub struct FastUrls {
    known: Mutex<HashSet<u64, Seed>>,
}

/// Builds `IdentityHasher`s.
#[derive(Clone, Copy, Default)]
struct Seed;

impl BuildHasher for Seed {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

/// The set's keys are 64-bit hashes already: use them as they are.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Whether a request has the shape of one that may run inline: a GET or
/// HEAD without a body (it cannot wait for the client), not a tunnel, not
/// already refused.
pub fn candidate(head: &RequestHead) -> bool {
    head.end_stream
        && !head.is_tunnel()
        && head.error_status.is_none()
        && head.path.is_some()
        && matches!(head.method.as_slice(), b"GET" | b"HEAD")
}

/// Output filters a request may run inline with: they pass the body on,
/// count it, or set headers (names as httpd registers them, lower case).
/// Anything else (`ratelimit` sleeps, `includes` runs subrequests,
/// `deflate` grows work with the size) keeps a URL on workers.
pub fn harmless_output_filter(name: &[u8]) -> bool {
    const HARMLESS: [&[u8]; 9] = [
        b"h2rs_c2_response",
        b"h2rs_c2_net_out",
        b"content_length",
        b"http_outerror",
        b"byterange",
        b"log_input_output",
        b"fixup_headers_out",
        b"fixup_headers_err",
        b"mod_expires",
    ];
    HARMLESS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The key of a request's URL: a hash of the connection's virtual host
/// (its `server_rec` address: name-based hosts differ by authority),
/// `:authority` and `:path`. A collision only mispredicts speed.
pub fn url_key(vhost: usize, head: &RequestHead) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    vhost.hash(&mut h);
    head.authority.hash(&mut h);
    head.path.hash(&mut h);
    h.finish()
}

impl Default for FastUrls {
    fn default() -> FastUrls {
        FastUrls { known: Mutex::new(HashSet::with_hasher(Seed)) }
    }
}

impl FastUrls {
    pub fn predicts_fast(&self, key: u64) -> bool {
        self.known.lock().contains(&key)
    }

    /// Learns (or unlearns) a URL from how a request for it went.
    pub fn record(&self, key: u64, outcome: Outcome) {
        let mut known = self.known.lock();
        if outcome.is_fast() {
            if known.len() >= CAPACITY && !known.contains(&key) {
                known.clear();
            }
            known.insert(key);
        } else {
            known.remove(&key);
        }
    }
}

/// The process's table.
pub fn urls() -> &'static FastUrls {
    static URLS: std::sync::OnceLock<FastUrls> = std::sync::OnceLock::new();
    URLS.get_or_init(FastUrls::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(vhost: usize, authority: &str, path: &str) -> u64 {
        let head = RequestHead {
            method: b"GET".to_vec(),
            authority: Some(authority.into()),
            path: Some(path.into()),
            end_stream: true,
            ..Default::default()
        };
        assert!(candidate(&head));
        url_key(vhost, &head)
    }

    const FAST: Outcome = Outcome { static_file: true, elapsed: Duration::from_micros(50) };

    #[test]
    fn learns_fast_static_urls_and_unlearns_them() {
        let urls = FastUrls::default();
        let k = key(1, "example.org", "/a.css");
        assert!(!urls.predicts_fast(k));
        urls.record(k, FAST);
        assert!(urls.predicts_fast(k));
        // Another virtual host or path is another URL.
        assert!(!urls.predicts_fast(key(2, "example.org", "/a.css")));
        assert!(!urls.predicts_fast(key(1, "example.org", "/a.css?x")));
        assert!(!urls.predicts_fast(key(1, "example.net", "/a.css")));
        // Slow (a handler waited on something): back to workers.
        urls.record(k, Outcome { elapsed: MAX_RUN + Duration::from_millis(1), ..FAST });
        assert!(!urls.predicts_fast(k));
        urls.record(k, FAST);
        // Not the default handler on a file: back to workers.
        urls.record(k, Outcome { static_file: false, ..FAST });
        assert!(!urls.predicts_fast(k));
    }

    #[test]
    fn only_bodiless_gets_and_heads_are_candidates() {
        let get = RequestHead {
            method: b"GET".to_vec(),
            scheme: Some(b"https".to_vec()),
            path: Some(b"/".to_vec()),
            end_stream: true,
            ..Default::default()
        };
        assert!(candidate(&get));
        assert!(candidate(&RequestHead { method: b"HEAD".to_vec(), ..get.clone() }));
        assert!(!candidate(&RequestHead { method: b"POST".to_vec(), ..get.clone() }));
        // A body on its way: the handler could wait for the client.
        assert!(!candidate(&RequestHead { end_stream: false, ..get.clone() }));
        assert!(!candidate(&RequestHead { error_status: Some(431), ..get.clone() }));
        assert!(!candidate(&RequestHead { websocket_accept: Some(b"x".to_vec()), ..get.clone() }));
    }

    #[test]
    fn only_pass_through_filters_are_harmless() {
        assert!(harmless_output_filter(b"content_length"));
        assert!(harmless_output_filter(b"H2RS_C2_NET_OUT"));
        for name in ["ratelimit", "includes", "deflate", "substitute", "old_write"] {
            assert!(!harmless_output_filter(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn table_is_bounded() {
        let urls = FastUrls::default();
        for i in 0..CAPACITY as u64 + 10 {
            urls.record(key(0, "h", &format!("/{i}")), FAST);
        }
        assert!(urls.known.lock().len() <= CAPACITY);
        // The newest is always kept.
        assert!(urls.predicts_fast(key(0, "h", &format!("/{}", CAPACITY + 9))));
    }
}
