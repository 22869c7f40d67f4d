//! The secondary connection (c2): one per running stream, on a worker.
//!
//! A c2 is a copy of the client connection's `conn_rec` (`master` = c1)
//! with its own pool (on the shared, mutex-guarded allocator) and bucket allocator,
//! its own filters and config vector. httpd processes the stream's request
//! on it exactly as it processes an HTTP/1.1 request, so every handler
//! works unchanged:
//!
//! - `H2RS_C2_NET_IN` (network input) reads the request body from the
//!   stream's input queue (chunk-encoded when the length is unknown, so
//!   httpd's HTTP_IN filter can frame it);
//! - `H2RS_C2_RESPONSE` (protocol output, in place of HTTP_HEADER) hands
//!   status and fields to the stream (see `response.rs`);
//! - `H2RS_C2_NET_OUT` (network output) copies body bytes into the stream's
//!   bounded output queue, parses interim responses written as HTTP/1
//!   text, and keeps the request's EOR bucket: the request (and its access
//!   log line) ends only when c1 is done with the stream.
//!
//! Ownership moves: c1 creates or reuses a c2 and hands it with the stream
//! to a worker; the worker gives it back inside the stream's retire action;
//! c1 runs that once the stream is closed, destroying the EOR bucket
//! (logging, request pool) and keeping the c2 for the next stream.
//! A c2 is used by one thread at a time; the hand-overs go through the
//! worker queue and the stream's mutex.

use crate::apr::{self, status, BrigadeRef, BucketRef, PoolRef, TableRef};
use crate::fastpath::{self, Cost as RunCost, Outcome as RunOutcome};
use crate::ffi::{self, HOOK_DECLINED, HOOK_OK};
use crate::reqtimeout::BodyClock;
use crate::response::{self, InterimParser, Parsed};
use crate::signal::SocketSignal;
use crate::stream::{Headers, Input, Outcome, ResponseHead, Retire, Stream, StreamError};
use crate::text::{decimal, signed_decimal};
use crate::websocket::{self, Verdict};
use crate::workers::WorkerCtx;
use parking_lot::Mutex;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lowest c2 id (`C2::process`): above the ids of the MPM's
/// connections, which are below ServerLimit x ThreadLimit.
const C2_ID_BASE: i64 = 1 << 40;

/// A c2 is recycled for this many streams, then destroyed: modules may
/// allocate from `c->pool` per request, so its pool must not grow forever.
const MAX_USES: u32 = 1000;

/// How long the last bytes of a body of declared length wait for the
/// stream's end before the handler gets them anyway, without trailers that
/// come later (see `C2Ctx::input_hold`). Clients end the stream with the
/// last DATA frame or right after it; this bounds the wait for one that
/// keeps its stream open instead.
const BODY_END_GRACE: Duration = Duration::from_secs(1);

/// The process-wide dummy socket every c2 carries as its core socket (the
/// client socket must not be touched from a worker).
static DUMMY_SOCKET: AtomicPtr<ffi::apr_socket_t> = AtomicPtr::new(ptr::null_mut());

/// mod_logio's byte counters (optional functions; NULL without mod_logio).
type LogioFn = unsafe extern "C" fn(*mut ffi::conn_rec, ffi::apr_off_t);
static LOGIO_IN: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static LOGIO_OUT: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
/// The MPM's module record, whose connection config each c2 shares with
/// c1. Found once per child: the search compares every loaded module's
/// name (~1.1k instructions, per new connection before).
static MPM_MODULE: AtomicPtr<ffi::module> = AtomicPtr::new(ptr::null_mut());
/// This child's process id, for `H2_STREAM_TAG` (read once: glibc's
/// `getpid` is a system call).
static CHILD_PID: AtomicU32 = AtomicU32::new(0);

/// Who a stream's c2 works for: c1's connection id (the c2's id is made
/// from it), and its session's number in the child (`H2_STREAM_TAG`:
/// the event MPM gives c1 the id of the thread that resumes it, so the
/// same connection changes ids and other connections take them up).
#[derive(Clone, Copy, Debug)]
pub struct C1Ids {
    pub conn: i64,
    pub session: u64,
}

fn logio(counter: &AtomicPtr<c_void>, c: *mut ffi::conn_rec, bytes: u64) {
    logio_add(counter, c, bytes as ffi::apr_off_t);
}

/// Adds `delta` (which may be negative) to a mod_logio counter.
fn logio_add(counter: &AtomicPtr<c_void>, c: *mut ffi::conn_rec, delta: ffi::apr_off_t) {
    let f = counter.load(Ordering::Acquire);
    if !f.is_null() && delta != 0 {
        // SAFETY: the pointer is mod_logio's ap_logio_add_bytes_{in,out},
        // whose signature is (conn_rec *, apr_off_t); `c` is a live c1 or
        // c2 owned by the caller.
        unsafe {
            let f: LogioFn = std::mem::transmute::<*mut c_void, LogioFn>(f);
            f(c, delta);
        }
    }
}

/// Counts bytes c1 read from its client itself (not through the input
/// filters, where mod_logio's own filter would count them); nothing when
/// mod_logio's counter was not found (`can_count_bytes_in`).
pub fn count_c1_bytes_in(c1: *mut ffi::conn_rec, bytes: u64) {
    logio(&LOGIO_IN, c1, bytes);
}

/// Takes `bytes` back out of mod_logio's input count of `c` (%I), which
/// its filter added up: bytes the client did not send (the chunk framing
/// `net_in` adds for HTTP_IN) or that are read again (c1's peeks at the
/// preface).
pub fn uncount_bytes_in(c: *mut ffi::conn_rec, bytes: usize) {
    logio_add(&LOGIO_IN, c, -(bytes as ffi::apr_off_t));
}

/// Whether `count_c1_bytes_in` reaches mod_logio's counter.
pub fn can_count_bytes_in() -> bool {
    !LOGIO_IN.load(Ordering::Acquire).is_null()
}

/// Creates the dummy socket and finds mod_logio's counters (child_init).
///
/// # Safety
/// `pchild` must be the child process pool.
pub unsafe fn child_init(pchild: *mut ffi::apr_pool_t) {
    for (name, slot) in [(c"ap_logio_add_bytes_in", &LOGIO_IN), (c"ap_logio_add_bytes_out", &LOGIO_OUT)] {
        // SAFETY: looks up an optional function by name; NULL if absent.
        let f = unsafe { ffi::apr_dynamic_fn_retrieve(name.as_ptr()) };
        slot.store(f.map(|f| f as *mut c_void).unwrap_or(ptr::null_mut()), Ordering::Release);
    }
    CHILD_PID.store(std::process::id(), Ordering::Relaxed);
    // SAFETY: reads the loaded modules' records, complete after the
    // configuration phase.
    MPM_MODULE.store(unsafe { ffi::h2rs_shim_mpm_module() }, Ordering::Release);
    let mut sock: *mut ffi::apr_socket_t = ptr::null_mut();
    // SAFETY: creates an unconnected socket in the child pool.
    let rv = unsafe { ffi::apr_socket_create(&mut sock, libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP, pchild) };
    if rv == 0 {
        DUMMY_SOCKET.store(sock, Ordering::Release);
    }
    // Filters registered at start-up; looked up now rather than by the
    // first requests at once (see `c1::child_init`).
    harmless_filter_recs();
}

/// What the c2 filters and hooks know about the stream being processed.
pub struct C2Ctx {
    pub stream: Option<Arc<Stream>>,
    pub c1: *mut ffi::conn_rec,
    /// The request's EOR bucket, held until c1 is done with the stream.
    eor: *mut ffi::apr_bucket,
    request: *mut ffi::request_rec,
    /// The final response head went to the stream.
    pub response_set: bool,
    /// The request and status of that head, when the handler's own
    /// response made it (`start_response`): output of another request or
    /// status after it is httpd's error response to a handler that
    /// failed mid-body (`response_out`).
    head_of: Option<(*mut ffi::request_rec, c_int)>,
    response_filter_installed: bool,
    /// Trailers collected by the response filter at EOS.
    trailers: Option<Headers>,
    interim: InterimParser,
    /// Request body: bytes fetched from the stream, not yet handed on.
    input: Vec<u8>,
    input_off: usize,
    /// Frame the body as HTTP/1.1 chunks (length unknown).
    input_chunked: bool,
    /// Bytes of a body of declared length not yet fetched from the stream.
    input_left: Option<u64>,
    /// The last bytes of a body of declared length are pending and the
    /// stream's end (END_STREAM or trailers) is not yet known: they wait
    /// for it until this instant. HTTP_IN stops reading at the length and
    /// asks no further, so trailers are taken with the last bytes or never;
    /// they often come in the frame after the last DATA, which c1 handles
    /// a moment after it woke this worker for the data.
    input_hold: Option<Instant>,
    input_ended: bool,
    eos_sent: bool,
    /// Scratch brigade for passing the EOR bucket of a failed request.
    scratch: *mut ffi::apr_bucket_brigade,
    /// Buffer for file reads (kept between responses).
    file_buf: Vec<u8>,
    /// A tunnel's input descriptor, polled by the handler (mod_proxy's
    /// tunnel) through `get_pollfd_from_conn`; readable while input waits.
    input_watch: Option<Arc<SocketSignal>>,
    /// A tunnel ran on this connection: handlers changed its filters (mod_proxy
    /// removes some for tunnelling), so it is not reused.
    tunneled: bool,
    /// The handler's output goes nowhere: its answer to a tunnel request
    /// was refused (see `websocket::judge`), the stream was refused for a
    /// TLS renegotiation (HTTP_1_1_REQUIRED), or the response was cut
    /// (`cut_response`).
    discard_output: bool,
    /// "h2" or "h2c".
    pub protocol: &'static CStr,
    /// The handler returned SUSPENDED and handed the request to this (the
    /// proxy engine): the worker leaves, the request stays (see `Parked`).
    suspended: Option<Arc<dyn Resume>>,
    /// RequestReadTimeout's body stage for this request (`reqtimeout`):
    /// None until the first body read, then Some(None) where no limit
    /// applies.
    body_clock: Option<Option<BodyClock>>,
    /// A handler of this request asked for an MPM timer callback and was
    /// refused (see `refuse_mpm_timer`).
    timer_refused: bool,
    /// The output filters in place as the handler started (insert_filter,
    /// run last) only pass bytes on or set headers. Checked then as well
    /// as at the end: some take themselves out at their first call
    /// (mod_ratelimit without its `rate-limit` variable), so the chain a
    /// request ended with looked harmless, its URL was learned, and the
    /// next client's request, for which the filter stayed (and slept),
    /// ran on c1's thread.
    filters_harmless_at_handler: bool,
    /// The handler's response head was refused (a field that cannot be
    /// sent) and an error response replaces it.
    head_refused: bool,
    /// The response broke off after its head went out: an error bucket
    /// came after it (mod_proxy's backend failed mid-body). Its EOS does
    /// not end the stream, so c1 resets it (see `net_out`).
    response_cut: bool,
    /// The response's EOS went through `net_out`: anything after it is
    /// dropped (see there).
    output_ended: bool,
    /// The Content-Length sent with the head (None: no length, or a
    /// response without a body), and the body bytes queued since. A body
    /// that does not come to it at its EOS is cut (`net_out`): on HTTP/1.1
    /// the client sees the connection end short of the length; an
    /// END_STREAM would hand it a malformed response (RFC 9113 8.1.1) that
    /// a cache not checking may keep as whole. (Checked at the EOS only:
    /// checks per bucket deepened `net_out`'s frame, which lies under the
    /// deepest calls of every request, by a resident stack page per thread,
    /// test_build.py.)
    body_declared: Option<u64>,
    body_queued: u64,
    /// The request panicked (`request_panicked`): `C2::run` treats it as
    /// a run that panicked.
    panicked: Option<String>,
    /// The session's number in the child (`C1Ids`).
    session: u64,
}

impl C2Ctx {
    fn new(c1: *mut ffi::conn_rec, protocol: &'static CStr) -> C2Ctx {
        C2Ctx {
            stream: None,
            c1,
            eor: ptr::null_mut(),
            request: ptr::null_mut(),
            response_set: false,
            head_of: None,
            response_filter_installed: false,
            trailers: None,
            interim: InterimParser::default(),
            input: Vec::new(),
            input_off: 0,
            input_chunked: false,
            input_left: None,
            input_hold: None,
            input_ended: false,
            eos_sent: false,
            scratch: ptr::null_mut(),
            file_buf: Vec::new(),
            input_watch: None,
            tunneled: false,
            discard_output: false,
            protocol,
            suspended: None,
            body_clock: None,
            timer_refused: false,
            filters_harmless_at_handler: false,
            head_refused: false,
            response_cut: false,
            output_ended: false,
            body_declared: None,
            body_queued: 0,
            panicked: None,
            session: 0,
        }
    }

