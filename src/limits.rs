//! Every limit that protects the server from a hostile client, in one
//! place. docs/limits.md lists each attack, the defence, the limit and its
//! directive; tests/test_attacks.py proves them against a real httpd.
//!
//! Limits with a directive of the stock module take their value from it
//! (see `Directive`); the others are constants here. Nothing in this file
//! touches httpd: it is pure and unit-tested, but for `descriptor_limit`,
//! which reads the process's RLIMIT_NOFILE.

use std::time::Instant;

/// Limits that come from a configuration directive, with the directive
/// and the stock default. Where the value is read: `c1::settings_for`.
pub mod directive {
    /// H2MaxSessionStreams: SETTINGS_MAX_CONCURRENT_STREAMS. Streams above
    /// it are refused by nghttp2 (RST_STREAM REFUSED_STREAM / PROTOCOL_ERROR).
    pub const MAX_SESSION_STREAMS: (&str, u32) = ("H2MaxSessionStreams", 100);
    /// H2MaxStreamErrors: streams we reset for the client's flow-control or
    /// protocol errors before the connection ends (PROTOCOL_ERROR).
    pub const MAX_STREAM_ERRORS: (&str, u32) = ("H2MaxStreamErrors", 8);
    /// H2StreamMaxMemSize: response bytes buffered per stream; a worker
    /// that would exceed it waits (backpressure), up to H2StreamTimeout.
    pub const STREAM_MAX_MEM_SIZE: (&str, usize) = ("H2StreamMaxMemSize", 32 * 1024);
    /// H2WindowSize: request body bytes buffered per stream.
    pub const WINDOW_SIZE: (&str, u32) = ("H2WindowSize", 65535);
    /// H2MaxWorkers: threads that run streams, per child.
    pub const MAX_WORKERS: &str = "H2MaxWorkers";
    /// H2StreamTimeout (default: Timeout): how long a worker waits for the
    /// client (window, body) before the stream is reset.
    pub const STREAM_TIMEOUT: &str = "H2StreamTimeout";
    /// H2MaxHeaderBlockLen: response header block we send (0: 64 KiB).
    pub const MAX_HEADER_BLOCK_LEN: (&str, usize) = ("H2MaxHeaderBlockLen", 64 * 1024);
    /// LimitRequestFields: fields per request (431 beyond it; the stream is
    /// reset with ENHANCE_YOUR_CALM beyond it + `FIELDS_CALM_MARGIN`).
    pub const LIMIT_REQUEST_FIELDS: (&str, u32) = ("LimitRequestFields", 100);
    /// LimitRequestFieldSize: bytes of one "name: value" (431), also bounds
    /// the joined cookie crumbs.
    pub const LIMIT_REQUEST_FIELD_SIZE: (&str, u32) = ("LimitRequestFieldSize", 8190);
    /// LimitRequestLine: bytes of one pseudo header value (414).
    pub const LIMIT_REQUEST_LINE: (&str, u32) = ("LimitRequestLine", 8190);
}

/// Decoded bytes of one request head (each field counted as its name and
/// value plus 32, as HPACK does): beyond it the request is answered 431
/// and nothing more of it is kept. HPACK lets a 1-byte reference stand
/// for a 4 KiB field, so LimitRequestFields x LimitRequestFieldSize
/// (800 KiB) is no bound worth having against it (nginx allows 32 KiB by
/// default).
pub const MAX_REQUEST_HEAD_BYTES: u32 = 64 * 1024;

/// A backend's header block (response head, interim head or trailers),
/// decoded, counted as HPACK counts (name + value + 32 per field): beyond
/// it the proxied request is answered 502 and the backend's stream reset.
/// A hostile backend's HPACK references would otherwise expand a few KiB
/// on the wire into gigabytes held in the child.
pub const MAX_BACKEND_HEAD_BYTES: usize = 64 * 1024;

/// Interim (1xx) heads one proxied response may carry before its final
/// head; beyond, as for a head too large.
pub const MAX_BACKEND_INTERIMS: u8 = 16;

