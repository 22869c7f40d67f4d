//! The client connection (c1): detects HTTP/2, runs the session loop on the
//! MPM thread that httpd gave the connection, and is the only code that
//! reads or writes the client socket (through c1's filters, so mod_ssl and
//! the core filters apply).
//!
//! The loop: read what the client sent (non-blocking) into nghttp2, act on
//! worker wake-ups, write what nghttp2 has to send, then wait in one poll
//! over the socket and the session's wake-up eventfd. No spinning, no
//! sleep intervals: the poll wakes for the client and for the workers.
//!
//! When no stream is open on the event MPM, the connection goes back to the
//! MPM in CONN_STATE_ASYNC_WAITIO (no thread held by an idle client; see
//! `park.rs` for its idle timeout); the MPM calls
//! `process_connection` again when bytes arrive. The session (HPACK state,
//! stream ids) lives in the connection's config vector until the
//! connection's pool goes: a pre-cleanup tears it down before the pools
//! that streams use are destroyed.

use crate::apr::{self, status, BrigadeRef, PoolRef};
use crate::c2::{self, C1Ids, C2Cache, C2};
use crate::config::ServerConfig;
use crate::fastpath;
use crate::ffi;
use crate::ffi::panic::guard;
use crate::frames::Frames;
use crate::log::Level;
use crate::nghttp2::error_code;
use crate::park::{self, Parked, Parking};
use crate::request::Limits;
use crate::session::{Dispatch, Session, Settings};
use crate::signal::Signal;
use crate::stream::{Outcome, Retire, Stream};
use crate::text::decimal;
use crate::{clog, workers};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The client connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the core input filter asks of the socket per read (httpd's
/// socket bucket: APR_BUCKET_BUFF_SIZE).
const SOCKET_READ_SIZE: usize = 8000;

/// What c1 asks of its input filters per read.
const CORE_READ_ASK: usize = 64 * 1024;

/// Bytes c1 asks of the socket per read when it reads it itself
/// (`read_direct`, into a frame buffer from `FRAME_BUFS`): two of the
/// core's reads (the socket is drained when a read returns less).
const DIRECT_READ_SIZE: usize = 2 * SOCKET_READ_SIZE;

/// Streams c1 runs itself (`fastpath`) between two socket writes (each is
/// retired as soon as its frames are serialized, see `run_streams_here`).
/// More saves writes and client wake-ups, fewer gets the first response
/// out sooner: 16 against 4 served 1 KiB files 15-20% faster (`-c 100
/// -m 10` and `-c 1 -m 100`, CPU per request 10-15% lower) and delays a
/// burst's first response by at most 15 small requests' work (~20 µs of
/// CPU each here); 32 gained little more. Frames that reach
/// `RUN_HERE_WRITE_AT` bytes are written at once whatever the count.
const RUN_HERE_BATCH: usize = 16;
/// Frames of streams c1 runs itself are written once they reach this many
/// bytes, rather than kept while the next stream runs. A buffer so held
/// has few pages touched, and one that took a large response goes back to
/// `FRAME_BUFS` at once: under load most MPM threads that serve h2 are in
/// `run_streams_here` at any moment, runnable or running a stream, and
/// when each kept a buffer that had taken 100 KiB files across stream runs,
/// 30-47 buffers of 144 KiB were in use at once in a child (100 KiB
/// `-c 50 -m 10`), nearly all of them outside the socket write.
const RUN_HERE_WRITE_AT: usize = 32 * 1024;
/// A stream c1 runs itself has its response written before the next
/// queued one runs (`run_streams_here`) up to about this many bytes; the
/// rest goes out with the responses of the streams queued after it, as
/// nghttp2 schedules them by priority (RFC 9218). Written whole, a large
/// file delayed the small requests of the same burst (a page's CSS behind
/// a video) by as much of it as the client's window allowed, up to
/// Chrome's 6 MiB. (Requests that come in a later read wait for the
/// turn's write only up to its next full chunk, `write_turn`.) Up to this
/// size a response is still written whole (see `run_streams_here` on
/// why); past it, a large file keeps its c2 until it is sent, and the next
/// streams of the burst take others.
const RUN_HERE_WHOLE_UP_TO: usize = 1024 * 1024;

/// Free c2s a connection keeps at most (`FreeCache`), when its fair share
/// of workers is larger: each holds ~32 KiB of APR nodes, and c1 needs
/// only one for the streams it runs itself.
const FREE_C2S_KEPT: usize = 4;

/// How often a connection that ended says it still waits for its workers.
const TEARDOWN_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Bytes read per loop turn before writing (fairness between directions).
const READ_BUDGET: usize = crate::limits::READ_BUDGET;
/// Bytes collected from nghttp2 per socket write. Each write is a syscall
/// and a wake-up of the client; 128 KiB against 64 served 100 KiB files
/// `-c 50 -m 10` 7-13% faster (fewer writes per response), with no change
/// at 1 KiB or 10 MiB and none at 256 KiB beyond it.
const WRITE_CHUNK: usize = 128 * 1024;

/// Buffers for the frames of one socket write (and for the bytes of one
/// `read_socket`), shared by the child's c1 threads: a write takes one and
/// gives it back when it is done (the core wrote everything, FLUSH).
/// Shared, not one per thread: a buffer grows to
/// `FRAME_BUF_CAPACITY`, and one per MPM thread that ever served h2 held
/// up to 8 MiB of heap at 100 KiB `-c 50 -m 10`, while only the threads
/// writing at the moment need one. At `FRAME_BUF_CAPACITY` a buffer is a
/// mapping of its own (`alloc::MAPPED_MIN`), unmapped when freed.
static FRAME_BUFS: Mutex<FrameBufPool> =
    parking_lot::const_mutex(FrameBufPool { free: Vec::new(), in_use: 0, no_wait_until: None });
/// Signalled when a buffer comes back while `in_use_limit` are out.
static FRAME_BUF_BACK: parking_lot::Condvar = parking_lot::Condvar::new();
/// Free frame buffers kept: about the writes in flight at once on a small
/// machine; more are made when needed and freed after.
const FRAME_BUFS_KEPT: usize = 8;
/// `WRITE_CHUNK` plus the DATA frame that crosses it (nghttp2's default
/// payload of 16 KiB, a frame header, padding): allocated once at this
/// size, a buffer never doubles to 256 KiB.
const FRAME_BUF_CAPACITY: usize = WRITE_CHUNK + 16 * 1024 + 9 + 256;
/// How long a thread that holds no frame buffer waits for one to come back
/// when `in_use_limit` are out, before it makes another. The holders are
/// threads preempted mid-turn, and with a hundred runnable threads on two
/// CPUs one waits that long for its next slice: with 20 ms most waits ran
/// out (41 buffers in use at once in a child, 97-222 made in a run at
/// 100 KiB `-c 50 -m 10`), with 200 ms none did (6 in use, 26 made).
/// (Unit tests: long enough never to run out on a loaded machine.)
const FRAME_BUF_WAIT: Duration = if cfg!(test) { Duration::from_secs(30) } else { Duration::from_millis(200) };
/// After such a wait ran out (the holders are stuck, e.g. on a slow disk
/// in a stream run here), how long takers do not wait at all: a few stuck
/// turns must not add a wait to every other connection's turn.
const FRAME_BUF_NO_WAIT_FOR: Duration = Duration::from_secs(1);

struct FrameBufPool {
    free: Vec<Frames>,
    /// Buffers taken and not given back.
    in_use: usize,
    /// Until then takers do not wait (`FRAME_BUF_NO_WAIT_FOR`).
    no_wait_until: Option<Instant>,
}

impl FrameBufPool {
    /// One buffer less counts against `in_use_limit` (given back, or in a
    /// socket write): wakes a taker that waits for room.
    fn count_one_less(&mut self) {
        self.in_use = self.in_use.saturating_sub(1);
        if self.in_use < in_use_limit() {
            // Without a waiter, an atomic load.
            FRAME_BUF_BACK.notify_one();
        }
    }
}

thread_local! {
    /// Frame buffers this thread holds: one that holds one never waits for
    /// another (it would wait for itself). No destructor (see "Threads" in
    /// docs/INTERNALS.md: none on MPM threads).
    static FRAME_BUFS_HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Frame buffers in use at once in a child beyond which a taker waits for
/// one to come back. Under load every MPM thread serving h2 is in a turn,
/// and with the CPUs saturated most of them are preempted there, each
/// holding a buffer with up to `FRAME_BUF_CAPACITY` written (17-19 in a
/// child at 100 KiB `-c 50 -m 10`); only those on a CPU use theirs. A
/// thread that waits here instead of being preempted with a buffer costs
/// no memory: at 100 KiB `-c 50 -m 10` on 2 CPUs (6) peak RSS 27.2 ->
/// 25.2 MiB, req/s and CPU no worse (docs/INTERNALS.md "Frame buffers").
fn in_use_limit() -> usize {
    static LIMIT: once_cell::sync::OnceCell<usize> = once_cell::sync::OnceCell::new();
    *LIMIT.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        (3 * cpus).max(4)
    })
}

/// A frame buffer from `FRAME_BUFS`, empty when taken; dropping it gives
/// it back.
struct FrameBuf(Frames);

impl FrameBuf {
    fn take() -> FrameBuf {
        FrameBuf::take_maybe_waiting(true)
    }

    /// For a write on behalf of a parked or closing session (a GOAWAY), on
    /// the clock thread, which serves every parked session's alarms, or on
    /// the MPM thread that closes the connection (the listener's, in some
    /// event MPMs): such a thread does not wait for other connections'
    /// turns to give a buffer back. It waited under the parked session's
    /// lock, up to `FRAME_BUF_WAIT`, while the session's own thread spun
    /// for it and the other sessions' alarms waited.
    fn take_without_waiting() -> FrameBuf {
        FrameBuf::take_maybe_waiting(false)
    }

    fn take_maybe_waiting(may_wait: bool) -> FrameBuf {
        let limit = in_use_limit();
        let held = FRAME_BUFS_HELD.get();
        let mut pool = FRAME_BUFS.lock();
        if may_wait && pool.in_use >= limit && held == 0 {
            let now = Instant::now();
            if pool.no_wait_until.is_none_or(|t| now >= t) {
                let deadline = now + FRAME_BUF_WAIT;
                while pool.in_use >= limit {
                    if FRAME_BUF_BACK.wait_until(&mut pool, deadline).timed_out() {
                        pool.no_wait_until = Some(Instant::now() + FRAME_BUF_NO_WAIT_FOR);
                        break;
                    }
                }
            }
        }
        pool.in_use += 1;
        let kept = pool.free.pop();
        drop(pool);
        FRAME_BUFS_HELD.set(held + 1);
        FrameBuf(kept.unwrap_or_else(|| Frames::with_capacity(FRAME_BUF_CAPACITY)))
    }
}

/// A socket write in progress: its buffer does not count against
/// `in_use_limit` meanwhile. A write blocks as long as its client reads
/// slowly (up to `Timeout`), and takers must not wait on such writes; the
/// limit is for buffers whose threads only wait for a CPU.
struct FrameBufWriting;

impl FrameBufWriting {
    fn start() -> FrameBufWriting {
        FRAME_BUFS.lock().count_one_less();
        FrameBufWriting
    }
}

impl Drop for FrameBufWriting {
    fn drop(&mut self) {
        FRAME_BUFS.lock().in_use += 1;
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        FRAME_BUFS_HELD.set(FRAME_BUFS_HELD.get().saturating_sub(1));
        let mut pool = FRAME_BUFS.lock();
        pool.count_one_less();
        if pool.free.len() < FRAME_BUFS_KEPT {
            pool.free.push(buf);
            return;
        }
        drop(pool);
        // One too many: freed outside the lock.
        drop(buf);
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = Frames;
    fn deref(&self) -> &Frames {
        &self.0
    }
}

impl std::ops::DerefMut for FrameBuf {
    fn deref_mut(&mut self) -> &mut Frames {
        &mut self.0
    }
}

// ---- process-wide state ------------------------------------------------------

/// Tests only (env H2RS_FAULT_INJECTION=1 at child start): lets requests
/// trigger panics to prove the panic boundary.
pub static FAULT_INJECTION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// 0: running, 1: graceful stop/restart, 2: hard stop.
static STOPPING: AtomicU8 = AtomicU8::new(0);
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);
/// Live sessions: their wake-up signal (for running ones) and parking (for
/// idle ones), to reach them when the child stops.
static SESSIONS: Lazy<Mutex<HashMap<u64, SessionHandles>>> = Lazy::new(Default::default);
/// A live session's wake-up signal (running) and parking (idle).
type SessionHandles = (Weak<Signal>, Weak<Parking>);

