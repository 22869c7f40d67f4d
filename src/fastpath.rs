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
//! unlearns the URL: another handler at once, slowness when two runs in a
//! row were slow, so at most two requests per URL stall their connections
//! before the URL goes back to workers. A URL whose handler changed stays
//! on workers for `MIXED_HOLD` (its outcome may depend on more than the
//! key: a cookie a RewriteCond looks at sends a logged-in user to PHP and
//! everyone else to a cached file), so such URLs cost one stalled request
//! per `MIXED_HOLD` at most, not one per change of client. The table
//! is per child process (a graceful restart, with a new configuration,
//! starts empty) and bounded.

use crate::request::RequestHead;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// A run longer than this is not "fast" if the thread slept during it or
/// computed that long: a handler waiting on anything (I/O, a lock, a timer)
/// sleeps. A run that was only preempted stays fast: on a saturated
/// machine a 20 µs request is often kept off the CPU for longer (measured
/// with wall clock alone: ~800 URLs unlearned in 6 s at `h2load -c 100
/// -m 30`, each sending a connection's next burst back to workers, one
/// secondary connection per stream).
///
/// Only the wall clock is read around most runs: asking the kernel how
/// long the thread slept and computed (`getrusage`) is a system call, one
/// in ten of a 1 KiB request's. A run slow by the wall clock makes its
/// URL a suspect (`measures_next_run`), and the next run of a suspect is
/// measured; only a measured slow run counts towards unlearning it.
pub const MAX_RUN: Duration = Duration::from_millis(10);
/// URLs remembered per process; the table starts over when full.
const CAPACITY: usize = 8192;
/// Slow runs in a row that unlearn a URL, the last of them measured. One
/// can be bad luck on a saturated machine (the thread slept on a lock
/// whose holder was preempted): ~150 single slow runs per 300,000 requests
/// at `h2load -c 100 -m 10`, each of which sent the next burst of every
/// connection of the child to workers.
const SLOW_RUNS_TO_UNLEARN: u8 = 2;
/// How long a URL that was a fast static file and then was not stays on
/// workers, from its last run that was not a static file.
const MIXED_HOLD: Duration = Duration::from_secs(60);

/// What a run cost, as the thread that ran it saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Wall-clock time from the start of processing to the handler's end.
    pub elapsed: Duration,
    /// The thread slept (a voluntary context switch) during the run.
    pub slept: bool,
    /// CPU time the thread used during the run.
    pub cpu: Duration,
    /// `slept` and `cpu` are known: the kernel's figures, or those of a
    /// run within `MAX_RUN` (fast whatever they were). Otherwise the run
    /// took `elapsed` by the wall clock, and counts as slow (as if it
    /// slept) without being proof of it.
    pub measured: bool,
}

impl Cost {
    /// The cost of a run that took `elapsed` on the CPU, without sleeping.
    pub fn busy(elapsed: Duration) -> Cost {
        Cost { elapsed, slept: false, cpu: elapsed, measured: true }
    }

    /// A run known only by its wall-clock time.
    pub fn unmeasured(elapsed: Duration) -> Cost {
        Cost { elapsed, slept: true, cpu: elapsed, measured: false }
    }
}

/// How a request that could have run inline went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// httpd's default handler served a regular file.
    pub static_file: bool,
    pub cost: Cost,
}

impl Outcome {
    pub fn is_fast(&self) -> bool {
        let c = &self.cost;
        self.static_file && (c.elapsed <= MAX_RUN || (!c.slept && c.cpu <= MAX_RUN))
    }
}

/// The URLs known to be fast static files, and those that were and then
/// were not.
pub struct FastUrls {
    known: Mutex<HashMap<u64, Known, Seed>>,
}