/// Decoded bytes of the request heads one connection may have waiting for
/// a worker (at most H2MaxSessionStreams of them): a new request beyond it
/// is refused (RST_STREAM REFUSED_STREAM, safe for the client to retry).
pub const MAX_PENDING_HEAD_BYTES: usize = 1024 * 1024;

/// Fields beyond LimitRequestFields after which a request is not answered
/// (431) but its stream is reset with ENHANCE_YOUR_CALM: the client keeps
/// sending although the answer is decided.
pub const FIELDS_CALM_MARGIN: u32 = 100;

/// A request's header block (HEADERS and its CONTINUATIONs, or trailers)
/// that c1 has begun to receive must end within this (or `Timeout`, if
/// shorter), counted from the first time c1 waited on it; then the
/// connection is closed, as HTTP/1.1 answers 408 at mod_reqtimeout's
/// header stage (20 s before any byte extends it). Before, each byte
/// started `Timeout` over: a client that sent a byte of a header block
/// every `Timeout` held the connection's thread for months.
pub const HEADER_BLOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// CONTINUATION frames per header block (CVE-2024-27316): nghttp2 ends the
/// connection beyond it. With 16 KiB frames a header block is at most
/// 144 KiB, and fields beyond the request limits are not stored.
pub const MAX_CONTINUATIONS: usize = 8;

/// SETTINGS_MAX_FRAME_SIZE we accept (the protocol default: we never
/// announce a larger one). nghttp2 enforces it except on CONTINUATION
/// frames, which `session.rs` checks.
pub const LOCAL_MAX_FRAME_SIZE: u32 = 16_384;

/// Entries in one SETTINGS frame (nghttp2 ends the connection beyond it).
pub const MAX_SETTINGS: usize = 32;

/// Queued outbound PING/SETTINGS ACKs (CVE-2019-9512, 9515): a client that
/// does not read them is flooding; the connection ends (ENHANCE_YOUR_CALM).
pub const MAX_OUTBOUND_ACK: usize = 1000;

/// HPACK dynamic table our encoder uses, whatever SETTINGS_HEADER_TABLE_SIZE
/// the client announces.
pub const MAX_DEFLATE_TABLE: usize = 4096;

/// Client RST_STREAM frames that cancel an open stream: burst and refill
/// per second (rapid reset, CVE-2023-44487). Beyond: GOAWAY
/// ENHANCE_YOUR_CALM.
pub const RST_RATE: Rate = Rate { burst: 800, per_sec: 33 };
/// Client RST_STREAM frames for streams already closed. They cancel no work,
/// and some clients send them in numbers: python-h2 (httpx) answers every
/// DATA frame that arrives after its own RST_STREAM (RFC 9113 5.4.2) with
/// another, up to a stream window of frames per cancelled download. Beyond
/// this (a flood): GOAWAY ENHANCE_YOUR_CALM.
pub const CLOSED_RST_RATE: Rate = Rate { burst: 10_000, per_sec: 1_000 };
/// nghttp2's own limit counts every client RST_STREAM and sends
/// INTERNAL_ERROR; a backstop just above the two of ours together.
pub const NGHTTP2_RST_RATE: Rate = Rate { burst: 11_000, per_sec: 1_100 };
// Ours fire first (checked when the module is compiled).
const _: () = assert!(
    RST_RATE.burst + CLOSED_RST_RATE.burst < NGHTTP2_RST_RATE.burst
        && RST_RATE.per_sec + CLOSED_RST_RATE.per_sec <= NGHTTP2_RST_RATE.per_sec
);

/// nghttp2's "glitch" budget: frames that do nothing useful (empty DATA,
/// PRIORITY, unknown types, WINDOW_UPDATE on closed streams...). Beyond it
/// nghttp2 sends GOAWAY ENHANCE_YOUR_CALM (CVE-2019-9518 and friends).
pub const GLITCH_RATE: Rate = Rate { burst: 1000, per_sec: 33 };

