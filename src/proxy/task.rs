//! One proxied request as the front (httpd's request) and the engine (the
//! backend connection's event loop) share it. Pure: no httpd, no nghttp2.
//!
//! ```text
//! front (handler / resume job)                engine (event loop thread)
//! ----------------------------                --------------------------
//! push_body / end_body  --> body queue   --> read_data (DATA frames)
//! take()                <-- response     <-- on_interim / on_head / on_data / on_end / fail
//! take(): consumed n    --> consume      --> nghttp2_session_consume (WINDOW_UPDATE)
//! cancel()              --> cancelled    --> RST_STREAM(CANCEL)
//!         front wake-up <-- Front::wake  <-- any of the above
//! ```
//!
//! The response buffer is bounded by the backend stream's receive window:
//! the engine reopens that window only for bytes the front has taken, so a
//! slow client slows the backend stream instead of growing memory.

use super::backend_tls::TlsTarget;
use crate::stream::{ByteQueue, Headers, ResponseHead};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request body waits in its queue up to this many bytes; the front
/// (reading the client) waits for the engine beyond that.
pub const BODY_QUEUE_LIMIT: usize = 256 * 1024;

/// Why a proxied request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Before any response: answer with this status (502, 503, 504).
    Status(u16),
    /// After the response began (or the client left): abort the response.
    Abort,
}

/// What the engine needs to send the request.
pub struct RequestSpec {
    /// "h2c://host:port" or "h2://host:port": connections are shared per key.
    pub key: String,
    /// For the error log (the key, as a rule).
    pub backend: String,
    /// Where to connect, in the order to try (looked up on the request's
    /// thread, see `resolve`).
    pub addrs: super::resolve::Addrs,
    /// `h2://`: the host its certificate must name and the checks.
    pub tls: Option<Arc<TlsTarget>>,
    /// :method, :scheme, :authority, :path first, then the fields.
    pub fields: Headers,
    pub has_body: bool,
    /// A retry is allowed after a connection loss (the method is idempotent).
    pub idempotent: bool,
    pub timeout: Duration,
    /// How its backend connection is opened and kept.
    pub pool: PoolParams,
    /// The Via entry the front adds to the response (ProxyVia).
    pub via: Option<String>,
    /// "h2c://authority" (or h2://) of the ProxyPass URL when the
    /// response's `Link` URIs are mapped by ProxyPassReverse: a reverse
    /// proxy without ProxyPreserveHost, as the stock module maps them.
    pub link_origin: Option<String>,
    /// Tests only (H2RS_FAULT_INJECTION=1): the request's field
    /// `h2rs-test-panic: proxy-loop` panics its engine loop.
    pub fault_panic: bool,
}

/// The mod_proxy worker's connection pool parameters that apply to the
/// engine's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolParams {
    /// `connectiontimeout`: how long a new connection may take to open
    /// (TCP); None: the request's timeout.
    pub connect_timeout: Option<Duration>,
    /// `ping`: a new connection must bring the backend's SETTINGS within
    /// it, and a connection the backend has been silent on for longer is
    /// checked with a PING before the request goes on it.
    pub ping: Option<Duration>,
    /// `ttl`: how long a connection that carried the request may stay idle
    /// before it is closed (else `engine::IDLE_CLOSE`).
    pub idle_ttl: Option<Duration>,
    /// `keepalive`: TCP keep-alive probes on a connection opened for it
    /// (so a firewall between keeps an idle one open).
    pub keepalive: bool,
    /// `disablereuse`: the request gets a backend connection of its own,
    /// closed once it is done.
    pub single_use: bool,
    /// `max`: connections to the backend per child, at most (mod_proxy
    /// sets it to `ThreadsPerChild` where the worker does not); the engine
    /// keeps at most `engine::MAX_CONNS_PER_BACKEND` anyway. With
    /// `disablereuse` it bounds the single-use connections open at once,
    /// and a request beyond it waits for one of them to close.
    pub max_conns: Option<usize>,
    /// `acquire`: how long such a request waits before it is answered
    /// with 503; None: the request's timeout.
    pub acquire: Option<Duration>,
}