#[derive(Clone, Copy, Debug)]
enum Known {
    /// Runs inline; `slow_runs` since its last fast run.
    Fast { slow_runs: u8 },
    /// Was fast, then another handler served it, at `since`.
    Mixed { since: Instant },
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
/// already refused, and not for ranges: a multi-range response is a file
/// region per range, more than a stream queues by reference, and the rest
/// would be copied into memory on c1 without the bound a worker waits on.
pub fn candidate(head: &RequestHead) -> bool {
    head.end_stream
        && !head.is_tunnel()
        && head.error_status.is_none()
        && head.path.is_some()
        && matches!(head.method.as_slice(), b"GET" | b"HEAD")
        && head.header(b"range").is_none()
}

/// Output filters a request may run inline with: they pass the body on,
/// count it, or set headers (names as httpd registers them, lower case;
/// c2 looks their records up once). Anything else (`ratelimit` sleeps,
/// `includes` runs subrequests, `deflate` grows work with the size) keeps
/// a URL on workers.
pub const HARMLESS_OUTPUT_FILTERS: [&str; 9] = [
    "h2rs_c2_response",
    "h2rs_c2_net_out",
    "content_length",
    "http_outerror",
    "byterange",
    "log_input_output",
    "fixup_headers_out",
    "fixup_headers_err",
    "mod_expires",
];

/// The key of a request's URL: a hash of the connection's virtual host
/// (its `server_rec` address: name-based hosts differ by authority),
/// `:authority`, `:path` and `accept-encoding`. A collision only
/// mispredicts speed. The encodings, because mod_deflate and mod_brotli
/// remove themselves for a client that accepts none: a URL learned from
/// such a client would run a browser's request inline with compression,
/// its output copied into memory on c1 (Debian's default configuration
/// compresses HTML, CSS and scripts).
pub fn url_key(vhost: usize, head: &RequestHead) -> u64 {
    let mut h = crate::hash::WordHasher::default();
    vhost.hash(&mut h);
    // Without :authority, httpd picks the name-based virtual host by Host.
    head.authority.as_deref().or_else(|| head.header(b"host")).hash(&mut h);
    head.path.hash(&mut h);
    head.header(b"accept-encoding").hash(&mut h);
    h.finish()
}

impl Default for FastUrls {
    fn default() -> FastUrls {
        FastUrls { known: Mutex::new(HashMap::with_hasher(Seed)) }
    }
}

impl FastUrls {
    pub fn predicts_fast(&self, key: u64) -> bool {
        matches!(self.known.lock().get(&key), Some(Known::Fast { .. }))
    }

    /// Whether the next run of this URL is to be measured (`MAX_RUN`): a
    /// run since its last fast one was slow.
    pub fn measures_next_run(&self, key: u64) -> bool {
        matches!(self.known.lock().get(&key), Some(Known::Fast { slow_runs }) if *slow_runs > 0)
    }

    /// Learns (or unlearns) a URL from how a request for it went: another
    /// handler unlearns it at once (and keeps it from being learned again
    /// for `MIXED_HOLD`), slowness only when it repeats.
    pub fn record(&self, key: u64, outcome: Outcome) {
        self.record_at(key, outcome, Instant::now)
    }

    /// `record`, with the clock (read only when a URL turns mixed or a
    /// mixed one runs fast).
    fn record_at(&self, key: u64, outcome: Outcome, now: impl FnOnce() -> Instant) {
        let mut known = self.known.lock();
        if outcome.is_fast() {
            // Known already (nearly always): one lookup, no insert.
            match known.get_mut(&key) {
                Some(Known::Fast { slow_runs }) => *slow_runs = 0,
                Some(entry @ Known::Mixed { .. }) => {
                    if let Known::Mixed { since } = *entry {
                        if now().saturating_duration_since(since) >= MIXED_HOLD {
                            *entry = Known::Fast { slow_runs: 0 };
                        }
                    }
                }
                None => {
                    if known.len() >= CAPACITY {
                        known.clear();
                    }
                    known.insert(key, Known::Fast { slow_runs: 0 });
                }
            }
        } else if !outcome.static_file {
            // Only a URL that was known (dynamic URLs, with their query
            // strings, would crowd the table out); a mixed one's hold
            // starts again, so URLs whose clients alternate stay on workers.
            if let Some(entry) = known.get_mut(&key) {
                *entry = Known::Mixed { since: now() };
            }
        } else if let Some(Known::Fast { slow_runs }) = known.get_mut(&key) {
            if !outcome.cost.measured {
                // Slow by the wall clock only (maybe just preempted): a
                // suspect, whose next run is measured. Runs that started
                // before it was one are not, and must not unlearn it.
                *slow_runs = (*slow_runs).max(1);
                return;
            }
            *slow_runs += 1;
            if *slow_runs >= SLOW_RUNS_TO_UNLEARN {
                known.remove(&key);
            }
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
            method: b"GET".into(),
            authority: Some(authority.as_bytes().into()),
            path: Some(path.as_bytes().into()),
            end_stream: true,
            ..Default::default()
        };
        assert!(candidate(&head));
        url_key(vhost, &head)
    }