/// The same budget on the proxy's backend connections. Each stream the
/// proxy cancels (its client reset it or went away) may still receive what
/// the backend sent before our RST_STREAM arrived (RFC 9113 5.4.2): up to a
/// stream window of DATA (256 KiB, 16 frames) and a head, each of which
/// nghttp2 counts as a glitch. With the client budget, 600 downloads
/// cancelled by one client in a few seconds ended the shared backend
/// connection with ENHANCE_YOUR_CALM, and other clients' requests on it
/// with 502. This one allows ~5,000 cancels at once and ~500 a second for
/// good; a backend that floods junk beyond it still loses its connection.
pub const BACKEND_GLITCH_RATE: Rate = Rate { burst: 100_000, per_sec: 10_000 };

/// The largest request header block the proxy sends a backend. nghttp2's
/// default, 64 KiB, is less than an HTTP/1.1 front lets in (LimitRequestFields
/// x LimitRequestFieldSize: 800 KiB by default): ten 8 KB cookies were
/// refused, tried again and answered 502 as the backend's fault. The
/// backend judges a large head (431), as behind mod_proxy_http.
pub const BACKEND_MAX_HEADER_BLOCK: usize = 1024 * 1024;

/// Control frames that must be answered (PING, SETTINGS) a client may send,
/// read or not: beyond it GOAWAY ENHANCE_YOUR_CALM.
pub const CONTROL_RATE: Rate = Rate { burst: 1000, per_sec: 100 };

/// Streams reset by us for a malformed request (RFC 9113 8.1.1) or a head
/// far beyond the limits: like H2MaxStreamErrors for flow control, but
/// these cost a header decode each, so the budget is a rate.
pub const BAD_REQUEST_RATE: Rate = Rate { burst: 200, per_sec: 20 };

/// Share of the worker pool (H2MaxWorkers) one connection may use at most,
/// as numerator/denominator.
pub const WORKER_SHARE: (u32, u32) = (3, 4);

/// Streams a connection runs at first; doubles as streams complete, halves
/// on resets of running streams, never below `MIN_ACTIVE_STREAMS`.
pub const INITIAL_ACTIVE_STREAMS: usize = 6;
pub const MIN_ACTIVE_STREAMS: usize = 2;

/// Streams on workers for a connection whose client gives no flow-control
/// window (SETTINGS_INITIAL_WINDOW_SIZE below `USABLE_INITIAL_WINDOW` or an
/// empty connection window): the zero-window slow read (CVE-2023-43622)
/// pins at most this many workers per connection until the client opens
/// its window.
pub const ZERO_WINDOW_ACTIVE_STREAMS: usize = 1;

/// A client's SETTINGS_INITIAL_WINDOW_SIZE below this counts as no window
/// at all: a window of 1 byte lets a response out a byte per round trip,
/// and holds a worker as long as a window of 0 (browsers and curl ask for
/// 64 KiB and more).
pub const USABLE_INITIAL_WINDOW: u32 = 1024;

/// Seconds between two returns of freed memory to the system after
/// sessions end (`c1::release_freed_memory`, glibc's malloc_trim).
pub const TRIM_INTERVAL_SECS: u64 = 1;

/// Bytes c1 reads from the client in one pass before it writes answers
/// (so a fast sender cannot starve the writes).
pub const READ_BUDGET: usize = 256 * 1024;

/// The child's descriptor limit (RLIMIT_NOFILE's soft value, read once):
/// what clients could fill is held to shares of it, so that accept, static
/// files and CGI pipes keep working for every client.
pub fn descriptor_limit() -> usize {
    static LIMIT: once_cell::sync::OnceCell<usize> = once_cell::sync::OnceCell::new();
    *LIMIT.get_or_init(|| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit.
        let cur = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 1024 };
        usize::try_from(cur).unwrap_or(usize::MAX)
    })
}