    fn reset(&mut self, stream: Arc<Stream>) {
        self.stream = Some(stream);
        self.eor = ptr::null_mut();
        self.request = ptr::null_mut();
        self.response_set = false;
        self.head_of = None;
        self.response_filter_installed = false;
        self.trailers = None;
        self.interim = InterimParser::default();
        self.input.clear();
        self.input_off = 0;
        self.input_chunked = false;
        self.input_left = None;
        self.input_hold = None;
        self.input_ended = false;
        self.eos_sent = false;
        self.input_watch = None;
        self.discard_output = false;
        self.suspended = None;
        self.body_clock = None;
        self.timer_refused = false;
        self.filters_harmless_at_handler = false;
        self.head_refused = false;
        self.response_cut = false;
        self.output_ended = false;
        self.body_declared = None;
        self.body_queued = 0;
        self.panicked = None;
    }

    /// The response is not sent whole: its EOS does not end the stream,
    /// what follows is dropped, and c1 resets the stream.
    fn cut_response(&mut self) {
        self.response_cut = true;
        self.discard_output = true;
    }

    /// When a blocking body read must give up (RequestReadTimeout's body
    /// stage), starting the clock at the request's first body read. Requests
    /// without a body and tunnels (WebSockets, CONNECT) have no limit.
    fn body_deadline(&mut self, stream: &Stream) -> Option<Instant> {
        let request = self.request;
        let clock = self.body_clock.get_or_insert_with(|| {
            if stream.request.end_stream || stream.request.is_tunnel() || request.is_null() {
                return None;
            }
            // SAFETY: the request is live while its handler reads its body;
            // its server's config was completed at post_config.
            let limit = unsafe { crate::c1::server_config((*request).server) }
                .and_then(|cfg| cfg.request_body_limit.get().copied().flatten());
            limit.map(|l| BodyClock::start(l, Instant::now()))
        });
        clock.as_ref().map(BodyClock::deadline)
    }
}

/// When the request body stage of RequestReadTimeout ends a wait for the
/// body of the request on `c` (starting its clock), if it applies.
///
/// # Safety
/// `c` must be a live connection used by the calling thread.
pub unsafe fn body_deadline(c: *mut ffi::conn_rec) -> Option<Instant> {
    // SAFETY: caller contract.
    let ctx = unsafe { ctx_of(c) }?;
    let stream = ctx.stream.clone()?;
    ctx.body_deadline(&stream)
}

/// When the last bytes of the request body on `c`, held for the stream's
/// end (`C2Ctx::input_hold`), go to the reader without it. A nonblocking
/// reader gets EAGAIN until then and nothing wakes it when the time comes:
/// it must look again by itself.
///
/// # Safety
/// `c` must be a live connection used by the calling thread.
pub unsafe fn input_hold_until(c: *mut ffi::conn_rec) -> Option<Instant> {
    // SAFETY: caller contract.
    unsafe { ctx_of(c) }?.input_hold
}

/// Whoever continues a request whose handler returned SUSPENDED.
pub trait Resume: Send + Sync {
    /// The worker left the request: keep `parked` and continue it on a
    /// worker (`Parked::resume`) when there is work for it.
    fn park(&self, parked: Parked);
}

/// A stream request whose handler returned SUSPENDED: its c2 and request
/// stay alive, owned by this value, with no thread on them. Whoever holds
/// it is the only one touching the c2 (one `resume` at a time).
pub struct Parked {
    c2: C2,
    stream: Arc<Stream>,
    cache: Arc<C2Cache>,
}

impl Parked {
    /// Continues the request on this worker: `step` gets the request and
    /// returns true once the request is finished (the response ended and
    /// `ap_process_request_after_handler` ran), which hands the stream back
    /// to c1 as a worker's end would. Otherwise the request is parked again
    /// and returned.
    pub fn resume(self, worker: &WorkerCtx, step: impl FnOnce(*mut ffi::request_rec) -> bool) -> Option<Parked> {
        let Parked { c2, stream, cache } = self;
        let conn = c2.conn;
        let r = c2.ctx.request;
        // SAFETY: the parked c2 is ours alone; the request lives in its pool
        // until its EOR bucket is destroyed (at retire).
        unsafe { (*conn).current_thread = worker.thread };
        match crate::ffi::panic::catch(|| step(r)) {
            Ok(false) => Some(Parked { c2, stream, cache }),
            Ok(true) => {
                c2.finish(stream, cache, false);
                None
            }
            Err(msg) => {
                crate::clog!(conn, crate::log::Level::Crit, "h2rs: stream {} panicked while resumed: {msg}", stream.id);
                c2.finish(stream, cache, true);
                None
            }
        }
    }
}

thread_local! {
    /// The stream connection whose request this thread is processing (set
    /// by `process_request` for the length of httpd's request processing),
    /// for the MPM hooks that httpd calls without a connection.
    static PROCESSING: std::cell::Cell<*mut ffi::conn_rec> = const { std::cell::Cell::new(ptr::null_mut()) };
}

/// While alive: this thread processes the request on a stream connection.
struct Processing;

impl Processing {
    fn enter(c: *mut ffi::conn_rec) -> Processing {
        PROCESSING.set(c);
        Processing
    }
}

impl Drop for Processing {
    fn drop(&mut self) {
        PROCESSING.set(ptr::null_mut());
    }
}

/// `mpm_register_timed_callback` on this thread: true if the caller is the
/// request of a stream, whose timer is then refused.
///
/// The MPM would run the callback on one of its own threads after the
/// handler returned SUSPENDED (mod_dialup does this), with the request and
/// its stream connection, which by then may be reused for another stream or
/// freed. Continuing a foreign suspended request on a stream is not
/// supported (HTTP/1.1 on the event MPM does not finish such a request
/// either: nothing resumes its connection), so the timer is refused and
/// `process_request` ends a request suspended regardless.
pub fn refuse_mpm_timer() -> bool {
    let c = PROCESSING.get();
    // SAFETY: PROCESSING is set only while this thread processes the
    // request on `c`, so `c` is live and used by this thread.
    let Some(ctx) = (unsafe { ctx_of(c) }) else { return false };
    if !ctx.timer_refused {
        ctx.timer_refused = true;
        let id = ctx.stream.as_ref().map_or(0, |s| s.id);
        crate::clog!(
            c,
            crate::log::Level::Error,
            "h2rs: stream {id}: a handler asked for an MPM timer callback (as mod_dialup does); requests on HTTP/2 streams cannot be continued by the MPM, so the timer is refused and the request ends"
        );
    }
    true
}

/// Marks `r` as suspended by its handler, continued by `resume`. False
/// if `r` is not the request of one of our stream connections (the
/// handler must then finish it itself): a subrequest or an internal
/// redirect is not what a resume continues (`Parked::resume` steps the
/// stream's own request, and httpd goes on with the main request when a
/// subrequest returns).
///
/// # Safety
/// `r` must be a live request run by the calling thread.
pub unsafe fn suspend(r: *mut ffi::request_rec, resume: Arc<dyn Resume>) -> bool {
    // SAFETY: caller contract.
    match unsafe { ctx_of((*r).connection) } {
        Some(ctx) if ctx.stream.is_some() && ctx.request == r => {
            ctx.suspended = Some(resume);
            true
        }
        _ => false,
    }
}

/// A secondary connection. Moves between c1 and one worker at a time.
pub struct C2 {
    conn: *mut ffi::conn_rec,
    pool: *mut ffi::apr_pool_t,
    ctx: Box<C2Ctx>,
    pre_connection_done: bool,
    uses: u32,
}

// SAFETY: a C2 is only ever used by one thread at a time: it is created on
// c1, moved into a worker job (the channel synchronises), and moved back in
// the stream's retire action (the stream mutex synchronises). Its pool's
// allocator is the shared one, guarded by its mutex.
unsafe impl Send for C2 {}

/// What a [`FreeCache`] needs of what it keeps.
pub trait Destroy {
    fn destroy(self);
}

impl Destroy for C2 {
    fn destroy(self) {
        C2::destroy(self)
    }
}

/// The free c2s of one client connection, for reuse.
pub type C2Cache = FreeCache<C2>;

/// Free objects kept for reuse, at most `keep` of them.
///
/// For c2s, c1 sets `keep` before each dispatch to what the connection may
/// run at once now (its fair share of the workers, and no more than
/// `FREE_C2S_KEPT`, 4), and the cache destroys at once the ones
/// beyond it. Each free c2 holds its pools (~32 KiB of APR nodes). Without
/// the trim, the c2s of a connection's first burst (all on workers, before
/// its URLs were learned as static) stayed cached for the connection's
/// life, and a connection whose streams ran on c1 counted as idle, so its
/// fair share was the whole pool: 9 free c2s per connection at 1 KiB
/// `-c 100 -m 10`, and 8 MiB of peak RSS.
pub struct FreeCache<T: Destroy> {
    free: Mutex<Vec<T>>,
    keep: std::sync::atomic::AtomicUsize,
}

impl<T: Destroy> Default for FreeCache<T> {
    fn default() -> Self {
        FreeCache { free: Mutex::new(Vec::new()), keep: std::sync::atomic::AtomicUsize::new(0) }
    }
}

impl<T: Destroy> FreeCache<T> {
    pub fn take(&self) -> Option<T> {
        self.free.lock().pop()
    }

    /// How many free objects to keep at most; destroys those beyond.
    pub fn keep_at_most(&self, n: usize) {
        self.keep.store(n, std::sync::atomic::Ordering::Relaxed);
        if self.free.lock().len() > n {
            self.destroy_beyond(n);
        }
    }

    /// Out of line: inlined with its vector and loop, it made the frame
    /// of c1's dispatch, under every stream c1 runs itself, 48 bytes
    /// larger (fat LTO; `tests/test_build.py`, the stack depth).
    #[cold]
    #[inline(never)]
    fn destroy_beyond(&self, n: usize) {
        let extra = {
            let mut free = self.free.lock();
            let keep = n.min(free.len());
            free.split_off(keep)
        };
        for x in extra {
            x.destroy();
        }
    }

    /// Keeps `x` for reuse, or gives it back when the cache is full.
    pub fn put(&self, x: T) -> Result<(), T> {
        let mut free = self.free.lock();
        if free.len() >= self.keep.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(x);
        }
        free.push(x);
        Ok(())
    }

    /// Destroys every cached object (for c2s: session end, on c1).
    pub fn clear(&self) {
        let list = std::mem::take(&mut *self.free.lock());
        for x in list {
            x.destroy();
        }
    }
}

impl C2 {
    /// Creates a c2 for the client connection `c1` in a sub-pool of
    /// `parent` (the session pool). Runs on the c1 thread.
    ///
    /// # Safety
    /// `c1` must be the live client connection owned by this thread and
    /// `parent` a live thread-safe pool outliving the c2.
    pub unsafe fn create(
        c1: *mut ffi::conn_rec,
        parent: *mut ffi::apr_pool_t,
        protocol: &'static CStr,
    ) -> Result<C2, ffi::apr_status_t> {
        // SAFETY: caller contract for `parent`.
        let pool = unsafe { apr::pool::create_threadsafe(parent, c"h2rs_c2") }?;
        // SAFETY: the new pool is ours; the conn_rec is a bitwise copy of
        // c1 (as the stock module does) whose per-connection parts are then
        // replaced with the c2's own.
        unsafe {
            let p = PoolRef::from_raw(pool).ok_or(status::ENOMEM)?;
            let c2: *mut ffi::conn_rec = p.calloc();
            ptr::copy_nonoverlapping(c1, c2, 1);
            let c = &mut *c2;
            c.master = c1;
            c.pool = pool;
            c.conn_config = ffi::ap_create_conn_config(pool);
            c.notes = ffi::apr_table_make(pool, 5);
            c.input_filters = ptr::null_mut();
            c.output_filters = ptr::null_mut();
            c.keepalives = 0;
            c.bucket_alloc = ffi::apr_bucket_alloc_create(pool);
            // A state of its own: httpd sets `c->cs->state` after each
            // request (ap_process_request_after_handler), and with c1's a
            // worker wrote c1's state while c1's thread used it.
            c.cs = p.calloc::<ffi::conn_state_t>();
            c.data_in_input_filters = 0;
            c.data_in_output_filters = 0;
            // Keeps the event MPM from using this connection's socket.
            c.set_clogging_input_filters(1);
            c.log = ptr::null();
            c.aborted = 0;
            c.sbh = ptr::null_mut();
            // Addresses of its own, in its pool: a hostname lookup
            // (`Require host`, HostnameLookups, UseCanonicalName DNS) keeps
            // the name it finds in the address's pool, which was c1's, on
            // a worker thread while c1's thread allocates from it.
            for addr in [&mut c.client_addr, &mut c.local_addr] {
                let mut copy = ptr::null_mut();
                if !addr.is_null() && ffi::apr_sockaddr_info_copy(&mut copy, *addr, pool) == status::SUCCESS {
                    *addr = copy;
                }
            }
            ffi::h2rs_shim_set_core_socket(c2, DUMMY_SOCKET.load(Ordering::Acquire));
            let mpm = MPM_MODULE.load(Ordering::Acquire);
            if !mpm.is_null() {
                let cfg = ffi::ap_get_module_config((*c1).conn_config, mpm);
                ffi::ap_set_module_config(c.conn_config, mpm, cfg);
            }
            let mut ctx = Box::new(C2Ctx::new(c1, protocol));
            ctx.scratch = ffi::apr_brigade_create(pool, c.bucket_alloc);
            ffi::h2rs_shim_set_conn_ctx(c2, &mut *ctx as *mut C2Ctx as *mut c_void);
            Ok(C2 { conn: c2, pool, ctx, pre_connection_done: false, uses: 0 })
        }
    }