    const FAST: Outcome = Outcome {
        static_file: true,
        cost: Cost { elapsed: Duration::from_micros(50), slept: false, cpu: Duration::from_micros(50), measured: true },
    };

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
        let long = MAX_RUN + Duration::from_millis(1);
        // Long, but only kept off the CPU (preempted): still fast.
        urls.record(k, Outcome { cost: Cost { elapsed: long, ..FAST.cost }, ..FAST });
        assert!(urls.predicts_fast(k));
        // Long, and the handler slept (waited on something): once may be
        // bad luck, twice in a row sends the URL back to workers.
        let slept = Outcome { cost: Cost { elapsed: long, slept: true, ..FAST.cost }, ..FAST };
        urls.record(k, slept);
        assert!(urls.predicts_fast(k));
        urls.record(k, FAST); // a fast run in between starts the count over
        urls.record(k, slept);
        assert!(urls.predicts_fast(k));
        urls.record(k, slept);
        assert!(!urls.predicts_fast(k));
        // A slow run does not teach an unknown URL.
        urls.record(k, slept);
        assert!(!urls.predicts_fast(k));
        urls.record(k, FAST);
        // Long, and that long on the CPU: back to workers too.
        urls.record(k, Outcome { cost: Cost::busy(long), ..FAST });
        urls.record(k, Outcome { cost: Cost::busy(long), ..FAST });
        assert!(!urls.predicts_fast(k));
        // A short run that slept (a page fault, a lock) is fast.
        urls.record(k, Outcome { cost: Cost { slept: true, ..FAST.cost }, ..FAST });
        assert!(urls.predicts_fast(k));
        // Not the default handler on a file: back to workers.
        urls.record(k, Outcome { static_file: false, ..FAST });
        assert!(!urls.predicts_fast(k));
    }

    #[test]
    fn a_url_served_by_another_handler_stays_on_workers_for_the_hold() {
        let urls = FastUrls::default();
        let k = key(1, "example.org", "/post/");
        let t0 = Instant::now();
        let dynamic = Outcome { static_file: false, ..FAST };
        // Unknown dynamic URLs are not remembered.
        urls.record_at(k, dynamic, || t0);
        assert!(urls.known.lock().is_empty());
        urls.record_at(k, FAST, || t0);
        assert!(urls.predicts_fast(k));
        // A logged-in user's request ran PHP: mixed from here.
        urls.record_at(k, dynamic, || t0);
        assert!(!urls.predicts_fast(k));
        // Anonymous requests (cached files, on workers) do not teach it again
        // within the hold, and each dynamic run starts the hold again.
        urls.record_at(k, FAST, || t0 + MIXED_HOLD / 2);
        assert!(!urls.predicts_fast(k));
        urls.record_at(k, dynamic, || t0 + MIXED_HOLD / 2);
        urls.record_at(k, FAST, || t0 + MIXED_HOLD);
        assert!(!urls.predicts_fast(k));
        // A hold without a dynamic run: fast again.
        urls.record_at(k, FAST, || t0 + MIXED_HOLD / 2 + MIXED_HOLD);
        assert!(urls.predicts_fast(k));
    }

    #[test]
    fn without_authority_the_host_field_is_part_of_the_key() {
        let head = |host: &[u8]| {
            let mut h = RequestHead {
                method: b"GET".into(),
                path: Some(b"/".as_slice().into()),
                end_stream: true,
                ..Default::default()
            };
            h.headers.push(b"host", host);
            h
        };
        assert_ne!(url_key(1, &head(b"static.example")), url_key(1, &head(b"app.example")));
    }