/// How the engine reaches the front when there is news.
pub trait Front: Send + Sync {
    /// Called with the task's lock released.
    fn wake(&self);
    /// The client is gone (e.g. the HTTP/2 stream was reset).
    fn gone(&self) -> bool {
        false
    }
}

/// What the front takes in one go.
#[derive(Debug, Default)]
pub struct Taken {
    pub interims: Vec<ResponseHead>,
    pub head: Option<ResponseHead>,
    pub data: Vec<u8>,
    /// The response is complete (trailers, if any, come with it).
    pub end: bool,
    pub trailers: Option<Headers>,
    pub failure: Option<Failure>,
}

impl Taken {
    pub fn is_empty(&self) -> bool {
        self.interims.is_empty() && self.head.is_none() && self.data.is_empty() && !self.end && self.failure.is_none()
    }
}

#[derive(Default)]
struct State {
    // engine -> front
    interims: Vec<ResponseHead>,
    head: Option<ResponseHead>,
    head_seen: bool,
    /// The front took the head (`take`); a failure may also drop an
    /// untaken one, so `head_seen && head.is_none()` does not say this.
    head_given: bool,
    data: ByteQueue,
    end: bool,
    trailers: Option<Headers>,
    failure: Option<Failure>,
    /// Why the engine failed the request (`fail_because`), for the front
    /// to log with the request.
    failure_reason: Option<String>,
    /// The engine added parts (`on_*`) that it has not published yet: the
    /// front sees none of them until `publish`, so a connection error
    /// later in the same batch of frames can still turn a head into a 502.
    unpublished: bool,
    // front -> engine
    body: ByteQueue,
    body_end: bool,
    body_trailers: Option<Headers>,
    body_taken: u64,
    consumed: usize,
    /// Response body bytes the front took, in all.
    response_taken: u64,
    cancelled: bool,
    /// Request body bytes were dropped (the response ended first): the
    /// body must never end with END_STREAM, the engine resets the stream.
    body_cut: bool,
    /// The request went out on a backend connection.
    dispatched: bool,
    /// That connection's local TCP port (none over a Unix domain socket).
    source_port: Option<u16>,
    /// The engine has been told to look at the task and has not yet.
    engine_posted: bool,
    /// See `detach_front`.
    front_detached: bool,
}

impl State {
    /// Response parts the front has not taken yet (or the end, or a failure).
    fn response_news(&self) -> bool {
        !self.unpublished
            && (!self.interims.is_empty()
                || self.head.is_some()
                || !self.data.is_empty()
                || self.end
                || self.failure.is_some())
    }

    /// The request body queue is at its limit: the front reads no more.
    fn body_full(&self) -> bool {
        self.body.len() >= BODY_QUEUE_LIMIT
    }
}

/// A proxied request. Shared (Arc) by the front and the engine.
pub struct Task {
    pub id: u64,
    pub spec: RequestSpec,
    state: Mutex<State>,
    cond: Condvar,
    front: Mutex<Option<Arc<dyn Front>>>,
    /// Engine-side bookkeeping, only touched by the engine's thread.
    pub engine: Mutex<EngineSide>,
    /// Listed for `publish` in the engine's current batch.
    news_marked: AtomicBool,
    /// The handler returned SUSPENDED (`WorkerAccounting`).
    suspended: AtomicBool,
}