    /// Frees the c2 and everything in its pool.
    pub fn destroy(self) {
        // SAFETY: the pool is ours and nothing else uses it any more (the
        // request, if any, was retired before).
        unsafe { ffi::apr_pool_destroy(self.pool) }
    }

    /// Runs `stream`'s request on this c2 (on a worker, or on c1's thread
    /// for `fastpath`), then hands the c2 back through the stream's retire
    /// action. `learn`: the request could run on c1's thread; record how
    /// it went under this URL key.
    pub fn run(mut self, stream: Arc<Stream>, c1: C1Ids, worker: &WorkerCtx, cache: Arc<C2Cache>, learn: Option<u64>) {
        stream.worker_started();
        if stream.is_aborted() {
            // Reset while it waited for a worker: nothing to do.
            stream.worker_done(Some(Box::new(C2Release {
                c2: self,
                eor: ptr::null_mut(),
                started: 0,
                cache,
                broken: false,
            })));
            return;
        }
        let clock = RunClock::start(learn.is_some_and(|key| fastpath::urls().measures_next_run(key)));
        let outcome = crate::ffi::panic::catch(|| {
            // SAFETY: this worker owns the c2 for the duration of the call.
            unsafe { self.process(stream.clone(), c1, worker) }
        })
        .and_then(|()| self.ctx.panicked.take().map_or(Ok(()), Err));
        self.after_run(stream, cache, learn, clock, outcome);
    }

    /// The request returned (or panicked): the c2 is handed back, or
    /// parked with the request when the handler suspended it. Not inlined:
    /// its locals would sit in the frame of `run`, under the request.
    #[inline(never)]
    fn after_run(
        mut self,
        stream: Arc<Stream>,
        cache: Arc<C2Cache>,
        learn: Option<u64>,
        clock: RunClock,
        outcome: Result<(), String>,
    ) {
        let broken = match outcome {
            Ok(()) => {
                if let Some(resume) = self.ctx.suspended.take() {
                    // The handler keeps the request: no worker_done yet,
                    // and the stream holds no worker while it waits.
                    stream.release_slot();
                    resume.park(Parked { c2: self, stream, cache });
                    if let Some(key) = learn {
                        fastpath::urls().record(key, RunOutcome { static_file: false, cost: clock.cost() });
                    }
                    return;
                }
                if let Some(key) = learn {
                    // SAFETY: the request (if one was made) lives until its
                    // EOR is destroyed at retire; this thread owns the c2.
                    if let Some(outcome) = unsafe { self.fastpath_outcome(clock.cost()) } {
                        fastpath::urls().record(key, outcome);
                    }
                }
                false
            }
            Err(msg) => {
                log_panic(self.conn, stream.id, &msg);
                true
            }
        };
        self.finish(stream, cache, broken);
    }

    /// The request on this c2 is over: hands the c2 back to c1 through the
    /// stream's retire action.
    fn finish(mut self, stream: Arc<Stream>, cache: Arc<C2Cache>, broken: bool) {
        self.ctx.suspended = None;
        let eor = std::mem::replace(&mut self.ctx.eor, ptr::null_mut());
        self.ctx.stream = None;
        let request = std::mem::replace(&mut self.ctx.request, ptr::null_mut());
        // SAFETY: the request is this c2's, live until its EOR is destroyed.
        let started = if request.is_null() { 0 } else { unsafe { (*request).request_time } };
        self.ctx.input_watch = None;
        let broken = broken || self.ctx.tunneled;
        stream.worker_done(Some(Box::new(C2Release { c2: self, eor, started, cache, broken })));
    }

    /// How the request just processed went, for `fastpath`: a regular file
    /// served by the default handler, without an internal redirect, through
    /// output filters that only pass bytes on or set headers. None when the
    /// run tells nothing of the URL's full GET: a 304 or a 206 of a static
    /// file (mod_deflate takes itself out of the chain for a 304: the chain
    /// looked harmless for a URL whose next GET is compressed, and that GET
    /// ran on c1).
    ///
    /// # Safety
    /// The c2 is owned by this thread and its request (if any) not yet
    /// released.
    unsafe fn fastpath_outcome(&self, cost: RunCost) -> Option<RunOutcome> {
        let r = self.ctx.request;
        let mut outcome = RunOutcome { static_file: false, cost };
        if r.is_null() {
            return Some(outcome);
        }
        // SAFETY: caller contract: r is live.
        unsafe {
            let handler = (*r).handler;
            let default_handler = handler.is_null() || CStr::from_ptr(handler) == c"default-handler";
            outcome.static_file = default_handler
                && (*r).next.is_null()
                && (*r).finfo.filetype == ffi::APR_REG
                && matches!((*r).status, 200 | 206 | 304);
            if outcome.static_file && (*r).status != 200 {
                return None;
            }
            // Filters that could wait or grow the body (rate limits,
            // includes running subrequests, compression) keep the URL on
            // workers.
            if outcome.static_file {
                outcome.static_file = self.ctx.filters_harmless_at_handler && filters_harmless((*r).output_filters);
            }
        }
        Some(outcome)
    }

    /// # Safety
    /// The caller (a worker, or c1 for `fastpath`) owns the c2.
    unsafe fn process(&mut self, stream: Arc<Stream>, c1: C1Ids, worker: &WorkerCtx) {
        let c = self.conn;
        self.uses += 1;
        let number = stream.request.number;
        self.ctx.reset(stream);
        self.ctx.session = c1.session;
        // SAFETY: the c2 is ours; hooks and filters run on this thread.
        unsafe {
            // Unique among the server's live connections: mod_cgid's daemon,
            // shared by the children, finds a request's script by it (and
            // ends that script with the request). Above every MPM id (they
            // are below ServerLimit x ThreadLimit), then the client
            // connection's id and the worker's slot. (The stock module's
            // `c1 << 8 ^ slot` met the MPM's ids: connection 0's stream on
            // slot 3 had the id of the HTTP/1.1 connection on thread 3; and
            // its own others past slot 255.)
            (*c).id = C2_ID_BASE | (c1.conn << 16) | i64::from(worker.slot & 0xFFFF);
            (*c).current_thread = worker.thread;
            (*c).aborted = 0;
            (*c).keepalive = ffi::AP_CONN_CLOSE;
            (*c).data_in_input_filters = 0;
            (*c).data_in_output_filters = 0;
            // The request's number on the client connection, which `%k`
            // logs less one, as for HTTP/1.1's requests. Never 0: hooks
            // treat that as "first request on the connection", which a
            // stream is not to them.
            (*c).keepalives = c_int::try_from(number.max(1)).unwrap_or(c_int::MAX);
            if !self.pre_connection_done {
                self.pre_connection_done = true;
                ffi::ap_add_input_filter_handle(ffi::h2rs_shim_c2_net_in_handle, ptr::null_mut(), ptr::null_mut(), c);
                ffi::ap_add_output_filter_handle(ffi::h2rs_shim_c2_net_out_handle, ptr::null_mut(), ptr::null_mut(), c);
                ffi::ap_run_pre_connection(c, DUMMY_SOCKET.load(Ordering::Acquire) as *mut c_void);
            }
            ffi::ap_run_process_connection(c);
        }
    }
}

/// Logs a panic caught in a stream's request. Apart from `C2::run`: the
/// formatting would sit in its frame, under the whole request.
#[cold]
#[inline(never)]
fn log_panic(c: *mut ffi::conn_rec, stream_id: i32, msg: &str) {
    crate::clog!(c, crate::log::Level::Crit, "h2rs: stream {stream_id} panicked: {msg}");
}

/// Measures a run for `fastpath`, on the thread that runs it: by the wall
/// clock, and by the thread's usage when `fastpath` asks for it
/// (`fastpath::MAX_RUN`).
struct RunClock {
    start: std::time::Instant,
    /// The thread's usage at the start (None when not measuring, or when
    /// getrusage failed).
    usage: Option<ThreadUsage>,
}

#[derive(Clone, Copy)]
struct ThreadUsage {
    voluntary_switches: i64,
    cpu: std::time::Duration,
}

impl ThreadUsage {
    // Not inlined: its rusage would sit in the frame of `C2::run`, under
    // the whole request (see "Thread stacks" in docs/INTERNALS.md).
    #[inline(never)]
    fn now() -> Option<ThreadUsage> {
        // SAFETY: getrusage fills the zeroed struct we pass; the result is
        // checked.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            if libc::getrusage(libc::RUSAGE_THREAD, &mut ru) != 0 {
                return None;
            }
            ru
        };
        let tv = |t: libc::timeval| {
            std::time::Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.clamp(0, 999_999) * 1000) as u32)
        };
        Some(ThreadUsage { voluntary_switches: ru.ru_nvcsw, cpu: tv(ru.ru_utime) + tv(ru.ru_stime) })
    }
}

impl RunClock {
    /// `measure`: the run's cost will be recorded (one getrusage now).
    fn start(measure: bool) -> RunClock {
        RunClock { start: std::time::Instant::now(), usage: if measure { ThreadUsage::now() } else { None } }
    }

    /// The run's cost so far. Only a measured run longer than
    /// `fastpath::MAX_RUN` asks the kernel whether it slept and how much
    /// CPU it used.
    fn cost(&self) -> RunCost {
        let elapsed = self.start.elapsed();
        if elapsed <= fastpath::MAX_RUN {
            return RunCost::busy(elapsed);
        }
        match (self.usage, self.usage.and_then(|_| ThreadUsage::now())) {
            (Some(before), Some(after)) => RunCost {
                elapsed,
                slept: after.voluntary_switches > before.voluntary_switches,
                cpu: after.cpu.saturating_sub(before.cpu),
                measured: true,
            },
            _ => RunCost::unmeasured(elapsed),
        }
    }
}

/// Releases a finished stream's c2 on c1: ends the request (EOR: access
/// log, request pool), then recycles or destroys the c2.
struct C2Release {
    c2: C2,
    eor: *mut ffi::apr_bucket,
    /// The request's `request_time` (0: no request).
    started: ffi::apr_time_t,
    cache: Arc<C2Cache>,
    broken: bool,
}

// SAFETY: see `impl Send for C2`; the EOR bucket belongs to the c2's bucket
// allocator and is only touched by whoever holds the C2Release.
unsafe impl Send for C2Release {}

impl Retire for C2Release {
    fn retire(self: Box<Self>, outcome: Outcome) {
        let C2Release { c2, eor, started, cache, broken } = *self;
        end_request(&c2, eor, started, outcome);
        recycle(c2, &cache, broken);
    }
}

/// The c2 back in the connection's cache, or destroyed (broken, used up, or
/// the cache full). Not inlined: its frame stays off the stack under the
/// request's end (`end_request`), the deepest call c1 makes for a request
/// (the access log's formatting): a few bytes more there cost a resident
/// stack page on every thread that serves HTTP/2 (test_build.py).
#[inline(never)]
fn recycle(c2: C2, cache: &C2Cache, broken: bool) {
    if broken || c2.uses >= MAX_USES {
        c2.destroy();
    } else if let Err(c2) = cache.put(c2) {
        c2.destroy();
    }
}

/// Ends a finished stream's request: destroying its EOR logs it and
/// destroys the request pool. Not inlined, for the frame under it (see
/// `recycle`).
#[inline(never)]
fn end_request(c2: &C2, eor: *mut ffi::apr_bucket, started: ffi::apr_time_t, outcome: Outcome) {
    let complete = outcome.complete;
    // SAFETY: the c2 is ours now. Its request is logged and its pools
    // are cleaned up here, on this thread: `current_thread` must say
    // so. It still named the worker's thread, whose pool (mod_lua's
    // thread-scoped VMs live there) that worker uses meanwhile, or
    // freed already (a tunnel's thread, an idle worker that ended).
    unsafe { (*c2.conn).current_thread = crate::hooks::current_thread() };
    if !eor.is_null() {
        // %O of this stream: the frames c1 sent for it.
        logio(&LOGIO_OUT, c2.conn, outcome.bytes_sent);
        // SAFETY: the EOR bucket was removed from its brigade by our
        // filter and is owned by us; destroying it logs the request and
        // destroys the request pool (a sub-pool of the c2's). This runs
        // on c1's thread (the session retires finished streams), with
        // c1 alive: its scoreboard handle is this thread's.
        unsafe {
            if !complete {
                (*c2.conn).aborted = 1;
            }
            if let Some(b) = BucketRef::from_raw(eor) {
                // Destroying the EOR also counts the request in
                // mod_status (ap_increment_counts: Total Accesses and
                // kBytes, through the connection's scoreboard handle),
                // which a c2 has none of on a worker: c1's for that
                // moment, as the stock module does. Without it HTTP/2
                // requests were missing from server-status and the
                // monitoring that reads it.
                (*c2.conn).sbh = (*c2.ctx.c1).sbh;
                // And its duration (ExtendedStatus: Total Duration,
                // ms/request), which httpd records around the request
                // only through that handle too.
                if started > 0 {
                    ffi::ap_set_time_process_request(
                        (*c2.conn).sbh as *mut ffi::ap_sb_handle_t,
                        started,
                        crate::apr::now(),
                    );
                }
                b.destroy();
                (*c2.conn).sbh = ptr::null_mut();
            }
        }
    }
}