    #[test]
    fn a_run_slow_by_the_wall_clock_only_makes_a_suspect_whose_next_run_is_measured() {
        let urls = FastUrls::default();
        let k = key(1, "example.org", "/b.css");
        urls.record(k, FAST);
        assert!(!urls.measures_next_run(k), "a fast URL's runs read the wall clock only");
        let long = MAX_RUN + Duration::from_millis(1);
        let wall_slow = Outcome { cost: Cost::unmeasured(long), ..FAST };
        // However many unmeasured runs were slow (all started before the
        // first of them ended, say): a suspect, not unlearned.
        for _ in 0..3 {
            urls.record(k, wall_slow);
            assert!(urls.predicts_fast(k));
            assert!(urls.measures_next_run(k));
        }
        // Measured, and only preempted: fast again, not measured next.
        urls.record(k, Outcome { cost: Cost { elapsed: long, ..FAST.cost }, ..FAST });
        assert!(urls.predicts_fast(k));
        assert!(!urls.measures_next_run(k));
        // Slow by the clock, then measured slow: back to workers.
        urls.record(k, wall_slow);
        urls.record(k, Outcome { cost: Cost { elapsed: long, slept: true, ..FAST.cost }, ..FAST });
        assert!(!urls.predicts_fast(k));
        assert!(!urls.measures_next_run(k), "an unknown URL is not measured");
        // An unmeasured run within MAX_RUN is fast.
        urls.record(k, Outcome { cost: Cost::unmeasured(Duration::from_micros(30)), ..FAST });
        assert!(urls.predicts_fast(k));
    }

    #[test]
    fn only_bodiless_gets_and_heads_are_candidates() {
        let get = RequestHead {
            method: b"GET".into(),
            scheme: Some(b"https".into()),
            path: Some(b"/".into()),
            end_stream: true,
            ..Default::default()
        };
        assert!(candidate(&get));
        assert!(candidate(&RequestHead { method: b"HEAD".into(), ..get.clone() }));
        assert!(!candidate(&RequestHead { method: b"POST".into(), ..get.clone() }));
        // A body on its way: the handler could wait for the client.
        assert!(!candidate(&RequestHead { end_stream: false, ..get.clone() }));
        assert!(!candidate(&RequestHead { error_status: Some(431), ..get.clone() }));
        assert!(!candidate(&RequestHead { websocket_accept: Some(Box::from(&b"x"[..])), ..get.clone() }));
        let mut ranges = get.clone();
        ranges.headers.push(b"range", b"bytes=0-1,5-9");
        assert!(!candidate(&ranges));
    }

    #[test]
    fn the_accepted_encodings_are_part_of_the_key() {
        let plain = RequestHead {
            method: b"GET".into(),
            authority: Some(b"example.org".as_slice().into()),
            path: Some(b"/app.js".as_slice().into()),
            end_stream: true,
            ..Default::default()
        };
        let mut gzip = plain.clone();
        gzip.headers.push(b"accept-encoding", b"gzip, br");
        let mut identity = plain.clone();
        identity.headers.push(b"accept-encoding", b"identity");
        assert_ne!(url_key(1, &plain), url_key(1, &gzip));
        assert_ne!(url_key(1, &identity), url_key(1, &gzip));
        assert_eq!(url_key(1, &gzip), url_key(1, &gzip.clone()));
    }

    #[test]
    fn only_pass_through_filters_are_harmless() {
        let harmless = |name: &str| HARMLESS_OUTPUT_FILTERS.contains(&name);
        assert!(harmless("content_length"));
        assert!(harmless("h2rs_c2_net_out"));
        for name in ["ratelimit", "includes", "deflate", "substitute", "old_write"] {
            assert!(!harmless(name), "{name}");
        }
        // As httpd registers them: lower case.
        assert!(HARMLESS_OUTPUT_FILTERS.iter().all(|n| *n == n.to_ascii_lowercase()));
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