/// Makes the process-wide tables of the connections before the first
/// one: made on first use, the first connections, starting at once, raced
/// to make them and the losers waited on the cell, a path that ran
/// nowhere else and mapped 64 KiB of cold code in every child
/// (`tests/test_build.py`).
pub fn child_init() {
    Lazy::force(&SESSIONS);
    fastpath::urls();
}

/// child_stopping: every session sends GOAWAY and finishes (graceful) or
/// aborts (hard) its streams. Running sessions are woken; idle ones, parked
/// in the MPM, send their GOAWAY right here.
pub fn child_stopping(graceful: bool) {
    STOPPING.store(if graceful { 1 } else { 2 }, Ordering::SeqCst);
    // Pairs with the fence in `C1::keep_alive`.
    std::sync::atomic::fence(Ordering::SeqCst);
    let live: Vec<(Weak<Signal>, Weak<Parking>)> = SESSIONS.lock().values().cloned().collect();
    for (signal, parking) in live {
        if let Some(p) = parking.upgrade() {
            if !graceful || !park::stop_gracefully_later(&p) {
                p.stop(graceful);
            }
        }
        if let Some(s) = signal.upgrade() {
            s.wake();
        }
    }
}

fn stopping() -> u8 {
    STOPPING.load(Ordering::SeqCst)
}

// ---- dispatch to workers -------------------------------------------------------

/// Hands streams of one connection to the worker pool, each on a c2.
pub struct C1Dispatch {
    c1: *mut ffi::conn_rec,
    /// Thread-safe pool, parent of this connection's c2 pools.
    session_pool: *mut ffi::apr_pool_t,
    cache: Arc<C2Cache>,
    protocol: &'static CStr,
    /// Counted among the pool's busy sessions.
    busy: bool,
    /// The session's wake-up, for `wait_for_room`.
    signal: Arc<Signal>,
    /// A stream ran on this thread (`fastpath`) since the loop last
    /// yielded the CPU.
    ran_inline: bool,
    /// The session's number in the child (`c2::C1Ids`).
    session_number: u64,
    /// The last stream's `fastpath_key`, by stream id: `runs_here`
    /// computes it and `dispatch` most often follows for the same stream
    /// (0: none yet; client stream ids are odd).
    last_key: Cell<(i32, Option<u64>)>,
}

impl Drop for C1Dispatch {
    fn drop(&mut self) {
        self.set_busy(false);
    }
}

impl C1Dispatch {
    /// A cached c2, or a new one. Not inlined (as `submit`): `dispatch`
    /// calls the request of a stream run here, and its frame stays small
    /// under it (see "Thread stacks" in docs/INTERNALS.md).
    #[inline(never)]
    fn take_c2(&mut self, stream: &Stream) -> Option<C2> {
        if let Some(c2) = self.cache.take() {
            return Some(c2);
        }
        // SAFETY: runs on the c1 thread; c1 and the session pool are live.
        match unsafe { C2::create(self.c1, self.session_pool, self.protocol) } {
            Ok(c2) => {
                clog!(self.c1, Level::Debug, "h2rs: stream {}: new secondary connection", stream.id);
                Some(c2)
            }
            Err(rv) => {
                clog!(self.c1, Level::Error, "h2rs: cannot create a secondary connection (status {rv})");
                None
            }
        }
    }

    /// Hands the stream to a worker (a tunnel to a thread of its own).
    #[inline(never)]
    fn submit(&mut self, c2: C2, stream: Arc<Stream>, c1_ids: C1Ids, cache: Arc<C2Cache>, learn: Option<u64>) {
        let handle = stream.clone();
        let tunnel = stream.request.is_tunnel();
        let submitted = match workers::current() {
            Some(pool) => {
                let job: workers::Job = Box::new(move |w| c2.run(stream, c1_ids, w, cache, learn));
                if tunnel { pool.run_dedicated(job) } else { pool.submit(job) }.is_ok()
            }
            None => false,
        };
        if !submitted {
            clog!(self.c1, Level::Warn, "h2rs: no worker pool to run stream {}", handle.id);
            handle.worker_done(None);
        }
    }

    /// The `fastpath` key of a stream that could run inline.
    fn fastpath_key(&self, stream: &Stream) -> Option<u64> {
        let (id, key) = self.last_key.get();
        if id == stream.id {
            return key;
        }
        // SAFETY: c1's base server, read on its own thread.
        let vhost = unsafe { (*self.c1).base_server } as usize;
        let key = fastpath::candidate(&stream.request).then(|| fastpath::url_key(vhost, &stream.request));
        self.last_key.set((stream.id, key));
        key
    }
}

impl Dispatch for C1Dispatch {
    fn dispatch(&mut self, stream: Arc<Stream>) {
        // Free c2s beyond what runs at once now are pools held for nothing
        // (see `FreeCache`).
        self.cache.keep_at_most(self.fair_share().min(FREE_C2S_KEPT));
        let Some(c2) = self.take_c2(&stream) else {
            stream.worker_done(None);
            return;
        };
        // SAFETY: reading c1's id on its own thread; the worker gets a copy.
        let c1_ids = C1Ids { conn: unsafe { (*self.c1).id }, session: self.session_number };
        let cache = self.cache.clone();
        let learn = self.fastpath_key(&stream);
        if stream.runs_inline() {
            // A static file last time (`runs_here`): run it here, without
            // the two thread hand-offs (see fastpath.rs).
            self.ran_inline = true;
            // SAFETY: c1's own APR thread handle, read on its thread.
            let ctx = workers::WorkerCtx { slot: workers::C1_SLOT, thread: unsafe { (*self.c1).current_thread } };
            c2.run(stream, c1_ids, &ctx, cache, learn);
            return;
        }
        self.submit(c2, stream, c1_ids, cache, learn);
    }

    fn runs_here(&self, stream: &Stream) -> bool {
        // Within the child's budget of queued file regions only: a stream
        // run here queues its file by reference whatever the budget says
        // (`Stream::takes_file_region`; it cannot wait for room to copy),
        // and holds it until the client takes it.
        self.fastpath_key(stream).is_some_and(|k| fastpath::urls().predicts_fast(k))
            && crate::stream::file_regions_within_budget()
    }

    fn retire(&mut self, retire: Box<dyn Retire>, outcome: Outcome) {
        retire.retire(outcome)
    }

    fn set_busy(&mut self, busy: bool) {
        if busy != self.busy {
            self.busy = busy;
            if let Some(pool) = workers::current() {
                pool.session_busy(busy);
            }
        }
    }

    fn fair_share(&self) -> usize {
        workers::current().map(|p| p.fair_share()).unwrap_or(usize::MAX)
    }

    fn has_room(&self) -> bool {
        workers::current().map(|p| p.has_room()).unwrap_or(true)
    }

    fn wait_for_room(&mut self) {
        if let Some(pool) = workers::current() {
            pool.wait_for_room(&self.signal);
        }
    }
}

// ---- the connection --------------------------------------------------------

/// The h2 state of one client connection.
pub struct C1 {
    c: *mut ffi::conn_rec,
    session: Session<C1Dispatch>,
    signal: Arc<Signal>,
    session_id: u64,
    sock_fd: RawFd,
    in_bb: BrigadeRef,
    out_bb: BrigadeRef,
    /// `Timeout` of the connection's server.
    timeout: Duration,
    /// The stream whose header block is being received, and when c1 first
    /// waited on it (`head_wait_left`).
    head_wait: Option<(i32, Instant)>,
    /// The session's count of stream frames (`Stats::stream_frames`) when
    /// c1 first waited with open streams and no worker running, and when
    /// (`stall_left`).
    stall: Option<(u64, Instant)>,
    /// `KeepAliveTimeout`.
    keepalive_timeout: Duration,
    async_mpm: bool,
    /// The MPM can wait for readability on its own (CONN_STATE_ASYNC_WAITIO).
    can_waitio: bool,
    /// Came by h2c Upgrade and still runs inside the upgrading HTTP/1.1
    /// request's handler (`protocol_switch`): its first trip back to the
    /// MPM goes through the end of that request (`keep_alive`).
    in_upgrade_request: bool,
    client_gone: bool,
    /// A read saw the client's end of the stream (its FIN): it has sent all
    /// it will, and our reads took every byte. Not set for protocol errors
    /// (`client_gone` is), where the client is still there and unread
    /// bytes would turn a shutdown into an RST that loses our GOAWAY.
    client_closed: bool,
    /// The client socket may have bytes to read (it polled readable, or the
    /// last read stopped at its budget). A wake-up by a worker alone then
    /// costs no read that would only say EAGAIN.
    input_ready: bool,
    /// How this connection's input is read (from its input chain).
    input_path: InputPath,
    /// `InputPath::Socket`, and the core's filter returned less than
    /// asked for (so holds nothing any more): reads go to the socket.
    read_direct: bool,
    /// The connection's output goes straight to the core's socket writer
    /// (no TLS or other connection filter): DATA payloads of large files
    /// are written from file mappings (`Frames::by_reference`).
    send_by_reference: bool,
    torn_down: bool,
    tls: TlsWarmup,
    /// Exclusive use of the session while it is parked in the MPM.
    parking: Arc<Parking>,
    /// Whether to wait a moment for the next request before parking.
    linger: park::Linger,
    /// Graceful stop: when the shutdown notice went out (the final GOAWAY
    /// follows its PING's ACK, or `park::STOP_NOTICE_GRACE`).
    stop_notice_at: Option<Instant>,
}

impl Parked for C1 {
    /// An idle session is told goodbye while it waits in the MPM (idle
    /// timeout, graceful stop): GOAWAY and our FIN. The client's answer (its
    /// FIN, or a request that crossed the GOAWAY) hands the connection back
    /// to us, and it closes with httpd's lingering close; one that stays
    /// silent gets `stop_reading` from the clock. Not SHUT_RDWR at once:
    /// data arriving at a socket shut for reading is answered with RST,
    /// which loses our GOAWAY (the client cannot tell that its request
    /// was not processed) and defeats the lingering close.
    fn goaway_now(&mut self, debug: &[u8]) -> bool {
        if self.client_gone || self.session.goaway_sent() {
            return false;
        }
        clog!(self.c, Level::Debug, "h2rs: GOAWAY to a parked session ({})", String::from_utf8_lossy(debug));
        self.session.goaway(error_code::NO_ERROR, debug);
        let _ = self.write_output_without_waiting();
        // SAFETY: shutting down our connection's own socket for writing;
        // the MPM only polls it.
        unsafe { libc::shutdown(self.sock_fd, libc::SHUT_WR) };
        true
    }

    /// The client stayed silent after our GOAWAY and FIN: the read side
    /// shut too, the MPM sees the socket readable (at its end) and hands
    /// the connection back to us to close.
    fn stop_reading(&mut self) {
        // SAFETY: as in `goaway_now`.
        unsafe { libc::shutdown(self.sock_fd, libc::SHUT_RDWR) };
    }

    fn shutdown_notice_now(&mut self) -> bool {
        if self.client_gone || self.stop_notice_at.is_some() || !self.send_shutdown_notice() {
            return false;
        }
        if self.write_output_without_waiting().is_err() {
            // Its socket buffer is full (a client that reads nothing): no
            // GOAWAY can follow either, so it is closed now, as the MPM
            // closes idle HTTP/1.1 connections when the child stops; the
            // MPM sees the socket at its end and hands the connection back.
            // (Else it stayed parked until `Timeout`, and the stopping
            // child with it.)
            self.client_gone = true;
            // SAFETY: as in `goaway_now`.
            unsafe { libc::shutdown(self.sock_fd, libc::SHUT_RDWR) };
        }
        true
    }

    /// Idle for a while: the cached secondary connections (their pools
    /// keep the last requests' memory) go, the next stream makes a fresh
    /// c2; and the touched page of nghttp2's frame buffer goes back to the
    /// kernel (4 KiB of an idle connection's ~10 in the module's slabs).
    fn trim(&mut self) {
        self.session.dispatcher().cache.clear();
        let pages = self.session.discard_frame_buffer();
        clog!(
            self.c,
            Level::Debug,
            "h2rs: idle for {:?}, released cached stream connections{}",
            park::TRIM_AFTER,
            if pages { " and the frame buffer's pages" } else { "" }
        );
    }
}