/// The c2 context of a secondary connection, or None for other connections.
///
/// # Safety
/// `c` must be a live connection used by the calling thread.
pub unsafe fn ctx_of<'a>(c: *const ffi::conn_rec) -> Option<&'a mut C2Ctx> {
    // SAFETY: for a connection with `master` set, our config slot holds a
    // C2Ctx (set in C2::create); the owning thread is the caller.
    unsafe {
        if c.is_null() || (*c).master.is_null() {
            return None;
        }
        let p = ffi::h2rs_shim_conn_ctx(c) as *mut C2Ctx;
        p.as_mut()
    }
}

// ---- request ------------------------------------------------------------

fn c_string(pool: PoolRef, bytes: &[u8]) -> *mut c_char {
    pool.strdup(bytes)
}

/// An HTTP/2 field's name for httpd's tables, spelled as the stock module
/// spells it (`request::camel_case`): request fields and trailers, and the
/// response fields and trailers of the proxy's HTTP/2 backends (HTTP/1.1
/// clients get them so).
pub fn field_name(pool: PoolRef, name: &[u8]) -> *const c_char {
    match crate::request::known_camel_case(name) {
        Some(known) => known.as_ptr(),
        None => pool.strdup_edited(name, crate::request::camel_case),
    }
}

/// The stream's request was read (post_read_request, or an error before
/// it): the stream timeout becomes that of the request's own server, and
/// our response filter replaces HTTP_HEADER.
///
/// # Safety
/// `r` must be a live request on a c2 owned by the caller.
pub unsafe fn request_read(r: *mut ffi::request_rec, ctx: &mut C2Ctx) {
    if ctx.response_filter_installed {
        return;
    }
    ctx.response_filter_installed = true;
    // SAFETY: standard filter chain manipulation on the caller's request,
    // whose server is live.
    unsafe {
        if let Some(stream) = &ctx.stream {
            stream.set_timeout(crate::c1::stream_timeout_of((*r).server));
        }
        apr::remove_output_filter_rec((*r).output_filters, ffi::ap_http_header_filter_handle);
        ffi::ap_add_output_filter_handle(ffi::h2rs_shim_c2_response_handle, ptr::null_mut(), r, (*r).connection);
    }
}

/// `process_request` panicked on `c`: the panic is kept for `C2::run`,
/// which logs it, resets the stream and destroys the c2. Returns what the
/// c2 process_connection hook returns then: DONE, never DECLINED, or httpd
/// would go on to read an HTTP/1.1 request from the stream's body.
///
/// # Safety
/// As `process_request`.
pub unsafe fn request_panicked(c: *mut ffi::conn_rec, msg: String) -> c_int {
    // SAFETY: caller contract.
    unsafe {
        (*c).aborted = 1;
        if let Some(ctx) = ctx_of(c) {
            ctx.panicked = Some(msg);
        }
    }
    ffi::HOOK_DONE
}

/// Logs why a request head is answered with an error status (431, 414)
/// at info, as httpd logs it for HTTP/1.1 (AH00561 and the like). Out of
/// line, as `keep_original_host`.
#[cold]
#[inline(never)]
fn log_refused_head(r: *mut ffi::request_rec, head: &crate::request::RequestHead) {
    if let Some(reason) = &head.error_reason {
        crate::log::request(r, crate::log::Level::Info, &format!("h2rs: {reason}"));
    }
}

/// A client's `host` field that differs from `:authority` (which decides
/// the request's Host): kept as `H2_ORIGINAL_HOST` and logged at debug,
/// as the stock module does (its AH10401). Out of line: rare, and its
/// formatting would widen `process_request`'s frame, which sits under
/// every request's handler (thread stacks, docs/INTERNALS.md).
///
/// # Safety
/// `r` is the live request being built on this thread, `pool` its pool.
#[cold]
#[inline(never)]
unsafe fn keep_original_host(r: *mut ffi::request_rec, pool: PoolRef, host: &[u8], authority: &[u8]) {
    // SAFETY: caller contract.
    unsafe {
        crate::clog!(
            (*r).connection,
            crate::log::Level::Debug,
            "h2rs: overwriting 'Host: {}' with :authority: {}",
            String::from_utf8_lossy(host),
            String::from_utf8_lossy(authority)
        );
        if let Some(env) = TableRef::from_raw((*r).subprocess_env) {
            env.setn(c"H2_ORIGINAL_HOST".as_ptr(), c_string(pool, host));
        }
    }
}

/// Builds the request_rec from the stream's request head and processes it
/// (the c2 process_connection hook, on a worker).
///
/// # Safety
/// `c` must be a c2 owned by the calling worker.
pub unsafe fn process_request(c: *mut ffi::conn_rec) {
    // SAFETY: caller contract; the request is created in and owned by this
    // c2; all strings are copied into the request pool.
    unsafe {
        let Some(ctx) = ctx_of(c) else { return };
        let Some(stream) = ctx.stream.clone() else { return };
        let head = &stream.request;
        if crate::c1::FAULT_INJECTION.load(Ordering::Relaxed) && head.header(b"h2rs-test-panic") == Some(b"worker") {
            panic!("fault injection: h2rs-test-panic worker");
        }
        let r = ffi::ap_create_request(c);
        ctx.request = r;
        let _processing = Processing::enter(c);
        let Some(pool) = PoolRef::from_raw((*r).pool) else { return };
        let Some(hin) = TableRef::from_raw((*r).headers_in) else { return };
        let is_connect = head.method == b"CONNECT";
        for (n, v) in head.headers.iter() {
            hin.addn(field_name(pool, n), c_string(pool, v));
        }
        if let Some(auth) = head.authority.as_deref().filter(|a| !a.is_empty()) {
            if !is_connect {
                if let Some(host) = head.header(b"host").filter(|h| *h != auth) {
                    keep_original_host(r, pool, host, auth);
                }
                hin.setn(c"Host".as_ptr(), c_string(pool, auth));
            }
        }
        if head.is_tunnel() {
            // The upgrade request has no body for HTTP_IN; once the handler
            // switched protocols it reads the tunnel's raw bytes.
            ctx.tunneled = true;
            // Handlers that poll the connection's own socket rather than
            // asking get_pollfd_from_conn (mod_proxy_wstunnel without
            // fallback to mod_proxy_http) poll the stream's input: the
            // placeholder socket polled ready at once, and they spun. (A
            // tunnel's c2 is not used again: nothing to restore.)
            if let Ok(sock) = tunnel_core_socket(c, ctx) {
                ffi::h2rs_shim_set_core_socket(c, sock);
            }
        } else if !is_connect {
            let has_cl = head.header(b"content-length").is_some();
            if !head.end_stream && !has_cl {
                // A body of unknown length: httpd's HTTP_IN filter gets it
                // chunk-framed from our network filter.
                ffi::apr_table_mergen(hin.as_ptr(), c"Transfer-Encoding".as_ptr(), c"chunked".as_ptr());
                ctx.input_chunked = true;
            } else if !head.end_stream {
                // The session refused a bad content-length.
                ctx.input_left = head.content_length().ok().flatten();
            } else if !has_cl && head.header(b"content-type").is_some() {
                hin.setn(c"Content-Length".as_ptr(), c"0".as_ptr());
            }
        }
        ffi::ap_run_pre_read_request(r, c);
        // From the head's arrival, as the stock module: %D, %t and the
        // status page's durations include a wait for a worker.
        (*r).request_time = if head.arrived_us > 0 { head.arrived_us } else { crate::apr::now() };
        // %I of this stream: its header frames (mod_logio's own filter
        // counts the body as the handler reads it).
        logio(&LOGIO_IN, c, head.raw_bytes as u64);

        // The request line, straight into the request pool. The method is
        // a token (checked when the head was built): ASCII.
        // Without :authority (or with an empty one) a request names its
        // host in Host (RFC 9113 8.3.1), as the stock module reads it.
        let authority = head.authority.as_deref().filter(|a| !a.is_empty()).or(head.header(b"host")).unwrap_or(b"");
        let target: [&[u8]; 4] = if is_connect {
            [authority, b"", b"", b""]
        } else {
            let scheme = head.scheme.as_deref().unwrap_or(b"http");
            let path = head.path.as_deref().unwrap_or(b"/");
            let forward_proxy = crate::c1::server_config((*c).base_server).is_some_and(|cfg| cfg.proxy_requests());
            if forward_proxy || (!scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https")) {
                // H2ProxyRequests (forward proxy), or another scheme than
                // the connection's: an absolute URI. `OPTIONS *` has none
                // of a path (RFC 9112 3.2.4); httpd makes its uri "*".
                [scheme, b"://", authority, if path == b"*" { b"" } else { path }]
            } else if path.is_empty() {
                [b"/", b"", b"", b""]
            } else {
                [path, b"", b"", b""]
            }
        };
        let [t0, t1, t2, t3] = target;
        (*r).the_request = pool.concat(&[&head.method, b" ", t0, t1, t2, t3, b" HTTP/2.0"]);
        (*r).hostname = ptr::null();

        let mut access_status: i32 = 0;
        if let Some(status) = head.error_status {
            access_status = status as i32;
            ffi::ap_parse_request_line(r);
            log_refused_head(r, head);
        } else if ffi::ap_parse_request_line(r) == 0 || ffi::ap_check_request_header(r) == 0 {
            (*r).per_dir_config = (*(*r).server).lookup_defaults;
            access_status = (*r).status;
            (*r).status = ffi::HTTP_OK as i32;
        }
        (*r).per_dir_config = (*(*r).server).lookup_defaults;
        if access_status == 0 {
            // HTTP_IN in place before any error handling, so request bodies
            // are read (and discarded) the usual way.
            ffi::ap_add_input_filter_handle(ffi::ap_http_input_filter_handle, ptr::null_mut(), r, c);
            access_status = ffi::ap_post_read_request(r);
        }
        if access_status == 0
            && head.protocol.is_some()
            && !crate::c1::server_config((*r).server).is_some_and(|cfg| cfg.websockets())
        {
            // The connection's server enabled extended CONNECT; the name-
            // based virtual host that serves this request must too (as the
            // stock module's post_read_request check: 501).
            access_status = ffi::HTTP_NOT_IMPLEMENTED as i32;
        }
        if access_status != 0 {
            request_read(r, ctx);
            ffi::ap_die(access_status, r);
            // ap_die sent the response; end the request with its EOR bucket.
            let bb = ctx.scratch;
            let eor = ffi::ap_bucket_eor_create((*c).bucket_alloc, r);
            ffi::h2rs_shim_brigade_insert_tail(bb, eor);
            ffi::ap_pass_brigade((*c).output_filters, bb);
            if let Some(bb) = BrigadeRef::from_raw(bb) {
                bb.cleanup();
            }
            return;
        }
        // Not ap_process_request: its tail looks up a brigade in the c2
        // pool's user data and passes a FLUSH behind the EOR (~650
        // instructions a request, callgrind). That FLUSH only woke c1 a
        // moment before `worker_done` (or, for a request its handler
        // suspended, `release_slot`) wakes it anyway.
        ffi::ap_process_async_request(r);
        if let Some(ctx) = ctx_of(c) {
            if ctx.timer_refused && ctx.eor.is_null() && ctx.suspended.is_none() {
                // The handler returned SUSPENDED although its timer was
                // refused: nothing continues the request, so it ends here
                // as its callback would have ended it, cut short (the
                // stream is reset).
                (*c).aborted = 1;
                ffi::ap_process_request_after_handler(r);
            }
        }
    }
}

// ---- filters ---------------------------------------------------------------

fn stream_error_status(e: StreamError) -> ffi::apr_status_t {
    match e {
        StreamError::Aborted => status::ECONNABORTED,
        StreamError::Timeout | StreamError::BodyTooSlow => status::TIMEUP,
    }
}