/// Owned by the engine's loop thread (behind a lock only to be Sync).
#[derive(Default)]
pub struct EngineSide {
    pub conn: u64,
    pub stream_id: i32,
    pub started: bool,
    pub retried: bool,
    pub deadline: Option<Instant>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Task {
    pub fn new(spec: RequestSpec) -> Arc<Task> {
        Arc::new(Task {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            spec,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            front: Mutex::new(None),
            engine: Mutex::new(EngineSide::default()),
            news_marked: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
        })
    }

    pub fn set_front(&self, front: Arc<dyn Front>) {
        *self.front.lock() = Some(front);
    }

    fn wake_front(&self) {
        self.cond.notify_all();
        let front = self.front.lock().clone();
        if let Some(f) = front {
            f.wake();
        }
    }

    /// The request is over for the front: it no longer hears from the
    /// engine (and the front, which holds the task, is freed with it).
    pub fn drop_front(&self) {
        *self.front.lock() = None;
    }

    /// The front is done with a response that is complete for its
    /// client while the backend's stream is still open (a head that has no
    /// content: 204, 304, a HEAD's answer, without END_STREAM): the engine
    /// lets the stream end on its own, as if the client were still there,
    /// so that the backend gets the rest of the request body and no reset.
    pub fn detach_front(&self) {
        self.drop_front();
        self.state.lock().front_detached = true;
    }

    pub fn front_detached(&self) -> bool {
        self.state.lock().front_detached
    }

    pub fn mark_suspended(&self) {
        self.suspended.store(true, Ordering::Release);
    }

    pub fn was_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    pub fn front_gone(&self) -> bool {
        let front = self.front.lock().clone();
        front.is_some_and(|f| f.gone())
    }

    // ---- engine side ------------------------------------------------------

    /// Marks the engine's look as done; returns whether it must be told
    /// again next time (see `post_engine`).
    pub fn engine_seen(&self) {
        self.state.lock().engine_posted = false;
    }

    /// True if the caller must wake the engine for this task (it was not
    /// already told).
    fn mark_posted(state: &mut State) -> bool {
        !std::mem::replace(&mut state.engine_posted, true)
    }

    /// Response parts from the engine (`on_*`) do not wake the front: the
    /// engine calls `publish` once per batch of frames it parsed.
    pub fn on_interim(&self, head: ResponseHead) {
        let mut s = self.state.lock();
        s.interims.push(head);
        s.unpublished = true;
    }

    pub fn on_head(&self, head: ResponseHead) {
        let mut s = self.state.lock();
        s.head = Some(head);
        s.head_seen = true;
        s.unpublished = true;
    }

    pub fn on_data(&self, data: &[u8]) {
        let mut s = self.state.lock();
        s.data.push(data);
        s.unpublished = true;
    }

    pub fn on_end(&self, trailers: Option<Headers>) {
        let mut s = self.state.lock();
        s.end = true;
        s.trailers = trailers;
        s.unpublished = true;
    }

    /// Tells the front about the parts the engine added (`on_*`). Returns
    /// false if the task was already marked for this batch.
    pub fn mark_news(&self) -> bool {
        !self.news_marked.swap(true, Ordering::AcqRel)
    }

    /// Wakes the front once for the parts of this batch.
    pub fn publish(&self) {
        self.state.lock().unpublished = false;
        self.news_marked.store(false, Ordering::Release);
        self.wake_front();
    }

    /// Fails the request: a status while the front has not taken a
    /// response head, an abort after (the front passes a head on as soon
    /// as it takes it). A head and body the front has not taken yet are
    /// dropped: a backend that broke off right after its head leaves the
    /// client a 502, not a connection closed without a word. Ignored once
    /// the response ended or failed.
    pub fn fail(&self, status: u16) -> Failure {
        let f = {
            let mut s = self.state.lock();
            if s.end || s.failure.is_some() {
                return s.failure.unwrap_or(Failure::Abort);
            }
            let head_taken = s.head_given;
            // 503 lets mod_proxy try the next balancer member: only before
            // any of the body was read from the client, which a second try
            // could not send again (it went with this task).
            let body_read = self.spec.has_body && (s.body_taken > 0 || !s.body.is_empty() || s.body_end);
            let status = if status == 503 && body_read { 502 } else { status };
            let f = if head_taken || s.cancelled {
                Failure::Abort
            } else {
                s.head = None;
                s.data = ByteQueue::default();
                Failure::Status(status)
            };
            s.failure = Some(f);
            f
        };
        self.wake_front();
        f
    }

    /// The request is on its way to the backend (on a connection whose
    /// SETTINGS arrived), from `source_port`.
    pub fn set_dispatched(&self, source_port: Option<u16>) {
        let mut s = self.state.lock();
        s.dispatched = true;
        s.source_port = source_port;
        drop(s);
        self.cond.notify_all();
    }

    /// `fail`, keeping why for the front (`failure_reason`): the engine's
    /// own line goes to the main server's error log, without the client or
    /// the request, as its loop serves every virtual host.
    pub fn fail_because(&self, status: u16, why: String) -> Failure {
        {
            let mut s = self.state.lock();
            if s.failure.is_none() && !s.end {
                s.failure_reason = Some(why);
            }
        }
        self.fail(status)
    }

    pub fn failure_reason(&self) -> Option<String> {
        self.state.lock().failure_reason.clone()
    }

    /// The local port of the connection the request went out on.
    pub fn source_port(&self) -> Option<u16> {
        self.state.lock().source_port
    }

    pub fn is_dispatched(&self) -> bool {
        self.state.lock().dispatched
    }

    /// The front took the response head (and passed it on to httpd).
    pub fn head_taken(&self) -> bool {
        self.state.lock().head_given
    }

    pub fn response_started(&self) -> bool {
        let s = self.state.lock();
        s.head_seen || !s.interims.is_empty() || s.end
    }

    /// Nothing of the request body left the queue yet (a retry can resend
    /// the request as it was).
    pub fn body_untouched(&self) -> bool {
        self.state.lock().body_taken == 0
    }

    /// The backend has not answered, and the request body is still coming
    /// from the client with none of it waiting for the backend: time that
    /// passes now is the client's, not the backend's, and does not count
    /// against ProxyTimeout (the front's own timeouts bound the client).
    /// Once the backend answered, the exchange is a conversation that the
    /// backend's silence ends.
    pub fn awaits_client_body(&self) -> bool {
        let s = self.state.lock();
        self.spec.has_body && !s.body_end && s.body.is_empty() && !s.cancelled && !s.head_seen && !s.end
    }

    pub fn is_finished(&self) -> bool {
        let s = self.state.lock();
        s.end || s.failure.is_some()
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.lock().cancelled
    }

    /// The backend's stream must be reset: the request was cancelled, or
    /// part of its body was dropped.
    pub fn must_reset(&self) -> bool {
        let s = self.state.lock();
        s.cancelled || s.body_cut
    }

    /// The body bytes that went to the backend and came from it so far
    /// (for the worker's traffic counts, which `lbmethod=bytraffic` and
    /// the balancer manager read).
    pub fn traffic(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.body_taken, s.response_taken)
    }