/// Record size used during TLS warm-up (as the stock module: fits one
/// TCP segment).
const TLS_WARMUP_RECORD: usize = 1300;

/// TLS record sizing state (H2TLSWarmUpSize, H2TLSCoolDownSecs).
struct TlsWarmup {
    enabled: bool,
    warmup: u64,
    cooldown: Option<Duration>,
    written: u64,
    last_write: std::time::Instant,
}

impl TlsWarmup {
    /// How many of the first bytes of a write of `len` bytes at `now` go
    /// in warm-up records: what is left of H2TLSWarmUpSize, counted again
    /// from 0 after H2TLSCoolDownSecs without a write. Warm-up ends inside
    /// a write, not after it: a write may be 128 KiB.
    fn warmup_bytes(&mut self, len: usize, now: std::time::Instant) -> usize {
        if !self.enabled {
            return 0;
        }
        if let Some(cooldown) = self.cooldown {
            if self.written > 0 && now.saturating_duration_since(self.last_write) >= cooldown {
                self.written = 0;
            }
        }
        let left = self.warmup.saturating_sub(self.written);
        usize::try_from(left).map_or(len, |left| left.min(len))
    }

    fn wrote(&mut self, len: usize, now: std::time::Instant) {
        self.written = self.written.saturating_add(len as u64);
        self.last_write = now;
    }
}

enum Wait {
    Ready,
    Timeout,
}

/// How long a parked session waits for the client's first request: as
/// HTTP/1.1 and the stock module do, about `Timeout` (a browser may open a
/// connection before it knows its first request), not `KeepAliveTimeout`,
/// which is for the wait between requests. A second less than `Timeout`,
/// so that the GOAWAY goes out before the MPM, whose I/O queue holds a
/// parked connection `Timeout` long, closes it without a word.
fn first_request_timeout(timeout: Duration, keepalive_timeout: Duration) -> Duration {
    timeout.saturating_sub(Duration::from_secs(1)).max(keepalive_timeout)
}

fn interval(t: ffi::apr_interval_time_t, fallback: Duration) -> Duration {
    if t > 0 {
        Duration::from_micros(t as u64)
    } else {
        fallback
    }
}

/// The server config of `s`.
///
/// # Safety
/// `s` must be a server_rec of the running configuration.
pub unsafe fn server_config<'a>(s: *const ffi::server_rec) -> Option<&'a ServerConfig> {
    // SAFETY: our slot holds a ServerConfig attached to the config pool.
    unsafe { (ffi::h2rs_shim_server_conf(s) as *const ServerConfig).as_ref() }
}

/// httpd's `Timeout` when a server has none (its default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The stream timeout of the requests `s` serves (H2StreamTimeout, else
/// Timeout): a stream takes its request's own, as the stock module and
/// HTTP/1.1 do once the name-based virtual host is known.
///
/// # Safety
/// `s` must be a live server_rec of the running configuration.
pub unsafe fn stream_timeout_of(s: *const ffi::server_rec) -> Duration {
    // SAFETY: caller contract.
    let (cfg, timeout) = unsafe { (server_config(s), (*s).timeout) };
    let timeout = interval(timeout, DEFAULT_TIMEOUT);
    cfg.map_or(timeout, |cfg| cfg.stream_timeout(timeout))
}

/// How many streams of one connection may run on workers at once, at most:
/// three quarters of what the pool can grow to (no connection takes every
/// worker), within what the client may open. The session starts lower and
/// grows towards this for clients that behave.
fn max_active_streams(max_streams: u32) -> usize {
    let workers = workers::current().map(|p| p.limits().1).unwrap_or(1);
    crate::limits::fair_share(workers, 1).clamp(1, max_streams.max(1) as usize)
}

/// Session settings from the server config and httpd's limits.
///
/// # Safety
/// httpd's request limits (LimitRequest*) of a server, and whether
/// extended CONNECT was advertised.
pub fn request_limits(server: &ffi::server_rec, extended_connect: bool) -> Limits {
    Limits {
        max_fields: server.limit_req_fields.max(0) as u32,
        max_field_size: server.limit_req_fieldsize.max(0) as u32,
        max_line: server.limit_req_line.max(0) as u32,
        max_head_bytes: crate::limits::MAX_REQUEST_HEAD_BYTES,
        extended_connect,
    }
}

/// `s` must be a live server_rec.
unsafe fn settings_for(s: *mut ffi::server_rec) -> Settings {
    let default = ServerConfig::default();
    // SAFETY: caller contract.
    let (cfg, server) = unsafe { (server_config(s).unwrap_or(&default), &*s) };
    let window = cfg.window_size();
    let streams = cfg.max_session_streams();
    Settings {
        max_concurrent_streams: streams,
        initial_window_size: window,
        // Enough for every stream's window at once, within 2^31-1.
        connection_window: (window as u64 * streams as u64).clamp(65535, i32::MAX as u64) as u32,
        enable_connect_protocol: cfg.websockets(),
        limits: request_limits(server, cfg.websockets()),
        stream_out_limit: cfg.stream_max_mem_size(),
        // SAFETY: caller contract.
        stream_timeout: unsafe { stream_timeout_of(s) },
        output_buffering: cfg.output_buffering(),
        max_data_frame_len: cfg.max_data_frame_len(),
        max_active_streams: max_active_streams(streams),
        max_stream_errors: cfg.max_stream_errors(),
        padding_bits: cfg.padding_bits(),
        options: crate::nghttp2::Options {
            no_http_messaging: true,
            extensible_priorities: true,
            padding: cfg.padding_bits() > 0,
            max_send_header_block: match cfg.max_header_block_len() {
                0 => crate::limits::directive::MAX_HEADER_BLOCK_LEN.1,
                n => n as usize,
            },
            ..Default::default()
        },
        fault_injection: FAULT_INJECTION.load(Ordering::Relaxed),
    }
}

/// What this module keeps on a client connection that speaks HTTP/2: the
/// protocol and server it was chosen for (set as soon as it is chosen,
/// e.g. by ALPN during the TLS handshake), and the session once started.
pub struct C1Ctx {
    pub protocol: &'static CStr,
    /// The server whose H2* settings apply (the SNI / Upgrade vhost).
    pub server: *mut ffi::server_rec,
    /// The session's parking, beside it: `take_back_parked` reaches it
    /// while another thread may hold the parked session.
    parking: Option<Arc<Parking>>,
    pub session: Option<C1>,
}

/// After a panic out of a connection's session (caught at the hook): if
/// the connection has one, it is marked to close (aborted, no keep-alive,
/// lingering close), and the hook must say it handled the connection, or
/// httpd would read the HTTP/2 connection as HTTP/1.1. Its session is torn
/// down with the connection's pool. Returns whether it has one.
///
/// # Safety
/// `c` must be a live connection used by the calling thread.
pub unsafe fn close_after_panic(c: *mut ffi::conn_rec) -> bool {
    // SAFETY: caller contract; the context is only looked at.
    unsafe {
        if ctx_of(c).is_none() {
            return false;
        }
        (*c).aborted = 1;
        (*c).keepalive = ffi::AP_CONN_CLOSE;
        if let Some(cs) = (*c).cs.as_mut() {
            cs.state = ffi::CONN_STATE_LINGER;
        }
        true
    }
}

/// process_connection, before every other module's: a parked session is
/// taken back from the threads that may write to it while it is parked
/// (the clock's idle GOAWAY, a stop's notice) before mod_ssl's hook reads
/// from the connection's filters and allocates from its pool and bucket
/// allocator, which those writes use too. (`C1::run` takes it back as
/// well, for the connections that come without this hook.)
///
/// # Safety
/// `c` must be a live connection used by the calling thread.
pub unsafe fn take_back_parked(c: *const ffi::conn_rec) {
    // SAFETY: for a connection without `master`, our slot holds a C1Ctx
    // (or NULL). Only its `parking` field is read, through the raw
    // pointer: a thread in `Parking::with_parked` may hold the session
    // beside it; the field is set before the session first parks and
    // stays until the context is freed, with the connection.
    unsafe {
        if c.is_null() || !(*c).master.is_null() {
            return;
        }
        let ctx = ffi::h2rs_shim_conn_ctx(c) as *const C1Ctx;
        if ctx.is_null() {
            return;
        }
        if let Some(parking) = (*ptr::addr_of!((*ctx).parking)).as_ref() {
            parking.activate();
        }
    }
}

/// The c1 context of a client connection, if it speaks HTTP/2.
///
/// # Safety
/// `c` must be a live connection used by the calling thread.
pub unsafe fn ctx_of<'a>(c: *const ffi::conn_rec) -> Option<&'a mut C1Ctx> {
    // SAFETY: for a connection without `master`, our slot holds a C1Ctx (or
    // NULL); only the thread running the connection uses it.
    unsafe {
        if c.is_null() || !(*c).master.is_null() {
            return None;
        }
        (ffi::h2rs_shim_conn_ctx(c) as *mut C1Ctx).as_mut()
    }
}

/// Cleanup of the pool of the request that upgraded its connection to h2c,
/// whose session went idle (`C1Ctx::run_upgraded`): httpd's core set
/// AP_CONN_CLOSE after the session returned (`core_upgrade_handler`), which
/// would close a live session when the request ends. The connection goes
/// to the MPM's keep-alive queue instead, and the session resumes in
/// process_connection. Runs when the request ends (its EOR bucket).
unsafe extern "C" fn resume_after_upgrade_request(data: *mut c_void) -> ffi::apr_status_t {
    crate::ffi::panic::guard("upgrade request cleanup", 0, || {
        let c = data as *mut ffi::conn_rec;
        // SAFETY: `data` is the upgraded connection, alive while its
        // request's pool is destroyed, on the thread that runs it.
        unsafe {
            if ctx_of(c).is_some_and(|ctx| ctx.has_live_session()) {
                (*c).keepalive = ffi::AP_CONN_KEEPALIVE;
            }
        }
        0
    })
}

/// Pre-cleanup of the connection pool: tear the session down while the
/// pools its streams use still exist, then free the context.
unsafe extern "C" fn c1_pool_cleanup(data: *mut c_void) -> ffi::apr_status_t {
    crate::ffi::panic::guard("c1 cleanup", 0, || {
        // SAFETY: `data` is the Box<C1Ctx> leaked in `C1Ctx::attach`; this
        // cleanup runs once, on the thread destroying the connection pool,
        // while the connection is still alive (pre-cleanups run first).
        unsafe {
            let mut ctx = Box::from_raw(data as *mut C1Ctx);
            if let Some(session) = ctx.session.as_mut() {
                ffi::h2rs_shim_set_conn_ctx(session.c, ptr::null_mut());
                session.teardown();
            }
        }
        0
    })
}