/// `H2RS_C2_NET_OUT`: the bottom of a stream request's output.
///
/// # Safety
/// Called by httpd with a live filter and brigade on a c2.
pub unsafe fn net_out(f: *mut ffi::ap_filter_t, bb: *mut ffi::apr_bucket_brigade) -> ffi::apr_status_t {
    // SAFETY: httpd passes a live filter on a c2 owned by this thread.
    let (c, ctx) = unsafe {
        let c = (*f).c;
        match ctx_of(c) {
            Some(ctx) => (c, ctx),
            None => return status::EGENERAL,
        }
    };
    // SAFETY: as above.
    let Some(bb) = (unsafe { BrigadeRef::from_raw(bb) }) else { return status::SUCCESS };
    let Some(stream) = ctx.stream.clone() else {
        bb.cleanup();
        return status::SUCCESS;
    };
    // SAFETY: the c2 is ours, on this thread.
    let aborted = unsafe { (*c).aborted } != 0;
    if aborted && !ctx.response_cut {
        // A write failed (below, in an earlier pass), or the handler
        // marked the connection aborted: the response is cut. httpd
        // still ends the request with EOS (`ap_finalize_request_protocol`
        // after a handler's DONE), which must not end the stream: the
        // client would take the part it got as the whole. The core output
        // filter drops everything once its connection is aborted; here,
        // as for an error bucket after the head, c1 resets the stream.
        ctx.cut_response();
    }
    // Body bytes queued since the last FLUSH of this pass.
    let mut unflushed = false;
    // Always take the first bucket: reading a bucket may split it (a file
    // read maps a part and leaves the rest as the next bucket).
    while let Some(b) = bb.first() {
        let kind = b.kind();
        if kind.is_eor() {
            // Keep the request alive until c1 is done with the stream.
            b.remove();
            if ctx.eor.is_null() {
                ctx.eor = b.as_ptr();
            } else {
                b.destroy();
            }
            continue;
        }
        if ctx.output_ended {
            // Output after the response's EOS: a second response to the
            // same request, as when mod_security2 blocks a response body
            // (its error document goes out, then the handler's write fails
            // and httpd answers 500 as well). HTTP/1.1's Content-Length
            // ends the body before it, so the client never sees it; here
            // it would be appended to the body the EOS ended. The stock
            // module drops it too.
            b.delete();
            continue;
        }
        if kind.is_error() && ctx.response_set && !ctx.response_cut {
            // An error after the head (mod_proxy's backend broke off
            // mid-body: 502): HTTP/1.1 leaves out the last chunk or closes
            // short of Content-Length so the client sees the cut. Here the
            // stream is not ended: the worker finishes without END_STREAM
            // and c1 resets the stream (INTERNAL_ERROR), as the stock module
            // does. Ending it would hand the client a truncated body as
            // complete, for caches to keep. (Before the head, an error
            // bucket becomes its error response: `start_response`.)
            crate::clog!(
                c,
                crate::log::Level::Info,
                "h2rs: stream {}: the response broke off after its head (error {}), resetting the stream",
                stream.id,
                b.error_status()
            );
            ctx.cut_response();
            b.delete();
            continue;
        }
        if kind.is_eos() {
            if !ctx.response_set {
                flush_interim(ctx, &stream);
            }
            if ctx.body_declared.is_some_and(|n| n != ctx.body_queued) && !ctx.response_cut {
                body_not_its_length(c, ctx, &stream);
            }
            if !ctx.response_cut {
                stream.end_output(ctx.trailers.take());
            }
            ctx.output_ended = true;
            unflushed = false;
            b.delete();
            continue;
        }
        if kind.is_flush() {
            stream.flush();
            unflushed = false;
            b.delete();
            continue;
        }
        if kind.is_metadata() || ctx.discard_output {
            b.delete();
            continue;
        }
        // File data (static files): queued as a region of the file, which
        // c1 copies into its frames or, when large, sends from a mapping
        // (`FileRegion`). apr_bucket_read would mmap every file and
        // munmap it when done, costing TLB shootdowns on every response.
        if ctx.response_set {
            if let Some(region) = b.file_region() {
                ctx.body_queued += region.len as u64;
                let result = copy_file_region(&stream, &mut ctx.file_buf, region);
                b.delete();
                if let Err(rv) = result {
                    // SAFETY: the c2 is ours.
                    unsafe { (*c).aborted = 1 };
                    bb.cleanup();
                    return rv;
                }
                unflushed = true;
                continue;
            }
        }
        // Buckets of unknown length (a CGI's pipe, a proxied socket) may
        // block: first try without blocking, and if nothing is there yet,
        // send what is queued before waiting (as the core output filter
        // does), so streamed output is not held back.
        let mut read = b.read(false);
        if read.as_ref().is_err_and(|&rv| status::is_eagain(rv)) {
            stream.flush();
            read = b.read(true);
        }
        let data = match read {
            Ok(d) => d,
            Err(rv) => {
                bb.cleanup();
                return rv;
            }
        };
        ctx.body_queued += data.len() as u64;
        let result = if ctx.response_set { stream.write_output(data) } else { interim_text(c, ctx, &stream, data) };
        unflushed = true;
        b.delete();
        if let Err(e) = result {
            // SAFETY: the c2 is ours.
            unsafe { (*c).aborted = 1 };
            bb.cleanup();
            return stream_error_status(e);
        }
    }
    if unflushed {
        // The handler may now wait on something else before it writes
        // again (or flushes): what it wrote goes out soon anyway.
        stream.arm_late_flush();
    }
    if aborted {
        // As the core output filter on an aborted connection: the handler
        // learns that its output goes nowhere (a tunnel after a refused
        // 101 ends at its backend's next message).
        return status::ECONNABORTED;
    }
    status::SUCCESS
}

/// Whether every filter of the chain from `first` only passes bytes on or
/// sets headers (`fastpath::HARMLESS_OUTPUT_FILTERS`).
///
/// # Safety
/// `first` is a request's live output filter chain.
unsafe fn filters_harmless(first: *mut ffi::ap_filter_t) -> bool {
    let harmless = harmless_filter_recs();
    // SAFETY: caller contract.
    unsafe { apr::filter_chain_all_recs(first, |rec| harmless.contains(&(rec as usize))) }
}

/// The insert_filter hook, last: notes whether the output filters a
/// stream's request starts its handler with are harmless
/// (`C2Ctx::filters_harmless_at_handler`).
///
/// # Safety
/// `r` is the live request on its connection's thread.
pub unsafe fn note_filters_at_handler(r: *mut ffi::request_rec) {
    // SAFETY: caller contract; the c2's context belongs to this thread.
    unsafe {
        if let Some(ctx) = ctx_of((*r).connection) {
            if ctx.request == r {
                ctx.filters_harmless_at_handler = filters_harmless((*r).output_filters);
            }
        }
    }
}

/// The records of the registered `fastpath::HARMLESS_OUTPUT_FILTERS`,
/// looked up once per process (filters register at start-up; one
/// registered later is only not recognized, which keeps its URLs on the
/// workers). A request's chain is checked by record address: by name,
/// the ~6 filters of a static file cost ~500 instructions a request.
fn harmless_filter_recs() -> &'static [usize] {
    static RECS: once_cell::sync::OnceCell<Vec<usize>> = once_cell::sync::OnceCell::new();
    RECS.get_or_init(|| {
        fastpath::HARMLESS_OUTPUT_FILTERS
            .iter()
            .filter_map(|name| {
                let name = std::ffi::CString::new(*name).ok()?;
                // SAFETY: a lookup in httpd's filter registry, which is
                // only read once the server runs.
                let rec = unsafe { ffi::ap_get_output_filter_handle(name.as_ptr()) };
                (!rec.is_null()).then_some(rec as usize)
            })
            .collect()
    })
}

/// File regions at least this long are queued by reference (a duplicate
/// descriptor) for c1 to read when it sends; smaller ones are copied (a
/// dup and a close cost more than copying a few KiB).
const FILE_BY_REFERENCE: usize = 16 * 1024;

/// Puts a FILE bucket's region into the stream's output: by reference
/// when large and the stream takes one more, else copied.
fn copy_file_region(stream: &Stream, buf: &mut Vec<u8>, region: apr::FileBucket) -> Result<(), ffi::apr_status_t> {
    let apr::FileBucket { fd, mut offset, mut len, may_map } = region;
    if len >= FILE_BY_REFERENCE && stream.takes_file_region() {
        // SAFETY: fd is the open descriptor of a live FILE bucket; it is
        // only borrowed to duplicate it (the duplicate is ours to close).
        let dup = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned();
        if let Ok(owned) = dup {
            let region = crate::stream::FileRegion::new(std::fs::File::from(owned), offset, len as u64, may_map);
            return stream.write_file(region).map_err(stream_error_status);
        }
        // Out of descriptors: copy instead.
    }
    const PIECE: usize = 64 * 1024;
    while len > 0 {
        let n = len.min(PIECE);
        buf.resize(n, 0);
        // SAFETY: reads at most n bytes into a buffer of n bytes.
        let got = unsafe { libc::pread(fd, buf.as_mut_ptr() as *mut libc::c_void, n, offset as libc::off_t) };
        if got <= 0 {
            let errno = if got == 0 {
                status::EOF
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
            };
            if errno == libc::EINTR {
                continue; // a signal on NFS (intr) or FUSE: read again
            }
            return Err(errno);
        }
        let got = got as usize;
        stream.write_output(&buf[..got]).map_err(stream_error_status)?;
        offset += got as u64;
        len -= got;
    }
    Ok(())
}

/// Bytes written to the connection before the final response: HTTP/1 text
/// of interim responses (or of a final one). Not inlined: its heads would
/// sit in the frame of `net_out`, under every write of a body.
#[inline(never)]
fn interim_text(c: *mut ffi::conn_rec, ctx: &mut C2Ctx, stream: &Stream, data: &[u8]) -> Result<(), StreamError> {
    for parsed in ctx.interim.push(data) {
        match parsed {
            Parsed::Head(head) => {
                let head = match stream.request.websocket_accept.as_deref().map(|a| websocket::judge(&head, a)) {
                    None | Some(Verdict::Interim) | Some(Verdict::PassOn) => head,
                    // A 101 that really switched to WebSocket: from here on
                    // the handler writes the tunnel's bytes.
                    Some(Verdict::Open(open)) => open,
                    Some(Verdict::Refuse(refusal)) => {
                        refuse_tunnel(c, ctx, stream, refusal)?;
                        return Ok(());
                    }
                };
                if head.status < 200 {
                    // 101 has no meaning in HTTP/2 (RFC 9113 8.6); 103 goes
                    // out only under H2EarlyHints on.
                    if head.status != 101 && (head.status != 103 || early_hints_on(ctx.request)) {
                        stream.add_interim(head)?;
                    }
                    continue;
                }
                stream.set_response(head)?;
                ctx.response_set = true;
                let rest = ctx.interim.take_rest();
                stream.write_output(&rest)?;
            }
            Parsed::Invalid => {
                crate::clog!(
                    c,
                    crate::log::Level::Error,
                    "h2rs: stream {}: the handler wrote bytes that are not an HTTP response head",
                    stream.id
                );
                return Err(StreamError::Aborted);
            }
        }
    }
    Ok(())
}

/// `H2EarlyHints` of the request's server. Off (the default), 103
/// responses are dropped, whoever sends them (a handler, a proxied
/// backend), as the stock module drops them.
fn early_hints_on(r: *mut ffi::request_rec) -> bool {
    if r.is_null() {
        return false;
    }
    // SAFETY: `r` is this c2's live request (set in process_request), used
    // by the calling thread; its server's config outlives it.
    unsafe { crate::c1::server_config((*r).server).is_some_and(|cfg| cfg.early_hints()) }
}

/// Answers a tunnel request that the handler did not turn into a tunnel
/// (see `websocket::judge`): the refusal ends the stream, the handler's
/// body is dropped. Logged against the stream's connection `c`: c1's
/// belongs to c1's thread (httpd's log core may allocate its log id from
/// its pool), and this runs on the worker.
fn refuse_tunnel(
    c: *mut ffi::conn_rec,
    ctx: &mut C2Ctx,
    stream: &Stream,
    refusal: ResponseHead,
) -> Result<(), StreamError> {
    crate::clog!(
        c,
        crate::log::Level::Info,
        "h2rs: stream {}: the handler did not open a WebSocket, answering {}",
        stream.id,
        refusal.status
    );
    stream.set_response(refusal)?;
    stream.end_output(None);
    ctx.response_set = true;
    ctx.discard_output = true;
    // Whatever the handler passes from here on fails (`net_out`): after a
    // refused 101, mod_proxy_http runs its tunnel anyway, which otherwise
    // ran on, its backend's output dropped, until the client ended the
    // stream (a backend that kept talking held it and a thread for ever).
    // SAFETY: the c2 is ours, on this thread.
    unsafe { (*c).aborted = 1 };
    Ok(())
}

