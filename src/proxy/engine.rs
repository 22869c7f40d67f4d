//! The proxy engine: a few event-loop threads per child process, each
//! owning its backend connections. A backend connection is an nghttp2
//! *client* session over a nonblocking TCP socket and carries many
//! proxied requests at once as parallel streams, up to the backend's
//! SETTINGS_MAX_CONCURRENT_STREAMS; beyond that a further connection opens
//! (at most `MAX_CONNS_PER_BACKEND` per loop).
//!
//! No httpd code runs here: tasks (`task.rs`) carry copies of the request
//! head and bytes both ways, and the front is told through `Front::wake`.
//! Backends are assigned to loops by hashing "host:port", so all requests
//! to one backend share the connections of one loop.
//!
//! Failures: a stream the backend refused (REFUSED_STREAM, or above a
//! GOAWAY's last stream id) or that a dying connection never answered is
//! retried once on another connection, provided no request body byte left
//! and (for a plain connection loss) the method is idempotent. Otherwise a
//! request without response gets 502 (reset, connection loss), 503 (cannot
//! connect) or 504 (timeout), logged with the backend's name; a response
//! that began is aborted.

use super::backend_tls::{TlsPolicy, TlsTarget};
use super::messaging::{Field, Malformed, ResponseCheck};
use super::resolve::{Addrs, Peer};
use super::task::{Failure, Task};
use super::tls::{self, Handshake, Ssl};
use crate::frames::Frames;
use crate::limits;
use crate::log::Level;
use crate::nghttp2::{
    self, error_code, flags, frame_type, settings_id, DataRead, Flow, FrameInfo, Handler, Ops, Session,
};
use crate::plog;
use crate::signal::EventFd;
use crate::stream::{Headers, ResponseHead};
use parking_lot::Mutex;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections to one backend per loop thread (so per child: a backend's
/// requests all go to one loop), at most; a worker's `max` may set fewer.
pub const MAX_CONNS_PER_BACKEND: usize = 16;
/// Our receive window per backend stream: what one proxied response may
/// buffer before the client takes it. HTTP/2's default: at 256 KiB, a
/// client that took a byte now and then from 100 proxied downloads held
/// 25 MiB of responses per connection, with no worker (parked fronts);
/// the stock module's is ProxyIOBufferSize (8 KiB).
pub const STREAM_WINDOW: u32 = 64 * 1024;
/// Connection receive window (streams are bounded one by one).
const CONN_WINDOW: i32 = 1 << 30;
/// An idle backend connection is closed after this long, unless a worker
/// that used it sets a shorter `ttl`.
const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// The loop looks at deadlines and abandoned requests this often.
const TICK: Duration = Duration::from_millis(200);
/// Why a connection whose session nghttp2 ended (after the backend's
/// protocol error) is dropped, in the log of each request it fails.
const SESSION_ENDED: &str = "the HTTP/2 session ended after a protocol error";

/// A command queue and wake-up for one loop thread.
struct Loop {
    queue: Mutex<Vec<Arc<Task>>>,
    wake: EventFd,
    stopping: AtomicBool,
}

pub struct Engine {
    loops: Vec<Arc<Loop>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Per-thread set-up (httpd registration of the thread), as for workers.
pub type ThreadStart = Arc<dyn Fn() -> Box<dyn FnOnce()> + Send + Sync>;

impl Engine {
    /// Starts `threads` loop threads.
    pub fn start(threads: usize, start: Option<ThreadStart>) -> std::io::Result<Arc<Engine>> {
        let mut loops = Vec::new();
        for _ in 0..threads.max(1) {
            loops.push(Arc::new(Loop {
                queue: Mutex::new(Vec::new()),
                wake: EventFd::new()?,
                stopping: AtomicBool::new(false),
            }));
        }
        let engine = Arc::new(Engine { loops, threads: Mutex::new(Vec::new()) });
        for (i, lp) in engine.loops.iter().enumerate() {
            let lp = lp.clone();
            let start = start.clone();
            let handle = std::thread::Builder::new().name(format!("h2rs-proxy-{i}")).spawn(move || {
                let stop = start.map(|s| s());
                // `run` returns at the engine's stop only. A panic loses the
                // loop's state, whose requests are failed as it goes
                // (`LoopState`'s drop); the loop starts again with a fresh
                // one, so the requests that come next are served: a loop
                // that stayed dead took them and their workers for ever.
                while !crate::ffi::panic::guard("proxy loop", false, || {
                    run(&lp);
                    true
                }) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if let Some(stop) = stop {
                    stop();
                }
            })?;
            engine.threads.lock().push(handle);
        }
        Ok(engine)
    }

    fn loop_for(&self, key: &str) -> &Arc<Loop> {
        let mut h: u64 = 1469598103934665603;
        for b in key.bytes() {
            h = (h ^ b as u64).wrapping_mul(1099511628211);
        }
        &self.loops[(h % self.loops.len() as u64) as usize]
    }

    /// Hands a new task to its loop.
    pub fn submit(&self, task: Arc<Task>) {
        task.mark_submitted();
        self.post_to(task);
    }

    /// Tells the task's loop to look at it again (body queued, window to
    /// reopen, cancelled).
    pub fn post(&self, task: &Arc<Task>) {
        self.post_to(task.clone());
    }

    /// The front gives up on `task` (client gone, body failed, response
    /// over first): its loop resets the backend's stream if still open.
    pub fn cancel(&self, task: &Arc<Task>) {
        if task.cancel() {
            self.post(task);
        }
    }

    fn post_to(&self, task: Arc<Task>) {
        let lp = self.loop_for(&task.spec.key);
        let first = {
            let mut q = lp.queue.lock();
            q.push(task);
            q.len() == 1
        };
        if first {
            lp.wake.post();
        }
    }

    /// Fails every request and joins the threads.
    pub fn stop(&self) {
        for lp in &self.loops {
            lp.stopping.store(true, Ordering::Release);
            lp.wake.post();
        }
        let handles = std::mem::take(&mut *self.threads.lock());
        for h in handles {
            let _ = h.join();
        }
    }
}

// ---- one backend stream and connection -------------------------------------

struct BStream {
    task: Arc<Task>,
    fields: Headers,
    head_done: bool,
    ended: bool,
    reset_sent: bool,
    received: usize,
    consumed: usize,
    /// Until `sent`, how long the request may wait for a stream of the
    /// backend's (nghttp2 holds its HEADERS while the backend's
    /// SETTINGS_MAX_CONCURRENT_STREAMS are in use); then the backend's
    /// timeout (ProxyTimeout or the worker's), renewed as it acts.
    deadline: Instant,
    /// The request's HEADERS went out.
    sent: bool,
    /// The decoded size of the header block being received.
    head_bytes: usize,
    /// Interim heads received.
    interims: u8,
    /// RFC 9113 8.1.1's checks of the response (`messaging`).
    check: ResponseCheck,
}

impl BStream {
    /// The backend's heads are over the limits (`limits::MAX_BACKEND_*`):
    /// the stream is reset (the caller fails the request with 502 and says
    /// why, `heads_refused`).
    fn refuse_heads(&mut self) -> Flow {
        self.reset_sent = true;
        Flow::ResetStream(error_code::CANCEL)
    }

    /// The response is malformed (RFC 9113 8.1.1): a stream error, the
    /// connection's other streams go on. The caller fails the returned
    /// task (`fail_malformed`).
    fn reset_malformed(&mut self) -> (Flow, Arc<Task>) {
        self.reset_sent = true;
        (Flow::ResetStream(error_code::PROTOCOL_ERROR), self.task.clone())
    }

    /// The backend did something (or owes nothing yet): its timeout starts
    /// again.
    fn renew_deadline(&mut self, now: Instant) {
        self.deadline = now + self.task.spec.timeout;
    }
}

/// The nghttp2 handler of one backend connection.
struct Backend {
    backend: String,
    streams: HashMap<i32, BStream>,
    goaway: Option<i32>,
    settings_seen: bool,
    /// Tasks to send again on another connection.
    retry: Vec<Arc<Task>>,
    /// Tasks with new response parts in this batch of frames (their fronts
    /// are woken once, after the batch: `publish`).
    news: Vec<Arc<Task>>,
}

impl Backend {
    /// The stream a frame is for: its deadline moves, and its front will
    /// hear about the frame after the batch.
    fn touch(&mut self, stream_id: i32) -> Option<&mut BStream> {
        let bs = self.streams.get_mut(&stream_id)?;
        bs.renew_deadline(Instant::now());
        if bs.task.mark_news() {
            self.news.push(bs.task.clone());
        }
        Some(bs)
    }

    /// Wakes the fronts of the streams the last batch of frames touched.
    fn publish(&mut self) {
        for task in self.news.drain(..) {
            task.publish();
        }
    }
}

fn heads_refused(backend: &str, stream_id: i32, what: &str, task: &Task) {
    fail_bad_gateway(task, format!("backend {backend}: stream {stream_id}: {what}"));
}

/// A malformed response (`messaging`, its stream reset): its request is
/// answered 502, or its response cut.
fn fail_malformed(backend: &str, stream_id: i32, task: &Task, why: Malformed) {
    heads_refused(backend, stream_id, &format!("a malformed response ({why})"), task);
}

/// The backend failed `task`: 502, or the response cut if it began; said
/// in the main server's log and kept for the front, which says it in the
/// request's (`Task::fail_because`).
fn fail_bad_gateway(task: &Task, why: String) {
    let answer = if task.response_started() { ", response aborted" } else { ", answering 502" };
    log_error(&format!("{why}{answer}"));
    task.fail_because(502, why);
}

impl Handler for Backend {
    fn frame_sent(&mut self, _ops: &mut Ops<'_>, frame: &FrameInfo) {
        if frame.kind == frame_type::HEADERS {
            if let Some(bs) = self.streams.get_mut(&frame.stream_id).filter(|bs| !bs.sent) {
                // The backend's time starts when it has the request, not
                // when the request was queued for a stream of its.
                bs.sent = true;
                bs.renew_deadline(Instant::now());
            }
        }
    }

    fn begin_headers(&mut self, _ops: &mut Ops<'_>, frame: &FrameInfo) -> Flow {
        if let Some(bs) = self.touch(frame.stream_id) {
            bs.fields = Headers::new();
            bs.head_bytes = 0;
            bs.check.begin_block();
        }
        Flow::Continue
    }

    fn header(&mut self, _ops: &mut Ops<'_>, frame: &FrameInfo, name: &[u8], value: &[u8]) -> Flow {
        let Some(bs) = self.streams.get_mut(&frame.stream_id) else { return Flow::Continue };
        if bs.reset_sent {
            return Flow::Continue;
        }
        bs.head_bytes += name.len() + value.len() + 32;
        if bs.head_bytes > limits::MAX_BACKEND_HEAD_BYTES {
            let flow = bs.refuse_heads();
            let what = format!("a header block over {} bytes", limits::MAX_BACKEND_HEAD_BYTES);
            heads_refused(&self.backend, frame.stream_id, &what, &bs.task);
            return flow;
        }
        match bs.check.field(name, value) {
            Ok(Field::Keep) => {}
            Ok(Field::Drop) => return Flow::Continue,
            Err(why) => {
                let (flow, task) = bs.reset_malformed();
                fail_malformed(&self.backend, frame.stream_id, &task, why);
                return flow;
            }
        }
        if !name.starts_with(b":") {
            bs.fields.push(name, value);
        }
        Flow::Continue
    }

    /// nghttp2 ended the session for a connection error of the backend's
    /// (its GOAWAY names the error): said once per connection, whatever
    /// then happens to the requests on it (retried, or answered 502).
    /// The engine's own goodbye to a connection it closes is NO_ERROR.
    fn goaway_sent(&mut self, frame: &FrameInfo, debug: &[u8]) {
        if frame.error_code != error_code::NO_ERROR {
            plog!(Level::Error,
                "h2rs proxy: backend {} broke the HTTP/2 protocol ({}: {}): its connection ends, the requests on it are retried or answered 502",
                self.backend,
                nghttp2::error_code_name(frame.error_code),
                nghttp2::goaway_debug_text(debug)
            );
        }
    }

    fn frame_recv(&mut self, _ops: &mut Ops<'_>, frame: &FrameInfo) -> Flow {
        match frame.kind {
            frame_type::SETTINGS if frame.stream_id == 0 && !frame.has(flags::ACK) => self.settings_seen = true,
            frame_type::GOAWAY => {
                self.goaway = Some(frame.named_stream_id);
                plog!(
                    Level::Info,
                    "h2rs proxy: backend {} sent GOAWAY (last stream {}, code {}): draining the connection",
                    self.backend,
                    frame.named_stream_id,
                    frame.error_code
                );
            }
            frame_type::HEADERS => {
                let Some(bs) = self.touch(frame.stream_id) else { return Flow::Continue };
                let end = frame.has(flags::END_STREAM);
                let fields = std::mem::take(&mut bs.fields);
                if bs.reset_sent {
                    // Refused (a block too large), or cancelled meanwhile.
                    return Flow::Continue;
                }
                let status = match bs.check.end_block(end) {
                    Ok(status) => status,
                    Err(why) => {
                        let (flow, task) = bs.reset_malformed();
                        fail_malformed(&self.backend, frame.stream_id, &task, why);
                        return flow;
                    }
                };
                let Some(status) = status else {
                    // Trailers (they always end the stream).
                    bs.ended = true;
                    bs.task.on_end(if fields.is_empty() { None } else { Some(fields) });
                    return Flow::Continue;
                };
                match status {
                    // (101 is malformed in HTTP/2: `messaging`.)
                    100..=199 if bs.interims >= limits::MAX_BACKEND_INTERIMS => {
                        let flow = bs.refuse_heads();
                        let task = bs.task.clone();
                        let what = format!("more than {} interim responses", limits::MAX_BACKEND_INTERIMS);
                        heads_refused(&self.backend, frame.stream_id, &what, &task);
                        return flow;
                    }
                    100..=199 => {
                        bs.interims += 1;
                        bs.task.on_interim(ResponseHead { status, headers: fields });
                    }
                    200..=599 => {
                        bs.head_done = true;
                        bs.task.on_head(ResponseHead { status, headers: fields });
                    }
                    // `messaging` checks that :status has three digits; HTTP
                    // defines 100 to 599 only (RFC 9110 15), and httpd
                    // would send any other as it is.
                    invalid => {
                        let flow = bs.refuse_heads();
                        let task = bs.task.clone();
                        heads_refused(&self.backend, frame.stream_id, &format!("status {invalid:03}"), &task);
                        return flow;
                    }
                }
                if end && bs.head_done {
                    bs.ended = true;
                    bs.task.on_end(None);
                }
            }
            frame_type::DATA if frame.has(flags::END_STREAM) => {
                if let Some(bs) = self.touch(frame.stream_id).filter(|bs| !bs.reset_sent) {
                    if let Err(why) = bs.check.end_stream() {
                        let (flow, task) = bs.reset_malformed();
                        fail_malformed(&self.backend, frame.stream_id, &task, why);
                        return flow;
                    }
                    bs.ended = true;
                    bs.task.on_end(None);
                }
            }
            _ => {}
        }
        Flow::Continue
    }

    fn data_chunk(&mut self, _ops: &mut Ops<'_>, stream_id: i32, data: &[u8]) -> Flow {
        if let Some(bs) = self.touch(stream_id) {
            bs.received += data.len();
            // Not for a stream we reset (it failed, or its front is gone):
            // its bytes are credited back to the connection when it closes.
            if !bs.reset_sent {
                if let Err(why) = bs.check.data(data.len()) {
                    let (flow, task) = bs.reset_malformed();
                    fail_malformed(&self.backend, stream_id, &task, why);
                    return flow;
                }
                bs.task.on_data(data);
            }
        }
        Flow::Continue
    }

    fn frame_not_sent(&mut self, _ops: &mut Ops<'_>, frame: &FrameInfo, lib_error: i32) {
        // A request head nghttp2 will not send (larger than
        // BACKEND_MAX_HEADER_BLOCK): it closes the stream as refused next,
        // which is no reason to try again, nor the backend's doing.
        if frame.kind != frame_type::HEADERS || lib_error != nghttp2::LIB_ERR_FRAME_SIZE_ERROR {
            return;
        }
        let Some(bs) = self.streams.remove(&frame.stream_id) else { return };
        let why = format!(
            "backend {}: the request's header block is larger than {} bytes",
            self.backend,
            limits::BACKEND_MAX_HEADER_BLOCK
        );
        fail_bad_gateway(&bs.task, why);
    }

    fn stream_close(&mut self, ops: &mut Ops<'_>, stream_id: i32, code: u32) -> Flow {
        let Some(bs) = self.streams.remove(&stream_id) else { return Flow::Continue };
        // Bytes the front has not taken yet: credit the connection now, the
        // stream is gone (later consumption of it is ignored).
        let unconsumed = bs.received.saturating_sub(bs.consumed);
        if unconsumed > 0 {
            let _ = ops.consume_connection(unconsumed);
        }
        let task = bs.task;
        if bs.ended || task.is_finished() {
            return Flow::Continue;
        }
        // Its request never went out, or the backend says it did not
        // process it (RFC 9113 8.7): any method may be sent again.
        let unprocessed =
            !bs.sent || code == error_code::REFUSED_STREAM || self.goaway.is_some_and(|last| stream_id > last);
        if unprocessed && retryable(&task, true) {
            self.retry.push(task);
            return Flow::Continue;
        }
        fail_bad_gateway(&task, format!("backend {} reset stream {stream_id} (error code {code})", self.backend));
        Flow::Continue
    }

    fn read_data(&mut self, _ops: &mut Ops<'_>, stream_id: i32, buf: &mut [u8]) -> DataRead {
        let Some(bs) = self.streams.get_mut(&stream_id) else { return DataRead::Error };
        match bs.task.read_body(buf) {
            None => DataRead::Deferred,
            Some((n, eof, trailers)) => {
                // The backend's window took the bytes: it reads, so its
                // timeout starts again (as mod_proxy_http's per write).
                if n > 0 {
                    bs.renew_deadline(Instant::now());
                }
                DataRead::Data { n, eof, trailers }
            }
        }
    }
}

/// May `task` be sent again on another connection? `unprocessed`: the
/// backend said it did not process it (REFUSED_STREAM, GOAWAY).
fn retryable(task: &Task, unprocessed: bool) -> bool {
    let e = task.engine.lock();
    !e.retried
        && !task.is_cancelled()
        && !task.response_started()
        && task.body_untouched()
        && (unprocessed || task.spec.idempotent)
}

struct Conn {
    id: u64,
    key: String,
    /// Every address of the backend's name, tried in turn until one
    /// connects (as mod_proxy does); `addr_index` is the one connected to,
    /// or being connected to (`addr`).
    addrs: Addrs,
    addr_index: usize,
    /// The worker's `keepalive`, for the socket of each address tried.
    keepalive: bool,
    /// The local port once connected over TCP (`proxy-source-port`).
    source_port: Option<u16>,
    /// `h2://`: the TLS session (set once TCP is connected). Declared
    /// before `sock`: fields drop in order, and the session refers to the
    /// socket's descriptor (`Ssl::new`).
    tls: Option<Ssl>,
    sock: Sock,
    /// `h2://`: the name the backend's certificate must carry, the checks.
    tls_target: Option<Arc<TlsTarget>>,
    /// The TLS handshake runs; `hs_write`: it waits for POLLOUT.
    handshaking: bool,
    hs_write: bool,
    connecting: Option<Instant>,
    session: Session<Backend>,
    /// Frames to write (all buffered: a client sends no file mappings).
    out: Frames,
    out_off: usize,
    dead: Option<String>,
    idle_since: Instant,
    /// How long it may stay idle: the least `ttl` of the workers whose
    /// requests it carried, else `IDLE_CLOSE`; none for a single use.
    idle_limit: Duration,
    /// Opened for one request of a worker with `disablereuse`: no other
    /// request joins it.
    single_use: bool,
    /// Requests for this connection held until the backend's SETTINGS
    /// arrive (so its stream limit is known before anything is sent), or
    /// until it answers a liveness check (`ping_sent`).
    waiting: Vec<Arc<Task>>,
    /// When the current opening step began: the connect, then (from the
    /// moment it completed) the TLS handshake and the backend's SETTINGS.
    step_since: Instant,
    /// When the backend last sent anything.
    last_heard: Instant,
    /// A PING sent to check the connection is alive before requests go on
    /// it (the worker's `ping`), and how long the backend has to answer.
    ping_sent: Option<(Instant, Duration)>,
    /// No new streams: a stream timed out while the backend sent nothing
    /// on the connection for as long (a backend host gone, a partition:
    /// no RST comes, and new requests would time out on it one after
    /// another). Closed once its streams end; new requests open another,
    /// whose connect fails fast if the backend is gone (503, balancer
    /// failover), as the stock module gives up a session after a read
    /// timeout.
    draining: bool,
}

/// A backend connection's socket.
enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn fd(&self) -> libc::c_int {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts a nonblocking connect to `addr`. One to a Unix domain socket
/// completes at once or fails (EAGAIN: its listen queue is full, and a
/// nonblocking connect cannot wait for room).
fn connect_nonblocking(addr: &Peer) -> std::io::Result<Sock> {
    let (storage, len) = sockaddr_of(addr)?;
    let family = libc::c_int::from(storage.ss_family);
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own, of the stream's family; the
    // stream closes it on drop.
    let sock = unsafe {
        match addr {
            Peer::Tcp(_) => Sock::Tcp(TcpStream::from_raw_fd(fd)),
            Peer::Unix(_) => Sock::Unix(UnixStream::from_raw_fd(fd)),
        }
    };
    // SAFETY: storage holds a valid sockaddr of `len` bytes for `family`.
    let rv = unsafe { libc::connect(fd, &storage as *const libc::sockaddr_storage as *const libc::sockaddr, len) };
    if rv < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    if let Sock::Tcp(tcp) = &sock {
        let _ = tcp.set_nodelay(true);
    }
    Ok(sock)
}

/// Starts a connect to the first of `addrs[from..]` that takes one (a
/// family the host has no address of fails at once): its index and
/// socket, or the last address's error.
fn connect_from(backend: &str, addrs: &[Peer], from: usize, keepalive: bool) -> Result<(usize, Sock), String> {
    let mut failed = format!("no address left to try after {}", addrs.len());
    for (i, addr) in addrs.iter().enumerate().skip(from) {
        if i > from {
            log_next_address(backend, &failed, addr);
        }
        match connect_nonblocking(addr) {
            Ok(sock) => {
                if keepalive {
                    set_keepalive(&sock);
                }
                return Ok((i, sock));
            }
            Err(e) => failed = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(failed)
}

/// SO_KEEPALIVE, as mod_proxy sets it for a worker's `keepalive=On`
/// (the kernel's probe timings).
fn set_keepalive(sock: &Sock) {
    let Sock::Tcp(sock) = sock else { return };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on our socket with an int option value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn sockaddr_of(addr: &Peer) -> std::io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let addr = match addr {
        Peer::Tcp(addr) => addr,
        Peer::Unix(path) => {
            // SAFETY: an all-zero sockaddr_un is a valid value.
            let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = path.as_os_str().as_bytes();
            // One byte is left for the terminating NUL.
            if bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "path too long for a socket"));
            }
            for (to, &b) in sun.sun_path.iter_mut().zip(bytes) {
                *to = b as libc::c_char;
            }
            // SAFETY: sockaddr_storage is larger than sockaddr_un and suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_un, sun) };
            let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
            return Ok((storage, len as libc::socklen_t));
        }
    };
    Ok(match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            (storage, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (storage, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    })
}

impl Conn {
    fn open(id: u64, task: &Task) -> Result<Conn, String> {
        let spec = &task.spec;
        let (key, backend) = (&spec.key, &spec.backend);
        let (addr_index, sock) = connect_from(backend, &spec.addrs, 0, spec.pool.keepalive)?;
        let handler = Backend {
            backend: backend.to_string(),
            streams: HashMap::new(),
            goaway: None,
            settings_seen: false,
            retry: Vec::new(),
            news: Vec::new(),
        };
        let options = nghttp2::Options {
            // Checked per stream (`messaging`): nghttp2's checks end the
            // whole connection for some malformed responses.
            no_http_messaging: true,
            glitch_rate: (limits::BACKEND_GLITCH_RATE.burst, limits::BACKEND_GLITCH_RATE.per_sec),
            max_send_header_block: limits::BACKEND_MAX_HEADER_BLOCK,
            ..Default::default()
        };
        let mut session = Session::new_client(handler, &options).map_err(|e| format!("nghttp2: {e}"))?;
        let mut ops = session.ops();
        ops.submit_settings(&[(settings_id::ENABLE_PUSH, 0), (settings_id::INITIAL_WINDOW_SIZE, STREAM_WINDOW)])
            .map_err(|e| format!("nghttp2: {e}"))?;
        let _ = ops.set_local_window_size(0, CONN_WINDOW);
        Ok(Conn {
            id,
            key: key.to_string(),
            addrs: spec.addrs.clone(),
            addr_index,
            keepalive: spec.pool.keepalive,
            source_port: None,
            sock,
            tls: None,
            tls_target: spec.tls.clone(),
            handshaking: false,
            hs_write: false,
            connecting: Some(Instant::now()),
            session,
            out: Frames::default(),
            out_off: 0,
            dead: None,
            idle_since: Instant::now(),
            idle_limit: if spec.pool.single_use { Duration::ZERO } else { IDLE_CLOSE },
            single_use: spec.pool.single_use,
            waiting: Vec::new(),
            step_since: Instant::now(),
            last_heard: Instant::now(),
            ping_sent: None,
            draining: false,
        })
    }

    /// The backend's address connected to, or being connected to (several
    /// keys may share it).
    fn addr(&self) -> &Peer {
        &self.addrs[self.addr_index]
    }

    fn active(&self) -> usize {
        self.session.handler_ref().streams.len() + self.waiting.len()
    }

    fn settings_seen(&self) -> bool {
        self.session.handler_ref().settings_seen
    }

    /// Sends `task` now, or once the backend's SETTINGS are known, or
    /// once the backend has shown the connection is alive.
    fn enqueue(&mut self, task: &Arc<Task>) -> Result<(), String> {
        if let Some(ttl) = task.spec.pool.idle_ttl {
            self.idle_limit = self.idle_limit.min(ttl);
        }
        if self.settings_seen() && !self.check_alive(task) {
            self.submit(task)
        } else {
            self.waiting.push(task.clone());
            Ok(())
        }
    }

    /// Whether `task` must wait for a liveness check: the worker's `ping`
    /// is set and the backend has been silent on this connection for
    /// longer than it (a PING goes out), or a check is under way. A
    /// connection that died without a word (a NAT or firewall that dropped
    /// it, a backend host gone) would otherwise hold the request until its
    /// timeout and answer 504; this way it goes to a new connection.
    fn check_alive(&mut self, task: &Task) -> bool {
        let Some(ping) = task.spec.pool.ping else { return false };
        if self.ping_sent.is_some() {
            return true;
        }
        if self.last_heard.elapsed() < ping {
            return false;
        }
        if self.session.ops().submit_ping(*b"h2rs-rtt").is_err() {
            return false;
        }
        self.ping_sent = Some((Instant::now(), ping));
        true
    }

    /// Open for new streams: not dying, and nghttp2 would start one (no
    /// GOAWAY either way: a session nghttp2 ended after the backend broke
    /// the protocol refuses every new stream, and requests given to it
    /// failed with 502 for as long as the load kept it from going idle).
    fn open_for(&mut self, key: &str) -> bool {
        !self.single_use
            && !self.draining
            && self.key == key
            && self.dead.is_none()
            && self.session.ops().request_allowed()
    }

    /// Has room for another stream within the backend's limit. Before the
    /// backend's SETTINGS, requests wait on the connection (see `promote`):
    /// one burst opens one connection, not one per assumed 100 streams.
    fn has_room(&mut self) -> bool {
        if !self.session.handler_ref().settings_seen {
            return true;
        }
        self.active() < self.session.ops().remote_max_concurrent() as usize
    }

    fn submit(&mut self, task: &Arc<Task>) -> Result<(), String> {
        let has_body = task.spec.has_body;
        let id = self
            .session
            .ops()
            .submit_request::<Backend>(&task.spec.fields, has_body)
            .map_err(|e| format!("cannot submit the request: {e}"))?;
        {
            let mut e = task.engine.lock();
            e.conn = self.id;
            e.stream_id = id;
        }
        task.set_dispatched(self.source_port);
        self.session.handler().streams.insert(
            id,
            BStream {
                task: task.clone(),
                fields: Headers::new(),
                head_done: false,
                ended: false,
                reset_sent: false,
                received: 0,
                consumed: 0,
                deadline: Instant::now() + task.spec.timeout,
                sent: false,
                head_bytes: 0,
                interims: 0,
                check: ResponseCheck::new(task.spec.fields.get(b":method").unwrap_or_default()),
            },
        );
        Ok(())
    }

    fn sock_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.tls {
            Some(ssl) => ssl.read(buf),
            None => self.sock.read(buf),
        }
    }

    fn sock_write(&mut self, from: usize) -> std::io::Result<usize> {
        let pending = self.out.contiguous().and_then(|bytes| bytes.get(from..)).unwrap_or_default();
        match &mut self.tls {
            Some(ssl) => ssl.write(pending),
            None => self.sock.write(pending),
        }
    }

    /// Sends what nghttp2 has queued, as far as the socket takes it.
    fn flush(&mut self) {
        if self.connecting.is_some() || self.handshaking || self.dead.is_some() {
            return;
        }
        loop {
            if self.out_off >= self.out.len() {
                self.out.clear();
                self.out_off = 0;
                if let Err(e) = self.session.mem_send(&mut self.out, 64 * 1024) {
                    self.dead = Some(format!("nghttp2: {e}"));
                    return;
                }
                if self.out.is_empty() {
                    return;
                }
            }
            match self.sock_write(self.out_off) {
                Ok(0) => {
                    self.dead = Some("connection closed".into());
                    return;
                }
                Ok(n) => self.out_off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.dead = Some(format!("write failed: {e}"));
                    return;
                }
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) {
        loop {
            match self.sock_read(buf) {
                Ok(0) => {
                    self.dead = Some("the backend closed the connection".into());
                    return;
                }
                Ok(n) => {
                    // Anything from the backend shows the connection lives.
                    self.last_heard = Instant::now();
                    self.ping_sent = None;
                    let rv = self.session.mem_recv(&buf[..n]);
                    if let Err(e) = rv {
                        self.dead = Some(format!("HTTP/2 error from the backend: {e}"));
                    } else if self.session_ended() {
                        self.dead = Some(SESSION_ENDED.into());
                    }
                    if self.dead.is_some() {
                        // `reap` settles the streams and then publishes: a
                        // front must not take a head whose stream is about
                        // to fail (it would pass on a response that breaks
                        // off, where a 502 is still possible).
                        return;
                    }
                    self.session.handler().publish();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.dead = Some(format!("read failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Whether nghttp2 ended the session (the backend broke the protocol)
    /// while streams are open, or requests wait for the backend's SETTINGS
    /// (a backend that does not speak HTTP/2 answers the preface with
    /// something else): they will never end. nghttp2 answers a
    /// connection error with GOAWAY and stops reading once that is
    /// written, so the GOAWAY is sent first (what the socket takes now;
    /// otherwise `tick` asks again later).
    fn session_ended(&mut self) -> bool {
        // A session that would still start a request is not closing: the
        // common case, without asking nghttp2 about its queues.
        if self.session.handler_ref().streams.is_empty() && self.waiting.is_empty()
            || self.session.ops().request_allowed()
        {
            return false;
        }
        if self.session.handler_ref().goaway.is_none() {
            self.flush();
        }
        let ops = self.session.ops();
        !ops.want_read() && !ops.want_write()
    }

    /// Runs the TLS handshake as far as it goes.
    fn handshake(&mut self) {
        let Some(ssl) = self.tls.as_mut() else { return };
        match ssl.handshake() {
            Ok(Handshake::Done) => {
                let checked = match &self.tls_target {
                    Some(t) => ssl.check_peer(&t.policy, &t.host),
                    None => Ok(()),
                };
                match checked {
                    Ok(()) if ssl.alpn_is_h2() => self.handshaking = false,
                    Ok(()) => self.dead = Some("the backend did not agree on h2 (ALPN)".into()),
                    Err(e) => self.dead = Some(e),
                }
            }
            Ok(Handshake::WantRead) => self.hs_write = false,
            Ok(Handshake::WantWrite) => self.hs_write = true,
            Err(e) => self.dead = Some(e),
        }
    }

    /// The connect to `addr` failed (`failure`): on to the backend's next
    /// address, with the requests waiting here; after the last one the
    /// connection is dead and they are answered 503.
    fn connect_next(&mut self, failure: String) {
        let next = self.addr_index + 1;
        if next >= self.addrs.len() {
            self.dead = Some(failure);
            return;
        }
        let backend = &self.session.handler_ref().backend;
        log_next_address(backend, &failure, &self.addrs[next]);
        match connect_from(backend, &self.addrs, next, self.keepalive) {
            Ok((i, sock)) => {
                self.sock = sock;
                self.addr_index = i;
                self.connecting = Some(Instant::now());
                self.step_since = Instant::now();
            }
            Err(e) => self.dead = Some(e),
        }
    }

    /// The nonblocking connect finished (the socket became writable).
    fn connected(&mut self, contexts: &mut HashMap<TlsPolicy, tls::Context>) {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR writes one int into `err`.
        let rv = unsafe {
            libc::getsockopt(
                self.sock.fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if rv < 0 || err != 0 {
            let e = if rv < 0 { std::io::Error::last_os_error() } else { std::io::Error::from_raw_os_error(err) };
            self.connect_next(format!("cannot connect to {}: {e}", self.addr()));
            return;
        }
        self.connecting = None;
        self.step_since = Instant::now();
        if let Sock::Tcp(tcp) = &self.sock {
            self.source_port = tcp.local_addr().ok().map(|a| a.port());
        }
        if let Some(target) = &self.tls_target {
            let c = match contexts.entry(target.policy.clone()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(slot) => match tls::Context::new(&target.policy, &target.files) {
                    Ok(c) => slot.insert(c),
                    Err(e) => {
                        self.dead = Some(e);
                        return;
                    }
                },
            };
            match Ssl::new(c, self.sock.fd(), target.sni()) {
                Ok(ssl) => {
                    self.tls = Some(ssl);
                    self.handshaking = true;
                    self.handshake();
                }
                Err(e) => self.dead = Some(e),
            }
        }
    }

    fn poll_events(&self) -> libc::c_short {
        if self.connecting.is_some() {
            return libc::POLLOUT;
        }
        if self.handshaking {
            return libc::POLLIN | if self.hs_write { libc::POLLOUT } else { 0 };
        }
        let tls_write = self.tls.as_ref().is_some_and(|s| s.want_write);
        libc::POLLIN | if self.out_off < self.out.len() || tls_write { libc::POLLOUT } else { 0 }
    }
}

// ---- the loop --------------------------------------------------------------

struct LoopState {
    conns: Vec<Conn>,
    /// The TLS client contexts for `h2://` backends, one per set of
    /// `SSLProxy*` settings in use, each made on first use.
    tls: HashMap<TlsPolicy, tls::Context>,
    next_conn: u64,
    buf: Vec<u8>,
    /// Requests of `disablereuse` workers that found the worker's `max`
    /// single-use connections open, oldest first, with when they began to
    /// wait: each takes the next one to close (`release_held`).
    held: VecDeque<(Instant, Arc<Task>)>,
    /// Every request taken from the queue and not finished at the last
    /// tick: what `drop` fails after a panic.
    in_progress: Vec<Arc<Task>>,
}

/// Nothing is in progress when the loop stops; after a panic (the loop
/// starts again with a fresh state) requests may be, wherever the panic
/// left them (a connection's lists, a step's local list), and nobody would
/// look at them again: their fronts would wait for ever. They fail (502,
/// or the response is cut).
impl Drop for LoopState {
    fn drop(&mut self) {
        let lost: Vec<&Arc<Task>> = self.in_progress.iter().filter(|t| !t.is_finished()).collect();
        let why = if std::thread::panicking() { "failed" } else { "stopped" };
        if !lost.is_empty() {
            log_error(&format!("the proxy loop {why} with {} requests in progress, failing them", lost.len()));
        }
        for task in lost {
            task.fail_because(502, format!("the proxy loop {why} with the request in progress"));
        }
    }
}

fn log_error(msg: &str) {
    plog!(Level::Error, "h2rs proxy: {msg}");
}

/// A failed address with another to try after it: at debug level, as
/// mod_proxy logs it (AH00957); the last one's failure is the error.
fn log_next_address(backend: &str, failure: &str, next: &Peer) {
    plog!(Level::Debug, "h2rs proxy: backend {backend}: {failure}, trying its next address {next}");
}

/// The backend cannot be reached for `task`: 503 (mod_proxy may fail over)
/// unless body was read from the client already (`Task::fail`), said in
/// the log as it is answered.
fn fail_unavailable(task: &Task, why: &str) {
    let why = format!("backend {}: {why}", task.spec.backend);
    let answer = match task.fail_because(503, why.clone()) {
        // mod_proxy takes a 503 from a balancer member for its cue to
        // fail over: the client then gets the next member's answer.
        Failure::Status(503) => "answering 503 (a balancer tries its next member)".to_string(),
        Failure::Status(s) => format!("answering {s}"),
        Failure::Abort => "cutting the response".to_string(),
    };
    log_error(&format!("{why}, {answer}"));
}

impl LoopState {
    fn conn_mut(&mut self, id: u64) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    /// Sends `task` on a connection to its backend with room for a stream,
    /// opening one if needed.
    fn assign(&mut self, task: &Arc<Task>) {
        self.assign_held_since(task, Instant::now());
    }

    /// `assign` for a request held since `since` (`held`).
    fn assign_held_since(&mut self, task: &Arc<Task>, since: Instant) {
        let key = &task.spec.key;
        if task.spec.pool.single_use && self.single_use_full(task) {
            self.held.push_back((since, task.clone()));
            return;
        }
        // Fill the busiest connection with room first, so that requests
        // share as few connections as the backend allows.
        let mut best: Option<(usize, usize)> = None;
        let mut least: Option<(usize, usize)> = None;
        let mut count = 0;
        for (i, c) in self.conns.iter_mut().enumerate() {
            if task.spec.pool.single_use || !c.open_for(key) {
                continue;
            }
            count += 1;
            let active = c.active();
            if least.is_none_or(|(_, a)| active < a) {
                least = Some((i, active));
            }
            if c.has_room() && best.is_none_or(|(_, a)| active > a) {
                best = Some((i, active));
            }
        }
        // A backend's requests all go to one loop (`loop_for`), so this
        // counts the child's connections to it.
        let most = task.spec.pool.max_conns.map_or(MAX_CONNS_PER_BACKEND, |n| n.min(MAX_CONNS_PER_BACKEND));
        if best.is_none() && count >= most {
            // Every connection is full: queue on the least busy one
            // (nghttp2 holds the stream until another ends).
            best = least;
        }
        let idx = match best {
            Some((i, _)) => i,
            None if self.make_room(task) => {
                self.next_conn += 1;
                match Conn::open(self.next_conn, task) {
                    Ok(c) => {
                        self.conns.push(c);
                        self.conns.len() - 1
                    }
                    Err(e) => {
                        fail_unavailable(task, &e);
                        return;
                    }
                }
            }
            // No room for one more connection: queue on a full one of the
            // key, if there is one, else wait for a connection to go idle
            // (`release_held`, which also ends the wait), as mod_proxy
            // waits for its pool.
            None => match least {
                Some((i, _)) => i,
                None => {
                    self.held.push_back((since, task.clone()));
                    return;
                }
            },
        };
        let conn = &mut self.conns[idx];
        if let Err(e) = conn.enqueue(task) {
            fail_bad_gateway(task, format!("backend {}: {e}", task.spec.backend));
        }
    }

    /// Keeps the loop's connections within bounds before another opens:
    /// `MAX_CONNS_PER_BACKEND` to one address whatever names the requests
    /// give it (each name is a key of its own: the client's host as SNI
    /// with ProxyPreserveHost, a RewriteRule's target host), and
    /// `limits::backend_conns_per_loop` in all. Beyond them the idle
    /// connection unused longest closes, as mod_proxy closes a pooled
    /// connection to reconnect with another SNI; with none idle the
    /// request waits for one (`held`): false.
    fn make_room(&mut self, task: &Task) -> bool {
        let addrs = &task.spec.addrs;
        let (mut to_addr, mut total) = (0, 0);
        for c in self.conns.iter().filter(|c| c.dead.is_none()) {
            total += 1;
            to_addr += usize::from(addrs.contains(c.addr()));
        }
        let per_addr_full = to_addr >= MAX_CONNS_PER_BACKEND;
        let limit = crate::limits::backend_conns_per_loop(crate::limits::descriptor_limit());
        if !per_addr_full && total < limit {
            return true;
        }
        let idle = self
            .conns
            .iter_mut()
            .filter(|c| {
                c.dead.is_none() && c.active() == 0 && c.settings_seen() && (!per_addr_full || addrs.contains(c.addr()))
            })
            .min_by_key(|c| c.idle_since);
        match idle {
            Some(c) => {
                c.dead = Some(String::new());
                true
            }
            None => false,
        }
    }

    /// Whether a `disablereuse` request must wait: its worker's `max`
    /// single-use connections to the backend are open (mod_proxy's
    /// connection pool bounds them so; each carries one request), or
    /// earlier requests wait already (they go first).
    fn single_use_full(&self, task: &Task) -> bool {
        let key = &task.spec.key;
        let Some(max) = task.spec.pool.max_conns else { return false };
        self.held.iter().any(|(_, t)| t.spec.key == *key)
            || self.conns.iter().filter(|c| c.single_use && c.key == *key).count() >= max
    }

    /// Gives the held requests (`disablereuse` ones whose worker's `max`
    /// connections are open, and those `make_room` found no room for) the
    /// connections that closed or went idle, in the order they came; the
    /// rest wait on, up to their worker's `acquire` (else the request's
    /// timeout), then get 503 as mod_proxy answers when its pool has no
    /// connection free in time.
    fn release_held(&mut self, stopping: bool) {
        if self.held.is_empty() {
            return;
        }
        let now = Instant::now();
        // Once a request found no room for another connection, the ones
        // after it wait on without trying (they come after it; and each
        // try scans the connections: one try a turn, not one a request).
        let mut no_room = false;
        for (since, task) in std::mem::take(&mut self.held) {
            if task.front_gone() {
                task.cancel();
            }
            if task.is_cancelled() || task.is_finished() {
                continue;
            }
            let limit = task.spec.pool.acquire.unwrap_or(task.spec.timeout);
            if stopping {
                task.fail(503);
            } else if now.duration_since(since) > limit {
                let bound = if task.spec.pool.single_use { "max, disablereuse" } else { "the connection bounds" };
                fail_unavailable(&task, &format!("no connection free within {limit:?} ({bound})"));
            } else if no_room || (task.spec.pool.single_use && self.single_use_full(&task)) {
                self.held.push_back((since, task));
            } else {
                let held = self.held.len();
                self.assign_held_since(&task, since);
                no_room = self.held.len() > held;
            }
        }
    }

    /// Sends the requests held for connections whose SETTINGS arrived, as
    /// far as their stream limit goes; the rest go elsewhere.
    fn promote(&mut self) {
        let mut overflow = Vec::new();
        for conn in &mut self.conns {
            if conn.waiting.is_empty() || !conn.settings_seen() || conn.ping_sent.is_some() || conn.dead.is_some() {
                continue;
            }
            for task in std::mem::take(&mut conn.waiting) {
                if task.is_cancelled() || task.is_finished() {
                    continue;
                }
                if conn.session.ops().request_allowed() && conn.has_room() {
                    if let Err(e) = conn.submit(&task) {
                        fail_bad_gateway(&task, format!("backend {}: {e}", task.spec.backend));
                    }
                } else {
                    overflow.push(task);
                }
            }
        }
        for task in overflow {
            self.assign(&task);
        }
    }

    /// Looks at a task the front posted.
    fn handle(&mut self, task: Arc<Task>) {
        task.engine_seen();
        if task.spec.fault_panic {
            panic!("fault injection: h2rs-test-panic proxy-loop");
        }
        let (started, conn_id, stream_id) = {
            let mut e = task.engine.lock();
            let s = e.started;
            e.started = true;
            (s, e.conn, e.stream_id)
        };
        if !started {
            if !task.is_cancelled() {
                self.assign(&task);
            }
            return;
        }
        let consumed = task.take_consumed();
        let cancelled = task.must_reset();
        let Some(conn) = self.conn_mut(conn_id) else { return };
        let (h, mut ops) = conn.session.split();
        let Some(bs) = h.streams.get_mut(&stream_id) else { return };
        if cancelled && !bs.reset_sent {
            bs.reset_sent = true;
            let _ = ops.submit_rst_stream(stream_id, error_code::CANCEL);
            return;
        }
        if consumed > 0 {
            bs.consumed += consumed;
            let _ = ops.consume(stream_id, consumed);
            // The window opens again: the backend's time starts now.
            bs.renew_deadline(Instant::now());
        }
        if task.spec.has_body {
            let _ = ops.resume_data(stream_id);
        }
    }

    /// Deadlines, abandoned requests, dead and idle connections.
    fn tick(&mut self, stopping: bool) {
        let now = Instant::now();
        for conn in &mut self.conns {
            // A request waiting for its connection (connecting, SETTINGS,
            // a PING's answer) whose client went away ends now, not when
            // the connection is up or given up: its c2 and c1 (whose
            // teardown waits for it) are held until then.
            conn.waiting.retain(|task| {
                if task.front_gone() {
                    task.cancel();
                }
                !task.is_cancelled()
            });
            if !conn.settings_seen() {
                let connecting = conn.connecting.is_some();
                let limit = conn
                    .waiting
                    .iter()
                    .map(|t| {
                        if connecting { t.spec.pool.connect_timeout } else { t.spec.pool.ping }
                            .unwrap_or(t.spec.timeout)
                    })
                    .min()
                    .unwrap_or(Duration::from_secs(60));
                if now.duration_since(conn.step_since) > limit {
                    if connecting {
                        conn.connect_next(format!("connect timed out ({})", conn.addr()));
                    } else {
                        conn.dead = Some("no HTTP/2 SETTINGS from the backend in time".into());
                    }
                }
            }
            if let Some((sent, limit)) = conn.ping_sent {
                if conn.dead.is_none() && now.duration_since(sent) > limit {
                    let backend = &conn.session.handler_ref().backend;
                    log_error(&format!(
                        "backend {backend}: no answer to a PING within {limit:?} (ping), closing the connection; its waiting requests go to another"
                    ));
                    conn.dead = Some(format!("no answer to a PING within {limit:?}"));
                }
            }
            if stopping && conn.dead.is_none() {
                conn.dead = Some("the server is stopping".into());
            }
            let backend = conn.session.handler_ref().backend.clone();
            let silent_for = now.duration_since(conn.last_heard);
            let mut silent_timeout = None;
            let (h, mut ops) = conn.session.split();
            for (&id, bs) in h.streams.iter_mut() {
                if bs.reset_sent {
                    continue;
                }
                if bs.task.front_gone() {
                    bs.task.cancel();
                }
                if bs.task.awaits_client_body() || (!bs.ended && bs.received > bs.consumed) {
                    // ProxyTimeout bounds the backend's silence, not a slow
                    // upload, nor a slow reader: while the client has not
                    // taken what came, the backend's window stays shut and
                    // its silence is ours (the client's own timeouts bound
                    // that: H2StreamTimeout, Timeout), as mod_proxy_http
                    // does not time the backend while it writes to the
                    // client. Not once the backend ended its response (the
                    // front's takes are no longer counted then): a stream
                    // it leaves open, not reading our body, times out.
                    bs.renew_deadline(now);
                }
                if bs.task.must_reset() {
                    bs.reset_sent = true;
                    let _ = ops.submit_rst_stream(id, error_code::CANCEL);
                } else if now > bs.deadline && !bs.sent {
                    // Never sent: every stream the backend allows was in use
                    // for as long as the request may wait. Not the
                    // backend's timeout (no proxy_timedout, which would put
                    // a balancer member in error): 503, as mod_proxy answers
                    // when no connection of its pool frees up in time.
                    let why = format!(
                        "no stream free on its connections within {:?} (all {} in use)",
                        bs.task.spec.timeout,
                        ops.remote_max_concurrent()
                    );
                    fail_unavailable(&bs.task, &why);
                    bs.reset_sent = true;
                    let _ = ops.submit_rst_stream(id, error_code::CANCEL);
                } else if now > bs.deadline {
                    let why = format!("backend {backend}: no answer on stream {id} within {:?}", bs.task.spec.timeout);
                    if bs.task.front_detached() {
                        log_error(&format!(
                            "backend {backend}: stream {id} still open {:?} after its response, which had no content and went to the client, reset",
                            bs.task.spec.timeout
                        ));
                    } else if bs.task.response_started() {
                        log_error(&format!("{why}, response aborted"));
                    } else {
                        log_error(&format!("{why}, answering 504"));
                    }
                    if silent_for >= bs.task.spec.timeout {
                        silent_timeout = Some(bs.task.spec.timeout);
                    }
                    bs.task.fail_because(504, why);
                    bs.reset_sent = true;
                    let _ = ops.submit_rst_stream(id, error_code::CANCEL);
                }
            }
            if let Some(timeout) = silent_timeout.filter(|_| !conn.draining) {
                log_error(&format!(
                    "backend {backend}: nothing received on the connection for {timeout:?} (the worker's timeout, or ProxyTimeout), no new requests on it"
                ));
                conn.draining = true;
            }
            if conn.dead.is_none() {
                if h.streams.is_empty() && conn.waiting.is_empty() {
                    let done = !ops.want_read() && !ops.want_write();
                    if done
                        || conn.draining
                        || h.goaway.is_some()
                        || now.duration_since(conn.idle_since) > conn.idle_limit
                    {
                        conn.dead = Some(String::new());
                    }
                } else {
                    conn.idle_since = now;
                }
            }
            // What `read` could not tell at once (the GOAWAY went out later):
            // the session ended with streams or requests on it, which are
            // retried or failed now, not at their deadlines.
            if conn.dead.is_none() && conn.session_ended() {
                conn.dead = Some(SESSION_ENDED.into());
            }
        }
    }

    /// Dead connections (their streams are retried or failed) and streams
    /// to retry.
    fn reap(&mut self, stopping: bool) {
        let mut retry = Vec::new();
        // Requests that never reached a stream: another connection takes
        // them without spending their one retry.
        let mut unsent = Vec::new();
        for conn in &mut self.conns {
            retry.append(&mut conn.session.handler().retry);
        }
        let mut i = 0;
        while i < self.conns.len() {
            if self.conns[i].dead.is_none() {
                i += 1;
                continue;
            }
            let mut conn = self.conns.swap_remove(i);
            let reason = conn.dead.take().unwrap_or_default();
            if (reason.is_empty() || stopping) && conn.connecting.is_none() && !conn.handshaking {
                // Closed by us (idle, drained, stopping): say goodbye, as far
                // as the socket takes it without waiting.
                let _ = conn.session.ops().terminate(error_code::NO_ERROR);
                conn.flush();
            }
            for task in std::mem::take(&mut conn.waiting) {
                // Never sent: another connection may take it, unless this
                // one never came up (the backend is unreachable).
                if stopping || conn.connecting.is_some() || !conn.settings_seen() {
                    fail_unavailable(&task, &reason);
                } else {
                    unsent.push(task);
                }
            }
            let h = conn.session.handler();
            let goaway = h.goaway;
            for (id, bs) in h.streams.drain() {
                let task = bs.task;
                if bs.ended || task.is_finished() {
                    continue;
                }
                // Never sent (nghttp2 held it behind the backend's
                // stream limit), or above the backend's GOAWAY: not
                // processed (RFC 9113 8.7), whatever its method.
                let unprocessed = !bs.sent || goaway.is_some_and(|last| id > last);
                if !stopping && retryable(&task, unprocessed) {
                    retry.push(task);
                    continue;
                }
                fail_bad_gateway(&task, format!("backend {}: {reason} (stream {id})", h.backend));
            }
            retry.append(&mut h.retry);
            // What `read` held back: tasks whose streams ended well.
            h.publish();
        }
        let retried = retry.into_iter().map(|t| (t, true));
        for (task, spends_retry) in retried.chain(unsent.into_iter().map(|t| (t, false))) {
            if task.is_cancelled() {
                continue;
            }
            if spends_retry {
                task.engine.lock().retried = true;
            }
            if stopping {
                task.fail(503);
            } else {
                self.assign(&task);
            }
        }
    }
}

fn run(lp: &Loop) {
    let mut st = LoopState {
        conns: Vec::new(),
        tls: HashMap::new(),
        next_conn: 0,
        buf: vec![0; 64 * 1024],
        held: VecDeque::new(),
        in_progress: Vec::new(),
    };
    let mut last_tick = Instant::now();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        lp.wake.drain();
        let stopping = lp.stopping.load(Ordering::Acquire);
        // Room that the last reads made (streams that ended) goes to the
        // requests waiting for it before new ones.
        st.release_held(stopping);
        let tasks = std::mem::take(&mut *lp.queue.lock());
        // A task comes back through the queue (body queued, cancelled):
        // listed once, when new.
        st.in_progress.extend(tasks.iter().filter(|t| !t.engine.lock().started).cloned());
        for t in tasks {
            if stopping {
                t.engine_seen();
                t.fail(503);
                continue;
            }
            st.handle(t);
        }
        for c in &mut st.conns {
            c.flush();
        }
        if stopping || last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            st.tick(stopping);
            st.in_progress.retain(|t| !t.is_finished());
        }
        st.reap(stopping);
        st.promote();
        st.release_held(stopping);
        for c in &mut st.conns {
            c.flush();
        }
        if stopping {
            // Drain what the fronts still post until every connection is gone.
            if st.conns.is_empty() && st.held.is_empty() {
                let rest = std::mem::take(&mut *lp.queue.lock());
                for t in rest {
                    t.fail(503);
                }
                return;
            }
            continue;
        }
        fds.clear();
        fds.push(libc::pollfd { fd: lp.wake.fd(), events: libc::POLLIN, revents: 0 });
        for c in &st.conns {
            fds.push(libc::pollfd { fd: c.sock.fd(), events: c.poll_events(), revents: 0 });
        }
        let timeout = TICK.saturating_sub(last_tick.elapsed()).as_millis().max(1) as libc::c_int;
        // SAFETY: `fds` is a valid array of fds.len() pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n <= 0 {
            continue;
        }
        let LoopState { conns, buf, tls, .. } = &mut st;
        for (c, pfd) in conns.iter_mut().zip(fds.iter().skip(1)) {
            if pfd.revents == 0 {
                continue;
            }
            if c.connecting.is_some() {
                if pfd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
                    c.connected(tls);
                }
                continue;
            }
            if c.handshaking {
                c.handshake();
                continue;
            }
            let tls_retry = pfd.revents & libc::POLLOUT != 0 && c.tls.as_ref().is_some_and(|s| s.want_write);
            if pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 || tls_retry {
                c.read(buf);
            }
        }
    }
}