impl C1Ctx {
    /// Marks `c` as speaking `protocol` for `server` (the session starts
    /// later, in process_connection or right away for an Upgrade).
    ///
    /// # Safety
    /// `c` must be a live client connection run by the calling thread.
    pub unsafe fn attach<'a>(
        c: *mut ffi::conn_rec,
        protocol: &'static CStr,
        server: *mut ffi::server_rec,
    ) -> Option<&'a mut C1Ctx> {
        // SAFETY: caller contract. The context lives until the connection
        // pool's pre-cleanup.
        unsafe {
            if let Some(existing) = ctx_of(c) {
                return Some(existing);
            }
            let server = if server.is_null() { (*c).base_server } else { server };
            let raw = Box::into_raw(Box::new(C1Ctx { protocol, server, parking: None, session: None }));
            ffi::h2rs_shim_set_conn_ctx(c, raw as *mut c_void);
            PoolRef::from_raw((*c).pool)?.pre_cleanup(raw as *const c_void, c1_pool_cleanup);
            raw.as_mut()
        }
    }

    /// Starts the session (if not yet) and runs it. Inlined into the
    /// process_connection hook: out of line (fat LTO left it so) its frame
    /// added 48 bytes under every stream c1 runs itself (`tests/
    /// test_build.py`, the stack depth).
    ///
    /// # Safety
    /// `c` must be this context's live connection, run by the calling thread.
    #[inline(always)]
    pub unsafe fn run(&mut self, c: *mut ffi::conn_rec, upgrade: Option<Box<Upgrade>>) -> i32 {
        // SAFETY: caller contract.
        if self.session.is_none() && !unsafe { self.start(c, upgrade) } {
            // SAFETY: the connection is ours.
            unsafe { (*c).keepalive = ffi::AP_CONN_CLOSE };
            return ffi::HOOK_DONE;
        }
        match self.session.as_mut() {
            Some(s) => s.run(),
            None => ffi::HOOK_DONE,
        }
    }

    /// A session was started and has not ended.
    fn has_live_session(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.torn_down)
    }

    /// Starts the session of an h2c Upgrade inside the upgrading request
    /// `r` and runs it (`protocol_switch`). When it went idle and back
    /// towards the MPM (`C1::keep_alive`) rather than ending, the
    /// connection is kept open past the request's end, which httpd's core
    /// marks it to close at (`resume_after_upgrade_request`).
    ///
    /// # Safety
    /// As `run`; `r` must be the live request on `c` that upgrades it.
    pub unsafe fn run_upgraded(
        &mut self,
        c: *mut ffi::conn_rec,
        r: *mut ffi::request_rec,
        upgrade: Box<Upgrade>,
    ) -> i32 {
        // SAFETY: caller contract.
        let rv = unsafe { self.run(c, Some(upgrade)) };
        if self.has_live_session() {
            // SAFETY: the request's pool is a sub-pool of the connection's,
            // so `c` outlives the cleanup.
            unsafe {
                if let Some(pool) = PoolRef::from_raw((*r).pool) {
                    pool.cleanup(c as *const c_void, resume_after_upgrade_request);
                }
            }
        }
        rv
    }

    /// Starts the session; false if it cannot be. Not inlined: the `C1`
    /// it builds takes ~2 KiB of stack, which `run` would otherwise keep
    /// reserved under every stream it runs inline (an extra stack page
    /// touched on each MPM thread).
    ///
    /// # Safety
    /// As `run`.
    #[inline(never)]
    unsafe fn start(&mut self, c: *mut ffi::conn_rec, upgrade: Option<Box<Upgrade>>) -> bool {
        // SAFETY: caller contract.
        let Some(s) = (unsafe { C1::start(c, self.protocol, self.server, upgrade) }) else { return false };
        self.parking = Some(s.parking.clone());
        let session = self.session.insert(s);
        // The context is boxed: the session's address is stable.
        let ptr = session as *mut C1 as *mut dyn Parked;
        session.parking.set_session(ptr);
        true
    }
}

/// An h2c Upgrade: the HTTP2-Settings payload and the request that becomes
/// stream 1.
pub struct Upgrade {
    pub settings_payload: Vec<u8>,
    pub head: Box<crate::request::RequestHead>,
}

/// Whether the TLS of `c` is good enough for HTTP/2 (H2ModernTLSOnly).
/// With `require_all`, unknown values (handshake not done) fail the check.
///
/// # Safety
/// `c` must be a live TLS connection used by the calling thread.
pub unsafe fn tls_acceptable(c: *mut ffi::conn_rec, s: *mut ffi::server_rec, require_all: bool) -> bool {
    // SAFETY: caller contract; mod_ssl's variables are read into c's pool.
    unsafe {
        let Some(cfg) = server_config(s) else { return true };
        if !cfg.modern_tls_only() {
            return true;
        }
        let var = |name: &CStr| -> Option<String> {
            let v = ffi::ap_ssl_var_lookup((*c).pool, s, c, ptr::null_mut(), name.as_ptr());
            if v.is_null() || *v == 0 {
                None
            } else {
                Some(CStr::from_ptr(v).to_string_lossy().into_owned())
            }
        };
        let (protocol, cipher, compression) = (var(c"SSL_PROTOCOL"), var(c"SSL_CIPHER"), var(c"SSL_COMPRESS_METHOD"));
        crate::negotiation::tls_acceptable(protocol.as_deref(), cipher.as_deref(), compression.as_deref(), require_all)
    }
}

impl C1 {
    /// Starts the HTTP/2 session on `c`.
    ///
    /// # Safety
    /// `c` must be a live client connection run by the calling thread.
    unsafe fn start(
        c: *mut ffi::conn_rec,
        protocol: &'static CStr,
        s: *mut ffi::server_rec,
        upgrade: Option<Box<Upgrade>>,
    ) -> Option<C1> {
        // SAFETY: caller contract; every object created lives in c's pool or
        // in the session pool made here.
        unsafe {
            let signal = Arc::new(Signal::new().ok()?);
            let session_pool = apr::pool::create_threadsafe((*c).pool, c"h2rs_session").ok()?;
            let settings = settings_for(s);
            let session_id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
            let dispatch = C1Dispatch {
                c1: c,
                session_pool,
                cache: Arc::new(C2Cache::default()),
                protocol,
                busy: false,
                signal: signal.clone(),
                last_key: Cell::new((0, None)),
                session_number: session_id,
                ran_inline: false,
            };
            let upgraded = upgrade.is_some();
            let created = match upgrade {
                Some(u) => Session::new_upgraded(settings, signal.clone(), dispatch, &u.settings_payload, u.head),
                None => Session::new(settings, signal.clone(), dispatch),
            };
            let session = match created {
                Ok(s) => s,
                Err(e) => {
                    clog!(c, Level::Error, "h2rs: cannot create the HTTP/2 session: {e}");
                    ffi::apr_pool_destroy(session_pool);
                    return None;
                }
            };
            let fd = conn_socket_fd(c)?;
            let mut async_mpm: i32 = 0;
            ffi::ap_mpm_query(ffi::AP_MPMQ_IS_ASYNC as i32, &mut async_mpm);
            let mut can_waitio: i32 = 0;
            if ffi::ap_mpm_query(ffi::AP_MPMQ_CAN_WAITIO as i32, &mut can_waitio) != 0 {
                can_waitio = 0;
            }
            let keepalive_timeout = interval((*s).keep_alive_timeout, Duration::from_secs(5));
            let timeout = interval((*s).timeout, DEFAULT_TIMEOUT);
            let parking = Parking::new(keepalive_timeout, first_request_timeout(timeout, keepalive_timeout));
            SESSIONS.lock().insert(session_id, (Arc::downgrade(&signal), Arc::downgrade(&parking)));
            let mut c1 = C1 {
                c,
                session,
                signal,
                session_id,
                sock_fd: fd,
                in_bb: BrigadeRef::create((*c).pool, (*c).bucket_alloc),
                out_bb: BrigadeRef::create((*c).pool, (*c).bucket_alloc),
                timeout,
                keepalive_timeout,
                async_mpm: async_mpm != 0 && !(*c).cs.is_null(),
                can_waitio: can_waitio != 0,
                in_upgrade_request: upgraded,
                client_gone: false,
                client_closed: false,
                input_ready: true,
                input_path: InputPath::Filters,
                read_direct: false,
                send_by_reference: !(*c).output_filters.is_null()
                    && (*(*c).output_filters).frec == ffi::ap_core_output_filter_handle,
                torn_down: false,
                tls: {
                    let cfg = server_config(s);
                    let cooldown = cfg
                        .and_then(|c| c.tls_cooldown_secs)
                        .filter(|&secs| secs > 0)
                        .map(|secs| Duration::from_secs(secs as u64));
                    TlsWarmup {
                        // As the stock module (h2_c1_io.c): warm-up only
                        // with a cool-down; with H2TLSCoolDownSecs 0 (its
                        // default) full records from the first byte.
                        enabled: cooldown.is_some() && ffi::ap_ssl_conn_is_ssl(c) != 0,
                        warmup: cfg.map(|c| c.tls_warmup_size()).unwrap_or(0),
                        cooldown,
                        written: 0,
                        last_write: std::time::Instant::now(),
                    }
                },
                parking,
                linger: park::Linger::default(),
                stop_notice_at: None,
                head_wait: None,
                stall: None,
            };
            // mod_reqtimeout's HTTP/1 timeouts do not apply to a session.
            ffi::ap_remove_input_filter_byhandle((*c).input_filters, c"reqtimeout".as_ptr());
            c1.input_path = InputPath::of(plain_input_chain(c), c2::can_count_bytes_in());
            if (*c).master.is_null() && ffi::ap_ssl_conn_is_ssl(c) != 0 && !tls_acceptable(c, s, true) {
                clog!(c, Level::Info, "h2rs: TLS version or cipher not acceptable for HTTP/2 (H2ModernTLSOnly), closing with INADEQUATE_SECURITY");
                c1.session.terminate(error_code::INADEQUATE_SECURITY);
            }
            clog!(
                c,
                Level::Debug,
                "h2rs: {} session started{}",
                protocol.to_string_lossy(),
                if upgraded { " (Upgrade)" } else { "" }
            );
            Some(c1)
        }
    }