/// EOS without a final response: whatever interim text is pending is
/// dropped; the stream will be reset by c1 (no response).
fn flush_interim(ctx: &mut C2Ctx, _stream: &Stream) {
    ctx.interim = InterimParser::default();
}

/// Why mod_ssl refused the request for want of a TLS renegotiation, which
/// HTTP/2 forbids: its note on a 403, on the request or, where an
/// ErrorDocument answers the 403, on the request redirected from.
///
/// # Safety
/// `r` is the live request.
unsafe fn renegotiation_refused<'a>(r: *mut ffi::request_rec) -> Option<&'a [u8]> {
    // SAFETY: caller's contract; `prev` links requests of the same
    // connection whose pools outlive this one, and so do their notes.
    unsafe {
        if (*r).status != 403 {
            return None;
        }
        let mut q = r;
        while !q.is_null() {
            if let Some(cause) = TableRef::from_raw((*q).notes).and_then(|n| n.get(c"ssl-renegotiate-forbidden")) {
                return Some(cause);
            }
            q = (*q).prev;
        }
        None
    }
}

/// The first output of a request: its response head, built from the
/// request's status and headers and set on the stream (or the error that
/// replaces it). Returns the filter's status when the brigade goes no
/// further. Apart from `response_out`, which then passes the brigade on
/// with a small frame under the handler's further output.
///
/// # Safety
/// `r` is the live request of `c`, the c2 owned by this thread.
#[inline(never)]
unsafe fn start_response(
    r: *mut ffi::request_rec,
    c: *mut ffi::conn_rec,
    ctx: &mut C2Ctx,
    stream: &Stream,
    brigade: BrigadeRef,
    error_status: Option<i32>,
) -> Option<ffi::apr_status_t> {
    // SAFETY: caller contract.
    unsafe {
        if let Some(st) = error_status {
            brigade.cleanup();
            // As HTTP/1.1's header filter merges the tables first
            // (merge_response_headers): what `Header always` put in
            // err_headers_out is then dropped with the response it was
            // for, and the error response gets its own copy, not two.
            if let Some(err) = TableRef::from_raw((*r).err_headers_out).filter(|t| !t.is_empty()) {
                (*r).headers_out = ffi::apr_table_overlay((*r).pool, err.as_ptr(), (*r).headers_out);
                err.clear();
            }
            ffi::ap_die(st, r);
            return Some(ffi::AP_FILTER_ERROR as ffi::apr_status_t);
        }
        if let Some(cause) = renegotiation_refused(r) {
            // mod_ssl cannot renegotiate TLS on a secondary connection (a
            // per-directory SSLVerifyClient or cipher suite) and answered
            // 403: the client is told to retry over HTTP/1.1 instead
            // (RFC 9113 8.1.1), as the stock module does.
            crate::log::request(
                r,
                crate::log::Level::Debug,
                &format!(
                    "h2rs: stream {}: TLS renegotiation needed ({}), resetting with HTTP_1_1_REQUIRED",
                    stream.id,
                    String::from_utf8_lossy(cause)
                ),
            );
            brigade.cleanup();
            ctx.response_set = true;
            ctx.discard_output = true;
            (*r).sent_bodyct = 1;
            if let Err(e) = stream.refuse(crate::nghttp2::error_code::HTTP_1_1_REQUIRED) {
                (*c).aborted = 1;
                return Some(stream_error_status(e));
            }
            stream.end_output(None);
            return Some(status::SUCCESS);
        }
        if ctx.head_refused {
            // The error response that replaces a refused head: httpd's
            // CONTENT_LENGTH filter had already counted the body bytes the
            // handler passed with that head, and counts them into this
            // response's length (HTTP/1.1 sends the same wrong length, then
            // closes the connection). END_STREAM ends the body; no length.
            if let Some(headers) = TableRef::from_raw((*r).headers_out) {
                headers.unset(c"Content-Length");
            }
        }
        let built = response::build_response(r);
        if let (Some(head), Some(accept)) = (&built, stream.request.websocket_accept.as_deref()) {
            if let Verdict::Refuse(refusal) = websocket::judge(head, accept) {
                brigade.cleanup();
                if let Err(e) = refuse_tunnel(c, ctx, stream, refusal) {
                    (*c).aborted = 1;
                    return Some(stream_error_status(e));
                }
                (*r).sent_bodyct = 1;
                return Some(status::SUCCESS);
            }
        }
        match built {
            Some(head) if head.status >= 200 => {
                let has_body = (*r).header_only == 0 && !response::status_is_header_only(head.status as c_int);
                let declared = head.headers.get(b"content-length").and_then(crate::text::parse_decimal);
                if let Err(e) = stream.set_response(head) {
                    brigade.cleanup();
                    (*c).aborted = 1;
                    return Some(stream_error_status(e));
                }
                ctx.body_declared = declared.filter(|_| has_body);
                // Interim text counted before the head is no body.
                ctx.body_queued = 0;
            }
            refused => {
                // An interim status cannot end a stream (RFC 9113 8.1: DATA
                // after a 1xx is a protocol error for the client); HTTP/1.1
                // sends such a head as it is, and the client misreads what
                // follows.
                crate::log::request(
                    r,
                    crate::log::Level::Error,
                    if refused.is_some() {
                        "h2rs: the final response has an interim (1xx) status, answering 500"
                    } else {
                        "h2rs: a response header field contains invalid characters, answering 500"
                    },
                );
                if ctx.head_refused {
                    // The error response's own head: its EOS must pass
                    // (the bare 500 below ends the stream with it).
                    response::drop_body(brigade);
                } else {
                    brigade.cleanup();
                }
                // As HTTP/1.1's header filter does (check_headers): none
                // of the refused head goes into the error response.
                for table in [(*r).headers_out, (*r).err_headers_out] {
                    if let Some(headers) = TableRef::from_raw(table) {
                        headers.clear();
                    }
                }
                (*r).content_type = ptr::null();
                (*r).content_encoding = ptr::null();
                (*r).content_languages = ptr::null_mut();
                if !ctx.head_refused {
                    // Read by this filter again within ap_die (the error
                    // response), through another reference: a volatile
                    // write is not moved past the call.
                    // SAFETY: a plain bool field of the live context.
                    ptr::write_volatile(&mut ctx.head_refused, true);
                    ffi::ap_die(500, r);
                    return Some(ffi::AP_FILTER_ERROR as ffi::apr_status_t);
                }
                // The error response's head was refused too (an
                // ErrorDocument's): a bare 500, as HTTP/1.1 sends then
                // (whatever the status was: the guard is the refusal, not
                // the status, or a 500 with a bad field lost httpd's page).
                (*r).status = 500;
                let head = response::build_response(r).unwrap_or_else(|| {
                    let mut h = Headers::new();
                    h.push(b"content-length", b"0");
                    crate::stream::ResponseHead { status: 500, headers: h }
                });
                let _ = stream.set_response(head);
                (*r).header_only = 1;
            }
        }
        ctx.response_set = true;
        ctx.head_of = Some((r, (*r).status));
        // As HTTP/1.1's header filter: a response without a body sent
        // none (mod_log_config's %b is "-" for a HEAD, not the file's
        // length the handler passed).
        if (*r).header_only == 0 && !response::status_is_header_only((*r).status) {
            (*r).sent_bodyct = 1;
        }
        None
    }
}

/// `H2RS_C2_RESPONSE`: replaces HTTP_HEADER (see `response.rs`).
///
/// # Safety
/// Called by httpd with a live filter and brigade on a stream request.
pub unsafe fn response_out(f: *mut ffi::ap_filter_t, bb: *mut ffi::apr_bucket_brigade) -> ffi::apr_status_t {
    // SAFETY: httpd passes a live filter (with its request) and brigade.
    unsafe {
        let r = (*f).r;
        let c = (*f).c;
        let next = (*f).next;
        let Some(brigade) = BrigadeRef::from_raw(bb) else { return status::SUCCESS };
        let Some(ctx) = ctx_of(c) else { return ffi::ap_pass_brigade(next, bb) };
        let Some(stream) = ctx.stream.clone() else { return ffi::ap_pass_brigade(next, bb) };

        let mut error_status = None;
        let mut has_eos = false;
        let mut b = brigade.first();
        while let Some(bucket) = b {
            let kind = bucket.kind();
            if kind.is_error() && error_status.is_none() {
                error_status = Some(bucket.error_status());
            }
            if kind.is_eos() {
                has_eos = true;
            }
            if kind.is_eoc() {
                ffi::ap_remove_output_filter(f);
                return ffi::ap_pass_brigade(next, bb);
            }
            b = brigade.next(&bucket);
        }

        if !ctx.response_set {
            if let Some(rv) = start_response(r, c, ctx, &stream, brigade, error_status) {
                return rv;
            }
        } else if !ctx.response_cut && error_response_after_head(ctx.head_of, r) {
            // The handler failed after its head went out, and httpd sends
            // its error response (or ErrorDocument, an internal redirect)
            // behind the body begun. HTTP/1.1 appends it and ends the
            // response as if complete; as for an error bucket after the
            // head (`net_out`), the stream is reset instead.
            crate::clog!(
                c,
                crate::log::Level::Info,
                "h2rs: stream {}: the handler failed after the response's head (status {}), resetting the stream",
                stream.id,
                (*r).status
            );
            ctx.cut_response();
        }
        if (*r).header_only != 0 || response::status_is_header_only((*r).status) {
            response::drop_body(brigade);
        }
        if has_eos {
            ctx.trailers = response::trailers_of(r);
        }
        ffi::ap_pass_brigade(next, bb)
    }
}

/// A body that does not come to its Content-Length (a handler's length
/// that does not match what it wrote): the response is cut. Out of line:
/// `net_out` runs for every response (see `C2Ctx::body_declared`).
#[cold]
#[inline(never)]
fn body_not_its_length(c: *mut ffi::conn_rec, ctx: &mut C2Ctx, stream: &Stream) {
    crate::clog!(
        c,
        crate::log::Level::Info,
        "h2rs: stream {}: the response body has {} bytes, its Content-Length says {}, resetting the stream",
        stream.id,
        ctx.body_queued,
        ctx.body_declared.unwrap_or(0)
    );
    ctx.cut_response();
}

/// Whether output of `r` after the head `head_of` is httpd's error response
/// to a handler that failed mid-body: another request (an ErrorDocument's
/// internal redirect: httpd moves the protocol filters to it), or the same
/// request with an error status it did not have when its head went out.
///
/// # Safety
/// `r` must be a live request.
unsafe fn error_response_after_head(head_of: Option<(*mut ffi::request_rec, c_int)>, r: *mut ffi::request_rec) -> bool {
    let Some((head_r, head_status)) = head_of else { return false };
    // SAFETY: caller contract.
    let status = unsafe { (*r).status };
    r != head_r || (status != head_status && status >= 400)
}