    /// Bytes the front took since the last call (to reopen the window).
    pub fn take_consumed(&self) -> usize {
        std::mem::take(&mut self.state.lock().consumed)
    }

    /// Request body for a DATA frame: `Some((n, eof, trailers))`, or None
    /// when the engine must wait for the front (deferred) or the request
    /// was cancelled (the engine resets the stream).
    pub fn read_body(&self, buf: &mut [u8]) -> Option<(usize, bool, Option<Headers>)> {
        let (r, room_again) = {
            let mut s = self.state.lock();
            let was_full = s.body_full();
            let n = s.body.take_into(buf);
            s.body_taken += n as u64;
            let r = if s.cancelled || s.body_cut || (n == 0 && !s.body_end) {
                // Cancelled or cut: never an END_STREAM (the backend would
                // take what it got for the whole body, a truncated upload
                // for a complete one); the engine resets the stream instead.
                None
            } else {
                let eof = s.body_end && s.body.is_empty();
                let trailers = if eof { s.body_trailers.take() } else { None };
                Some((n, eof, trailers))
            };
            (r, was_full && !s.body_full())
        };
        if room_again {
            // A parked front reads the client again.
            self.wake_front();
        } else {
            self.cond.notify_all();
        }
        r
    }

    // ---- front side -------------------------------------------------------