    /// Runs the session until it is idle (event MPM: back to keep-alive) or
    /// done (connection closes). Returns the hook's result.
    pub fn run(&mut self) -> i32 {
        let c = self.c;
        // SAFETY: the connection is ours for this call.
        unsafe {
            if let Some(cs) = (*c).cs.as_mut() {
                cs.state = ffi::CONN_STATE_HANDLER;
            }
        }
        self.parking.activate();
        self.linger.resumed(Instant::now());
        // Wake-ups need no post until we sleep or leave (`wait`).
        self.signal.set_awake(true);
        // Resumed by the MPM: the socket is readable.
        self.input_ready = true;
        self.update_status(ffi::SERVER_BUSY_READ);
        loop {
            if !self.client_gone && self.input_ready && self.read_input().is_err() {
                self.client_gone = true;
            }
            if !self.client_gone && self.run_streams_here().is_err() {
                self.client_gone = true;
            }
            self.session.process_signals();
            self.session.retire_finished();
            // Only our child_stopping hook starts the GOAWAY, not the MPM's
            // state: the MPMs set AP_MPMQ_STOPPING before a hard stop's
            // close_worker_sockets() walks every worker's socket, and a
            // session that ends in that window has its connection pool (and
            // socket) destroyed while the walk still reads it, a SIGSEGV in
            // apr_os_sock_get (1 stop in 8 under load). The hook runs right
            // after the walk, in all three MPMs.
            match stopping() {
                0 => {}
                1 => self.graceful_stop_step(),
                _ => {
                    self.session.goaway_for_started(error_code::NO_ERROR, b"server shutting down");
                    self.session.abort_all();
                }
            }
            // Nothing from here to the wait touches the session but the
            // write, so nghttp2's want_write (it walks its queues, ~350
            // instructions) is asked once when there is nothing to send:
            // the usual case after a request, whose stream run here wrote
            // its frames already (`run_streams_here`).
            let mut wants_write = self.session.want_write();
            if wants_write && !self.client_gone {
                if self.write_turn().is_err() {
                    self.client_gone = true;
                }
                wants_write = self.session.want_write();
            }
            // After the write: a response head too large is found there.
            if self.session.has_notes() {
                self.log_notes();
            }
            // Not idle while input may be left in the input filters: a
            // read that stopped at READ_BUDGET can leave the tail of a
            // burst in mod_ssl or the core's filter, where poll does not
            // see it (and the socket may be drained).
            let idle = self.session.open_streams() == 0 && !wants_write && !self.input_ready;
            if std::mem::take(&mut self.session.dispatcher().ran_inline) && !self.parks_now(idle) {
                // A thread that runs its streams itself is never waiting for
                // a worker, so it stays runnable while its client keeps
                // asking: on a saturated machine the scheduler then lets
                // other connections' threads wait for whole rotations
                // (1 KiB -c 100 -m 10 without the yield: a third of the
                // req/s and four times the p99, see INTERNALS). Give the
                // CPU up once per turn, as a hand-off would; on an idle CPU
                // this returns at once. Not when the connection goes back
                // to the MPM right after: nothing here waits for the client.
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            // nghttp2 wants neither to read nor to write: the session is over
            // (GOAWAY exchanged, or a connection error). Streams still on
            // workers are aborted by close().
            if self.client_gone || (!self.session.want_read() && !wants_write) {
                clog!(
                    c,
                    Level::Debug,
                    "h2rs: session ends (client gone: {}, want read: {}, write: {}): {}",
                    self.client_gone,
                    self.session.want_read(),
                    self.session.want_write(),
                    self.session.goaways()
                );
                break;
            }
            if idle {
                if self.session.goaway_sent() || self.session.peer_sent_goaway() {
                    break;
                }
                if let Some(left) = self.stop_notice_left() {
                    // Stopping: not back to the MPM (it would close the
                    // connection without our final GOAWAY); wait here for
                    // the PING's ACK or requests sent before the notice.
                    // At the grace's end the next turn's graceful_stop_step
                    // sends the final GOAWAY.
                    self.wait(left, false);
                    continue;
                }
                if self.async_mpm {
                    // A quick client's next request is usually on its way:
                    // wait a moment for it rather than go through the MPM
                    // (see `park::Linger`).
                    if !self.parks_now(idle) && matches!(self.wait(park::IDLE_LINGER, false), Wait::Ready) {
                        continue;
                    }
                    return self.keep_alive();
                }
                // Threaded MPM without async support: wait here, with the
                // keep-alive timeout, for the next request, or for the
                // wake-up of child_stopping (a graceful restart). Shown as
                // keep-alive meanwhile, not as the last request's logging.
                self.update_status(ffi::SERVER_BUSY_KEEPALIVE);
                // Before the first request about `Timeout`, as HTTP/1.1
                // (a browser may open a connection before it knows its
                // first request).
                let idle_limit = if self.session.last_stream_id() > 0 {
                    self.keepalive_timeout
                } else {
                    first_request_timeout(self.timeout, self.keepalive_timeout)
                };
                match self.wait(idle_limit, true) {
                    Wait::Ready => {
                        self.update_status(ffi::SERVER_BUSY_READ);
                        continue;
                    }
                    Wait::Timeout => {
                        self.session.goaway(error_code::NO_ERROR, b"idle timeout");
                        break;
                    }
                }
            }
            // Streams on workers or waiting for one: counted once a turn,
            // for mod_status and the stall deadline.
            let in_progress = self.session.streams_in_progress();
            self.describe_streams_in_status(wants_write, in_progress);
            let mut limit = self.stop_notice_left().map_or(self.timeout, |left| left.min(self.timeout));
            let head_left = self.head_wait_left();
            if head_left.is_some_and(|left| left.is_zero()) {
                clog!(c, Level::Info, "h2rs: a request's header block did not end in time, closing");
                // Naming that request's stream would tell the client it
                // might have been processed: it may be sent again.
                self.session.goaway_for_started(error_code::NO_ERROR, b"request head timeout");
                break;
            }
            // Every open stream waits for the client (no worker runs), and
            // none moved for `Timeout`.
            let stall_left = self.stall_left(in_progress);
            if stall_left.is_some_and(|left| left.is_zero()) {
                clog!(
                    c,
                    Level::Debug,
                    "h2rs: open streams moved neither way for Timeout, closing: {}",
                    self.session.describe_streams()
                );
                self.session.goaway(error_code::NO_ERROR, b"timeout");
                break;
            }
            // The nearer deadline bounds the wait; at it the next turn acts.
            let deadline_left = head_left.into_iter().chain(stall_left).min();
            let deadline_first = deadline_left.is_some_and(|left| left < limit);
            if let Some(left) = deadline_left {
                limit = limit.min(left);
            }
            match self.wait(limit, true) {
                Wait::Timeout if !deadline_first && self.stop_notice_left().is_none() => {
                    if self.session.awaits_client_settings() {
                        // Upgraded to h2c, and not a byte since: stream 1
                        // would wait for the preface, and hold this thread
                        // (the session is not idle, so it does not go back
                        // to the MPM), for ever.
                        clog!(c, Level::Debug, "h2rs: no client preface within Timeout after the h2c upgrade, closing");
                        self.session.goaway(error_code::PROTOCOL_ERROR, b"no preface");
                        break;
                    }
                }
                Wait::Ready | Wait::Timeout => {}
            }
        }
        self.close()
    }

    /// How much longer the header block being received may take
    /// (`limits::HEADER_BLOCK_WAIT`); None when none is.
    fn head_wait_left(&mut self) -> Option<Duration> {
        let Some(id) = self.session.head_in_progress() else {
            self.head_wait = None;
            return None;
        };
        let since = match self.head_wait {
            Some((waited, since)) if waited == id => since,
            _ => self.head_wait.insert((id, Instant::now())).1,
        };
        Some(self.timeout.min(crate::limits::HEADER_BLOCK_WAIT).saturating_sub(since.elapsed()))
    }

    /// How much longer open streams may go without a HEADERS or DATA frame
    /// either way while no worker runs (None while one does, or a stream
    /// waits for one: `in_progress`, counted this turn): `Timeout`,
    /// as HTTP/1.1 gives a client that reads nothing of a response. The
    /// client's other frames do not count: a client that kept its window
    /// shut and sent a PING now and then held the streams' responses (and
    /// this thread, and a graceful stop) for ever.
    fn stall_left(&mut self, in_progress: usize) -> Option<Duration> {
        if in_progress > 0 {
            self.stall = None;
            return None;
        }
        let moved = self.session.stats().stream_frames;
        let since = match self.stall {
            Some((count, since)) if count == moved => since,
            _ => self.stall.insert((moved, Instant::now())).1,
        };
        Some(self.timeout.saturating_sub(since.elapsed()))
    }

    /// Tells mod_status that this thread serves the connection (client,
    /// virtual host, protocol from ap_get_protocol) in `state`, as HTTP/1.1
    /// does at every request (SERVER_BUSY_READ) and while it waits for the
    /// next one (SERVER_BUSY_KEEPALIVE).
    fn update_status(&self, state: u32) {
        let c = self.c;
        // SAFETY: the connection and its scoreboard handle are ours.
        unsafe {
            if !(*c).sbh.is_null() {
                ffi::ap_update_child_status_from_conn((*c).sbh as *mut ffi::ap_sb_handle_t, state as i32, c);
            }
        }
    }

    /// Shows the session's streams in mod_status's request column while
    /// this thread blocks on them. Only there: at a resume the counts are
    /// always zero (the session was idle), and the call cost ~430
    /// instructions a request (callgrind, paced 1 KiB GETs).
    /// Shown as writing ("W", as HTTP/1.1 while it sends a response)
    /// while a stream is on a worker or frames wait for the socket, else
    /// as reading ("R": the session waits for its client). `on_workers`:
    /// the streams on workers or waiting for one, counted this turn.
    fn describe_streams_in_status(&self, wants_write: bool, on_workers: usize) {
        let c = self.c;
        // SAFETY: the connection and its scoreboard handle are ours; the
        // handle's slot in the scoreboard is this thread's to write, as
        // httpd's own updates write it (no lock); the server and address
        // records live as long as the connection, and are checked for NULL.
        unsafe {
            if (*c).sbh.is_null() {
                return;
            }
            // mod_status keeps 63 bytes and a NUL (on the stack: a
            // `format!` here was a heap allocation on every call). The
            // oldest request still running comes last, as much of it as
            // fits: what an admin looks for, as HTTP/1.1 shows its request
            // line (the stock module shows one stream's request too).
            let mut buf = [0u8; 64];
            let (method, target) = self.session.oldest_in_progress().unwrap_or((b"", b""));
            crate::text::join_c_string(
                &mut buf,
                &[
                    b"h2: ",
                    decimal(self.session.open_streams() as u64, &mut [0u8; 20]),
                    b" open, ",
                    decimal(on_workers as u64, &mut [0u8; 20]),
                    b" on workers",
                    if method.is_empty() { b"" } else { b"; " },
                    method,
                    if method.is_empty() { b"" } else { b" " },
                    target,
                ],
            );
            // The virtual host column too, the connection's, as httpd
            // writes it ("name:port"; `update_status` leaves it empty, as
            // HTTP/1.1 does until a request is read; not there: formatting
            // it cost ~300 instructions at every resume). Written into our
            // slot directly: ap_update_child_status_from_server would
            // also empty the request column until the call below, and a
            // status page read meanwhile showed the row without it.
            let ws = ffi::ap_get_scoreboard_worker((*c).sbh as *mut ffi::ap_sb_handle_t);
            let (server, local) = ((*c).base_server, (*c).local_addr);
            if !ws.is_null() && !server.is_null() && !(*server).server_hostname.is_null() && !local.is_null() {
                let mut vhost = [0u8; 32];
                let name = std::ffi::CStr::from_ptr((*server).server_hostname).to_bytes();
                let mut digits = [0u8; 20];
                let port = decimal(u64::from((*local).port), &mut digits);
                crate::text::join_c_string(&mut vhost, &[name, b":", port]);
                for (to, from) in (*ws).vhost.iter_mut().zip(vhost) {
                    *to = from as std::ffi::c_char;
                }
            }
            let state = if on_workers > 0 || wants_write { ffi::SERVER_BUSY_WRITE } else { ffi::SERVER_BUSY_READ };
            self.show_state(state, buf.as_ptr() as *const std::ffi::c_char);
        }
    }

    /// Sets this thread's scoreboard state, and its request column to
    /// `descr` unless that is NULL (the column is kept then).
    fn show_state(&self, state: u32, descr: *const std::ffi::c_char) {
        // SAFETY: the connection and its scoreboard handle are ours (as in
        // `describe_streams_in_status`); `descr` is NULL or a C string.
        unsafe {
            if !(*self.c).sbh.is_null() {
                ffi::ap_update_child_status_descr((*self.c).sbh as *mut ffi::ap_sb_handle_t, state as i32, descr);
            }
        }
    }

    /// Graceful stop (RFC 9113 6.8): first GOAWAY with the highest stream
    /// id and a PING; the final GOAWAY, with the last stream processed,
    /// once the client has answered the PING (so every stream it opened
    /// before it knew is in) or `park::STOP_NOTICE_GRACE` has passed. A single
    /// GOAWAY right away refused the requests a busy client had on the
    /// wire (h2load `-m 10`: 10 per connection at each graceful restart).
    fn graceful_stop_step(&mut self) {
        if self.session.goaway_sent() {
            return;
        }
        if self.stop_notice_at.is_none() && self.send_shutdown_notice() {
            return;
        }
        match self.stop_notice_at {
            Some(at) if !self.session.shutdown_notice_acked() && at.elapsed() < park::STOP_NOTICE_GRACE => {}
            at => {
                clog!(
                    self.c,
                    Level::Debug,
                    "h2rs: stopping, final GOAWAY (last stream {}, {})",
                    self.session.last_stream_id(),
                    match at {
                        None => "no notice".to_string(),
                        Some(at) if self.session.shutdown_notice_acked() =>
                            format!("PING answered after {:.1} ms", at.elapsed().as_secs_f64() * 1e3),
                        Some(_) => "PING not answered".to_string(),
                    }
                );
                self.session.goaway(error_code::NO_ERROR, b"server shutting down");
            }
        }
    }

    /// The graceful stop's first step (`Session::shutdown_notice`), unless
    /// a GOAWAY went either way already; notes when it went out.
    fn send_shutdown_notice(&mut self) -> bool {
        if self.session.peer_sent_goaway() || !self.session.shutdown_notice() {
            return false;
        }
        clog!(self.c, Level::Debug, "h2rs: stopping, shutdown notice sent");
        self.stop_notice_at = Some(Instant::now());
        true
    }

    /// Time left before the final GOAWAY while a shutdown notice waits for
    /// its PING's ACK; None when no notice waits.
    fn stop_notice_left(&self) -> Option<Duration> {
        let at = self.stop_notice_at?;
        if self.session.goaway_sent() {
            return None;
        }
        Some(park::STOP_NOTICE_GRACE.saturating_sub(at.elapsed()).max(Duration::from_millis(1)))
    }

    /// The session is idle and goes back to the event MPM without waiting
    /// for its client's next request (`park::Linger`).
    /// `idle`: `Session::is_idle` now.
    fn parks_now(&mut self, idle: bool) -> bool {
        self.async_mpm && idle && !self.linger.waits(self.session.last_stream_id() == 0)
    }

    /// Hands an idle connection back to the event MPM.
    ///
    /// With CONN_STATE_ASYNC_WAITIO (httpd 2.4.63+) the MPM waits for the
    /// next bytes in its I/O queue (timeout: `Timeout`). Unlike its
    /// keep-alive queue, that queue is not flushed when all MPM workers are
    /// busy, which would close idle HTTP/2 sessions under load. When the
    /// MPM finally closes the connection, pre_close_connection sends our
    /// GOAWAY. Older MPMs get the plain keep-alive state.
    ///
    /// A session that came by h2c Upgrade goes back the first time through
    /// the end of the upgrading request (`C1Ctx::run_upgraded`), in the
    /// keep-alive state, which httpd sets after a request anyway. Not
    /// parked: the request still uses the connection's filters after this
    /// returns, so no timer may write meanwhile; the keep-alive queue's own
    /// timeout and pre_close_connection stand in. Its next trips are as any
    /// session's.
    fn keep_alive(&mut self) -> i32 {
        let waitio = self.can_waitio && !self.in_upgrade_request;
        clog!(
            self.c,
            Level::Trace1,
            "h2rs: idle, back to the MPM (waitio: {waitio}, through the upgrading request: {})",
            self.in_upgrade_request
        );
        if std::mem::take(&mut self.in_upgrade_request) {
            // httpd checks the next request's pipelining after the upgrading
            // one (`ap_check_pipeline`), a read that may leave our client's
            // next bytes in the core's input filter: read through it first.
            self.read_direct = false;
        }
        self.signal.set_awake(false);
        // SAFETY: the connection (and its state, from the MPM) is ours.
        unsafe {
            (*self.c).keepalive = ffi::AP_CONN_KEEPALIVE;
            if let Some(cs) = (*self.c).cs.as_mut() {
                if waitio {
                    cs.state = ffi::CONN_STATE_ASYNC_WAITIO;
                    cs.sense = ffi::CONN_SENSE_WANT_READ;
                } else {
                    cs.state = ffi::CONN_STATE_WRITE_COMPLETION;
                    cs.sense = ffi::CONN_SENSE_DEFAULT;
                }
            }
        }
        self.linger.parked(Instant::now());
        // Last: from here on a timer or a stop notice may use the session
        // (this `C1`, on another thread), so nothing of `self` is touched
        // after `park`: only this clone of the parking.
        // In the MPM's I/O queue the timeout is `Timeout`; our timer sends
        // the GOAWAY of `KeepAliveTimeout`, or before the first request of
        // `first_request_timeout` (the keep-alive queue, used without
        // WAITIO, has its own).
        if waitio {
            let parking = self.parking.clone();
            if let Some(after) = parking.park(self.session.last_stream_id() > 0) {
                park::arm_timer(&parking, after);
            }
            // A stop that began after this turn looked (`run`) found the
            // session still ACTIVE and had nothing parked to notify: act
            // for it. The fences order our PARKED before this look, and
            // child_stopping's flag before its own look at the state, so
            // one of the two sees the other (`Parking::stop` acts once).
            std::sync::atomic::fence(Ordering::SeqCst);
            let stop = stopping();
            if stop != 0 {
                parking.stop(stop == 1);
            }
        }
        ffi::HOOK_OK
    }

    fn close(&mut self) -> i32 {
        if !self.client_gone {
            // Also after the client's GOAWAY: ours names the last stream
            // we processed (RFC 9113 6.8), for a request it sent after its
            // own GOAWAY.
            if !self.session.goaway_sent() {
                self.session.goaway(error_code::NO_ERROR, b"");
            }
            let _ = self.write_output();
        } else if self.client_closed {
            // The client closed its side: ours closes now, not when the
            // slowest stream's handler returns (teardown waits for them; a
            // slow CGI kept the socket in CLOSE_WAIT for its whole run, the
            // client's end in FIN_WAIT2). Every byte was read, so this sends
            // a FIN, not an RST.
            // SAFETY: as in `goaway_now`; the descriptor stays open until
            // httpd closes the connection.
            unsafe { libc::shutdown(self.sock_fd, libc::SHUT_RDWR) };
        }
        self.teardown();
        // SAFETY: the connection is ours.
        unsafe {
            (*self.c).keepalive = ffi::AP_CONN_CLOSE;
            if let Some(cs) = (*self.c).cs.as_mut() {
                cs.state = ffi::CONN_STATE_LINGER;
            }
        }
        ffi::HOOK_OK
    }

    /// pre_close_connection: the MPM closes the connection (keep-alive
    /// timeout, shutdown). Say goodbye with GOAWAY if we have not. A parked
    /// session has been taken back (`take_back_parked`, before the
    /// reference to this was made).
    pub fn pre_close(&mut self) {
        if !self.client_gone && !self.torn_down && !self.session.goaway_sent() {
            self.session.goaway(error_code::NO_ERROR, b"");
            let _ = self.write_output_for_others();
        }
    }

    /// Reads what the client sent, without blocking, into the session.
    fn read_input(&mut self) -> Result<(), ()> {
        if self.read_direct {
            return self.read_socket();
        }
        let c = self.c;
        let mut total = 0usize;
        while total < READ_BUDGET {
            self.in_bb.cleanup();
            // SAFETY: c1's input filters, our brigade, on the c1 thread.
            let rv = unsafe {
                ffi::ap_get_brigade(
                    (*c).input_filters,
                    self.in_bb.as_ptr(),
                    ffi::AP_MODE_READBYTES,
                    ffi::APR_NONBLOCK_READ,
                    CORE_READ_ASK as ffi::apr_off_t,
                )
            };
            if status::is_eagain(rv) {
                self.input_ready = false;
                self.read_direct = self.input_path.reads_socket();
                return Ok(());
            }
            if rv != status::SUCCESS {
                if rv == status::EOF {
                    self.saw_client_fin();
                } else {
                    clog!(c, Level::Debug, "h2rs: read from client failed (status {rv})");
                }
                self.in_bb.cleanup();
                return Err(());
            }
            if self.in_bb.is_empty() {
                self.input_ready = false;
                self.read_direct = self.input_path.reads_socket();
                return Ok(());
            }
            let before = total;
            while let Some(b) = self.in_bb.first() {
                if b.kind().is_eos() {
                    self.in_bb.cleanup();
                    self.saw_client_fin();
                    return Err(());
                }
                if b.kind().is_metadata() {
                    b.delete();
                    continue;
                }
                let data = match b.read(true) {
                    Ok(d) => d,
                    Err(_) => {
                        self.in_bb.cleanup();
                        return Err(());
                    }
                };
                total += data.len();
                let fed = self.feed_session(data);
                b.delete();
                if fed.is_err() {
                    self.in_bb.cleanup();
                    return Err(());
                }
            }
            // Less than asked for: the core's filter gave all it held.
            self.read_direct = self.input_path.reads_socket() && total - before < CORE_READ_ASK;
            if self.input_path.short_read_drains() && total - before < SOCKET_READ_SIZE {
                self.input_ready = false;
                return Ok(());
            }
            if self.read_direct {
                return self.read_socket();
            }
        }
        self.in_bb.cleanup();
        Ok(())
    }

    /// A read saw the client's end of the stream (`client_closed`).
    #[cold]
    fn saw_client_fin(&mut self) {
        clog!(self.c, Level::Debug, "h2rs: client closed the connection");
        self.client_closed = true;
    }

    /// Reads the client socket itself (`read_direct`) until it is drained
    /// (a short read) or `READ_BUDGET` is reached.
    fn read_socket(&mut self) -> Result<(), ()> {
        let c = self.c;
        // A frame buffer, not one of its own per thread or connection
        // (see FRAME_BUFS): only the pages a read writes are touched.
        let mut held = FrameBuf::take();
        let buf = held.buffer();
        buf.reserve(DIRECT_READ_SIZE);
        let mut total = 0usize;
        while total < READ_BUDGET {
            let spare = buf.spare_capacity_mut();
            let want = spare.len().min(DIRECT_READ_SIZE);
            // SAFETY: recv writes at most `want` bytes into the spare
            // capacity of `buf`; MSG_DONTWAIT never blocks; the socket
            // is this connection's, open while the session runs.
            let n =
                unsafe { libc::recv(self.sock_fd, spare.as_mut_ptr() as *mut libc::c_void, want, libc::MSG_DONTWAIT) };
            if n > 0 {
                let n = n as usize;
                total += n;
                // SAFETY: recv initialized the first `n` bytes of the
                // spare capacity.
                let data = unsafe { std::slice::from_raw_parts(spare.as_ptr() as *const u8, n) };
                // %I, as mod_logio's filter would have counted it.
                if self.input_path == (InputPath::Socket { counts_for_logio: true }) {
                    c2::count_c1_bytes_in(c, n as u64);
                }
                self.feed_session(data)?;
                if n < want {
                    self.input_ready = false;
                    return Ok(());
                }
                continue;
            }
            if n == 0 {
                self.saw_client_fin();
                return Err(());
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    self.input_ready = false;
                    return Ok(());
                }
                _ => {
                    clog!(c, Level::Debug, "h2rs: read from client failed ({e})");
                    return Err(());
                }
            }
        }
        Ok(())
    }