/// Descriptors that queued file regions may hold in the child: a quarter
/// of its limit (a client that takes nothing keeps them queued), and at
/// most `MAX_FILE_REGIONS`.
pub fn file_region_budget(descriptors: usize) -> usize {
    (descriptors / 4).clamp(64, MAX_FILE_REGIONS)
}

/// A region of a file of 1 MiB or more keeps a mapping of its own while it
/// waits for the client, and each mapping is one of the child's memory
/// areas, of which Linux allows 65,530 (`vm.max_map_count`); past them
/// every mmap fails, APR's and the allocator's too, which aborts the
/// child. With the descriptor limit containers get (1,048,576) a quarter
/// of it allowed as many regions as the kernel allows areas.
const MAX_FILE_REGIONS: usize = 16_384;

/// Backend connections one proxy loop keeps open, to all backends
/// together: a sixteenth of the descriptors (two loops: an eighth), 32 to
/// 512. Each name a request gives its backend (the client's host as SNI
/// with ProxyPreserveHost, a RewriteRule's target) is a connection of its
/// own, so clients choose how many there would be.
pub fn backend_conns_per_loop(descriptors: usize) -> usize {
    (descriptors / 16).clamp(32, 512)
}

/// A workload's share of the workers when `busy` connections have streams
/// on them: `max_workers / busy`, at least 1, at most the connection share.
pub fn fair_share(max_workers: u32, busy: u32) -> usize {
    let connection = (max_workers * WORKER_SHARE.0 / WORKER_SHARE.1).max(1);
    (max_workers / busy.max(1)).clamp(1, connection) as usize
}

/// Workers kept free for connections that have nothing running yet: a
/// connection that already has streams on workers gets more only while
/// more than this many are free (slow handlers, CVE-2016-1546: a new
/// client still finds a worker while the others are pinned).
pub fn worker_reserve(max_workers: u32) -> u32 {
    (max_workers / 8).max(1)
}

/// A rate: `burst` events at once, refilled at `per_sec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub burst: u64,
    pub per_sec: u64,
}

/// A token bucket over a `Rate`.
#[derive(Clone, Debug)]
pub struct RateLimit {
    rate: Rate,
    tokens: u64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: Rate) -> RateLimit {
        RateLimit { rate, tokens: rate.burst, last: Instant::now() }
    }

    /// Takes one token at `now`; false when the budget is spent.
    pub fn take_at(&mut self, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.last).as_secs();
        if secs > 0 {
            self.tokens = self.rate.burst.min(self.tokens.saturating_add(secs.saturating_mul(self.rate.per_sec)));
            self.last += std::time::Duration::from_secs(secs);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_bursts_then_refills() {
        let t0 = Instant::now();
        let mut r = RateLimit { rate: Rate { burst: 3, per_sec: 2 }, tokens: 3, last: t0 };
        assert!(r.take_at(t0) && r.take_at(t0) && r.take_at(t0));
        assert!(!r.take_at(t0 + Duration::from_millis(900)));
        assert!(r.take_at(t0 + Duration::from_secs(1)));
        assert!(r.take_at(t0 + Duration::from_secs(1)));
        assert!(!r.take_at(t0 + Duration::from_secs(1)));
        // Never more than the burst after a long pause.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| r.take_at(later)));
        assert!(!r.take_at(later));
    }

    #[test]
    fn file_regions_leave_most_memory_areas_to_the_rest_of_the_child() {
        assert_eq!(file_region_budget(1024), 256);
        assert_eq!(file_region_budget(16), 64);
        assert_eq!(file_region_budget(1 << 20), 16_384, "a quarter of vm.max_map_count at most");
    }

    #[test]
    fn fair_share_bounds() {
        assert_eq!(fair_share(16, 0), 12);
        assert_eq!(fair_share(16, 1), 12);
        assert_eq!(fair_share(16, 4), 4);
        assert_eq!(fair_share(16, 40), 1);
        assert_eq!(fair_share(1, 1), 1);
    }
}