    /// Takes what the engine produced, up to `max_data` body bytes, and
    /// credits them for the backend's flow control. Returns whether the
    /// engine must be woken (window to reopen).
    pub fn take(&self, max_data: usize) -> (Taken, bool) {
        let mut s = self.state.lock();
        if s.unpublished {
            return (Taken::default(), false);
        }
        let data = s.data.take_vec(max_data);
        let mut post = false;
        if !data.is_empty() {
            s.consumed += data.len();
            s.response_taken += data.len() as u64;
            // Once the backend ended the stream its window no longer
            // matters (the engine credits the connection at close).
            if !s.end {
                post = Task::mark_posted(&mut s);
            }
        }
        let end = s.end && s.data.is_empty();
        let head = s.head.take();
        s.head_given |= head.is_some();
        let taken = Taken {
            interims: std::mem::take(&mut s.interims),
            head,
            data,
            end,
            trailers: if end { s.trailers.take() } else { None },
            // A failure is reported once the data before it is taken.
            failure: if s.data.is_empty() { s.failure } else { None },
        };
        (taken, post)
    }

    /// Something for `take` to return.
    pub fn has_news(&self) -> bool {
        self.state.lock().response_news()
    }

    /// Waits (blocking front) until there is news or `timeout` passes.
    pub fn wait_news(&self, timeout: Duration) {
        let mut s = self.state.lock();
        if !s.response_news() {
            self.cond.wait_for(&mut s, timeout);
        }
    }

    /// Waits until the request went out to the backend or failed (so that
    /// the handler can still return 503 to mod_proxy, which then fails
    /// over to another balancer member). The failure, if any.
    pub fn wait_dispatched(&self, timeout: Duration) -> Option<Failure> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        while !s.dispatched && s.failure.is_none() {
            if self.cond.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        s.failure
    }

    /// Queues request body bytes, waiting while the queue is full. Returns
    /// false when the request failed or was cancelled (stop reading), and
    /// whether the engine must be woken.
    /// With `limit_wait` None the queue takes the bytes beyond its limit
    /// (a duplex front reads only when `body_room` said there was room).
    pub fn push_body(&self, data: &[u8], limit_wait: Option<Duration>) -> (bool, bool) {
        let mut s = self.state.lock();
        if let Some(wait) = limit_wait {
            let deadline = Instant::now() + wait;
            while s.body_full() && s.failure.is_none() && !s.cancelled && !s.end {
                if self.cond.wait_until(&mut s, deadline).timed_out() {
                    return (false, false);
                }
            }
        }
        if s.failure.is_some() || s.cancelled {
            return (false, false);
        }
        if s.end {
            // The backend answered before it read the whole body: the rest
            // is read from the client and dropped, and the backend's stream
            // reset rather than ended (`must_reset`).
            let first = !std::mem::replace(&mut s.body_cut, true);
            return (true, first && Task::mark_posted(&mut s));
        }
        s.body.push(data);
        (true, Task::mark_posted(&mut s))
    }

    /// The request body is complete, with the request's trailers if any.
    /// Returns whether to wake the engine.
    pub fn end_body(&self, trailers: Option<Headers>) -> bool {
        let mut s = self.state.lock();
        s.body_end = true;
        s.body_trailers = trailers.filter(|t| !t.is_empty());
        Task::mark_posted(&mut s)
    }

    /// Whether the request body queue has room for more of the client's.
    pub fn body_room(&self) -> bool {
        !self.state.lock().body_full()
    }

    /// The front gives up (client gone, output failed). Returns whether to
    /// wake the engine.
    pub fn cancel(&self) -> bool {
        let post = {
            let mut s = self.state.lock();
            s.cancelled = true;
            if s.failure.is_none() && !s.end {
                s.failure = Some(Failure::Abort);
            }
            Task::mark_posted(&mut s)
        };
        // The front may be parked (the engine cancels for a client that
        // is gone): it must run once more to end the request.
        self.wake_front();
        post
    }