    /// Logs why streams were reset for their requests (debug; httpd logs
    /// why it answers 400 there) and why the session was ended for abuse
    /// (info, as nghttp2's floods are).
    #[cold]
    #[inline(never)]
    fn log_notes(&mut self) {
        let c = self.c;
        self.session.take_notes(
            |id, why| clog!(c, Level::Debug, "h2rs: stream {id}: malformed or refused request, reset: {why}"),
            |id| {
                clog!(
                    c,
                    Level::Warn,
                    "h2rs: stream {id}: the response's header block is larger than H2MaxHeaderBlockLen allows; stream reset"
                )
            },
            |why| clog!(c, Level::Info, "h2rs: client abuse, closing with ENHANCE_YOUR_CALM: {why}"),
        );
    }

    /// Hands bytes from the client to nghttp2. On a protocol error the
    /// session is ended with GOAWAY (written out) and the connection is
    /// to close.
    fn feed_session(&mut self, data: &[u8]) -> Result<(), ()> {
        let c = self.c;
        let Err(e) = self.session.recv(data) else { return Ok(()) };
        if e.is_abuse() {
            clog!(c, Level::Info, "h2rs: client flooded the connection, closing: {e}");
        } else if e.is_bad_preface() {
            clog!(c, Level::Debug, "h2rs: not an HTTP/2 client preface: {e}");
        } else {
            clog!(c, Level::Debug, "h2rs: session error: {e}");
        }
        // A flood (nghttp2's queue of unanswered ACKs is full, or a
        // CONTINUATION flood) is abuse, anything else a protocol error.
        let code = if e.is_abuse() { error_code::ENHANCE_YOUR_CALM } else { error_code::PROTOCOL_ERROR };
        self.session.terminate(code);
        // Let the GOAWAY go out, then close.
        let _ = self.write_output();
        Err(())
    }

    /// Runs the streams queued to run on this thread (`fastpath`), one at a
    /// time, and serializes each one's frames before the next starts:
    /// nghttp2 then closes the stream, its request ends (logged, pool
    /// freed) and its c2 is back in the cache for the next one. A
    /// connection so holds one c2 for a burst of small requests, not one
    /// per stream run between two writes (~32 KiB of APR nodes each: 4 of
    /// them per connection cost 8 MiB of peak RSS at 1 KiB `-c 100 -m 10`).
    /// The socket is written every `RUN_HERE_BATCH` streams, once the
    /// frames reach `RUN_HERE_WRITE_AT` bytes, and at the end. A response
    /// larger than the buffer is written whole before the next stream
    /// starts, up to `RUN_HERE_WHOLE_UP_TO`: left half sent, its c2 would
    /// still be in use, and the next streams would each make a new one
    /// (and the cache destroy them again: at 100 KiB, 0.8x the req/s, the
    /// time in mmap/munmap).
    /// A frame buffer is held only while frames wait in it, not while a
    /// stream runs after a write (see `RUN_HERE_WRITE_AT`).
    fn run_streams_here(&mut self) -> Result<(), ()> {
        let mut pending: Option<FrameBuf> = None;
        let mut since_write = 0;
        while self.session.run_here(1) > 0 {
            self.session.process_signals();
            let frames = pending.get_or_insert_with(FrameBuf::take);
            self.collect_frames(frames)?;
            self.session.retire_finished();
            since_write += 1;
            if frames.len() >= RUN_HERE_WRITE_AT {
                self.write_frames_and_more(frames, RUN_HERE_WHOLE_UP_TO, false)?;
            } else if since_write >= RUN_HERE_BATCH {
                self.send_frames(frames)?;
            } else {
                continue;
            }
            pending = None;
            since_write = 0;
        }
        match pending {
            Some(frames) if !frames.is_empty() => self.send_frames(&frames),
            _ => Ok(()),
        }
    }

    /// Writes everything nghttp2 has to send (blocking, with `Timeout`).
    fn write_output(&mut self) -> Result<(), ()> {
        self.write_frames_and_more(&mut FrameBuf::take(), usize::MAX, false)
    }

    /// `write_output` on a thread that does not serve this connection alone
    /// (`FrameBuf::take_without_waiting`).
    fn write_output_for_others(&mut self) -> Result<(), ()> {
        self.write_frames_and_more(&mut FrameBuf::take_without_waiting(), usize::MAX, false)
    }