/// `H2RS_C2_NET_IN`: the request body, read from the stream.
///
/// # Safety
/// Called by httpd with a live filter and brigade on a c2.
pub unsafe fn net_in(
    f: *mut ffi::ap_filter_t,
    bb: *mut ffi::apr_bucket_brigade,
    mode: ffi::ap_input_mode_t,
    block: ffi::apr_read_type_e,
    readbytes: ffi::apr_off_t,
) -> ffi::apr_status_t {
    // SAFETY: httpd passes a live filter on a c2 owned by this thread.
    let (c, ctx) = unsafe {
        let c = (*f).c;
        match ctx_of(c) {
            Some(ctx) => (c, ctx),
            None => return status::EGENERAL,
        }
    };
    if mode == ffi::AP_MODE_INIT {
        return status::SUCCESS;
    }
    // SAFETY: the c2 is ours.
    if unsafe { (*c).aborted } != 0 {
        return status::ECONNABORTED;
    }
    // SAFETY: httpd's brigade.
    let Some(out) = (unsafe { BrigadeRef::from_raw(bb) }) else { return status::EGENERAL };
    let Some(stream) = ctx.stream.clone() else { return status::EOF };
    let blocking = block == ffi::APR_BLOCK_READ;
    let want = if readbytes <= 0 { 8192 } else { readbytes.min(1 << 20) as usize };
    if let Some(watch) = &ctx.input_watch {
        // Unreadable until the stream has news again (a push after this
        // point posts it anew), so a poller sleeps when we return EAGAIN.
        watch.drain();
    }

    // Fetch from the stream while nothing is pending.
    while ctx.input_off >= ctx.input.len() && !ctx.input_ended {
        let body_deadline = if blocking { ctx.body_deadline(&stream) } else { None };
        match stream.read_input(want.max(8192), blocking, body_deadline) {
            Ok(Input::Data(data)) => {
                if let Some(Some(clock)) = &mut ctx.body_clock {
                    clock.received(data.len());
                }
                ctx.input.clear();
                ctx.input_off = 0;
                if ctx.input_chunked {
                    ctx.input.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    ctx.input.extend_from_slice(&data);
                    ctx.input.extend_from_slice(b"\r\n");
                    // %I: the head's and the body's bytes, as for a body of
                    // declared length and as the stock module counts (a
                    // 12-byte body in two DATA frames logged 10 bytes more,
                    // a 1 MiB one 1,127).
                    uncount_bytes_in(c, ctx.input.len() - data.len());
                } else {
                    if let Some(left) = &mut ctx.input_left {
                        *left = left.saturating_sub(data.len() as u64);
                        if *left == 0 {
                            ctx.input_hold = Some(Instant::now() + BODY_END_GRACE);
                        }
                    }
                    ctx.input = data;
                }
            }
            Ok(Input::End(trailers)) => {
                ctx.input_ended = true;
                ctx.input.clear();
                ctx.input_off = 0;
                if ctx.input_chunked {
                    // The last chunk carries the trailers: HTTP_IN parses
                    // them into r->trailers_in (and clears that table first).
                    ctx.input.extend_from_slice(b"0\r\n");
                    // The trailers count, as the head's fields do.
                    uncount_bytes_in(c, b"0\r\n\r\n".len());
                    if let Some(t) = &trailers {
                        for (name, value) in t.iter() {
                            let at = ctx.input.len();
                            ctx.input.extend_from_slice(name);
                            crate::request::camel_case(&mut ctx.input[at..]);
                            ctx.input.extend_from_slice(b": ");
                            ctx.input.extend_from_slice(value);
                            ctx.input.extend_from_slice(b"\r\n");
                        }
                    }
                    ctx.input.extend_from_slice(b"\r\n");
                } else if let Some(t) = trailers {
                    add_request_trailers(ctx.request, &t);
                }
            }
            Ok(Input::WouldBlock) => return status::EAGAIN,
            Err(StreamError::BodyTooSlow) => {
                // As mod_reqtimeout over HTTP/1.1: the handler's read fails
                // with TIMEUP (most answer 408); the stream is not broken.
                if let (Some(Some(clock)), false) = (&ctx.body_clock, ctx.request.is_null()) {
                    let l = clock.limit();
                    // mod_reqtimeout's own line (AH01382) and tag, which
                    // admins' log filters look for, with the limit.
                    crate::log::reqtimeout_request(
                        ctx.request,
                        crate::log::Level::Info,
                        &format!(
                            "AH01382: Request body read timeout (an HTTP/2 stream; RequestReadTimeout body={}{},MinRate={})",
                            l.timeout.as_secs(),
                            l.max.map(|m| format!("-{}", m.as_secs())).unwrap_or_default(),
                            l.min_rate
                        ),
                    );
                }
                return status::TIMEUP;
            }
            Err(StreamError::Timeout) => {
                // The client sent no body for H2StreamTimeout: the handler's
                // read fails (most answer 408, which still goes out, as
                // over HTTP/1.1); the stream is not broken, so the c2 is not
                // marked aborted (`net_out` would cut that answer).
                return status::TIMEUP;
            }
            Err(StreamError::Aborted) => {
                // SAFETY: the c2 is ours.
                unsafe { (*c).aborted = 1 };
                return status::ECONNABORTED;
            }
        }
    }
    if let Some(until) = ctx.input_hold {
        // The body's last bytes: hand them on with the stream's end.
        let end = stream.take_end(blocking.then_some(until));
        if end.is_none() && !blocking && Instant::now() < until {
            return status::EAGAIN;
        }
        ctx.input_hold = None;
        if let Some(trailers) = end {
            ctx.input_ended = true;
            if let Some(t) = trailers {
                add_request_trailers(ctx.request, &t);
            }
        }
    }
    let pending = &ctx.input[ctx.input_off..];
    if pending.is_empty() {
        if ctx.input_ended && !ctx.eos_sent {
            ctx.eos_sent = true;
            out.push_eos();
            return status::SUCCESS;
        }
        return status::EOF;
    }
    match mode {
        ffi::AP_MODE_READBYTES | ffi::AP_MODE_EXHAUSTIVE => {
            let n = if mode == ffi::AP_MODE_EXHAUSTIVE { pending.len() } else { pending.len().min(want) };
            out.push_copy(&pending[..n]);
            ctx.input_off += n;
        }
        ffi::AP_MODE_SPECULATIVE => {
            out.push_copy(&pending[..pending.len().min(want)]);
        }
        ffi::AP_MODE_GETLINE => {
            let limit = pending.len().min(ffi::HUGE_STRING_LEN as usize);
            let n = pending[..limit].iter().position(|&b| b == b'\n').map(|i| i + 1).unwrap_or(limit);
            out.push_copy(&pending[..n]);
            ctx.input_off += n;
        }
        _ => return status::ENOTIMPL,
    }
    if ctx.input_off >= ctx.input.len() {
        ctx.input.clear();
        ctx.input_off = 0;
    } else if let Some(watch) = &ctx.input_watch {
        // Bytes left here: readable, as a socket would be (see
        // `Stream::read_input` for those left in the stream's queue).
        watch.post();
    }
    status::SUCCESS
}

fn add_request_trailers(r: *mut ffi::request_rec, trailers: &Headers) {
    if r.is_null() {
        return;
    }
    // SAFETY: `r` is the live request of this c2 (set in process_request).
    unsafe {
        let (Some(pool), Some(t)) = (PoolRef::from_raw((*r).pool), TableRef::from_raw((*r).trailers_in)) else {
            return;
        };
        for (n, v) in trailers.iter() {
            t.addn(field_name(pool, n), pool.strdup(v));
        }
        // As HTTP_IN does for a chunked body's trailers (a body without
        // content-length comes to it as one), and the stock module here.
        if ffi::h2rs_shim_merge_trailers(r) != 0 {
            (*r).headers_in = ffi::apr_table_overlay((*r).pool, (*r).headers_in, (*r).trailers_in);
        }
    }
}

/// Environment for handlers on a stream request (fixups hook).
///
/// # Safety
/// `r` must be a live request on a c2 owned by the caller.
pub unsafe fn set_env(r: *mut ffi::request_rec, ctx: &C2Ctx) {
    // SAFETY: caller contract; values are copied into the request pool.
    unsafe {
        let (Some(pool), Some(env)) = (PoolRef::from_raw((*r).pool), TableRef::from_raw((*r).subprocess_env)) else {
            return;
        };
        let Some(stream) = &ctx.stream else { return };
        // Usually none of these names is set yet: adding skips a search of
        // the table per name (the names differ from each other). Under TLS
        // mod_ssl has set HTTPS and more before us, hence the one scan
        // (~800 instructions per request fewer than a search per name).
        let fresh = env.is_empty() || !env.any_key(is_h2_env_name);
        let set = |key: &CStr, val: *const c_char| {
            if fresh {
                env.addn(key.as_ptr(), val)
            } else {
                env.setn(key.as_ptr(), val)
            }
        };
        set(c"HTTP2", c"on".as_ptr());
        set(c"H2PUSH", c"off".as_ptr());
        set(c"H2_PUSH", c"off".as_ptr());
        set(c"H2_PUSHED", c"".as_ptr());
        set(c"H2_PUSHED_ON", c"".as_ptr());
        let (stream_id, tag) = stream_names(pool, ctx, stream);
        set(c"H2_STREAM_ID", stream_id);
        set(c"H2_STREAM_TAG", tag);
        if stream.request.is_tunnel() {
            // mod_proxy's tunnel cannot see when the backend has closed on a
            // stream (it polls only our input), so with half-close it would
            // keep the stream open until the client ends it or the proxy
            // timeout passes. A WebSocket closes in-band (close frames), so
            // one side's end ends the tunnel.
            env.setn(c"proxy-nohalfclose".as_ptr(), c"1".as_ptr());
        }
    }
}

/// The `http2-status` handler, as the stock module's (`SetHandler
/// http2-status`): the HTTP/2 connection a request came on, as JSON
/// (`h2status.rs`), with its connection windows in the response fields
/// `conn-flow-in` and `conn-flow-out`, and the trailer `h2-trailers-in: 1`
/// when the request had trailers. Declines other handlers, methods other
/// than GET and POST, and requests not on an HTTP/2 stream.
///
/// # Safety
/// `r` must be a live request owned by the calling thread.
pub unsafe fn status_handler(r: *mut ffi::request_rec) -> c_int {
    // SAFETY: caller contract; the strings set below are static or in
    // the request pool.
    unsafe {
        if !c_str_is((*r).handler, c"http2-status")
            || ((*r).method_number != ffi::M_GET as c_int && (*r).method_number != ffi::M_POST as c_int)
        {
            return HOOK_DECLINED;
        }
        let Some(stream) = ctx_of((*r).connection).and_then(|ctx| ctx.stream.clone()) else {
            return HOOK_DECLINED;
        };
        let (Some(pool), Some(headers), Some(env)) = (
            PoolRef::from_raw((*r).pool),
            TableRef::from_raw((*r).headers_out),
            TableRef::from_raw((*r).subprocess_env),
        ) else {
            return HOOK_DECLINED;
        };
        if let Err(status) = discard_some_body(r) {
            return status;
        }
        let report = match stream.session_report() {
            Ok(report) => report,
            Err(e) => {
                crate::clog!(
                    (*r).connection,
                    crate::log::Level::Info,
                    "h2rs: stream {}: no report on the connection: {e:?}",
                    stream.id
                );
                return ffi::HTTP_SERVICE_UNAVAILABLE as c_int;
            }
        };
        (*r).status = 200;
        headers.unset(c"Content-Length");
        // A compressed report would be of no use to a person reading it.
        headers.unset(c"Content-Encoding");
        env.setn(c"no-gzip".as_ptr(), c"1".as_ptr());
        env.setn(c"no-brotli".as_ptr(), c"1".as_ptr());
        ffi::ap_set_content_type(r, c"application/json".as_ptr());
        let mut digits = [0u8; 20];
        headers.setn(c"conn-flow-in".as_ptr(), pool.strdup(signed_decimal(report.conn_flow_in.into(), &mut digits)));
        headers.setn(c"conn-flow-out".as_ptr(), pool.strdup(signed_decimal(report.conn_flow_out.into(), &mut digits)));
        if TableRef::from_raw((*r).trailers_in).is_some_and(|t| !t.is_empty()) {
            if let Some(trailers) = TableRef::from_raw((*r).trailers_out) {
                trailers.setn(c"h2-trailers-in".as_ptr(), c"1".as_ptr());
            }
        }
        let json = report.to_json();
        // A failed write: the client went away, and the request is logged
        // as it ended.
        ffi::ap_rwrite(json.as_ptr().cast(), json.len() as c_int, r);
        HOOK_OK
    }
}

/// Reads and drops the request body of the `http2-status` handler up to
/// its end, or until 1 KiB of it came, as the stock handler does: the
/// request's trailers come at the end, and the report answers them.
/// (`ap_discard_request_body` reads nothing on a stream request: it leaves
/// the body of a connection that is not kept alive unread.)
///
/// # Safety
/// `r` must be a live request owned by the calling thread.
unsafe fn discard_some_body(r: *mut ffi::request_rec) -> Result<(), c_int> {
    // SAFETY: caller contract; the brigade lives in the request pool.
    unsafe {
        let bb = BrigadeRef::create((*r).pool, (*(*r).connection).bucket_alloc);
        let mut left: usize = 1024;
        loop {
            let rv =
                ffi::ap_get_brigade((*r).input_filters, bb.as_ptr(), ffi::AP_MODE_READBYTES, ffi::APR_BLOCK_READ, 8192);
            if rv != ffi::APR_OK {
                bb.cleanup();
                return Err(ffi::ap_map_http_request_error(rv, ffi::HTTP_BAD_REQUEST as c_int));
            }
            let mut ended = false;
            let mut cur = bb.first();
            while let Some(b) = cur {
                cur = bb.next(&b);
                ended |= b.kind().is_eos();
                let len = b.known_length().or_else(|| b.read(true).ok().map(<[u8]>::len)).unwrap_or(0);
                left = left.saturating_sub(len);
            }
            bb.cleanup();
            if ended || left == 0 {
                return Ok(());
            }
        }
    }
}

/// Whether the C string `s` (NULL: none) is `expected`. Compared byte by
/// byte up to the first difference: every request passes here with its
/// handler, usually a content type.
///
/// # Safety
/// `s` must be NULL or a NUL-terminated string.
unsafe fn c_str_is(s: *const c_char, expected: &CStr) -> bool {
    if s.is_null() {
        return false;
    }
    for (i, &want) in expected.to_bytes_with_nul().iter().enumerate() {
        // SAFETY: caller contract; bytes are read only up to the first
        // that differs from `expected`, at the latest its NUL.
        if unsafe { *s.add(i) } as u8 != want {
            return false;
        }
    }
    true
}