    /// Marks the task as posted to the engine (the first submission).
    pub fn mark_submitted(&self) {
        self.state.lock().engine_posted = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RequestSpec {
        RequestSpec {
            key: "h2c://127.0.0.1:1".into(),
            backend: "h2c://127.0.0.1:1".into(),
            addrs: Arc::from([super::super::resolve::Peer::Tcp(([127, 0, 0, 1], 1).into())]),
            tls: None,
            fields: Headers::new(),
            has_body: true,
            idempotent: true,
            timeout: Duration::from_secs(1),
            pool: PoolParams::default(),
            via: None,
            link_origin: None,
            fault_panic: false,
        }
    }

    #[test]
    fn response_flows_and_credits_consumption() {
        let t = Task::new(spec());
        t.on_head(ResponseHead { status: 200, headers: Headers::new() });
        t.on_data(b"hello");
        t.publish();
        let (taken, post) = t.take(3);
        assert_eq!(taken.head.map(|h| h.status), Some(200));
        assert_eq!(taken.data, b"hel");
        assert!(post);
        assert!(!taken.end);
        t.engine_seen();
        t.on_end(None);
        // Failure after the head is an abort, and the end wins anyway.
        assert_eq!(t.fail(502), Failure::Abort);
        t.publish();
        let (taken, post) = t.take(100);
        assert_eq!(taken.data, b"lo");
        assert!(taken.end);
        assert!(!post, "no window to reopen once the backend ended the stream");
        assert_eq!(t.take_consumed(), 5);
        assert_eq!(t.take_consumed(), 0);
        assert_eq!(t.traffic(), (0, 5), "the traffic counts stay");
    }

    struct CountingFront(AtomicU64);
    impl Front for CountingFront {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn gone(&self) -> bool {
            false
        }
    }

    /// A parked front that stopped reading the client because the body
    /// queue was full is woken when the engine makes room, and only then.
    #[test]
    fn a_full_body_queue_wakes_its_front_when_it_has_room_again() {
        let t = Task::new(spec());
        let front = Arc::new(CountingFront(AtomicU64::new(0)));
        t.set_front(front.clone());
        let mut buf = vec![0; 1024];
        assert!(t.push_body(b"abc", None).0);
        let _ = t.read_body(&mut buf);
        assert_eq!(front.0.load(Ordering::SeqCst), 0, "the queue was not full");
        assert!(t.push_body(&vec![0; BODY_QUEUE_LIMIT], None).0, "taken beyond the limit without waiting");
        assert!(!t.body_room());
        assert_eq!(t.read_body(&mut buf).map(|(n, eof, _)| (n, eof)), Some((1024, false)));
        assert!(t.body_room());
        assert_eq!(front.0.load(Ordering::SeqCst), 1);
        let _ = t.read_body(&mut buf);
        assert_eq!(front.0.load(Ordering::SeqCst), 1, "room already known");
    }

    #[test]
    fn failure_before_head_is_a_status() {
        let t = Task::new(spec());
        assert_eq!(t.fail(504), Failure::Status(504));
        let (taken, _) = t.take(10);
        assert_eq!(taken.failure, Some(Failure::Status(504)));
    }

    #[test]
    fn no_failover_once_body_was_read_from_the_client() {
        // 503 (mod_proxy tries the next member) only while nothing of the
        // body was read: a second try could not send that part again.
        assert_eq!(Task::new(spec()).fail(503), Failure::Status(503));
        let t = Task::new(spec());
        assert!(t.push_body(b"part", None).0);
        assert_eq!(t.fail(503), Failure::Status(502));
        assert!(!t.head_taken());
    }

    #[test]
    fn failure_after_a_head_the_front_has_not_taken_is_a_status() {
        let t = Task::new(spec());
        t.on_interim(ResponseHead { status: 103, headers: Headers::new() });
        t.on_head(ResponseHead { status: 200, headers: Headers::new() });
        t.on_data(b"partial");
        assert!(t.response_started(), "not retried elsewhere: the backend answered");
        assert_eq!(t.fail(502), Failure::Status(502));
        t.publish();
        let (taken, _) = t.take(100);
        assert!(taken.head.is_none() && taken.data.is_empty(), "nothing of the broken response");
        assert!(!t.head_taken(), "the head was dropped, not given to the front");
        assert_eq!(taken.interims.len(), 1, "an interim may precede the status");
        assert_eq!(taken.failure, Some(Failure::Status(502)));
    }

    #[test]
    fn failure_after_the_front_took_the_head_is_an_abort() {
        let t = Task::new(spec());
        t.on_head(ResponseHead { status: 200, headers: Headers::new() });
        t.publish();
        let (taken, _) = t.take(100);
        assert!(taken.head.is_some());
        assert_eq!(t.fail(502), Failure::Abort);
        assert_eq!(t.take(100).0.failure, Some(Failure::Abort));
    }

    /// A front that wakes for another reason (the request went out, a
    /// timeout) while the engine is still parsing a batch of frames sees
    /// none of the batch: a connection error later in the batch can still
    /// make the response a 502.
    #[test]
    fn parts_are_hidden_from_the_front_until_published() {
        let t = Task::new(spec());
        t.on_head(ResponseHead { status: 200, headers: Headers::new() });
        t.on_data(b"x");
        assert!(!t.has_news());
        assert!(t.take(100).0.is_empty(), "the head went to the front before its batch ended");
        assert_eq!(t.fail(502), Failure::Status(502));
        assert!(!t.has_news(), "the failure waits for the batch too");
        t.publish();
        let (taken, _) = t.take(100);
        assert!(taken.head.is_none() && taken.data.is_empty());
        assert_eq!(taken.failure, Some(Failure::Status(502)));
    }

    struct GoneFront;
    impl Front for GoneFront {
        fn wake(&self) {}
        fn gone(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_detached_front_is_not_taken_for_a_client_gone() {
        let t = Task::new(spec());
        t.set_front(Arc::new(GoneFront));
        assert!(t.front_gone() && !t.front_detached());
        // The front finished a 204 whose stream the backend keeps open: the
        // engine must not cancel that stream for it (its client stream
        // closes, which a front reports as gone).
        t.detach_front();
        assert!(!t.front_gone() && t.front_detached());
        assert!(!t.is_cancelled());
    }

    #[test]
    fn body_queue_reads_and_ends() {
        let t = Task::new(spec());
        let mut buf = [0u8; 4];
        assert_eq!(t.read_body(&mut buf), None);
        let mut trailers = Headers::new();
        trailers.push(b"x-sum", b"1");
        assert!(t.push_body(b"abcdef", Some(Duration::from_secs(1))).0);
        assert_eq!(t.read_body(&mut buf), Some((4, false, None)));
        assert!(!t.body_untouched());
        t.end_body(Some(trailers.clone()));
        assert_eq!(t.read_body(&mut buf), Some((2, true, Some(trailers))));
        t.cancel();
        assert!(!t.push_body(b"x", Some(Duration::from_secs(1))).0);

        // A cancelled body never ends: no END_STREAM for a truncated upload.
        let t = Task::new(spec());
        assert!(t.push_body(b"abcdef", None).0);
        t.end_body(None);
        t.cancel();
        assert_eq!(t.read_body(&mut buf), None);

        // Nor one whose bytes were dropped after the response ended.
        let t = Task::new(spec());
        assert!(t.push_body(b"abc", None).0);
        t.on_end(None);
        assert!(!t.must_reset());
        assert!(t.push_body(b"def", None).0, "the front goes on reading");
        t.end_body(None);
        assert!(t.must_reset());
        assert_eq!(t.read_body(&mut buf), None);
    }

    /// ProxyTimeout stops for a wait on the client's body, and only then:
    /// not while body waits for the backend, and not once it answered.
    #[test]
    fn only_a_wait_on_the_clients_body_before_the_answer_is_the_clients() {
        let t = Task::new(spec());
        assert!(t.awaits_client_body());
        assert!(t.push_body(b"abc", None).0);
        assert!(!t.awaits_client_body(), "body waits for the backend");
        let mut buf = [0u8; 8];
        let _ = t.read_body(&mut buf);
        assert!(t.awaits_client_body());
        t.on_head(ResponseHead { status: 200, headers: Headers::new() });
        assert!(!t.awaits_client_body(), "the backend answered: a conversation");

        let ended = Task::new(spec());
        ended.end_body(None);
        assert!(!ended.awaits_client_body());
        let bodiless = Task::new(RequestSpec { has_body: false, ..spec() });
        assert!(!bodiless.awaits_client_body());
    }
}