    /// `write_output` for a turn of the loop: it stops after a full chunk
    /// when a worker's wake-up or the client's bytes wait, and the next
    /// turn takes them first. Written whole, a client's large window of a
    /// file sent by reference (which never runs dry; 15 MiB in Chrome)
    /// went out in one piece while requests, WINDOW_UPDATEs and workers'
    /// news waited: a response whose worker refilled its queue was not
    /// resumed, an upload's window not given back, a new request not read,
    /// until all of it was out (the loop's `wait` returns at once then).
    fn write_turn(&mut self) -> Result<(), ()> {
        self.write_frames_and_more(&mut FrameBuf::take(), usize::MAX, true)
    }

    /// `write_output` for a parked session, on the child's clock thread:
    /// without waiting for room in the socket (its timeout 0 meanwhile).
    /// That thread serves every parked session's alarms, and one client
    /// that reads nothing held them all for `Timeout`. Such a client's
    /// write fails, and its connection is aborted.
    ///
    /// The timeout is put back only if it is still the 0 set here: the
    /// event MPM, when it closes the parked connection meanwhile, sets its
    /// lingering-close timeout (2 s) on one of its threads before our
    /// pre_close hook waits for this write (`take_back_parked`); restored
    /// blindly, `Timeout` replaced it for the close's last writes.
    fn write_output_without_waiting(&mut self) -> Result<(), ()> {
        // SAFETY: the connection's own socket, live while the session is;
        // of the connection's threads only this one writes to it while it
        // holds the parked session (CLOSING). The MPM's thread may set its
        // timeout meanwhile (above): a plain integer field either value of
        // which is a valid timeout.
        let sock = unsafe { ffi::ap_get_conn_socket(self.c) };
        if sock.is_null() {
            return self.write_output_for_others();
        }
        let mut timeout: ffi::apr_interval_time_t = 0;
        // SAFETY: as above; apr_socket_timeout_get writes one value.
        unsafe {
            ffi::apr_socket_timeout_get(sock, &mut timeout);
            ffi::apr_socket_timeout_set(sock, 0);
        }
        let written = self.write_output_for_others();
        let mut now: ffi::apr_interval_time_t = 0;
        // SAFETY: as above.
        unsafe {
            ffi::apr_socket_timeout_get(sock, &mut now);
            if now == 0 {
                ffi::apr_socket_timeout_set(sock, timeout);
            }
        }
        written
    }

    /// Writes `frames`, then what nghttp2 has to send, until it has nothing
    /// more or about `limit` bytes are written, or, with `until_news`,
    /// news waits after a full chunk (`news_waiting`); retires the streams
    /// that end on the way. Leaves `frames` empty.
    fn write_frames_and_more(&mut self, frames: &mut FrameBuf, limit: usize, until_news: bool) -> Result<(), ()> {
        let mut written = 0;
        let mut shown_writing = false;
        loop {
            if !frames.is_empty() {
                // Only a chunk that used its budget may have more behind it
                // (a small response's turn asks nothing more of the kernel).
                let full = frames.budget_used() >= WRITE_CHUNK;
                written += frames.len();
                self.send_frames(frames)?;
                frames.clear();
                self.session.retire_finished();
                if until_news && full {
                    if !shown_writing {
                        // A large write: "W" in mod_status meanwhile, as
                        // HTTP/1.1 shows a response being sent.
                        shown_writing = true;
                        self.show_state(ffi::SERVER_BUSY_WRITE, ptr::null());
                    }
                    if self.news_waiting() {
                        return Ok(());
                    }
                }
            }
            if written >= limit || self.collect_frames(frames)? == 0 {
                return Ok(());
            }
        }
    }