/// `H2_STREAM_ID` and `H2_STREAM_TAG` of a stream request, in `pool`. The
/// tag is "<process id>-<session number>-<stream id>", as the stock
/// module's "<child number>-<session number>-<stream id>" unique among the
/// connections of the server (child numbers are reused by the children
/// that replace them, process ids much later).
///
/// # Safety
/// `ctx.c1` is NULL or the live client connection.
#[inline]
unsafe fn stream_names(pool: PoolRef, ctx: &C2Ctx, stream: &Stream) -> (*mut c_char, *mut c_char) {
    let mut digits = [0u8; 20];
    let stream_id = decimal(stream.id as u64, &mut digits);
    let (mut pid_digits, mut session_digits) = ([0u8; 20], [0u8; 20]);
    let pid = decimal(CHILD_PID.load(Ordering::Relaxed) as u64, &mut pid_digits);
    let tag = pool.concat(&[pid, b"-", decimal(ctx.session, &mut session_digits), b"-", stream_id]);
    (pool.strdup(stream_id), tag)
}

/// The optional function `http2_var_lookup` (mod_http2.h), answered as the
/// stock module answers: the variables `set_env` puts in a stream
/// request's environment, for the connection `c` (else the request's);
/// "" for a name it does not know. `HTTP2` is "on" on any HTTP/2
/// connection, the client's too; `H2PUSH` is "off" (there is no push).
///
/// # Safety
/// `name` is a C string; `c` and `r` are NULL or live and used by the
/// calling thread; `p` is NULL or a live pool.
pub unsafe fn var_lookup(
    p: *mut ffi::apr_pool_t,
    c: *mut ffi::conn_rec,
    r: *mut ffi::request_rec,
    name: *const c_char,
) -> *mut c_char {
    let text = |value: &'static CStr| value.as_ptr() as *mut c_char;
    // SAFETY: caller contract.
    unsafe {
        let c = if c.is_null() && !r.is_null() { (*r).connection } else { c };
        let name = CStr::from_ptr(name).to_bytes();
        match name {
            b"HTTP2" if crate::hooks::h2rs_is_h2(c) != 0 => text(c"on"),
            b"HTTP2" | b"H2PUSH" | b"H2_PUSH" => text(c"off"),
            b"H2_STREAM_ID" | b"H2_STREAM_TAG" => {
                let on_stream = ctx_of(c).and_then(|ctx| Some((PoolRef::from_raw(p)?, ctx.stream.as_ref()?, &*ctx)));
                match on_stream {
                    Some((pool, stream, ctx)) => {
                        let (stream_id, tag) = stream_names(pool, ctx, stream);
                        if name == b"H2_STREAM_ID" {
                            stream_id
                        } else {
                            tag
                        }
                    }
                    None => text(c""),
                }
            }
            _ => text(c""),
        }
    }
}

/// One of the names `set_env` sets (all are HTTP2 or begin with H2);
/// APR's tables compare keys without case.
fn is_h2_env_name(key: &[u8]) -> bool {
    key.eq_ignore_ascii_case(b"HTTP2") || key.get(..2).is_some_and(|p| p.eq_ignore_ascii_case(b"H2"))
}

/// `get_pollfd_from_conn` for a secondary connection: a socket that is
/// readable while the stream has input (or ended, or was reset), so that
/// mod_proxy's tunnel polls the stream as it would a client socket.
///
/// It is a socket, not an eventfd given as a file, because httpd 2.4's
/// tunnel treats the two differently: only a socket client is first polled
/// for writability, and only that first "writable" makes the tunnel read
/// what the backend sent together with its 101 (see `SocketSignal`). The
/// tunnel never reads or writes this socket; our filters carry the bytes.
///
/// # Safety
/// `c` must be a live connection used by the calling thread; `pfd` a valid
/// apr_pollfd_t.
pub unsafe fn pollfd(
    c: *mut ffi::conn_rec,
    pfd: *mut ffi::apr_pollfd_t,
    timeout: *mut ffi::apr_interval_time_t,
) -> ffi::apr_status_t {
    // SAFETY: caller contract.
    let Some(ctx) = (unsafe { ctx_of(c) }) else { return status::ENOTIMPL };
    // SAFETY: caller contract.
    let sock = match unsafe { input_socket(c, ctx) } {
        Ok(sock) => sock,
        Err(rv) => return rv,
    };
    // SAFETY: caller contract.
    unsafe {
        (*pfd).desc_type = ffi::APR_POLL_SOCKET;
        (*pfd).desc.s = sock;
        if !timeout.is_null() {
            // No timeout of our own: the stream lives as long as the client
            // keeps it; the handler's (the proxy's) timeout applies.
            *timeout = -1;
        }
    }
    status::SUCCESS
}

/// The socket that is readable while the stream has input (or ended, or
/// was reset), for `pollfd`.
///
/// # Safety
/// `c` must be a live c2 used by the calling thread, `ctx` its context.
unsafe fn input_socket(c: *mut ffi::conn_rec, ctx: &mut C2Ctx) -> Result<*mut ffi::apr_socket_t, ffi::apr_status_t> {
    let watch = input_watch(c, ctx)?;
    // SAFETY: the apr_socket_t does not own the descriptor, which lives as
    // long as `input_watch`, i.e. until this stream's worker ends.
    unsafe { socket_of(c, watch.fd()) }
}

/// An apr_socket_t in the connection's pool for `fd`, which it does not
/// own (apr_os_sock_put registers no cleanup).
///
/// # Safety
/// `c` must be a live connection; `fd` must outlive the socket's use.
unsafe fn socket_of(
    c: *mut ffi::conn_rec,
    mut fd: std::os::fd::RawFd,
) -> Result<*mut ffi::apr_socket_t, ffi::apr_status_t> {
    let mut sock: *mut ffi::apr_socket_t = ptr::null_mut();
    // SAFETY: caller contract.
    match unsafe { ffi::apr_os_sock_put(&mut sock, &mut fd, (*c).pool) } {
        status::SUCCESS => Ok(sock),
        rv => Err(rv),
    }
}

/// A tunnel's core socket (`process_request`): like `input_socket`, but a
/// duplicate descriptor that the connection's pool closes. A handler may
/// close its connection's socket (mod_lua's `r:wsclose()`): it then
/// closes its own descriptor, not the stream's, which the stream closes
/// again later (by then perhaps another connection's number).
///
/// Out of line and cold: it runs for tunnels only, and `process_request`
/// is under every request on c1's thread (thread stacks, test_build.py).
///
/// # Safety
/// As `input_socket`.
#[inline(never)]
#[cold]
unsafe fn tunnel_core_socket(
    c: *mut ffi::conn_rec,
    ctx: &mut C2Ctx,
) -> Result<*mut ffi::apr_socket_t, ffi::apr_status_t> {
    /// Closes the socket when the pool is destroyed (a second close of an
    /// apr_socket_t does nothing: APR marks it closed).
    struct CloseWithPool(*mut ffi::apr_socket_t);
    impl Drop for CloseWithPool {
        fn drop(&mut self) {
            // SAFETY: the apr_socket_t is in the same pool, whose memory
            // outlives its cleanups.
            unsafe { ffi::apr_socket_close(self.0) };
        }
    }
    let watch = input_watch(c, ctx)?;
    // SAFETY: dup of a live descriptor; the copy is owned by the
    // apr_socket_t made here (closed with the connection's pool).
    unsafe {
        // Close-on-exec, as the socket pair is (dup would drop the flag, and
        // a CGI or filter program started meanwhile would keep it).
        let fd = libc::fcntl(watch.fd(), libc::F_DUPFD_CLOEXEC, 0);
        if fd < 0 {
            return Err(status::EGENERAL);
        }
        match (socket_of(c, fd), PoolRef::from_raw((*c).pool)) {
            (Ok(sock), Some(pool)) => {
                pool.attach(CloseWithPool(sock));
                Ok(sock)
            }
            (result, _) => {
                libc::close(fd);
                Err(result.err().unwrap_or(status::EGENERAL))
            }
        }
    }
}

/// The stream's input watch (`SocketSignal`), made at the first ask (`c`:
/// for the log).
fn input_watch(c: *mut ffi::conn_rec, ctx: &mut C2Ctx) -> Result<Arc<SocketSignal>, ffi::apr_status_t> {
    let Some(stream) = ctx.stream.clone() else { return Err(status::ENOTIMPL) };
    let watch = match &ctx.input_watch {
        Some(w) => w.clone(),
        None => match SocketSignal::new() {
            Ok(w) => {
                let w = Arc::new(w);
                stream.watch_input(w.clone());
                ctx.input_watch = Some(w.clone());
                w
            }
            Err(e) => {
                crate::clog!(
                    c,
                    crate::log::Level::Error,
                    "h2rs: stream {}: no socket pair for polling: {e}",
                    stream.id
                );
                return Err(status::EGENERAL);
            }
        },
    };
    Ok(watch)
}

/// H2EarlyHints: sends a 103 Early Hints interim response (as the stock
/// module does, in fixups) announcing each H2PushResource as a preload
/// link, then the configured H2EarlyHint fields. Admins who replaced
/// server push by Early Hints kept their H2PushResource lines: the stock
/// module announces them whether or not H2Push is on.
///
/// # Safety
/// `r` must be a live request on a c2 owned by the caller.
pub unsafe fn send_early_hints(r: *mut ffi::request_rec) {
    // SAFETY: caller contract; configs are the request's, values copied
    // into the request pool; ap_send_interim_response writes to our c2.
    unsafe {
        let Some(cfg) = crate::c1::server_config((*r).server) else { return };
        if !cfg.early_hints() || (*r).expecting_100 != 0 {
            return;
        }
        let dir = (ffi::h2rs_shim_dir_conf(r) as *const crate::config::DirConfig).as_ref();
        let hints = match dir {
            Some(d) if !d.early_hint_headers.is_empty() => &d.early_hint_headers,
            _ => &cfg.early_hint_headers,
        };
        let resources = match dir {
            Some(d) if !d.push_resources.is_empty() => &d.push_resources,
            _ => &cfg.push_resources,
        };
        let (Some(pool), Some(out)) = (PoolRef::from_raw((*r).pool), TableRef::from_raw((*r).headers_out)) else {
            return;
        };
        if hints.is_empty() && resources.is_empty() {
            return;
        }
        // ap_send_interim_response sends and then clears headers_out: keep
        // what is there for the final response.
        let saved = ffi::apr_table_copy((*r).pool, out.as_ptr());
        out.clear();
        for res in resources {
            let critical: &[u8] = if res.critical { b"; critical" } else { b"" };
            out.addn(c"Link".as_ptr(), pool.concat(&[b"<", res.uri.as_bytes(), b">; rel=preload", critical]));
        }
        for (name, value) in hints {
            out.addn(pool.strdup(name.as_bytes()), pool.strdup(value.as_bytes()));
        }
        let (status, line) = ((*r).status, (*r).status_line);
        (*r).status = 103;
        (*r).status_line = c"103 Early Hints".as_ptr();
        ffi::ap_send_interim_response(r, 1);
        (*r).status = status;
        (*r).status_line = line;
        (*r).headers_out = saved;
    }
}

/// The request currently processed on a c2 (for hooks).
pub fn request_of(ctx: &C2Ctx) -> *mut ffi::request_rec {
    ctx.request
}

#[cfg(test)]
mod tests {
    use super::{is_h2_env_name, Destroy, FreeCache};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);
    impl Destroy for Counted {
        fn destroy(self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn h2_env_names_are_recognized_in_any_case() {
        for name in
            ["HTTP2", "H2PUSH", "H2_PUSH", "H2_PUSHED", "H2_PUSHED_ON", "H2_STREAM_ID", "H2_STREAM_TAG", "h2_stream_id"]
        {
            assert!(is_h2_env_name(name.as_bytes()), "{name}");
        }
        for name in ["HTTPS", "HTTP", "H", "SSL_PROTOCOL", "proxy-nohalfclose", ""] {
            assert!(!is_h2_env_name(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn cache_keeps_at_most_its_limit_and_trims_at_once() {
        let destroyed = Arc::new(AtomicUsize::new(0));
        let cache = FreeCache::default();
        cache.keep_at_most(10);
        for _ in 0..10 {
            assert!(cache.put(Counted(destroyed.clone())).is_ok());
        }
        // Full: the next one is handed back to the caller.
        assert!(cache.put(Counted(destroyed.clone())).is_err());
        assert_eq!(destroyed.load(Ordering::SeqCst), 0);
        // A lower limit destroys the extra ones now, not at some later put.
        cache.keep_at_most(4);
        assert_eq!(destroyed.load(Ordering::SeqCst), 6);
        assert!(cache.put(Counted(destroyed.clone())).is_err());
        let mut taken = 0;
        while let Some(x) = cache.take() {
            taken += 1;
            x.destroy();
        }
        assert_eq!(taken, 4);
        cache.keep_at_most(2);
        assert!(cache.put(Counted(destroyed.clone())).is_ok());
        cache.clear();
        assert_eq!(destroyed.load(Ordering::SeqCst), 11);
        assert!(cache.take().is_none());
    }
}