    /// Whether a worker's wake-up or the client's bytes wait; the latter
    /// also sets `input_ready`, for the next turn's read.
    fn news_waiting(&mut self) -> bool {
        // `input_ready`: the last read stopped at its budget, and the rest
        // may be in the input filters, where poll does not see it.
        if self.input_ready || self.signal.is_pending() {
            return true;
        }
        let mut fd = libc::pollfd { fd: self.sock_fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a zero timeout only looks.
        let readable = unsafe { libc::poll(&mut fd, 1, 0) } != 0;
        self.input_ready |= readable;
        readable
    }

    /// Appends the frames nghttp2 has to send to `frames`, up to about
    /// `WRITE_CHUNK` of write budget (`Frames::budget_used`); returns how
    /// many bytes it added.
    fn collect_frames(&mut self, frames: &mut Frames) -> Result<usize, ()> {
        frames.set_by_reference(self.send_by_reference);
        self.session.collect_output(frames, WRITE_CHUNK).map_err(|e| {
            clog!(self.c, Level::Debug, "h2rs: cannot serialize frames: {e}");
        })
    }

    /// Writes `frames` to the client (blocking, with `Timeout`).
    fn send_frames(&mut self, frames: &FrameBuf) -> Result<(), ()> {
        let c = self.c;
        let now = std::time::Instant::now();
        if let Some(all) = frames.contiguous() {
            let (small, full) = all.split_at(self.tls.warmup_bytes(all.len(), now));
            // TLS warm-up: small records (one per bucket in mod_ssl) so the
            // first bytes of a connection arrive without waiting for a full
            // 16 KiB record. FLUSH after each piece: mod_ssl coalesces small
            // buckets.
            for piece in small.chunks(TLS_WARMUP_RECORD) {
                self.out_bb.push_transient(piece);
                self.out_bb.push_flush();
            }
            if !full.is_empty() {
                self.out_bb.push_transient(full);
            }
        } else {
            // Payloads by reference (`send_by_reference`: no TLS): the
            // core writes them from the mappings, many frames a writev.
            for piece in frames.pieces() {
                self.out_bb.push_transient(piece);
            }
        }
        self.tls.wrote(frames.len(), now);
        self.out_bb.push_flush();
        let writing = FrameBufWriting::start();
        // SAFETY: c1's output filters on the c1 thread; with FLUSH the
        // core writes everything before returning, so the transient
        // buckets' bytes (frames, and the mappings they hold) are not
        // referenced afterwards.
        let rv = unsafe { ffi::ap_pass_brigade((*c).output_filters, self.out_bb.as_ptr()) };
        drop(writing);
        self.out_bb.cleanup();
        if rv != status::SUCCESS {
            self.write_failed(rv);
            return Err(());
        }
        Ok(())
    }

    /// Out of line: inlined, it grew `send_frames`' frame, which sits
    /// under the core's output filters on every write (test_build.py).
    #[cold]
    #[inline(never)]
    fn write_failed(&mut self, rv: ffi::apr_status_t) {
        clog!(self.c, Level::Debug, "h2rs: write to client failed (status {rv})");
        // Streams nghttp2 closed as it serialized these frames did not
        // reach the client: logged as cut, as HTTP/1.1 marks a connection
        // whose write failed aborted.
        self.session.fail_pending_retires();
    }

    /// Waits for the client socket (and worker wake-ups when `signals`).
    fn wait(&mut self, timeout: Duration, signals: bool) -> Wait {
        if self.input_ready {
            // The last read stopped at its budget: what is left may be in
            // the input filters already, not on the socket.
            return Wait::Ready;
        }
        if !self.signal.before_sleep() {
            // A worker's wake-up came while we were awake: take it first.
            return Wait::Ready;
        }
        let mut fds = [
            libc::pollfd { fd: self.sock_fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.signal.fd(), events: libc::POLLIN, revents: 0 },
        ];
        let n = if signals { 2 } else { 1 };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` holds `n` valid pollfd entries.
        let rv = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, ms) };
        self.signal.set_awake(true);
        // Interrupted: look at the socket anyway.
        self.input_ready |= rv < 0 || fds[0].revents != 0;
        if fds[1].revents != 0 {
            self.signal.poll_found_readable();
        }
        if rv == 0 {
            Wait::Timeout
        } else {
            Wait::Ready
        }
    }

    /// Ends every stream, waits for their workers, releases everything.
    /// Idempotent.
    fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        self.parking.kill();
        // From here on the eventfd is polled for every wake-up.
        self.signal.set_awake(false);
        SESSIONS.lock().remove(&self.session_id);
        // A panic in the session's bookkeeping (a bug) is caught here, not
        // by the caller's guard: this is the only wait for the workers, and
        // the pools below (and the connection's, after a panic that skipped
        // it) are destroyed when it returns. Unwound, workers still in a
        // handler wrote into freed nodes of the shared allocator. Then only
        // the waiting is left, by the streams' own states.
        let mut broken = guard("session teardown", true, || {
            self.session.abort_all();
            false
        });
        let started = Instant::now();
        let mut last_warning = started;
        loop {
            if !broken {
                broken = guard("session teardown", true, || {
                    self.session.process_signals();
                    self.session.reap_aborted();
                    self.session.retire_finished();
                    false
                });
                if broken {
                    clog!(
                        self.c,
                        Level::Error,
                        "h2rs: session teardown failed, waiting for the workers of its streams"
                    );
                }
            }
            let workers_left =
                if broken { self.session.started_in_progress() } else { self.session.streams_in_progress() };
            if workers_left == 0 && (broken || self.session.open_streams() == 0) {
                break;
            }
            if broken {
                // Wake-ups are no longer taken (their eventfd stays readable).
                std::thread::sleep(Duration::from_millis(20));
            } else {
                let mut fd = libc::pollfd { fd: self.signal.fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut fd, 1, 200) } > 0 {
                    self.signal.poll_found_readable();
                }
            }
            if last_warning.elapsed() >= TEARDOWN_WARN_INTERVAL {
                last_warning = Instant::now();
                clog!(
                    self.c,
                    Level::Warn,
                    "h2rs: still waiting after {} s for {} stream(s) to finish on their workers: {}",
                    started.elapsed().as_secs(),
                    workers_left,
                    // Not after a panic: nothing of the session's bookkeeping
                    // runs then (this wait must not unwind).
                    if broken { String::new() } else { self.session.describe_streams() }
                );
            }
        }
        let dispatch = self.session.dispatcher();
        dispatch.cache.clear();
        // SAFETY: every c2 (child of the session pool) is retired or
        // destroyed and no worker runs a stream of this connection.
        unsafe { ffi::apr_pool_destroy(dispatch.session_pool) };
        dispatch.session_pool = ptr::null_mut();
        release_freed_memory();
    }

    pub fn conn(&self) -> *mut ffi::conn_rec {
        self.c
    }
}

/// How c1 reads its client, decided at session start from its input
/// chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputPath {
    /// TLS or other connection filters: through the chain, until it says
    /// EAGAIN (the filters may hold bytes that poll cannot see).
    Filters,
    /// The core's filter and mod_logio's counter, without mod_logio's
    /// optional function to count for it: through the chain, and a read
    /// that returned less than one socket read's buffer drained the socket
    /// (the next read would only say EAGAIN, about one syscall a request).
    PlainFilters,
    /// The core's filter, and at most mod_logio's counter (whose count c1
    /// adds to itself): through the chain until the core's filter holds
    /// no bytes of its own, then c1 reads the socket itself
    /// (`read_socket`). The core's filter reads on after a short read to
    /// fill the 64 KiB asked for (one more read that says EAGAIN, each
    /// time a client's request wakes the connection); a read of our own
    /// stops at the short read.
    Socket { counts_for_logio: bool },
}

impl InputPath {
    /// The path for an input chain (`plain_input_chain`); `logio_countable`:
    /// mod_logio's function to add to its count is there
    /// (`c2::can_count_bytes_in`).
    fn of(plain: Option<PlainInput>, logio_countable: bool) -> InputPath {
        match plain {
            None => InputPath::Filters,
            Some(PlainInput::CoreOnly) => InputPath::Socket { counts_for_logio: false },
            Some(PlainInput::WithLogio) if logio_countable => InputPath::Socket { counts_for_logio: true },
            Some(PlainInput::WithLogio) => InputPath::PlainFilters,
        }
    }

    fn short_read_drains(self) -> bool {
        self != InputPath::Filters
    }

    fn reads_socket(self) -> bool {
        matches!(self, InputPath::Socket { .. })
    }
}

/// A c1 input chain of filters that read the socket straight and hold
/// nothing back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PlainInput {
    /// The core's filter alone.
    CoreOnly,
    /// The core's and mod_logio's counter.
    WithLogio,
}

/// What c1's input chain is, if plain (one walk of the chain).
///
/// # Safety
/// `c` must be the live client connection owned by this thread.
unsafe fn plain_input_chain(c: *mut ffi::conn_rec) -> Option<PlainInput> {
    let logio = std::cell::Cell::new(false);
    // SAFETY: caller contract: c and its filter chain are live.
    let plain = unsafe {
        apr::filter_chain_all((*c).input_filters, |name| {
            let is_logio = name.eq_ignore_ascii_case(b"log_input_output");
            logio.set(logio.get() || is_logio);
            is_logio || name.eq_ignore_ascii_case(b"core_in")
        })
    };
    plain.then(|| if logio.get() { PlainInput::WithLogio } else { PlainInput::CoreOnly })
}

/// Gives memory freed by ended sessions back to the system, at most once
/// per `limits::TRIM_INTERVAL_SECS`. glibc keeps freed memory in the arena
/// of the thread that freed it, and sessions end on whichever MPM thread
/// ran them last: after an attack that made sessions buffer a lot (request
/// bodies held in the stream windows), RSS would otherwise stay at the
/// attack's peak, times the number of arenas touched.
fn release_freed_memory() {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let last = LAST.load(Ordering::Relaxed);
    if now < last + crate::limits::TRIM_INTERVAL_SECS
        || LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    // SAFETY: malloc_trim only releases free memory of glibc's heaps; it
    // takes each arena's lock and is safe to call from any thread.
    unsafe { libc::malloc_trim(0) };
}

/// Whether `c` may speak HTTP/2 with prior knowledge (H2Direct, Protocols).
///
/// # Safety
/// `c` must be a live client connection.
pub unsafe fn direct_allowed(c: *mut ffi::conn_rec, is_tls: bool) -> bool {
    // SAFETY: caller contract.
    unsafe {
        let Some(cfg) = server_config((*c).base_server) else { return false };
        if !cfg.direct(is_tls) {
            return false;
        }
        let proto = if is_tls { c"h2" } else { c"h2c" };
        ffi::ap_is_allowed_protocol(c, ptr::null_mut(), ptr::null_mut(), proto.as_ptr()) != 0
    }
}

/// How long the rest of a client preface begun may take to come, in all
/// (at most the server's `Timeout`). A client writes it in one go or in
/// pieces moments apart; one that sends it a byte at a time held the
/// thread for `Timeout` per byte (24 of them), before mod_reqtimeout's
/// header stage, which starts with the request, could cut it.
const PREFACE_REST_WAIT: Duration = Duration::from_secs(5);

/// Peeks at the first bytes of a new connection for the client preface.
/// A client may write the preface in pieces: while what came is the start
/// of it, this waits (`PREFACE_REST_WAIT` in all) for the rest, on a
/// cleartext connection; then the connection is HTTP/1.1's, and its
/// request's timeouts apply. Over TLS one peek decides, as in the stock
/// module: mod_ssl answers a speculative read from what it decrypted
/// already, without reading on, so a second peek would see the same bytes
/// while the socket, whose bytes may already be in the core's brigade,
/// tells nothing.
///
/// # Safety
/// `c` must be a new live client connection run by the calling thread.
pub unsafe fn peek_preface(c: *mut ffi::conn_rec, is_tls: bool) -> bool {
    // Each turn that does not decide waits for the socket; at most one turn
    // per preface byte (a peer that closed keeps the socket readable).
    let mut deadline = None;
    for _ in 0..PREFACE.len() {
        // SAFETY: caller contract.
        let got = unsafe { peek_bytes(c, PREFACE.len(), is_tls) };
        match preface_verdict(&got) {
            Some(verdict) => return verdict,
            None if is_tls => return false,
            None => {
                // SAFETY: caller contract: the connection's server is live.
                let timeout = interval(unsafe { (*(*c).base_server).timeout }, DEFAULT_TIMEOUT);
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout.min(PREFACE_REST_WAIT));
                let left = deadline.saturating_duration_since(Instant::now());
                // SAFETY: caller contract.
                if left.is_zero() || !unsafe { wait_readable(c, left) } {
                    return false;
                }
            }
        }
    }
    false
}

/// Whether `got` (the first bytes of a connection) is the client preface:
/// None while it is a proper, non-empty start of it.
fn preface_verdict(got: &[u8]) -> Option<bool> {
    if got.len() >= PREFACE.len() {
        return Some(got[..PREFACE.len()] == PREFACE[..]);
    }
    if got.is_empty() || !PREFACE.starts_with(got) {
        return Some(false);
    }
    None
}

/// Up to `n` bytes from the start of the connection's input, left there
/// for whoever reads next (a speculative read; it blocks only while
/// nothing at all has come).
///
/// # Safety
/// As `peek_preface`.
unsafe fn peek_bytes(c: *mut ffi::conn_rec, n: usize, is_tls: bool) -> Vec<u8> {
    let mut got: Vec<u8> = Vec::with_capacity(n);
    // SAFETY: a speculative read on the caller's connection, into a brigade
    // of its pool that is emptied and destroyed before returning.
    unsafe {
        let bb = BrigadeRef::create((*c).pool, (*c).bucket_alloc);
        let rv = ffi::ap_get_brigade(
            (*c).input_filters,
            bb.as_ptr(),
            ffi::AP_MODE_SPECULATIVE,
            ffi::APR_BLOCK_READ,
            n as ffi::apr_off_t,
        );
        if rv == status::SUCCESS {
            // Every byte the brigade holds, as mod_logio's filter counted it.
            let mut peeked = 0;
            let mut cur = bb.first();
            while let Some(b) = cur {
                cur = bb.next(&b);
                if b.kind().is_metadata() {
                    continue;
                }
                if let Ok(d) = b.read(true) {
                    peeked += d.len();
                    got.extend_from_slice(&d[..d.len().min(n - got.len())]);
                }
            }
            if !is_tls {
                // Left in the core's filter for the next read, which
                // counts them again: %I counts the client's bytes once,
                // however many peeks a preface sent in pieces took (24
                // bytes more for a request line whose first byte came
                // alone; and every connection's first request counted its
                // first 24 bytes twice, as with the stock module). Under
                // TLS mod_logio's filter sits below mod_ssl's, which keeps
                // what it decrypted: nothing is counted twice.
                c2::uncount_bytes_in(c, peeked);
            }
        }
        bb.cleanup();
        ffi::apr_brigade_destroy(bb.as_ptr());
    }
    got
}

/// The descriptor of the connection's socket.
///
/// # Safety
/// `c` must be a live client connection run by the calling thread.
unsafe fn conn_socket_fd(c: *mut ffi::conn_rec) -> Option<RawFd> {
    let mut fd: ffi::apr_os_sock_t = -1;
    // SAFETY: caller contract; the socket, if any, lives with `c`.
    unsafe {
        let sock = ffi::ap_get_conn_socket(c);
        if sock.is_null() || ffi::apr_os_sock_get(&mut fd, sock) != 0 {
            return None;
        }
    }
    Some(fd)
}

/// Waits until the connection's socket is readable, up to `timeout`;
/// false on timeout or error.
///
/// # Safety
/// As `peek_preface`.
unsafe fn wait_readable(c: *mut ffi::conn_rec, timeout: Duration) -> bool {
    // SAFETY: the connection and its socket are live (caller).
    unsafe {
        let Some(fd) = conn_socket_fd(c) else { return false };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        libc::poll(&mut pfd, 1, ms) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn frame_buffer_takers_wait_at_the_limit_except_holders_writers_and_parked_sessions() {
        let limit = in_use_limit();
        let in_use = || FRAME_BUFS.lock().in_use;
        let (order, orders) = std::sync::mpsc::channel::<&str>();
        let (done, dones) = std::sync::mpsc::channel::<()>();
        // One thread holds buffers; it takes all but its first while
        // holding one, so it never waits.
        let holder = std::thread::spawn(move || {
            let mut held: Vec<FrameBuf> = Vec::new();
            let mut writing = None;
            for o in orders {
                match o {
                    "take" => held.push(FrameBuf::take()),
                    "give back" => drop(held.pop()),
                    "write" => writing = Some(FrameBufWriting::start()),
                    "written" => writing = None,
                    _ => break,
                }
                done.send(()).unwrap();
            }
            drop(writing);
        });
        let ask = |o: &'static str| {
            order.send(o).unwrap();
            dones.recv().unwrap();
        };
        for _ in 0..=limit {
            ask("take");
        }
        assert_eq!(in_use(), limit + 1, "a holder takes more without waiting");
        ask("give back");
        // A taker that holds none waits at the limit until one comes back.
        let returned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = returned.clone();
        let taker = std::thread::spawn(move || {
            let buf = FrameBuf::take();
            assert!(seen.load(Ordering::SeqCst), "took a buffer before one came back");
            drop(buf);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!taker.is_finished(), "the taker did not wait");
        // A write on a parked session's behalf does not wait.
        std::thread::spawn(|| drop(FrameBuf::take_without_waiting())).join().unwrap();
        assert!(FRAME_BUFS.lock().no_wait_until.is_none(), "a write for a parked session waited");
        returned.store(true, Ordering::SeqCst);
        ask("give back");
        taker.join().unwrap();
        assert!(FRAME_BUFS.lock().no_wait_until.is_none(), "the wait ran out");
        // At the limit again, but one of them is in a socket write: it
        // does not count, a taker goes on.
        ask("take");
        assert_eq!(in_use(), limit);
        ask("write");
        std::thread::spawn(|| drop(FrameBuf::take())).join().unwrap();
        assert!(FRAME_BUFS.lock().no_wait_until.is_none(), "waited for a buffer in a write");
        ask("written");
        assert_eq!(in_use(), limit);
        drop(order);
        holder.join().unwrap();
        assert_eq!(in_use(), 0);
    }

    #[test]
    fn the_input_path_reads_the_socket_only_behind_the_core_filter_alone_or_a_countable_logio() {
        let cases = [
            (None, true, InputPath::Filters, false, false),
            (Some(PlainInput::CoreOnly), false, InputPath::Socket { counts_for_logio: false }, true, true),
            (Some(PlainInput::WithLogio), true, InputPath::Socket { counts_for_logio: true }, true, true),
            (Some(PlainInput::WithLogio), false, InputPath::PlainFilters, true, false),
        ];
        for (plain, countable, path, drains, socket) in cases {
            let got = InputPath::of(plain, countable);
            assert_eq!(got, path);
            assert_eq!(got.short_read_drains(), drains, "{path:?}");
            assert_eq!(got.reads_socket(), socket, "{path:?}");
        }
    }

    #[test]
    fn a_preface_in_pieces_waits_for_the_rest_and_anything_else_decides() {
        for n in 1..PREFACE.len() {
            assert_eq!(preface_verdict(&PREFACE[..n]), None, "{n} bytes of the preface");
        }
        assert_eq!(preface_verdict(PREFACE), Some(true));
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(b"\0\0\0\x04");
        assert_eq!(preface_verdict(&more), Some(true));
        assert_eq!(preface_verdict(b""), Some(false));
        assert_eq!(preface_verdict(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(preface_verdict(b"PUT"), Some(false));
        assert_eq!(preface_verdict(b"PRI * HTTP/1.1"), Some(false));
        let mut wrong_end = PREFACE.to_vec();
        wrong_end[23] = b'X';
        assert_eq!(preface_verdict(&wrong_end), Some(false));
    }

    fn warmup(size: u64, cooldown: Option<Duration>) -> TlsWarmup {
        TlsWarmup { enabled: true, warmup: size, cooldown, written: 0, last_write: Instant::now() }
    }

    #[test]
    fn warm_up_ends_inside_the_write_that_crosses_it() {
        let now = Instant::now();
        let mut t = warmup(20_000, None);
        assert_eq!(t.warmup_bytes(8_000, now), 8_000);
        t.wrote(8_000, now);
        assert_eq!(t.warmup_bytes(128 * 1024, now), 12_000);
        t.wrote(128 * 1024, now);
        assert_eq!(t.warmup_bytes(128 * 1024, now), 0);
    }

    #[test]
    fn warm_up_starts_again_after_the_cool_down_only() {
        let start = Instant::now();
        let mut t = warmup(1_000, Some(Duration::from_secs(1)));
        t.wrote(5_000, start);
        assert_eq!(t.warmup_bytes(5_000, start + Duration::from_millis(999)), 0);
        assert_eq!(t.warmup_bytes(5_000, start + Duration::from_secs(1)), 1_000);
    }

    #[test]
    fn no_warm_up_without_tls() {
        let mut t = warmup(1 << 20, None);
        t.enabled = false;
        assert_eq!(t.warmup_bytes(4_096, Instant::now()), 0);
    }
}
