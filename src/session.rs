//! The HTTP/2 session of one client connection: nghttp2 parsing and
//! serialization, request heads turned into streams and dispatched to
//! workers, responses and bodies moved from the streams into frames, flow
//! control by consumption, stream close and release.
//!
//! This is protocol logic only. It never touches a socket or httpd: the
//! client-connection loop (`c1`) feeds it bytes and takes its output; the
//! [`Dispatch`] implementation hands streams to workers. Unit tests drive it
//! with an in-memory nghttp2 client.
//!
//! Stream life on this side:
//! ```text
//!  HEADERS (request) -> Entry{builder} --END_HEADERS--> Stream dispatched
//!  DATA -> stream input; worker reads -> consumed -> WINDOW_UPDATE
//!  worker: response head -> submit_response; body -> DATA (deferred/resumed)
//!  nghttp2 closes stream -> Stream::close (aborts a running worker)
//!  worker done && closed -> Retire (request logged, c2 released), entry gone
//! ```

use crate::frames::Frames;
use crate::h2status::{self, SessionReport, StreamReport};
use crate::limits::{self, RateLimit};
use crate::nghttp2::{
    self as ng, error_code, frame_type, headers_category, DataRead, Flow, FrameInfo, Goaways, NgError, Ops,
};
use crate::priority::DEFAULT_URGENCY;
use crate::request::{HeaderError, Limits, RequestBuilder, RequestHead};
use crate::signal::Signal;
use crate::stream::{Outcome, Output, Retire, Stream};
use crate::websocket;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Entries the list of streams to retire keeps room for between turns.
const RETIRE_ROOM_KEPT: usize = 16;

/// The opaque data of the PING behind a graceful shutdown's first GOAWAY.
/// (Its ACK is not matched against it: the session sends no other PING,
/// and a client that acknowledges early only hastens its own final GOAWAY.)
const SHUTDOWN_PING: [u8; 8] = *b"h2rs-bye";
/// Ranges of skipped client stream ids remembered (`skipped_ids`): clients
/// skip none; one that skips ids on purpose makes HEADERS on the oldest
/// of them ignored rather than a connection error, nothing worse.
const MAX_SKIPPED_RANGES: usize = 32;
/// Reasons for resets kept for c1's log between two reads, at most (the
/// bad-request budget ends a client that has more reset anyway).
const MAX_NOTES: usize = 16;

/// The PING behind a graceful shutdown's notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShutdownPing {
    NotSent,
    Sent,
    Answered,
}

impl ShutdownPing {
    /// A PING ACK came: it answers ours if ours is out (an ACK before it
    /// answers nothing).
    #[cold]
    fn answered(&mut self) {
        if *self == ShutdownPing::Sent {
            *self = ShutdownPing::Answered;
        }
    }
}

/// Maps keyed by stream id, with a cheap hasher: std's default (SipHash,
/// keyed against flooding) cost about 110 instructions a lookup, and a
/// request makes about 18 (callgrind, 1 KiB GETs). Flooding is no threat
/// here: a session holds a bounded number of streams (concurrency and
/// retire limits), so crafted ids can lengthen a probe sequence only up to
/// that number.
type StreamMap<V> = HashMap<i32, V, crate::hash::WordHash>;
type StreamSet = HashSet<i32, crate::hash::WordHash>;

/// What a session advertises and enforces.
#[derive(Clone, Debug)]
pub struct Settings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS (H2MaxSessionStreams).
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE for request bodies (H2WindowSize).
    pub initial_window_size: u32,
    /// Receive window of the whole connection.
    pub connection_window: u32,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (H2WebSockets).
    pub enable_connect_protocol: bool,
    /// Request head limits (LimitRequest*).
    pub limits: Limits,
    /// Output buffered per stream (H2StreamMaxMemSize).
    pub stream_out_limit: usize,
    /// H2StreamTimeout (or Timeout).
    pub stream_timeout: Duration,
    /// H2OutputBuffering.
    pub output_buffering: bool,
    /// H2MaxDataFrameLen (0: as large as the peer allows).
    pub max_data_frame_len: u32,
    pub options: ng::Options,
    /// Streams of this connection handed to workers at once; the others
    /// wait in the session (no secondary connection, no worker). Keeps one
    /// client from taking every worker and bounds what a flood of requests
    /// (rapid reset) costs.
    pub max_active_streams: usize,
    /// H2MaxStreamErrors: streams we reset for flow-control errors before
    /// the connection is closed (0: no limit).
    pub max_stream_errors: u32,
    /// H2Padding: frames get 0 to 2^bits - 1 random padding bytes.
    pub padding_bits: u32,
    /// Tests only: a request field `h2rs-test-panic: c1` panics inside the
    /// header callback, to prove the panic boundary (see docs/INTERNALS.md).
    pub fault_injection: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_concurrent_streams: 100,
            initial_window_size: 65535,
            connection_window: 1 << 30,
            enable_connect_protocol: false,
            limits: Limits::default(),
            stream_out_limit: 32 * 1024,
            stream_timeout: Duration::from_secs(60),
            output_buffering: true,
            max_data_frame_len: 0,
            options: ng::Options { no_http_messaging: true, extensible_priorities: true, ..ng::Options::default() },
            max_active_streams: 32,
            max_stream_errors: 8,
            padding_bits: 0,
            fault_injection: false,
        }
    }
}

/// Hands streams to whatever processes their requests.
pub trait Dispatch {
    /// A request head is complete: process it, on a worker, or on the
    /// calling thread when the session marked it so (`Stream::runs_inline`,
    /// after `runs_here` said yes). The stream carries the head, the body
    /// queue and the response queue.
    fn dispatch(&mut self, stream: Arc<Stream>);

    /// Whether this stream may run on the calling thread (`fastpath`). If
    /// the session lets it (the client's window is open), it marks the
    /// stream (`Stream::run_inline`) and queues it in `run_here`, and
    /// `dispatch` runs it there: it takes no worker, so it needs no slot
    /// and does not wait behind streams that do.
    fn runs_here(&self, _stream: &Stream) -> bool {
        false
    }

    /// A finished stream's resources, to release on this (c1) thread.
    fn retire(&mut self, retire: Box<dyn Retire>, outcome: Outcome) {
        retire.retire(outcome)
    }

    /// This session has streams on workers (`true`) or none any more: the
    /// worker pool shares itself among the busy sessions.
    fn set_busy(&mut self, _busy: bool) {}

    /// Streams this session may run at once now, given how many sessions
    /// compete for the workers (`limits::fair_share`).
    fn fair_share(&self) -> usize {
        usize::MAX
    }

    /// Whether another stream handed over now would find a worker soon.
    /// A session with nothing running always gets one stream through; more
    /// only while workers are free, so a queue of jobs never builds up in
    /// front of another connection's first request.
    fn has_room(&self) -> bool {
        true
    }

    /// `has_room` said no while streams wait: wake this session (its
    /// `Signal`) when a worker becomes free.
    fn wait_for_room(&mut self) {}
}

/// The c1-side record of a stream.
struct Entry {
    /// Collecting the request head. Boxed, as `trailers`: a builder is
    /// some hundred bytes, needed only while a header block comes in, and
    /// the map of entries keeps its peak capacity for the connection's
    /// life (with both inline an entry was 648 bytes: 10 KiB per
    /// connection for the 16 entries of a `-m 10` client).
    builder: Option<Box<RequestBuilder>>,
    /// Collecting request trailers.
    trailers: Option<Box<RequestBuilder>>,
    /// Once the head is complete and dispatched.
    stream: Option<Arc<Stream>>,
    /// The response HEADERS were submitted.
    submitted: bool,
    /// nghttp2 parked the data source until resume.
    deferred: bool,
    /// nghttp2 closed the stream; the entry waits for the worker.
    closed: bool,
    /// It closed with NO_ERROR after the whole response went out: the
    /// request is logged complete when its worker finishes later (a
    /// handler's last steps after its response, the log hooks among them,
    /// often come after the client has the response).
    delivered: bool,
    /// The request's content-length, checked against the DATA received
    /// (RFC 9113 8.1.1).
    content_length: Option<u64>,
    received: u64,
    /// Handed to a worker (else waiting in `pending`).
    dispatched: bool,
    /// The response's END_STREAM went out while the client still sends
    /// its request body.
    answered_early: bool,
    /// Frame bytes received / sent on the stream (mod_logio).
    bytes_in: u64,
    bytes_out: u64,
}

impl Entry {
    fn new(builder: Option<Box<RequestBuilder>>) -> Entry {
        Entry {
            builder,
            trailers: None,
            stream: None,
            submitted: false,
            deferred: false,
            closed: false,
            delivered: false,
            content_length: None,
            received: 0,
            dispatched: false,
            answered_early: false,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// What the retire of its stream is told, whichever path retires it.
    fn outcome(&self) -> Outcome {
        Outcome { complete: self.delivered, bytes_sent: self.bytes_out }
    }
}

/// Counters for logs, status and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Complete request heads received (the upgrading request included).
    pub requests_received: u64,
    pub streams_dispatched: u64,
    pub streams_reset_by_us: u64,
    pub streams_reset_by_peer: u64,
    pub responses_submitted: u64,
    pub frames_received: u64,
    pub frames_sent: u64,
    /// HEADERS and DATA frames either way: what moves a stream along
    /// (PING, SETTINGS and WINDOW_UPDATE do not).
    pub stream_frames: u64,
    /// Connection bytes nghttp2 read and wrote.
    pub octets_received: u64,
    pub octets_sent: u64,
}

impl Stats {
    /// Counts a complete request head and gives it its number on the
    /// connection (`RequestHead::number`).
    fn number_request(&mut self, head: &mut RequestHead) {
        self.requests_received += 1;
        head.number = u32::try_from(self.requests_received).unwrap_or(u32::MAX);
    }
}

/// Requests waiting for a worker, most urgent first (RFC 9218's urgency
/// of their `priority` field, 0 the most), in arrival order within an
/// urgency; with the running totals the session checks on every new
/// stream (no scan of the queue).
#[derive(Default)]
struct PendingStreams {
    /// Ordered by urgency, then arrival.
    queue: VecDeque<Arc<Stream>>,
    /// Decoded header bytes of the queued requests, and of trailers that
    /// came while their stream waited (bounded by
    /// `limits::MAX_PENDING_HEAD_BYTES`).
    head_bytes: usize,
    /// The trailer bytes in `head_bytes`, by stream id (rare: a short
    /// list, looked at only when not empty).
    trailer_bytes: Vec<(i32, usize)>,
    /// Queued tunnels (they start at once, without a slot).
    tunnels: usize,
}

impl PendingStreams {
    fn push(&mut self, stream: Arc<Stream>) {
        self.head_bytes += stream.request.decoded_size();
        self.tunnels += stream.request.is_tunnel() as usize;
        // One queue, not one per urgency: eight would grow every session
        // by 224 bytes, and its start's stack frames.
        insert_by_urgency(&mut self.queue, stream);
    }

    /// The most urgent stream that came first.
    fn pop_next(&mut self) -> Option<Arc<Stream>> {
        let stream = self.queue.pop_front()?;
        self.forget(&stream);
        Some(stream)
    }

    fn forget(&mut self, stream: &Stream) {
        self.head_bytes -= stream.request.decoded_size();
        self.tunnels -= stream.request.is_tunnel() as usize;
        if !self.trailer_bytes.is_empty() {
            if let Some(i) = self.trailer_bytes.iter().position(|&(id, _)| id == stream.id) {
                self.head_bytes -= self.trailer_bytes.swap_remove(i).1;
            }
        }
    }

    /// Charges the trailers of a stream still waiting for a worker to the
    /// heads' budget: false when they would pass it. A stream not queued
    /// (running, or run here) is not charged: its handler takes them.
    fn charge_trailers(&mut self, stream: &Arc<Stream>, bytes: usize) -> bool {
        if !self.queue.iter().any(|s| Arc::ptr_eq(s, stream)) {
            return true;
        }
        if self.head_bytes + bytes > limits::MAX_PENDING_HEAD_BYTES {
            return false;
        }
        self.head_bytes += bytes;
        self.trailer_bytes.push((stream.id, bytes));
        true
    }

    /// Removes and returns the queued tunnels.
    fn take_tunnels(&mut self) -> VecDeque<Arc<Stream>> {
        if self.tunnels == 0 {
            return VecDeque::new();
        }
        self.take_where(|s| s.request.is_tunnel())
    }

    /// Drops a stream that was reset while it waited (its head's and
    /// trailers' charge, and with the last reference its buffered body).
    fn remove(&mut self, id: i32) {
        if let Some(stream) = self.queue.iter().position(|s| s.id == id).and_then(|i| self.queue.remove(i)) {
            self.forget(&stream);
        }
    }

    /// Removes and returns the queued streams `pred` selects, keeping the
    /// others in order.
    fn take_where(&mut self, pred: impl Fn(&Stream) -> bool) -> VecDeque<Arc<Stream>> {
        let (taken, kept): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.queue).into_iter().partition(|s| pred(s));
        self.queue = kept;
        for s in &taken {
            self.forget(s);
        }
        taken
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The nghttp2 handler: all per-session protocol state.
pub struct Core<D: Dispatch> {
    settings: Settings,
    signal: Arc<Signal>,
    /// The ids of the last wake-up (kept for its buffer).
    signalled: Vec<i32>,
    dispatcher: D,
    entries: StreamMap<Entry>,
    to_retire: Vec<(Box<dyn Retire>, Outcome)>,
    /// Complete requests waiting for a slot (at most `max_active_streams`
    /// run at once).
    pending: PendingStreams,
    /// Streams the dispatcher runs on this thread (`Dispatch::runs_here`),
    /// waiting for `Session::run_here`: c1 runs them a few at a time and
    /// writes their responses in between, so their secondary connections
    /// are recycled within one batch of requests.
    run_here: VecDeque<Arc<Stream>>,
    /// Streams handed to workers whose worker has not finished.
    running: StreamSet,
    /// How many streams may run at once now: starts low (6, like the
    /// stock module), doubles as streams complete normally, halves when
    /// the client resets streams its workers are busy with (up to
    /// `settings.max_active_streams`, down to 2).
    active_limit: usize,
    /// Completions counted towards the next increase.
    happy: usize,
    /// Hold dispatching until the client's first SETTINGS (after an h2c
    /// Upgrade: see `Session::new_upgraded`).
    hold_until_settings: bool,
    stats: Stats,
    /// Graceful shutdown: the PING behind our shutdown notice
    /// (`Session::shutdown_notice`) is out, and whether it was answered.
    shutdown_ping: ShutdownPing,
    /// RST_STREAM(FLOW_CONTROL_ERROR) frames we sent (H2MaxStreamErrors).
    stream_errors: u32,
    /// Highest stream id the client opened.
    max_client_stream: i32,
    /// Highest stream id that started (on a worker or on c1's thread).
    last_started: i32,
    /// Fields and bytes of the last request head's regular fields: the
    /// next head on the connection reserves about as much at once. A
    /// client's requests look alike, so the head neither grows by
    /// doubling nor holds a fixed 256 + 96 bytes for three fields while
    /// it waits for a worker (measured: `h2load`'s heads, one field of 31
    /// bytes, took 352 bytes of slabs per stream in flight, 96 with it).
    head_size_hint: (usize, usize),
    /// Client RST_STREAM frames (rapid reset), control frames that need an
    /// answer (PING, SETTINGS) and requests reset as malformed or abusive:
    /// beyond their budgets the connection ends with ENHANCE_YOUR_CALM.
    rst_budget: RateLimit,
    closed_rst_budget: RateLimit,
    control_budget: RateLimit,
    bad_request_budget: RateLimit,
    /// The session was ended for abuse (ENHANCE_YOUR_CALM sent).
    calmed: bool,
    /// Why, until c1 logged it (`Session::take_notes`).
    calm_reason: Option<&'static str>,
    /// The stream whose header block has begun without END_HEADERS (0:
    /// none); nghttp2 does not call `begin_frame` for the rest of a block
    /// it ignores (`Session::head_in_progress` asks the entry too).
    header_block: i32,
    /// The stream the client's RST_STREAM being processed resets (0:
    /// none): its close (`stream_close`, which follows) is the client's
    /// doing, whatever the code; our own resets close with their codes too.
    peer_reset: i32,
    /// Streams reset for their requests, and why, until c1 logged them.
    notes: Vec<(i32, &'static str)>,
    /// Streams reset because their response head was larger than
    /// H2MaxHeaderBlockLen, until c1 logged them (at most `MAX_NOTES`).
    heads_too_large: Vec<i32>,
    /// The client showed it knows RFC 9218 (a `priority` field, a
    /// PRIORITY_UPDATE frame, or SETTINGS_NO_RFC7540_PRIORITIES): from
    /// then on a request without a `priority` field gets RFC 9218's
    /// default, not incremental (responses of equal urgency sent whole,
    /// one after another). Before, it is incremental: responses of equal
    /// urgency share the connection, as RFC 7540's default priorities had
    /// them (and the stock module, with the nghttp2 of its day) for the
    /// clients that send no priority signal at all, curl's among them.
    rfc9218_client: bool,
    /// Idle client streams a PRIORITY_UPDATE named (RFC 9218 7.1), not yet
    /// opened: nghttp2 keeps a stream object for each until the session
    /// ends, and bounds them by SETTINGS_MAX_CONCURRENT_STREAMS only once
    /// the client acknowledged our SETTINGS; a client that never does
    /// could have it keep one per frame its glitch budget let through. At
    /// most `max_concurrent_streams`.
    idle_prioritized: Vec<i32>,
    /// The client gives us no window to send with (zero-window slow read):
    /// `limits::ZERO_WINDOW_ACTIVE_STREAMS` streams run at most.
    peer_window_closed: bool,
    /// Since when (`peer_window_closed`): a window closed only for a moment
    /// (a slow client's connection window between its updates) is no
    /// slow read.
    peer_window_closed_at: Option<std::time::Instant>,
    /// Client stream ids the client skipped (ranges, first and last, of
    /// odd ids; the latest `MAX_SKIPPED_RANGES`): never opened, they are
    /// closed (RFC 9113 5.1.1), and HEADERS on one is a new stream below
    /// the highest, a connection error. HEADERS on any other id below it
    /// is a late frame of a stream that was used (trailers racing our
    /// RST_STREAM, however many streams closed meanwhile): nghttp2
    /// ignores it.
    skipped_ids: VecDeque<(i32, i32)>,
    /// State of the padding random generator (xorshift64).
    rng: u64,
    /// The GOAWAY frames sent and received (whether the peer sent one; the
    /// log when the connection ends); boxed, since most connections never
    /// have one.
    goaways: Option<Box<Goaways>>,
    /// Fault injection (tests): panic on c1's next `process_signals`; on
    /// writing a DATA frame of this stream.
    fault_panic_in_loop: bool,
    fault_panic_send_data: i32,
}

impl<D: Dispatch> Core<D> {
    fn reset(&mut self, ops: &mut Ops<'_>, stream_id: i32, code: u32) {
        self.stats.streams_reset_by_us += 1;
        let _ = ops.submit_rst_stream(stream_id, code);
    }

    // Inlined into `frame_recv` (and so into nghttp2's callback), as
    // `begin_headers`: out of line, its frame sat under the callback's
    // and the path of every request was deeper (thread stacks,
    // test_build.py; LLVM's choice changes with unrelated code).
    #[inline(always)]
    fn complete_head(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo) -> Flow {
        let id = frame.stream_id;
        let Some(entry) = self.entries.get_mut(&id) else { return Flow::Continue };
        let Some(builder) = entry.builder.take() else { return Flow::Continue };
        let end_stream = frame.has(ng::flags::END_STREAM);
        let mut head = match builder.finish(end_stream) {
            Ok(mut h) => {
                // What the header block took on the wire (for %I).
                h.raw_bytes = entry.bytes_in as usize;
                h.arrived_us = crate::request::now_us();
                self.stats.number_request(&mut h);
                self.head_size_hint = (h.headers.len(), h.headers.byte_len());
                h
            }
            Err(e) => return self.refuse(ops, id, e),
        };
        apply_priority(&mut self.rfc9218_client, ops, id, &mut head);
        match head.content_length() {
            Ok(cl) => {
                if end_stream && cl.unwrap_or(0) != 0 {
                    return self.malformed(ops, id, "content-length with END_STREAM on HEADERS");
                }
                entry.content_length = cl;
            }
            Err(crate::request::BadContentLength) => return self.malformed(ops, id, "invalid content-length"),
        }
        if let Some(protocol) = &head.protocol {
            // An extended CONNECT (the builder only lets it through when we
            // advertised it): a WebSocket becomes httpd's upgrade request;
            // other protocols have no handler in httpd.
            if websocket::is_websocket(protocol) {
                let mut nonce = [0u8; 16];
                random_bytes(&mut nonce);
                head.websocket_accept = Some(websocket::to_upgrade_request(&mut head, nonce).into_boxed_slice());
            } else if head.error_status.is_none() {
                head.error_status = Some(501);
            }
        }
        if head.is_tunnel() && self.tunnels_on_workers() >= self.settings.max_concurrent_streams as usize {
            // Tunnels take a thread each and no slot (`fill_slots`); only
            // the open streams' bound holds them. A reset tunnel is no
            // open stream for nghttp2, but its handler may still connect
            // to its backend (up to its timeout): reset one after another,
            // they would hold a thread and a socket each, without bound.
            return Flow::ResetStream(error_code::REFUSED_STREAM);
        }
        // A tunnel's bytes must not wait in the output buffer: each write
        // is a message the other side waits for.
        let buffered = self.settings.output_buffering && !head.is_tunnel();
        let stream = Arc::new(Stream::new(
            id,
            head,
            self.signal.clone(),
            self.settings.stream_out_limit,
            self.settings.stream_timeout,
            buffered,
        ));
        // Heads waiting for a worker are bounded per connection (HPACK
        // amplification held in memory: limits::MAX_PENDING_HEAD_BYTES).
        if self.pending.head_bytes + stream.request.decoded_size() > limits::MAX_PENDING_HEAD_BYTES {
            return Flow::ResetStream(error_code::REFUSED_STREAM);
        }
        let Some(entry) = self.entries.get_mut(&id) else { return Flow::Continue };
        entry.stream = Some(stream.clone());
        // Not while the client lets nothing out (ZERO_WINDOW_ACTIVE_STREAMS):
        // the responses would pile up in memory.
        if !self.hold_until_settings && !self.peer_window_closed && self.dispatcher.runs_here(&stream) {
            // Marked now, so `dispatch` runs it here on the session's word
            // (and does not ask the dispatcher's tables a second time).
            stream.run_inline();
            // The more urgent first: each may be written whole (up to
            // RUN_HERE_WHOLE_UP_TO) before the next one runs.
            insert_by_urgency(&mut self.run_here, stream);
            return Flow::Continue;
        }
        self.pending.push(stream);
        self.fill_slots();
        Flow::Continue
    }

    /// Tunnels whose handler has not finished, open or reset.
    fn tunnels_on_workers(&self) -> usize {
        let busy =
            |s: &Arc<Stream>| s.request.is_tunnel() && s.worker_state() != Some(crate::stream::WorkerState::Done);
        self.entries.values().filter(|e| e.stream.as_ref().is_some_and(busy)).count()
    }

    /// Hands waiting streams to workers while slots are free.
    fn fill_slots(&mut self) {
        if self.hold_until_settings {
            return;
        }
        // Tunnels go at once and take no slot: they live as long as the
        // client wants, and ordinary requests must not wait behind them
        // (the number of open streams, H2MaxSessionStreams, bounds them).
        for stream in self.pending.take_tunnels() {
            self.start(stream, false);
        }
        let mut limit = self.active_limit.min(self.dispatcher.fair_share());
        if self.peer_window_closed {
            limit = limit.min(limits::ZERO_WINDOW_ACTIVE_STREAMS);
        }
        while self.running.len() < limit.max(1) && !self.pending.is_empty() {
            if !self.running.is_empty() && !self.dispatcher.has_room() {
                self.dispatcher.wait_for_room();
                break;
            }
            let Some(stream) = self.pending.pop_next() else { break };
            self.start(stream, true);
        }
    }

    /// Hands one stream to the dispatcher; `in_slot`: it counts against the
    /// active limit until its worker finishes.
    fn start(&mut self, stream: Arc<Stream>, in_slot: bool) {
        if stream.is_aborted() {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&stream.id) {
            entry.dispatched = true;
        }
        self.last_started = self.last_started.max(stream.id);
        if in_slot {
            if self.running.is_empty() {
                self.dispatcher.set_busy(true);
            }
            self.running.insert(stream.id);
        }
        self.stats.streams_dispatched += 1;
        self.dispatcher.dispatch(stream);
    }

    /// Follows whether the client lets us send at all; when it opens its
    /// window again, waiting streams may start.
    fn note_peer_window(&mut self, ops: &Ops<'_>) {
        let closed = ops.peer_window_closed();
        if closed != self.peer_window_closed {
            self.peer_window_closed = closed;
            self.peer_window_closed_at = closed.then(std::time::Instant::now);
            if !closed {
                self.fill_slots();
            }
        }
    }

    /// A stream's worker finished: its slot goes to the next waiting stream.
    fn worker_finished(&mut self, id: i32) {
        if self.running.remove(&id) {
            self.fill_slots();
            if self.running.is_empty() {
                self.dispatcher.set_busy(false);
            }
        }
    }

    /// A stream completed normally: a client that behaves gets more
    /// parallel workers.
    fn be_happy(&mut self) {
        let max = self.settings.max_active_streams.max(1);
        if self.active_limit < max {
            self.happy += 1;
            if self.happy >= self.active_limit {
                self.active_limit = (self.active_limit * 2).min(max);
                self.happy = 0;
                self.fill_slots();
            }
        }
    }

    /// The client reset a stream a worker was busy with: fewer workers for
    /// this connection (rapid reset and similar abuse).
    fn be_annoyed(&mut self) {
        self.happy = 0;
        self.active_limit = match self.active_limit {
            l if l > 16 => 16,
            l if l > 8 => 8,
            l if l > 4 => 4,
            _ => limits::MIN_ACTIVE_STREAMS,
        }
        .min(self.settings.max_active_streams.max(1));
    }

    /// A request head we reset (malformed, or far beyond the limits): a
    /// client that keeps sending them is ended (limits::BAD_REQUEST_RATE).
    fn refuse(&mut self, ops: &mut Ops<'_>, id: i32, e: HeaderError) -> Flow {
        match e {
            HeaderError::Calm => {
                self.note(id, "request fields far beyond LimitRequestFields");
                self.charge_bad_request(ops);
                Flow::ResetStream(error_code::ENHANCE_YOUR_CALM)
            }
            HeaderError::Malformed(why) => self.malformed(ops, id, why),
        }
    }

    /// Resets a stream whose request breaks RFC 9113 8.1.1 (a bad head, a
    /// body that does not match its content-length, a trailer section that
    /// does not end the stream). Every such reset is charged to the
    /// bad-request budget: a client that has us reset its streams at will
    /// (MadeYouReset, CVE-2025-8671) starts requests as fast as it can send
    /// them, and is ended with ENHANCE_YOUR_CALM as for malformed heads.
    fn malformed(&mut self, ops: &mut Ops<'_>, id: i32, why: &'static str) -> Flow {
        self.note(id, why);
        self.charge_bad_request(ops);
        Flow::ResetStream(error_code::PROTOCOL_ERROR)
    }

    /// Keeps why a stream was reset, for c1 to log (at debug, as httpd
    /// logs why it answered 400; `Session::take_notes`). A few per read.
    #[cold]
    #[inline(never)]
    fn note(&mut self, id: i32, why: &'static str) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push((id, why));
        }
    }

    /// At the end of a stream's body (END_STREAM on DATA or on trailers),
    /// RFC 9113 8.1.1: a declared content-length must match what came. A
    /// body that went over was reset, and charged, at the DATA that
    /// crossed the length (`data_chunk`); nghttp2 may still pass frames
    /// that were read before the reset went out.
    fn length_at_end(&mut self, ops: &mut Ops<'_>, id: i32) -> Option<Flow> {
        let entry = self.entries.get(&id)?;
        let cl = entry.content_length?;
        match entry.received.cmp(&cl) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Less => Some(self.malformed(ops, id, "body shorter than its content-length")),
            std::cmp::Ordering::Greater => Some(Flow::ResetStream(error_code::PROTOCOL_ERROR)),
        }
    }

    fn charge_bad_request(&mut self, ops: &mut Ops<'_>) {
        self.stats.streams_reset_by_us += 1;
        if !self.bad_request_budget.take() {
            self.calm_down(ops, "malformed or refused requests beyond their budget (BAD_REQUEST_RATE)");
        }
    }

    /// Ends the session for abuse: GOAWAY ENHANCE_YOUR_CALM, nothing more
    /// is processed.
    fn calm_down(&mut self, ops: &mut Ops<'_>, why: &'static str) {
        if !self.calmed {
            self.calmed = true;
            self.calm_reason = Some(why);
            let _ = ops.terminate(error_code::ENHANCE_YOUR_CALM);
        }
    }

    fn complete_trailers(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo) -> Flow {
        if !self.entries.contains_key(&frame.stream_id) {
            return Flow::Continue;
        }
        if !frame.has(ng::flags::END_STREAM) {
            // RFC 9113 8.1: a trailer section must end the stream.
            return self.malformed(ops, frame.stream_id, "trailers without END_STREAM");
        }
        if let Some(flow) = self.length_at_end(ops, frame.stream_id) {
            return flow;
        }
        let Some(entry) = self.entries.get_mut(&frame.stream_id) else { return Flow::Continue };
        let Some(builder) = entry.trailers.take() else { return Flow::Continue };
        match builder.finish_trailers() {
            Ok(t) => {
                let Some(s) = entry.stream.clone() else { return Flow::Continue };
                // Held until a worker takes the stream: bounded with the
                // waiting heads (HPACK amplification, as for a head).
                if !self.pending.charge_trailers(&s, t.hpack_size()) {
                    return Flow::ResetStream(error_code::REFUSED_STREAM);
                }
                s.end_input(Some(t));
                Flow::Continue
            }
            Err(e) => self.refuse(ops, frame.stream_id, e),
        }
    }

    /// Looks at a stream after its worker signalled.
    fn update(&mut self, ops: &mut Ops<'_>, id: i32) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        let Some(stream) = entry.stream.clone() else { return };
        let p = stream.progress();
        if entry.closed {
            if p.worker_done {
                let outcome = entry.outcome();
                if let Some(r) = stream.take_retire() {
                    self.to_retire.push((r, outcome));
                }
                self.entries.remove(&id);
                self.worker_finished(id);
            }
            return;
        }
        if p.consumed > 0 {
            let _ = ops.consume_stream(id, p.consumed);
        }
        for interim in &p.interims {
            let _ = ops.submit_interim(id, interim.status, &interim.headers);
        }
        if let Some(resp) = p.response {
            let body = !stream.body_is_empty_and_done();
            if ops.submit_response::<Core<D>>(id, resp.status, &resp.headers, body).is_ok() {
                entry.submitted = true;
                self.stats.responses_submitted += 1;
            } else {
                self.reset(ops, id, error_code::INTERNAL_ERROR);
                return;
            }
        } else if entry.submitted && entry.deferred && p.data_ready {
            entry.deferred = false;
            let _ = ops.resume_data(id);
        }
        if let Some(code) = p.refused {
            // The worker answered with a reset instead of a response (it
            // never has both, so nothing above was submitted for it).
            self.reset(ops, id, code);
        }
        if p.failed {
            // The worker ended without a response (it failed or panicked).
            let (stream_window, conn_window) = ops.send_windows(id);
            self.reset(ops, id, error_code::INTERNAL_ERROR);
            // Closed for most of the worker's wait, not for a moment.
            let withheld = self.peer_window_closed_at.is_some_and(|at| at.elapsed() >= stream.timeout() / 2);
            if p.starved && withheld && (stream_window <= 0 || conn_window <= 0) {
                // It gave up waiting (H2StreamTimeout) for a client that
                // gives no window at all: a zero-window slow read
                // (CVE-2023-43622), whose next stream would hold the next
                // worker as long. (Any other failure, a backend that broke
                // off, is that stream's alone, even at a moment when the
                // client's window is used up; and so is a wait behind
                // other streams of a client whose window closes only
                // between its updates.)
                self.calm_down(ops, "zero-window slow read: a handler gave up waiting for the client's window");
            } else if p.starved && stream_window <= 0 {
                // It gave up on the stream's own window, which the client
                // kept shut while it opened the connection's: the worker
                // was held for H2StreamTimeout, and so would the next
                // ones, as many at a time as the connection's share.
                // Fewer workers for it, as for resets of running streams
                // (a paused media stream, a client's own choice, costs no
                // more than parallelism).
                self.be_annoyed();
            }
        }
        if p.worker_done {
            self.end_unread_body(ops, id);
        }
        if p.worker_done || p.slot_released {
            self.worker_finished(id);
        }
        if p.report_asked {
            // The stream's handler is `http2-status`: only this thread may
            // look at the session. (A stream closed above fails the wait.)
            stream.give_report(self.report(ops));
        }
    }

    /// The connection as the `http2-status` handler shows it.
    fn report(&self, ops: &Ops<'_>) -> SessionReport {
        let (_, conn_flow_in) = ops.receive_windows(0);
        let (_, conn_flow_out) = ops.send_windows(0);
        let mut entries: Vec<(&i32, &Entry)> = self.entries.iter().collect();
        entries.sort_unstable_by_key(|&(&id, _)| id);
        let streams = entries
            .into_iter()
            .map(|(&id, e)| {
                let (flow_in, _) = ops.receive_windows(id);
                let (flow_out, _) = ops.send_windows(id);
                StreamReport {
                    id,
                    state: h2status::state_name(ops.stream_state(id)),
                    flow_in,
                    flow_out,
                    data_in: e.bytes_in,
                    data_out: e.bytes_out,
                }
            })
            .collect();
        let stats = &self.stats;
        SessionReport {
            max_concurrent_streams: self.settings.max_concurrent_streams,
            max_frame_size: ops.local_setting(ng::settings_id::MAX_FRAME_SIZE),
            initial_window_size: self.settings.initial_window_size,
            peer_settings: h2status::PEER_SETTINGS.map(|(id, _)| ops.remote_setting(id)),
            conn_flow_in,
            conn_flow_out,
            sent_goaway: self.goaways.as_ref().is_some_and(|g| g.sent.is_some()),
            streams,
            requests: stats.streams_dispatched,
            resets_received: stats.streams_reset_by_peer,
            frames_received: stats.frames_received,
            octets_received: stats.octets_received,
            responses: stats.responses_submitted,
            frames_sent: stats.frames_sent,
            octets_sent: stats.octets_sent,
        }
    }

    /// RFC 9113 8.1: a complete response went out before the request body
    /// ended (413, a RequestReadTimeout 408, a handler that does not read)
    /// and the worker is done, so nothing will read the rest: RST_STREAM
    /// NO_ERROR asks the client to stop sending. Without it the stream
    /// stayed open with its window spent until the client gave up or the
    /// connection timed out. Only
    /// after END_STREAM was sent: a reset submitted earlier would go out
    /// ahead of the response's last DATA frames.
    fn end_unread_body(&mut self, ops: &mut Ops<'_>, id: i32) {
        let Some(entry) = self.entries.get(&id) else { return };
        if entry.answered_early && !entry.closed && !ops.remote_closed(id) {
            self.reset(ops, id, error_code::NO_ERROR);
        }
    }

    /// A request opens stream `id`: the ids the client skipped to it are
    /// remembered (`skipped_ids`); it is no longer an idle stream a
    /// PRIORITY_UPDATE named (`idle_prioritized`).
    fn note_client_stream(&mut self, id: i32) {
        let next = if self.max_client_stream == 0 { 1 } else { self.max_client_stream + 2 };
        if id > next {
            if self.skipped_ids.len() >= MAX_SKIPPED_RANGES {
                self.skipped_ids.pop_front();
            }
            self.skipped_ids.push_back((next, id - 2));
        }
        self.max_client_stream = self.max_client_stream.max(id);
        if !self.idle_prioritized.is_empty() {
            self.idle_prioritized.retain(|&idle| idle != id);
        }
    }

    /// A PRIORITY_UPDATE for stream `prioritized` (nghttp2 applied it
    /// already): RFC 9218 7.1's connection errors nghttp2 does not raise.
    /// Out of line: rare, and kept out of `frame_recv`'s frame.
    #[inline(never)]
    fn priority_update(&mut self, ops: &mut Ops<'_>, prioritized: i32) -> Flow {
        if prioritized == 0 {
            let _ = ops.terminate(error_code::PROTOCOL_ERROR);
            return Flow::Continue;
        }
        let idle = prioritized % 2 == 1 && prioritized > self.max_client_stream;
        if idle && !self.idle_prioritized.contains(&prioritized) {
            if self.idle_prioritized.len() >= self.settings.max_concurrent_streams as usize {
                let _ = ops.terminate(error_code::PROTOCOL_ERROR);
                return Flow::Continue;
            }
            self.idle_prioritized.push(prioritized);
        }
        Flow::Continue
    }

    fn was_skipped(&self, id: i32) -> bool {
        self.skipped_ids.iter().any(|&(first, last)| (first..=last).contains(&id))
    }

    /// The stream is gone from nghttp2: abort its worker, retire it if the
    /// worker is done.
    fn close_entry(&mut self, id: i32, code: u32, by_peer: bool) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        // Closed again (the connection ends, `abort_all`, while the worker
        // of a stream nghttp2 closed still runs): the first close said how
        // the response went.
        let closed_before = std::mem::replace(&mut entry.closed, true);
        let Some(stream) = entry.stream.clone() else {
            self.entries.remove(&id);
            return;
        };
        if !entry.dispatched {
            // Never reached a worker: forget it. At once: left in the queue
            // until it grew past twice the active limit, reset streams kept
            // their bodies (a window each) and their heads' charge, which
            // refused the connection's next requests.
            stream.close(code);
            self.entries.remove(&id);
            self.pending.remove(id);
            return;
        }
        let closing = stream.close_for_c1(code);
        let complete =
            if closed_before { entry.delivered } else { code == error_code::NO_ERROR && closing.output_complete };
        entry.delivered = complete;
        let outcome = entry.outcome();
        if complete {
            self.be_happy();
        } else if by_peer && !closing.worker_done {
            self.be_annoyed();
        }
        if let Some(r) = closing.retire {
            self.to_retire.push((r, outcome));
            self.entries.remove(&id);
            self.worker_finished(id);
        } else if closing.worker_done {
            // Done without anything to release.
            self.entries.remove(&id);
            self.worker_finished(id);
        }
    }
}

impl<D: Dispatch> ng::Handler for Core<D> {
    /// Checks nghttp2 leaves to the application (it ignores these frames).
    fn begin_frame(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo) {
        // A header block goes on until a frame with END_HEADERS; any other
        // frame ends it (RFC 9113 6.10: nothing may come between).
        let continues =
            matches!(frame.kind, frame_type::HEADERS | frame_type::CONTINUATION) && !frame.has(ng::flags::END_HEADERS);
        self.header_block = if continues { frame.stream_id } else { 0 };
        if frame.kind == frame_type::RST_STREAM {
            // Every one the client sends, whatever its code (as the stock
            // module counts them for h2status).
            self.stats.streams_reset_by_peer += 1;
            self.peer_reset = frame.stream_id;
        }
        // Flood budgets (limits.rs): rapid reset, PING/SETTINGS floods.
        let within = match frame.kind {
            // Only a reset of an open stream cancels work; resets of
            // closed ones have a larger budget of their own (limits.rs).
            frame_type::RST_STREAM if ops.stream_exists(frame.stream_id) => self.rst_budget.take(),
            frame_type::RST_STREAM => self.closed_rst_budget.take(),
            frame_type::PING | frame_type::SETTINGS if !frame.has(ng::flags::ACK) => self.control_budget.take(),
            // Here rather than in frame_recv, which then no longer inlined
            // into its callback: a deeper stack on every request's path
            // (test_build.py). Every frame before the ACK is processed by
            // now; an invalid ACK ends the connection anyway.
            frame_type::PING => {
                self.shutdown_ping.answered();
                true
            }
            _ => true,
        };
        if !within {
            let why = match frame.kind {
                frame_type::RST_STREAM => "RST_STREAM frames beyond their budget (rapid reset)",
                _ => "PING or SETTINGS frames beyond their budget",
            };
            self.calm_down(ops, why);
            return;
        }
        match frame.kind {
            // RFC 9113 4.2: nghttp2 checks every frame's length against our
            // SETTINGS_MAX_FRAME_SIZE except CONTINUATION's (it decodes them
            // as they come, so memory stays bounded, but the frame is invalid).
            frame_type::CONTINUATION if frame.length > limits::LOCAL_MAX_FRAME_SIZE as usize => {
                let _ = ops.terminate(error_code::FRAME_SIZE_ERROR);
            }
            // RFC 9113 6.3: PRIORITY on stream 0 is a connection error.
            frame_type::PRIORITY if frame.stream_id == 0 => {
                let _ = ops.terminate(error_code::PROTOCOL_ERROR);
            }
            frame_type::PRIORITY_UPDATE => self.rfc9218_client = true,
            // RFC 9113 5.1.1: a new stream below the highest one used, on
            // an id the client skipped (any other is a late frame).
            frame_type::HEADERS
                if frame.stream_id % 2 == 1
                    && frame.stream_id < self.max_client_stream
                    && self.was_skipped(frame.stream_id) =>
            {
                let _ = ops.terminate(error_code::PROTOCOL_ERROR);
            }
            _ => {}
        }
    }

    // Inlined into nghttp2's callback, whose frame is then the only one
    // under it: one frame less on every request's path (thread stacks,
    // test_build.py; LLVM stopped inlining it on its own after unrelated
    // changes elsewhere).
    #[inline(always)]
    fn begin_headers(&mut self, _ops: &mut Ops<'_>, frame: &FrameInfo) -> Flow {
        let id = frame.stream_id;
        match frame.headers_category {
            headers_category::REQUEST => {
                self.note_client_stream(id);
                let (fields, bytes) = self.head_size_hint;
                let builder = RequestBuilder::with_room(self.settings.limits, fields, bytes);
                self.entries.insert(id, Entry::new(Some(Box::new(builder))));
            }
            headers_category::HEADERS => {
                if let Some(e) = self.entries.get_mut(&id) {
                    e.trailers = Some(Box::new(RequestBuilder::new(self.settings.limits)));
                }
            }
            _ => {}
        }
        Flow::Continue
    }

    // Inlined into nghttp2's header callback, for the same reason.
    #[inline(always)]
    fn header(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo, name: &[u8], value: &[u8]) -> Flow {
        let Some(entry) = self.entries.get_mut(&frame.stream_id) else { return Flow::Continue };
        let builder = if frame.headers_category == headers_category::REQUEST {
            entry.builder.as_mut()
        } else {
            entry.trailers.as_mut()
        };
        let Some(builder) = builder else { return Flow::Continue };
        if self.settings.fault_injection && name == b"h2rs-test-panic" {
            match value {
                b"c1" => panic!("fault injection: h2rs-test-panic c1"),
                // Outside nghttp2's callbacks, on c1's loop.
                b"c1-loop" => self.fault_panic_in_loop = true,
                b"send-data" => self.fault_panic_send_data = frame.stream_id,
                _ => {}
            }
        }
        match builder.add(name, value) {
            Ok(()) => Flow::Continue,
            Err(e) => self.refuse(ops, frame.stream_id, e),
        }
    }

    // Inlined into nghttp2's callback, whose frame is then the only one
    // under it: one frame less on every request's path (thread stacks,
    // test_build.py; LLVM stopped inlining it on its own after unrelated
    // changes elsewhere).
    #[inline(always)]
    fn frame_recv(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo) -> Flow {
        self.stats.frames_received += 1;
        if matches!(frame.kind, frame_type::SETTINGS | frame_type::WINDOW_UPDATE) {
            self.note_peer_window(ops);
        }
        if frame.stream_id > 0 && (frame.kind == frame_type::HEADERS || frame.kind == frame_type::DATA) {
            self.stats.stream_frames += 1;
            if let Some(e) = self.entries.get_mut(&frame.stream_id) {
                e.bytes_in += frame.length as u64 + 9;
            }
        }
        match frame.kind {
            frame_type::HEADERS => {
                if frame.headers_category == headers_category::REQUEST {
                    self.complete_head(ops, frame)
                } else {
                    self.complete_trailers(ops, frame)
                }
            }
            frame_type::DATA => {
                if frame.has(ng::flags::END_STREAM) {
                    if let Some(flow) = self.length_at_end(ops, frame.stream_id) {
                        return flow;
                    }
                    let Some(entry) = self.entries.get(&frame.stream_id) else { return Flow::Continue };
                    if let Some(s) = entry.stream.as_ref() {
                        s.end_input(None);
                    }
                }
                Flow::Continue
            }
            frame_type::PRIORITY_UPDATE => self.priority_update(ops, frame.named_stream_id),
            frame_type::SETTINGS if !frame.has(ng::flags::ACK) => {
                if ops.remote_setting(ng::settings_id::NO_RFC7540_PRIORITIES) == 1 {
                    self.rfc9218_client = true;
                }
                if self.hold_until_settings {
                    self.hold_until_settings = false;
                    self.fill_slots();
                }
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    fn data_chunk(&mut self, ops: &mut Ops<'_>, stream_id: i32, data: &[u8]) -> Flow {
        // The connection's window is given back as DATA arrives; only the
        // stream's waits for its reader (it bounds what a stream buffers).
        // Given back as streams consume, the connection's window deadlocked
        // once the streams still waiting for a worker held half of it with
        // their bodies: the running ones could not get the rest of theirs
        // (100 uploads of 100 KiB on one connection: nothing moved until
        // Timeout).
        let _ = ops.consume_connection(data.len());
        if let Some(entry) = self.entries.get_mut(&stream_id) {
            let before = entry.received;
            entry.received += data.len() as u64;
            if let Some(cl) = entry.content_length.filter(|&cl| entry.received > cl) {
                // Charged once, at the chunk that crossed the length: nghttp2
                // may pass more of the frame before our reset goes out.
                if before <= cl {
                    return self.malformed(ops, stream_id, "body longer than its content-length");
                }
                return Flow::ResetStream(error_code::PROTOCOL_ERROR);
            }
        }
        match self.entries.get(&stream_id).and_then(|e| e.stream.as_ref()) {
            Some(s) if !s.is_aborted() => s.push_input(data),
            _ => {
                // Nobody will read it: give the stream's window back too.
                let _ = ops.consume_stream(stream_id, data.len());
            }
        }
        Flow::Continue
    }

    fn stream_close(&mut self, _ops: &mut Ops<'_>, stream_id: i32, error_code: u32) -> Flow {
        let by_peer = std::mem::take(&mut self.peer_reset) == stream_id;
        self.close_entry(stream_id, error_code, by_peer);
        Flow::Continue
    }

    fn frame_sent(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo) {
        self.stats.frames_sent += 1;
        if frame.kind == frame_type::DATA {
            self.note_peer_window(ops);
        }
        if frame.stream_id > 0 {
            self.stats.stream_frames += (frame.kind == frame_type::HEADERS || frame.kind == frame_type::DATA) as u64;
            if let Some(e) = self.entries.get_mut(&frame.stream_id) {
                e.bytes_out += frame.length as u64 + 9;
                if frame.has(ng::flags::END_STREAM) && !ops.remote_closed(frame.stream_id) {
                    e.answered_early = true;
                    if e.stream.as_ref().is_some_and(|s| s.worker_state() == Some(crate::stream::WorkerState::Done)) {
                        self.end_unread_body(ops, frame.stream_id);
                    }
                }
            }
        }
        if frame.kind == frame_type::RST_STREAM && frame.error_code == error_code::FLOW_CONTROL_ERROR {
            self.stream_errors += 1;
            let max = self.settings.max_stream_errors;
            if max > 0 && self.stream_errors > max {
                let _ = ops.terminate(error_code::PROTOCOL_ERROR);
            }
        }
    }

    fn invalid_frame(&mut self, _ops: &mut Ops<'_>, frame: &FrameInfo, lib_error: i32) {
        // A stream nghttp2 refused before it opened it (a first flight
        // beyond our SETTINGS_MAX_CONCURRENT_STREAMS, before the client
        // acknowledged it): no entry was made, yet its id was used (the
        // client may still send frames on it).
        if frame.kind == frame_type::HEADERS && lib_error == ng::LIB_ERR_REFUSED_STREAM {
            self.note_client_stream(frame.stream_id);
        }
    }

    fn goaway_received(&mut self, frame: &FrameInfo) {
        Goaways::note_received(&mut self.goaways, frame);
    }

    fn goaway_sent(&mut self, frame: &FrameInfo, debug: &[u8]) {
        Goaways::note_sent(&mut self.goaways, frame, debug);
    }

    fn frame_not_sent(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo, lib_error: i32) {
        // A response HEADERS frame that cannot go out (larger than
        // H2MaxHeaderBlockLen): the stream cannot be answered, reset it.
        if frame.kind == frame_type::HEADERS && frame.stream_id > 0 && ops.stream_exists(frame.stream_id) {
            self.reset(ops, frame.stream_id, error_code::INTERNAL_ERROR);
            // Said in the error log: the page works over HTTP/1.1, and the
            // client only sees a reset.
            if lib_error == ng::LIB_ERR_FRAME_SIZE_ERROR && self.heads_too_large.len() < MAX_NOTES {
                self.heads_too_large.push(frame.stream_id);
            }
        }
    }

    fn padded_length(&mut self, frame: &FrameInfo, max_payload: usize) -> usize {
        let bits = self.settings.padding_bits.min(8);
        if bits == 0 {
            return frame.length;
        }
        // xorshift64: padding hides lengths, it needs no cryptographic rng.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let pad = (self.rng % (1u64 << bits)) as usize;
        (frame.length + pad).min(max_payload)
    }

    fn read_data(&mut self, _ops: &mut Ops<'_>, stream_id: i32, buf: &mut [u8]) -> DataRead {
        let Some(entry) = self.entries.get_mut(&stream_id) else { return DataRead::Error };
        let Some(stream) = &entry.stream else { return DataRead::Error };
        let mut max = match self.settings.max_data_frame_len {
            0 => buf.len(),
            m => buf.len().min(m as usize),
        };
        // H2Padding: room for the most padding `padded_length` adds, or a
        // full frame (the bodies of large responses) would go unpadded and
        // its length tell the body's. Not when the room left is that small.
        let reserve = (1usize << self.settings.padding_bits.min(8)) - 1;
        if reserve > 0 && max > 2 * reserve {
            max = max.min(buf.len() - reserve);
        }
        match stream.peek_output(max) {
            Output::Data { n, end, trailers } => DataRead::NoCopy { n, eof: end, trailers },
            Output::Deferred => {
                entry.deferred = true;
                DataRead::Deferred
            }
        }
    }

    fn send_data(&mut self, stream_id: i32, length: usize, out: &mut Frames) -> bool {
        let Some(stream) = self.entries.get(&stream_id).and_then(|e| e.stream.as_ref()) else { return false };
        if self.fault_panic_send_data == stream_id {
            panic!("fault injection: h2rs-test-panic send-data");
        }
        stream.take_output(out, length).is_ok()
    }
}

/// The priority a request asks for (RFC 9218's `priority` field), or, for
/// a client that never signals one (`rfc9218_client`), incremental at the
/// default urgency: its responses share the connection, as RFC 7540's
/// default priorities had them. The urgency goes into the head; without a
/// field it is the one a PRIORITY_UPDATE sent before the request set.
#[inline]
fn apply_priority(rfc9218_client: &mut bool, ops: &mut Ops<'_>, id: i32, head: &mut RequestHead) {
    head.urgency = DEFAULT_URGENCY;
    if let Some(priority) = head.header(b"priority") {
        *rfc9218_client = true;
        head.urgency = ops.set_priority(id, priority);
    } else if !*rfc9218_client {
        ops.set_stream_priority(id, DEFAULT_URGENCY, true);
    } else if let Some((urgency, _)) = ops.stream_priority(id) {
        head.urgency = urgency;
    }
}

/// Puts `stream` after the last one in `queue` as urgent or more: at the
/// back when all have the same urgency (the usual case, no priority
/// signals), found at once.
#[inline]
fn insert_by_urgency(queue: &mut VecDeque<Arc<Stream>>, stream: Arc<Stream>) {
    let urgency = stream.request.urgency;
    let at = queue.iter().rposition(|s| s.request.urgency <= urgency).map_or(0, |i| i + 1);
    queue.insert(at, stream);
}

/// A non-zero seed for the padding generator.
fn seed() -> u64 {
    let mut v = [0u8; 8];
    random_bytes(&mut v);
    u64::from_ne_bytes(v) | 1
}

/// Fills `buf` from the kernel's random source (zeros if that fails).
fn random_bytes(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    unsafe {
        libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
    }
}

/// An HTTP/2 server session.
pub struct Session<D: Dispatch> {
    ng: ng::Session<Core<D>>,
    goaway_sent: bool,
}

impl<D: Dispatch> Session<D> {
    /// A server session; queues our SETTINGS and connection window.
    pub fn new(settings: Settings, signal: Arc<Signal>, dispatcher: D) -> Result<Session<D>, NgError> {
        let options = settings.options.clone();
        let core = Core {
            settings,
            signal,
            signalled: Vec::new(),
            dispatcher,
            entries: StreamMap::default(),
            to_retire: Vec::new(),
            pending: PendingStreams::default(),
            run_here: Default::default(),
            running: StreamSet::default(),
            active_limit: 0,
            happy: 0,
            hold_until_settings: false,
            stats: Stats::default(),
            goaways: None,
            fault_panic_in_loop: false,
            fault_panic_send_data: 0,
            shutdown_ping: ShutdownPing::NotSent,
            stream_errors: 0,
            max_client_stream: 0,
            last_started: 0,
            head_size_hint: (0, 0),
            rst_budget: RateLimit::new(limits::RST_RATE),
            closed_rst_budget: RateLimit::new(limits::CLOSED_RST_RATE),
            control_budget: RateLimit::new(limits::CONTROL_RATE),
            bad_request_budget: RateLimit::new(limits::BAD_REQUEST_RATE),
            calmed: false,
            calm_reason: None,
            header_block: 0,
            peer_reset: 0,
            notes: Vec::new(),
            heads_too_large: Vec::new(),
            rfc9218_client: false,
            idle_prioritized: Vec::new(),
            peer_window_closed: false,
            peer_window_closed_at: None,
            skipped_ids: VecDeque::new(),
            rng: seed(),
        };
        let mut ng = ng::Session::new_server(core, &options)?;
        let (core, mut ops) = ng.split();
        core.active_limit = core.settings.max_active_streams.clamp(1, limits::INITIAL_ACTIVE_STREAMS);
        let s = &core.settings;
        // Room for all four at once (a `vec!` of two grew at the third, ~300
        // instructions a connection).
        let mut entries = Vec::with_capacity(4);
        entries.push((ng::settings_id::MAX_CONCURRENT_STREAMS, s.max_concurrent_streams));
        entries.push((ng::settings_id::INITIAL_WINDOW_SIZE, s.initial_window_size));
        if s.options.extensible_priorities {
            entries.push((ng::settings_id::NO_RFC7540_PRIORITIES, 1));
        }
        if s.enable_connect_protocol {
            entries.push((ng::settings_id::ENABLE_CONNECT_PROTOCOL, 1));
        }
        ops.submit_settings(&entries)?;
        let window = s.connection_window.max(s.initial_window_size).min(i32::MAX as u32) as i32;
        ops.set_local_window_size(0, window)?;
        Ok(Session { ng, goaway_sent: false })
    }

    /// A server session taking over an h2c Upgrade: `settings_payload` is
    /// the decoded HTTP2-Settings header, `head` the upgrading request,
    /// which becomes stream 1 (half-closed: it has no body). Not inlined:
    /// in `C1::start` its frame's ~300 bytes lay under every session's
    /// start (`Session::new` and nghttp2's set-up), which then touched a
    /// third stack page (fat LTO; `tests/test_build.py`, the stack depth).
    #[inline(never)]
    pub fn new_upgraded(
        settings: Settings,
        signal: Arc<Signal>,
        dispatcher: D,
        settings_payload: &[u8],
        mut head: Box<crate::request::RequestHead>,
    ) -> Result<Session<D>, NgError> {
        let mut session = Session::new(settings, signal, dispatcher)?;
        let head_request = head.method == b"HEAD";
        session.ng.upgrade(settings_payload, head_request)?;
        let (core, mut ops) = session.ng.split();
        // As for any request (`complete_head`): stream 1 kept nghttp2's
        // default, not incremental, and was sent whole before the others.
        apply_priority(&mut core.rfc9218_client, &mut ops, 1, &mut head);
        core.stats.number_request(&mut head);
        let stream = Arc::new(Stream::new(
            1,
            head,
            core.signal.clone(),
            core.settings.stream_out_limit,
            core.settings.stream_timeout,
            core.settings.output_buffering,
        ));
        // The request came as HTTP/1.1: nothing to build.
        let mut entry = Entry::new(None);
        entry.stream = Some(stream.clone());
        core.entries.insert(1, entry);
        core.note_client_stream(1);
        core.pending.push(stream);
        // The response waits for the client's preface: some clients (curl
        // 7.88) fail when more than 32 KiB follow the 101 in one read.
        core.hold_until_settings = true;
        Ok(session)
    }

    /// Feeds bytes read from the client.
    pub fn recv(&mut self, data: &[u8]) -> Result<(), NgError> {
        self.ng.handler().stats.octets_received += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.ng.mem_recv(rest)?;
            if n == 0 {
                break;
            }
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Acts on everything workers signalled since the last call.
    pub fn process_signals(&mut self) {
        let (core, mut ops) = self.ng.split();
        if core.fault_panic_in_loop {
            panic!("fault injection: h2rs-test-panic c1-loop");
        }
        let mut ids = std::mem::take(&mut core.signalled);
        core.signal.take_into(&mut ids);
        for &id in &ids {
            core.update(&mut ops, id);
        }
        core.signalled = ids;
        // Woken because a worker became free (`Dispatch::wait_for_room`).
        core.fill_slots();
    }

    /// Serializes pending frames into `out` (up to about `limit` of its
    /// write budget, `Frames::budget_used`).
    pub fn collect_output(&mut self, out: &mut Frames, limit: usize) -> Result<usize, NgError> {
        let mut total = 0;
        // nghttp2 may stop early when a frame could not be prepared (and a
        // callback queued a replacement, e.g. an RST_STREAM): go on while
        // it still wants to write and produces bytes.
        for _ in 0..4 {
            let n = self.ng.mem_send(out, limit)?;
            total += n;
            if out.budget_used() >= limit || !self.ng.ops().want_write() {
                break;
            }
            if n == 0 && total > 0 {
                break;
            }
        }
        self.ng.handler().stats.octets_sent += total as u64;
        Ok(total)
    }

    /// The write of the frames that ended the streams waiting to be
    /// retired failed: they are retired as incomplete.
    pub fn fail_pending_retires(&mut self) {
        for (_, outcome) in &mut self.ng.handler().to_retire {
            outcome.complete = false;
        }
    }

    /// Releases finished streams (runs their retire actions).
    pub fn retire_finished(&mut self) {
        let core = self.ng.handler();
        if core.to_retire.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut core.to_retire);
        for (r, outcome) in list.drain(..) {
            core.dispatcher.retire(r, outcome);
        }
        // The list keeps its room for the next stream (a new one was
        // allocated for nearly every request, ~140 instructions), unless a
        // burst made it large.
        if core.to_retire.is_empty() && list.capacity() <= RETIRE_ROOM_KEPT {
            core.to_retire = list;
        }
    }

    pub fn want_read(&mut self) -> bool {
        self.ng.ops().want_read()
    }

    pub fn want_write(&mut self) -> bool {
        self.ng.ops().want_write()
    }

    /// Streams known on this side: open, or closed with a worker still on
    /// them.
    pub fn open_streams(&self) -> usize {
        self.ng.handler_ref().entries.len()
    }

    /// An h2c upgrade whose client has not sent its preface and SETTINGS
    /// yet: its stream 1 waits for them, not for a worker.
    pub fn awaits_client_settings(&self) -> bool {
        self.ng.handler_ref().hold_until_settings
    }

    /// Streams whose worker has not finished.
    pub fn streams_in_progress(&self) -> usize {
        self.in_progress().count()
    }

    /// Streams that started on a worker whose worker has not finished, by
    /// the entries alone (without their bookkeeping, which a teardown
    /// after a panic no longer runs): streams never started do not count.
    pub fn started_in_progress(&self) -> usize {
        let done = Some(crate::stream::WorkerState::Done);
        let core = self.ng.handler_ref();
        core.entries
            .values()
            .filter(|e| e.dispatched && e.stream.as_ref().is_some_and(|s| s.worker_state() != done))
            .count()
    }

    /// The request (method, and path or for CONNECT authority) of the
    /// oldest stream whose worker has not finished: what mod_status shows
    /// while c1 waits on its streams.
    pub fn oldest_in_progress(&self) -> Option<(&[u8], &[u8])> {
        self.in_progress().min_by_key(|(id, _)| *id).map(|(_, s)| {
            let r = &s.request;
            (&r.method[..], r.path.as_deref().or(r.authority.as_deref()).unwrap_or(b""))
        })
    }

    fn in_progress(&self) -> impl Iterator<Item = (i32, &Arc<Stream>)> + '_ {
        self.ng.handler_ref().entries.iter().filter_map(|(id, e)| {
            e.stream.as_ref().filter(|s| s.worker_state() != Some(crate::stream::WorkerState::Done)).map(|s| (*id, s))
        })
    }

    /// Every stream's state in a few words (for diagnostics in the log).
    pub fn describe_streams(&mut self) -> String {
        let (core, ops) = self.ng.split();
        let mut ids: Vec<i32> = core.entries.keys().copied().collect();
        ids.sort_unstable();
        ids.iter()
            .filter_map(|id| core.entries.get(id).map(|e| (id, e)))
            .map(|(id, e)| {
                let (stream_window, conn_window) = ops.send_windows(*id);
                format!(
                    "[stream {id}: submitted {}, deferred {}, closed {}, windows {stream_window}/{conn_window}, {}]",
                    e.submitted,
                    e.deferred,
                    e.closed,
                    e.stream.as_ref().map(|s| s.describe()).unwrap_or_else(|| "no request yet".into())
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether the session has ended (GOAWAY exchanged or fatal error) and
    /// everything is sent.
    pub fn is_finished(&mut self) -> bool {
        let ops = self.ng.ops();
        !ops.want_read() && !ops.want_write() && self.ng.handler_ref().entries.is_empty()
    }

    pub fn peer_sent_goaway(&self) -> bool {
        self.ng.handler_ref().goaways.as_ref().is_some_and(|g| g.received.is_some())
    }

    /// The GOAWAY frames sent and received so far (for the log).
    pub fn goaways(&self) -> Goaways {
        self.ng.handler_ref().goaways.as_deref().cloned().unwrap_or_default()
    }

    pub fn goaway_sent(&self) -> bool {
        self.goaway_sent
    }

    /// First step of a graceful shutdown (RFC 9113 6.8): GOAWAY with the
    /// highest stream id, so the client opens no more streams, and a PING
    /// behind it. Streams the client opened before it saw the GOAWAY reach
    /// us before the PING's ACK (`shutdown_notice_acked`); the final GOAWAY
    /// (`goaway`) sent after that refuses none of them. Returns false when
    /// the notice cannot be sent (a GOAWAY went out already).
    pub fn shutdown_notice(&mut self) -> bool {
        if self.goaway_sent {
            return false;
        }
        let mut ops = self.ng.ops();
        if !(ops.submit_shutdown_notice().is_ok() && ops.submit_ping(SHUTDOWN_PING).is_ok()) {
            return false;
        }
        self.ng.handler().shutdown_ping = ShutdownPing::Sent;
        true
    }

    /// The client answered the PING `shutdown_notice` sent.
    pub fn shutdown_notice_acked(&self) -> bool {
        self.ng.handler_ref().shutdown_ping == ShutdownPing::Answered
    }

    /// Sends GOAWAY with the last stream we processed: streams up to it
    /// complete, later ones are refused.
    pub fn goaway(&mut self, code: u32, debug: &[u8]) {
        let last = self.ng.ops().last_proc_stream_id();
        self.goaway_naming(last, code, debug);
    }

    /// Sends GOAWAY naming `last`, once.
    fn goaway_naming(&mut self, last: i32, code: u32, debug: &[u8]) {
        if self.goaway_sent {
            return;
        }
        self.goaway_sent = true;
        let _ = self.ng.ops().submit_goaway(code, last, debug);
    }

    /// The stream whose header block (request head or trailers) has begun
    /// and not ended, if any (header blocks do not interleave).
    pub fn head_in_progress(&self) -> Option<i32> {
        let core = self.ng.handler_ref();
        let id = core.header_block;
        // Not a closed stream's: nghttp2 ignores the rest of a block whose
        // stream it reset (a refused field), without `begin_frame` for its
        // frames, and a dispatched stream's entry stays while its worker
        // winds down.
        core.entries.get(&id).filter(|e| !e.closed && (e.builder.is_some() || e.trailers.is_some())).map(|_| id)
    }

    /// Whether `take_notes` has something for the log.
    #[inline]
    pub fn has_notes(&self) -> bool {
        let core = self.ng.handler_ref();
        !core.notes.is_empty() || !core.heads_too_large.is_empty() || core.calm_reason.is_some()
    }

    /// Calls `reset` for each stream reset for its request since the last
    /// call (id, why), `head_too_large` for each stream reset because its
    /// response head was larger than H2MaxHeaderBlockLen, and `calmed` if
    /// the session was ended for abuse since (why).
    #[cold]
    pub fn take_notes(
        &mut self,
        mut reset: impl FnMut(i32, &str),
        mut head_too_large: impl FnMut(i32),
        calmed: impl FnOnce(&str),
    ) {
        let core = self.ng.handler();
        for (id, why) in core.notes.drain(..) {
            reset(id, why);
        }
        for id in core.heads_too_large.drain(..) {
            head_too_large(id);
        }
        if let Some(why) = core.calm_reason.take() {
            calmed(why);
        }
    }

    /// `goaway` naming only the streams that started: on a hard stop the
    /// others are dropped unprocessed (`abort_all`), and the client may
    /// send them again elsewhere, non-idempotent ones too (RFC 9113 6.8),
    /// as the stock module tells it. Named, they "might have been
    /// processed".
    pub fn goaway_for_started(&mut self, code: u32, debug: &[u8]) {
        let last = self.ng.handler_ref().last_started;
        self.goaway_naming(last, code, debug);
    }

    /// Ends the session now with `code` (GOAWAY, no further processing).
    pub fn terminate(&mut self, code: u32) {
        self.goaway_sent = true;
        let _ = self.ng.ops().terminate(code);
    }

    /// Runs up to `max` of the streams the dispatcher runs on this thread
    /// (`Dispatch::runs_here`), in arrival order; returns how many it took.
    pub fn run_here(&mut self, max: usize) -> usize {
        let core = self.ng.handler();
        let mut taken = 0;
        while taken < max {
            let Some(stream) = core.run_here.pop_front() else { break };
            core.start(stream, false);
            taken += 1;
        }
        taken
    }

    /// The connection is gone: every stream is closed and its worker told.
    pub fn abort_all(&mut self) {
        let core = self.ng.handler();
        core.run_here.clear();
        let ids: Vec<i32> = core.entries.keys().copied().collect();
        for id in ids {
            core.close_entry(id, error_code::CANCEL, false);
        }
    }

    /// After abort_all: picks up workers that finished since.
    pub fn reap_aborted(&mut self) {
        let (core, _ops) = self.ng.split();
        let done: Vec<i32> = core
            .entries
            .iter()
            .filter(|(_, e)| {
                e.stream.as_ref().map(|s| s.worker_state() == Some(crate::stream::WorkerState::Done)).unwrap_or(true)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(e) = core.entries.remove(&id) {
                let outcome = e.outcome();
                if let Some(r) = e.stream.and_then(|s| s.take_retire()) {
                    core.to_retire.push((r, outcome));
                }
            }
            core.worker_finished(id);
        }
    }

    pub fn stats(&self) -> Stats {
        self.ng.handler_ref().stats
    }

    pub fn dispatcher(&mut self) -> &mut D {
        &mut self.ng.handler().dispatcher
    }

    /// An idle session gives back the pages of nghttp2's frame buffer (see
    /// `nghttp2::Session::discard_frame_buffer`).
    pub fn discard_frame_buffer(&mut self) -> bool {
        self.ng.discard_frame_buffer()
    }

    pub fn signal(&self) -> &Arc<Signal> {
        &self.ng.handler_ref().signal
    }

    /// The id of the highest stream processed (for GOAWAY and logs).
    pub fn last_stream_id(&mut self) -> i32 {
        self.ng.ops().last_proc_stream_id()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The session against an in-memory nghttp2 client: bytes are pumped
    //! between the two, "workers" are threads running small handlers.
    use super::*;
    use crate::stream::{Headers, Input, ResponseHead};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    /// The map of a connection's streams keeps its peak capacity: its
    /// entries stay small, the request builders live in boxes.
    #[test]
    fn a_stream_entry_is_small() {
        let size = std::mem::size_of::<Entry>();
        assert!(size <= 96, "Entry is {size} bytes");
    }

    /// Test workers: each request runs `handler` on a thread.
    pub struct ThreadDispatch {
        pub handler: fn(Arc<Stream>),
        pub threads: Vec<thread::JoinHandle<()>>,
        /// Streams run on the calling thread, as c1 runs fast static files.
        pub here: fn(&Stream) -> bool,
        /// Where finished streams report how they were retired (stream id,
        /// complete); without it a worker leaves nothing to retire.
        pub outcomes: Option<std::sync::mpsc::Sender<(i32, bool)>>,
    }

    /// A worker's retire action that reports the outcome c1 gave it.
    struct ReportOutcome(std::sync::mpsc::Sender<(i32, bool)>, i32);

    impl Retire for ReportOutcome {
        fn retire(self: Box<Self>, outcome: Outcome) {
            let _ = self.0.send((self.1, outcome.complete));
        }
    }

    fn nowhere(_: &Stream) -> bool {
        false
    }

    impl Dispatch for ThreadDispatch {
        fn runs_here(&self, stream: &Stream) -> bool {
            (self.here)(stream)
        }

        fn dispatch(&mut self, stream: Arc<Stream>) {
            let h = self.handler;
            let retire =
                self.outcomes.as_ref().map(|tx| Box::new(ReportOutcome(tx.clone(), stream.id)) as Box<dyn Retire>);
            if stream.runs_inline() {
                stream.worker_started();
                h(stream.clone());
                stream.worker_done(retire);
                return;
            }
            self.threads.push(thread::spawn(move || {
                stream.worker_started();
                h(stream.clone());
                stream.worker_done(retire);
            }));
        }
    }

    /// Echo handler: answers 200 with the request body, or with the path
    /// repeated for GETs (size from a query like `?n=100000`).
    pub fn echo(stream: Arc<Stream>) {
        let mut body = Vec::new();
        loop {
            match stream.read_input(8192, true, None) {
                Ok(Input::Data(d)) => body.extend(d),
                Ok(Input::End(_)) => break,
                Ok(Input::WouldBlock) => continue,
                Err(_) => return,
            }
        }
        let path = String::from_utf8_lossy(stream.request.path.as_deref().unwrap_or(b"/")).to_string();
        if let Some(n) = path.split("n=").nth(1).and_then(|n| n.parse::<usize>().ok()) {
            body = (0..n).map(|i| (i % 253) as u8).collect();
        }
        let mut h = Headers::new();
        h.push(b"content-type", b"application/octet-stream");
        let status = stream.request.error_status.unwrap_or(200);
        if stream.set_response(ResponseHead { status, headers: h }).is_err() {
            return;
        }
        if stream.write_output(&body).is_err() {
            return;
        }
        let trailers = if path.contains("trailers") {
            let mut t = Headers::new();
            t.push(b"grpc-status", b"0");
            Some(t)
        } else {
            None
        };
        stream.end_output(trailers);
    }

    #[derive(Default, Debug)]
    pub struct ClientStream {
        pub status: Option<u16>,
        pub headers: Vec<(Vec<u8>, Vec<u8>)>,
        pub body: Vec<u8>,
        pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
        pub closed: Option<u32>,
    }

    #[derive(Default)]
    pub struct Client {
        pub streams: HashMap<i32, ClientStream>,
        pub upload: HashMap<i32, (Vec<u8>, usize)>,
        /// Trailers sent after a stream's `upload`.
        pub upload_trailers: HashMap<i32, Headers>,
        pub goaway: Option<u32>,
        /// Every GOAWAY received: (last stream id, error code).
        pub goaways: Vec<(i32, u32)>,
        pub rst_received: Vec<(i32, u32)>,
        /// Data is not consumed: with manual window updates, the streams'
        /// windows stay as they are (the connection's is large).
        pub hold_windows: bool,
    }

    impl ng::Handler for Client {
        fn begin_headers(&mut self, _: &mut Ops<'_>, _: &FrameInfo) -> Flow {
            Flow::Continue
        }
        fn header(&mut self, _: &mut Ops<'_>, f: &FrameInfo, n: &[u8], v: &[u8]) -> Flow {
            let s = self.streams.entry(f.stream_id).or_default();
            if n == b":status" {
                s.status = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
            } else if s.status.is_some()
                && f.headers_category == headers_category::HEADERS
                && s.status.unwrap_or(0) >= 200
            {
                s.trailers.push((n.to_vec(), v.to_vec()));
            } else {
                s.headers.push((n.to_vec(), v.to_vec()));
            }
            Flow::Continue
        }
        fn frame_recv(&mut self, _: &mut Ops<'_>, f: &FrameInfo) -> Flow {
            if f.kind == frame_type::GOAWAY {
                self.goaway = Some(f.error_code);
                self.goaways.push((f.named_stream_id, f.error_code));
            }
            if f.kind == frame_type::RST_STREAM {
                self.rst_received.push((f.stream_id, f.error_code));
            }
            Flow::Continue
        }
        fn data_chunk(&mut self, ops: &mut Ops<'_>, id: i32, d: &[u8]) -> Flow {
            self.streams.entry(id).or_default().body.extend_from_slice(d);
            if !self.hold_windows {
                let _ = ops.consume(id, d.len());
            }
            Flow::Continue
        }
        fn stream_close(&mut self, _: &mut Ops<'_>, id: i32, code: u32) -> Flow {
            self.streams.entry(id).or_default().closed = Some(code);
            Flow::Continue
        }
        fn read_data(&mut self, _: &mut Ops<'_>, id: i32, buf: &mut [u8]) -> DataRead {
            let Some((data, off)) = self.upload.get_mut(&id) else { return DataRead::Error };
            let n = (data.len() - *off).min(buf.len());
            buf[..n].copy_from_slice(&data[*off..*off + n]);
            *off += n;
            let eof = *off == data.len();
            let trailers = if eof { self.upload_trailers.remove(&id) } else { None };
            DataRead::Data { n, eof, trailers }
        }
    }

    /// Everything the client has to send.
    pub fn client_bytes(client: &mut ng::Session<Client>) -> Vec<u8> {
        let mut out = Frames::default();
        client.mem_send(&mut out, usize::MAX).unwrap();
        out.contiguous().unwrap_or_default().to_vec()
    }

    pub struct Pair {
        pub server: Session<ThreadDispatch>,
        pub client: ng::Session<Client>,
        /// Large file regions go by reference to a mapping, as c1 sends
        /// them on a cleartext connection (else copied, as under TLS).
        pub by_reference: bool,
    }

    impl Pair {
        pub fn new(settings: Settings, handler: fn(Arc<Stream>)) -> Pair {
            Pair::with_client_settings(settings, handler, &[])
        }

        /// A pair whose client's first SETTINGS has `client_settings` too.
        pub fn with_client_settings(
            settings: Settings,
            handler: fn(Arc<Stream>),
            client_settings: &[(i32, u32)],
        ) -> Pair {
            Pair::with_client(settings, handler, client_settings, &ng::Options::default())
        }

        /// `with_client_settings` with the client's nghttp2 options.
        pub fn with_client(
            settings: Settings,
            handler: fn(Arc<Stream>),
            client_settings: &[(i32, u32)],
            client_options: &ng::Options,
        ) -> Pair {
            let signal = Arc::new(Signal::new().unwrap());
            let server = Session::new(
                settings,
                signal,
                ThreadDispatch { handler, threads: vec![], here: nowhere, outcomes: None },
            )
            .unwrap();
            let mut client = ng::Session::new_client(Client::default(), client_options).unwrap();
            let mut first = vec![(ng::settings_id::INITIAL_WINDOW_SIZE, 1 << 20)];
            first.extend_from_slice(client_settings);
            client.ops().submit_settings(&first).unwrap();
            client.ops().set_local_window_size(0, 1 << 30).unwrap();
            Pair { server, client, by_reference: true }
        }

        pub fn get(&mut self, path: &str) -> i32 {
            self.get_with(path, &[])
        }

        /// A GET with more fields after the pseudo-header fields.
        pub fn get_with(&mut self, path: &str, fields: &[(&str, &str)]) -> i32 {
            let mut h = Headers::new();
            for (n, v) in [(":method", "GET"), (":scheme", "http"), (":authority", "test"), (":path", path)] {
                h.push(n.as_bytes(), v.as_bytes());
            }
            for (n, v) in fields {
                h.push(n.as_bytes(), v.as_bytes());
            }
            self.client.ops().submit_request::<Client>(&h, false).unwrap()
        }

        /// What the client has to send, received by the server (no
        /// worker runs, no answer goes out).
        pub fn deliver(&mut self) {
            let bytes = client_bytes(&mut self.client);
            self.server.recv(&bytes).unwrap();
        }

        /// The (urgency, incremental) nghttp2 schedules a stream with.
        pub fn priority(&mut self, id: i32) -> Option<(u8, bool)> {
            self.server.ng.ops().stream_priority(id)
        }

        /// The urgency a stream waits for a worker (or c1) with.
        pub fn head_urgency(&self, id: i32) -> Option<u8> {
            let entry = self.server.ng.handler_ref().entries.get(&id)?;
            entry.stream.as_ref().map(|s| s.request.urgency)
        }

        pub fn post(&mut self, path: &str, body: Vec<u8>) -> i32 {
            let mut h = Headers::new();
            for (n, v) in [(":method", "POST"), (":scheme", "http"), (":authority", "test"), (":path", path)] {
                h.push(n.as_bytes(), v.as_bytes());
            }
            let id = self.client.ops().submit_request::<Client>(&h, true).unwrap();
            self.client.handler().upload.insert(id, (body, 0));
            id
        }

        /// Moves bytes both ways until `until` holds.
        pub fn pump(&mut self, until: impl Fn(&Client) -> bool) {
            self.pump_with(until, false)
        }

        /// Like `pump`, but sleeps as c1 does: when nothing moved, only the
        /// signal's descriptor wakes the server side (a lost wake-up stalls).
        pub fn pump_like_c1(&mut self, until: impl Fn(&Client) -> bool) {
            self.pump_with(until, true)
        }

        /// One round as c1 does it: client bytes in, worker signals, at
        /// most `out_limit` (plus a frame) server bytes out. Returns the
        /// bytes moved each way.
        pub fn step(&mut self, out_limit: usize) -> (usize, usize) {
            let c2s = client_bytes(&mut self.client);
            if !c2s.is_empty() {
                self.server.recv(&c2s).unwrap();
            }
            self.server.run_here(usize::MAX);
            self.server.process_signals();
            self.server.retire_finished();
            let mut frames = Frames::default();
            frames.set_by_reference(self.by_reference);
            self.server.collect_output(&mut frames, out_limit).unwrap();
            let s2c = frames.joined();
            if !s2c.is_empty() {
                self.client.mem_recv(&s2c).unwrap();
            }
            (c2s.len(), s2c.len())
        }

        fn pump_with(&mut self, until: impl Fn(&Client) -> bool, sleep_on_signal: bool) {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let (sent, received) = self.step(usize::MAX);
                if until(self.client.handler_ref()) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "pump timed out: {:?} {:?}",
                    self.client.handler_ref().streams,
                    self.client.handler_ref().rst_received
                );
                if sent > 0 || received > 0 {
                    continue;
                }
                if sleep_on_signal && !self.client.ops().want_write() {
                    let mut fd = libc::pollfd { fd: self.server.signal().fd(), events: libc::POLLIN, revents: 0 };
                    // SAFETY: one valid pollfd.
                    let ready = unsafe { libc::poll(&mut fd, 1, 3000) };
                    assert!(ready == 1, "stalled: no wake-up for 3 s: {:?}", self.client.handler_ref().streams.keys());
                } else {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    fn closed(ids: Vec<i32>) -> impl Fn(&Client) -> bool {
        move |c: &Client| ids.iter().all(|id| c.streams.get(id).map(|s| s.closed.is_some()).unwrap_or(false))
    }

    #[test]
    fn responses_share_the_connection_until_the_client_signals_rfc9218_priorities() {
        let mut p = Pair::new(Settings::default(), echo);
        // No signal yet: incremental, as RFC 7540's default priorities
        // shared the connection equally.
        let plain = p.get("/a");
        p.deliver();
        assert_eq!(p.priority(plain), Some((DEFAULT_URGENCY, true)));
        // A `priority` field is taken as it is (no `i`: not incremental)...
        let asked = p.get_with("/b", &[("priority", "u=1")]);
        let incremental = p.get_with("/c", &[("priority", "u=5, i")]);
        // ...and from then on a request without one gets RFC 9218's default.
        let later = p.get("/d");
        p.deliver();
        assert_eq!(p.priority(asked), Some((1, false)));
        assert_eq!(p.priority(incremental), Some((5, true)));
        assert_eq!(p.priority(later), Some((DEFAULT_URGENCY, false)));
        assert_eq!(p.priority(plain), Some((DEFAULT_URGENCY, true)), "an earlier stream keeps its priority");
        p.pump(closed(vec![plain, asked, incremental, later]));
    }

    #[test]
    fn a_client_without_rfc7540_priorities_gets_the_rfc9218_default_at_once() {
        let no_rfc7540 = [(ng::settings_id::NO_RFC7540_PRIORITIES, 1)];
        let mut p = Pair::with_client_settings(Settings::default(), echo, &no_rfc7540);
        let id = p.get("/a");
        p.deliver();
        assert_eq!(p.priority(id), Some((DEFAULT_URGENCY, false)));
        p.pump(closed(vec![id]));
    }

    #[test]
    fn a_priority_update_frame_signals_rfc9218_priorities() {
        let mut p = Pair::new(Settings::default(), echo);
        let first = p.get("/a");
        p.deliver();
        // PRIORITY_UPDATE (RFC 9218 7.1) on stream 0 for the next request,
        // before that request: nghttp2 keeps it for the idle stream.
        let next = first + 2;
        p.server.recv(&priority_update(next, b"u=6")).unwrap();
        assert_eq!(p.get("/b"), next);
        let last = p.get("/c");
        p.deliver();
        assert_eq!(p.priority(next), Some((6, false)), "the update, not our default");
        assert_eq!(p.head_urgency(next), Some(6), "its place among the streams waiting to start");
        assert_eq!(p.priority(last), Some((DEFAULT_URGENCY, false)));
        p.pump(closed(vec![first, next, last]));
    }

    #[test]
    fn a_priority_parameter_out_of_range_is_ignored_alone() {
        let mut p = Pair::new(Settings::default(), echo);
        // In a request's field (nghttp2's parser dropped the whole value).
        let asked = p.get_with("/a", &[("priority", "u=9, i")]);
        p.deliver();
        assert_eq!(p.priority(asked), Some((DEFAULT_URGENCY, true)));
        // In a PRIORITY_UPDATE, for an idle stream and for an open one.
        let next = asked + 2;
        p.server.recv(&priority_update(next, b"u=1, i=2")).unwrap();
        assert_eq!(p.get("/b"), next);
        p.server.recv(&priority_update(asked, b"i=?0, u=8")).unwrap();
        p.deliver();
        assert_eq!(p.priority(next), Some((1, false)));
        assert_eq!(p.priority(asked), Some((DEFAULT_URGENCY, false)), "the update's i=?0 applied");
        p.pump(closed(vec![asked, next]));
    }

    /// A PRIORITY_UPDATE frame (on stream 0) for stream `id`.
    fn priority_update(id: i32, field: &[u8]) -> Vec<u8> {
        let mut frame = vec![0, 0, (4 + field.len()) as u8, frame_type::PRIORITY_UPDATE, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(field);
        frame
    }

    /// The GOAWAY code the server sent after reading `bytes`, if any (what
    /// it sent goes to the client).
    fn goaway_after(p: &mut Pair, bytes: &[u8]) -> Option<u32> {
        let _ = p.server.recv(bytes);
        let mut frames = Frames::default();
        let _ = p.server.collect_output(&mut frames, 1 << 20);
        let _ = p.client.mem_recv(&frames.joined());
        p.server.goaways().sent.map(|(code, _, _)| code)
    }

    #[test]
    fn a_priority_update_for_stream_zero_is_a_connection_error() {
        let mut p = Pair::new(Settings::default(), echo);
        let id = p.get("/a");
        p.pump(closed(vec![id]));
        // RFC 9218 7.1; nghttp2 ignores it.
        assert_eq!(goaway_after(&mut p, &priority_update(0, b"u=1")), Some(error_code::PROTOCOL_ERROR));
    }

    /// Idle streams a client prioritizes are held (by nghttp2) until the
    /// session ends: at most SETTINGS_MAX_CONCURRENT_STREAMS of them, also
    /// from a client that never acknowledges our SETTINGS (nghttp2 bounds
    /// them only once it has).
    #[test]
    fn priority_updates_for_idle_streams_are_bounded_without_a_settings_ack() {
        let settings = Settings { max_concurrent_streams: 4, ..Settings::default() };
        let mut p = Pair::new(settings.clone(), echo);
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&[0, 0, 0, frame_type::SETTINGS, 0, 0, 0, 0, 0]);
        assert_eq!(goaway_after(&mut p, &preface), None);
        for id in [101, 103, 105, 107, 105] {
            assert_eq!(goaway_after(&mut p, &priority_update(id, b"u=1")), None, "stream {id}");
        }
        assert_eq!(goaway_after(&mut p, &priority_update(109, b"u=1")), Some(error_code::PROTOCOL_ERROR));

        // Opened, a stream no longer counts.
        let mut p = Pair::new(settings, echo);
        p.step(usize::MAX);
        p.step(usize::MAX);
        for id in [1, 3, 5, 7] {
            assert_eq!(goaway_after(&mut p, &priority_update(id, b"u=1")), None, "stream {id}");
        }
        let first = p.get("/a");
        assert_eq!(first, 1);
        p.pump(closed(vec![first]));
        assert_eq!(goaway_after(&mut p, &priority_update(9, b"u=1")), None);
    }

    #[test]
    fn many_concurrent_streams_byte_exact() {
        let mut p = Pair::new(Settings::default(), echo);
        let sizes = [0usize, 1, 1000, 16384, 16385, 100_000, 300_000];
        let ids: Vec<(i32, usize)> = (0..40)
            .map(|i| {
                let n = sizes[i % sizes.len()];
                (p.get(&format!("/f?n={n}")), n)
            })
            .collect();
        p.pump(closed(ids.iter().map(|x| x.0).collect()));
        for (id, n) in ids {
            let s = &p.client.handler_ref().streams[&id];
            assert_eq!(s.status, Some(200));
            assert_eq!(s.closed, Some(0));
            let want: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
            assert_eq!(s.body, want, "stream {id}");
        }
        assert_eq!(p.server.stats().streams_dispatched, 40);
        p.pump(|_| true);
        assert_eq!(p.server.open_streams(), 0);
    }

    /// `answer_then_linger` answers once the test says so, and tells when
    /// it has: the test keeps c1 away meanwhile, so c1 finds the whole
    /// response at once.
    static LINGER_GO: AtomicBool = AtomicBool::new(false);
    static LINGER_ANSWERED: AtomicBool = AtomicBool::new(false);
    static LINGER_RELEASE: AtomicBool = AtomicBool::new(false);

    fn wait_for(flag: &AtomicBool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !flag.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "waited 10 s");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Answers, then lingers until the test releases it, as a c2 runs
    /// httpd's log hooks and pool cleanups after its response went out;
    /// `/hang` never answers and ends when its stream is aborted.
    fn answer_then_linger(stream: Arc<Stream>) {
        if stream.request.path.as_deref() == Some(&b"/hang"[..]) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !stream.is_aborted() && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            return;
        }
        wait_for(&LINGER_GO);
        if stream.set_response(ResponseHead { status: 200, headers: Headers::new() }).is_err()
            || stream.write_output(b"done").is_err()
        {
            return;
        }
        stream.end_output(None);
        // A FLUSH after the request's EOR (as ap_process_request passes one).
        stream.flush();
        LINGER_ANSWERED.store(true, Ordering::Release);
        wait_for(&LINGER_RELEASE);
    }

    /// A response the client had in full before its worker finished is
    /// retired complete (httpd logs it as such, %X "-"), also when the
    /// connection ends before the worker does; one the client reset is not
    /// (%X "X"). Such late workers were all retired incomplete.
    #[test]
    fn a_response_delivered_before_its_worker_finished_is_retired_complete() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut p = Pair::new(Settings::default(), answer_then_linger);
        p.server.dispatcher().outcomes = Some(tx);
        let delivered = p.get("/a");
        let hung = p.get("/hang");
        p.step(usize::MAX);
        LINGER_GO.store(true, Ordering::Release);
        wait_for(&LINGER_ANSWERED);
        p.pump(closed(vec![delivered]));
        p.client.ops().submit_rst_stream(hung, error_code::CANCEL).unwrap();
        p.pump(closed(vec![hung]));
        let outcome = |p: &mut Pair| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                assert!(std::time::Instant::now() < deadline, "nothing retired");
                p.step(usize::MAX);
                p.server.reap_aborted();
                p.server.retire_finished();
                if let Ok(o) = rx.recv_timeout(Duration::from_millis(5)) {
                    return o;
                }
            }
        };
        assert_eq!(outcome(&mut p), (hung, false));
        // The connection ends while the delivered stream's worker lingers.
        p.server.abort_all();
        LINGER_RELEASE.store(true, Ordering::Release);
        assert_eq!(outcome(&mut p), (delivered, true));
    }

    /// Streams c1 runs itself go in urgency order: each may be written
    /// whole (up to 1 MiB) before the next one runs, so a large file asked
    /// for first would hold an urgent small response of the same burst.
    #[test]
    fn streams_run_here_start_by_urgency() {
        let mut p = Pair::new(Settings::default(), echo);
        p.server.dispatcher().here = |_| true;
        let large = p.get_with("/video", &[("priority", "u=5")]);
        let css = p.get_with("/style.css", &[("priority", "u=0")]);
        let page = p.get_with("/page", &[("priority", "u=1")]);
        p.deliver();
        let order: Vec<i32> = p.server.ng.handler().run_here.iter().map(|s| s.id).collect();
        assert_eq!(order, [css, page, large]);
        p.pump(closed(vec![large, css, page]));
    }

    /// nghttp2 closes a stream as c1 serializes its last frames, before
    /// they are written: when that write fails, the stream is retired
    /// incomplete (it was logged as delivered).
    #[test]
    fn a_stream_whose_last_frames_were_not_written_is_retired_incomplete() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut p = Pair::new(Settings::default(), echo);
        p.server.dispatcher().outcomes = Some(tx);
        // Run here: the handler is done before its frames are serialized.
        p.server.dispatcher().here = |_| true;
        let id = p.get("/a");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.server.ng.handler().to_retire.is_empty() {
            assert!(std::time::Instant::now() < deadline, "the stream never closed");
            p.step(usize::MAX);
        }
        p.server.fail_pending_retires();
        p.server.retire_finished();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok((id, false)));
    }

    /// Writes `?n=` bytes in 64 KiB pieces, as the static file path does.
    fn pieces(stream: Arc<Stream>) {
        let path = String::from_utf8_lossy(stream.request.path.as_deref().unwrap_or(b"/")).to_string();
        let n: usize = path.split("n=").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        if stream.set_response(ResponseHead { status: 200, headers: Headers::new() }).is_err() {
            return;
        }
        let piece: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
        let mut left = n;
        while left > 0 {
            let k = left.min(piece.len());
            if stream.write_output(&piece[..k]).is_err() {
                return;
            }
            left -= k;
        }
        stream.end_output(None);
    }

    #[test]
    fn large_bodies_through_a_small_queue_never_stall() {
        for round in 0..40 {
            let settings = Settings { stream_out_limit: 65536, ..Settings::default() };
            let mut p = Pair::new(settings, pieces);
            let n = 4 << 20;
            let id = p.get(&format!("/f?n={n}"));
            p.pump_like_c1(closed(vec![id]));
            let s = &p.client.handler_ref().streams[&id];
            assert_eq!((s.closed, s.body.len()), (Some(0), n), "round {round}");
        }
    }

    /// Answers with a 1 MiB file region (as the static file path does for
    /// large files), between two small in-memory pieces.
    fn file_region(stream: Arc<Stream>) {
        let path = std::env::temp_dir().join(format!("h2rs-session-file-{}", std::process::id()));
        let content: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 241) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        stream.set_response(ResponseHead { status: 200, headers: Headers::new() }).unwrap();
        stream.write_output(b"<").unwrap();
        stream.write_file(crate::stream::FileRegion::new(file, 0, 1 << 20, true)).unwrap();
        stream.write_output(b">").unwrap();
        stream.end_output(None);
    }

    #[test]
    fn file_regions_go_out_in_bounded_writes() {
        // Copied, a write holds the limit in memory (plus one frame);
        // from mappings, four times as much, none of it in memory.
        for (by_reference, bound) in [(false, 64 * 1024), (true, 4 * 64 * 1024)] {
            let mut p = Pair::new(Settings::default(), file_region);
            p.by_reference = by_reference;
            let id = p.get("/file");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut largest = 0;
            while !closed(vec![id])(p.client.handler_ref()) {
                assert!(std::time::Instant::now() < deadline, "stalled");
                let (_, received) = p.step(64 * 1024);
                largest = largest.max(received);
                if received == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            // One frame may cross the limit, never the whole file.
            assert!(largest <= bound + 16 * 1024 + 9, "wrote {largest} bytes at once (by reference {by_reference})");
            assert!(largest > bound / 2, "wrote at most {largest} bytes at once (by reference {by_reference})");
            let s = &p.client.handler_ref().streams[&id];
            let mut want = b"<".to_vec();
            want.extend((0..(1u32 << 20)).map(|i| (i % 241) as u8));
            want.push(b'>');
            assert_eq!(s.closed, Some(0));
            assert!(s.body == want, "body differs ({} bytes)", s.body.len());
        }
    }

    #[test]
    fn active_streams_are_limited_and_the_rest_wait() {
        let settings = Settings { max_active_streams: 3, ..Settings::default() };
        let mut p = Pair::new(settings, echo);
        let ids: Vec<i32> = (0..20).map(|_| p.get("/f?n=70000")).collect();
        p.pump(|_| true);
        assert!(p.server.streams_in_progress() <= 20);
        assert!(p.server.ng.handler_ref().running.len() <= 3);
        p.pump(closed(ids.clone()));
        for id in ids {
            assert_eq!(p.client.handler_ref().streams[&id].body.len(), 70000);
        }
        assert_eq!(p.server.stats().streams_dispatched, 20);
    }

    /// A frame's bytes: its 9-byte header (payload of up to 255 bytes),
    /// then the payload.
    fn raw_frame(kind: u8, flags: u8, stream_id: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0, 0, payload.len() as u8, kind, flags, 0, 0, 0, stream_id];
        frame.extend_from_slice(payload);
        frame
    }

    /// A request head split into HEADERS and CONTINUATION is in progress
    /// from the first frame until the one with END_HEADERS (c1 bounds how
    /// long it may take, `limits::HEADER_BLOCK_WAIT`).
    #[test]
    fn a_header_block_is_in_progress_until_its_end() {
        let mut p = Pair::new(Settings::default(), echo);
        let hello = client_bytes(&mut p.client);
        p.server.recv(&hello).unwrap();
        assert_eq!(p.server.head_in_progress(), None);
        // :method GET, :scheme http, :path /, then :authority "a".
        let block = [0x82u8, 0x86, 0x84, 0x41, 0x01, b'a'];
        let (first, rest) = block.split_at(3);
        p.server.recv(&raw_frame(frame_type::HEADERS, ng::flags::END_STREAM, 1, first)).unwrap();
        assert_eq!(p.server.head_in_progress(), Some(1));
        p.server.recv(&raw_frame(frame_type::CONTINUATION, ng::flags::END_HEADERS, 1, rest)).unwrap();
        assert_eq!(p.server.head_in_progress(), None);
    }

    /// Trailers split into HEADERS and CONTINUATION whose first frame has
    /// a field the builder refuses: the stream is reset, nghttp2 ignores
    /// the rest of the block (no `begin_frame` for it), and the stream's
    /// entry stays while its worker runs. Its block is not in progress:
    /// c1 would otherwise close the connection after HEADER_BLOCK_WAIT.
    #[test]
    fn a_header_block_of_a_reset_stream_is_not_in_progress() {
        let mut p = Pair::new(Settings::default(), stall);
        let hello = client_bytes(&mut p.client);
        p.server.recv(&hello).unwrap();
        // :method POST, :scheme http, :path /, :authority "a"; a body follows.
        let block = [0x83u8, 0x86, 0x84, 0x41, 0x01, b'a'];
        p.server.recv(&raw_frame(frame_type::HEADERS, ng::flags::END_HEADERS, 1, &block)).unwrap();
        p.server.process_signals();
        // "connection: x" (literal, not indexed): refused.
        let trailers = [&[0x00u8, 10][..], b"connection", &[1, b'x']].concat();
        p.server.recv(&raw_frame(frame_type::HEADERS, ng::flags::END_STREAM, 1, &trailers)).unwrap();
        let mut out = Frames::default();
        p.server.collect_output(&mut out, usize::MAX).unwrap();
        assert_eq!(p.server.started_in_progress(), 1, "the worker still runs");
        assert_eq!(p.server.head_in_progress(), None);
    }

    /// A hard stop: the GOAWAY names the last stream that started, not
    /// the ones still waiting for a slot, which are dropped.
    #[test]
    fn goaway_for_started_leaves_out_waiting_streams() {
        let settings = Settings { max_active_streams: 1, ..Settings::default() };
        let mut p = Pair::new(settings, stall);
        let ids: Vec<i32> = (0..3).map(|_| p.get("/held")).collect();
        p.pump(|_| true);
        assert_eq!(p.server.ng.handler_ref().running.len(), 1);
        p.server.goaway_for_started(error_code::NO_ERROR, b"server shutting down");
        p.server.abort_all();
        p.pump(|c| !c.goaways.is_empty());
        assert_eq!(p.client.handler_ref().goaways, vec![(ids[0], error_code::NO_ERROR)]);
    }

    static GATE_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// `/slow` waits until GATE_OPEN, anything else echoes.
    fn gated(stream: Arc<Stream>) {
        if stream.request.path.as_deref() == Some(b"/slow") {
            while !GATE_OPEN.load(std::sync::atomic::Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
        }
        echo(stream)
    }

    #[test]
    fn streams_run_here_take_no_slot() {
        let settings = Settings { max_active_streams: 1, ..Settings::default() };
        let mut p = Pair::new(settings, gated);
        p.server.dispatcher().here = |s| s.request.path.as_deref() == Some(b"/here?n=5000");
        let slow: Vec<i32> = (0..2).map(|_| p.get("/slow")).collect();
        let here = p.get("/here?n=5000");
        // The one slot is taken by a blocked stream, the second waits for
        // it; the stream run here goes past both.
        p.pump(closed(vec![here]));
        assert_eq!(p.client.handler_ref().streams[&here].body.len(), 5000);
        assert!(slow.iter().all(|id| p.client.handler_ref().streams.get(id).is_none_or(|s| s.closed.is_none())));
        assert_eq!(p.server.ng.handler_ref().running.len(), 1);
        GATE_OPEN.store(true, std::sync::atomic::Ordering::SeqCst);
        p.pump(closed(slow));
    }

    #[test]
    fn streams_run_here_go_in_batches() {
        let mut p = Pair::new(Settings::default(), echo);
        p.server.dispatcher().here = |s| s.request.path.as_deref().is_some_and(|p| p.starts_with(b"/here"));
        let ids: Vec<i32> = (0..5).map(|i| p.get(&format!("/here{i}?n=100"))).collect();
        let c2s = client_bytes(&mut p.client);
        p.server.recv(&c2s).unwrap();
        // Nothing runs while reading; then at most `max` per call.
        assert_eq!(p.server.stats().streams_dispatched, 0);
        assert_eq!(p.server.run_here(2), 2);
        assert_eq!(p.server.stats().streams_dispatched, 2);
        assert_eq!(p.server.run_here(2), 2);
        assert_eq!(p.server.run_here(2), 1);
        assert_eq!(p.server.run_here(2), 0);
        p.pump(closed(ids.clone()));
        for id in ids {
            assert_eq!(p.client.handler_ref().streams[&id].body.len(), 100);
        }
    }

    #[test]
    fn a_session_knows_its_frame_buffer() {
        // nghttp2 makes its frame buffer with the session, through our
        // hooks: what lets an idle session give its pages back (c1's trim).
        let mut p = Pair::new(Settings::default(), echo);
        assert!(p.server.ng.frame_buffer_known());
        let id = p.get("/f?n=100");
        p.pump(closed(vec![id]));
        assert!(p.server.ng.frame_buffer_known(), "kept for the session's life");
    }

    /// Answers with the request's number on its connection.
    fn numbered(stream: Arc<Stream>) {
        let body = stream.request.number.to_string();
        if stream.set_response(ResponseHead { status: 200, headers: Headers::new() }).is_ok()
            && stream.write_output(body.as_bytes()).is_ok()
        {
            stream.end_output(None);
        }
    }

    #[test]
    fn requests_are_numbered_as_they_arrive() {
        let mut p = Pair::new(Settings::default(), numbered);
        let first = p.get("/a");
        let second = p.get("/b");
        p.pump(closed(vec![first, second]));
        // A malformed head (no :path) is refused and takes no number.
        let mut bad = Headers::new();
        for (n, v) in [(":method", "GET"), (":scheme", "http"), (":authority", "test")] {
            bad.push(n.as_bytes(), v.as_bytes());
        }
        let refused = p.client.ops().submit_request::<Client>(&bad, false).unwrap();
        let third = p.get("/c");
        p.pump(closed(vec![refused, third]));
        let body = |id: i32| String::from_utf8(p.client.handler_ref().streams[&id].body.clone()).unwrap();
        assert_eq!((body(first), body(second), body(third)), ("1".into(), "2".into(), "3".into()));
        assert_eq!(p.server.stats().requests_received, 3);
    }

    #[test]
    fn a_request_head_reserves_the_size_of_the_previous_one() {
        let mut p = Pair::new(Settings::default(), echo);
        assert_eq!(p.server.ng.handler_ref().head_size_hint, (0, 0));
        let mut h = Headers::new();
        for (n, v) in [(":method", "GET"), (":scheme", "http"), (":authority", "test"), (":path", "/f?n=1")] {
            h.push(n.as_bytes(), v.as_bytes());
        }
        h.push(b"user-agent", b"test-client/1.0");
        h.push(b"accept-language", b"en");
        let id = p.client.ops().submit_request::<Client>(&h, false).unwrap();
        p.pump(closed(vec![id]));
        let expected = (2, "user-agent".len() + "test-client/1.0".len() + "accept-language".len() + 2);
        assert_eq!(p.server.ng.handler_ref().head_size_hint, expected);
    }

    #[test]
    fn active_limit_grows_for_good_clients_and_shrinks_on_resets() {
        let settings = Settings { max_active_streams: 40, ..Settings::default() };
        let mut p = Pair::new(settings, echo);
        assert_eq!(p.server.ng.handler_ref().active_limit, 6);
        let ids: Vec<i32> = (0..60).map(|_| p.get("/f?n=10")).collect();
        p.pump(closed(ids));
        assert_eq!(p.server.ng.handler_ref().active_limit, 40);
        p.server.ng.handler().be_annoyed();
        assert_eq!(p.server.ng.handler_ref().active_limit, 16);
        p.server.ng.handler().be_annoyed();
        p.server.ng.handler().be_annoyed();
        p.server.ng.handler().be_annoyed();
        assert_eq!(p.server.ng.handler_ref().active_limit, 2);
    }

    #[test]
    fn reset_before_dispatch_never_reaches_a_worker() {
        let settings = Settings { max_active_streams: 1, ..Settings::default() };
        let mut p = Pair::new(settings, stall);
        let first = p.get("/stall");
        let queued: Vec<i32> = (0..10).map(|_| p.get("/queued")).collect();
        p.pump(|_| true);
        for id in &queued {
            p.client.ops().submit_rst_stream(*id, error_code::CANCEL).unwrap();
        }
        p.pump(|_| true);
        p.client.ops().submit_rst_stream(first, error_code::CANCEL).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.server.open_streams() > 0 {
            p.pump(|_| true);
            assert!(std::time::Instant::now() < deadline, "streams left: {}", p.server.open_streams());
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(p.server.stats().streams_dispatched, 1);
    }

    #[test]
    fn a_stream_reset_while_it_waits_lets_go_of_its_head_and_body() {
        let settings = Settings { max_active_streams: 8, ..Settings::default() };
        let mut p = Pair::new(settings, stall);
        for _ in 0..8 {
            p.get("/stall");
        }
        let queued: Vec<i32> = (0..10).map(|_| p.post("/queued", vec![7; 30_000])).collect();
        p.pump(|_| true);
        // Some of the stalling ones wait too (the test pool's share).
        let waiting = p.server.ng.handler_ref().pending.len();
        assert!(waiting >= 10, "{waiting}");
        for id in &queued {
            p.client.ops().submit_rst_stream(*id, error_code::CANCEL).unwrap();
        }
        p.pump(|_| true);
        let pending = &p.server.ng.handler_ref().pending;
        assert_eq!(pending.len(), waiting - 10);
        assert!(pending.queue.iter().all(|s| !queued.contains(&s.id)));
        assert_eq!(pending.head_bytes, pending.queue.iter().map(|s| s.request.decoded_size()).sum::<usize>());
    }

    #[test]
    fn upload_is_echoed_with_flow_control() {
        let settings = Settings { initial_window_size: 16384, ..Settings::default() };
        let mut p = Pair::new(settings, echo);
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let id = p.post("/upload", body.clone());
        p.pump(closed(vec![id]));
        let s = &p.client.handler_ref().streams[&id];
        assert_eq!(s.status, Some(200));
        assert_eq!(s.body.len(), body.len());
        assert!(s.body == body);
    }

    /// Answers 413 without reading the body under `/early`, else `echo`.
    fn answer_early(stream: Arc<Stream>) {
        if stream.request.path.as_deref() != Some(b"/early".as_slice()) {
            return echo(stream);
        }
        if stream.set_response(ResponseHead { status: 413, headers: Headers::new() }).is_ok() {
            let _ = stream.write_output(b"too large");
            stream.end_output(None);
        }
    }

    /// A response that ends before the request body (RFC 9113 8.1): the
    /// stream is reset with NO_ERROR once the response is out and its
    /// worker done, and the connection's window stays open (what the client
    /// sent on it counted for the connection as it arrived), so the next
    /// upload on it goes through.
    #[test]
    fn a_response_before_the_whole_body_ends_the_upload() {
        let settings = Settings { initial_window_size: 16384, connection_window: 65535, ..Settings::default() };
        let mut p = Pair::new(settings, answer_early);
        let early = p.post("/early", vec![1; 200_000]);
        p.pump(closed(vec![early]));
        let s = &p.client.handler_ref().streams[&early];
        assert_eq!((s.status, s.body.as_slice(), s.closed), (Some(413), b"too large".as_slice(), Some(0)));
        assert_eq!(p.client.handler_ref().rst_received, vec![(early, error_code::NO_ERROR)]);
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let next = p.post("/upload", body.clone());
        p.pump(closed(vec![next]));
        let s = &p.client.handler_ref().streams[&next];
        assert_eq!((s.status, s.closed), (Some(200), Some(0)));
        assert!(s.body == body);
        p.pump(|_| true);
        assert_eq!(p.server.open_streams(), 0);
    }

    #[test]
    fn upgraded_request_is_answered_on_stream_1() {
        let signal = Arc::new(Signal::new().unwrap());
        let mut fields = Vec::new();
        for (n, v) in [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/f?n=3000")] {
            fields.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        let mut b = RequestBuilder::new(Limits::default());
        for (n, v) in &fields {
            b.add(n, v).unwrap();
        }
        let head = b.finish(true).unwrap();
        let server = Session::new_upgraded(
            Settings::default(),
            signal,
            ThreadDispatch { handler: echo, threads: vec![], here: nowhere, outcomes: None },
            &[0, 3, 0, 0, 0, 100],
            head,
        )
        .unwrap();
        let mut client = ng::Session::new_client(Client::default(), &ng::Options::default()).unwrap();
        client.upgrade(&[0, 3, 0, 0, 0, 100], false).unwrap();
        let mut p = Pair { server, client, by_reference: true };
        // Scheduled as any request of a client that signals no priority.
        assert_eq!(p.priority(1), Some((DEFAULT_URGENCY, true)));
        p.pump(closed(vec![1]));
        let s = &p.client.handler_ref().streams[&1];
        assert_eq!((s.status, s.body.len()), (Some(200), 3000));
    }

    #[test]
    fn trailers_are_sent_after_body() {
        let mut p = Pair::new(Settings::default(), echo);
        let id = p.get("/trailers?n=5000");
        p.pump(closed(vec![id]));
        let s = &p.client.handler_ref().streams[&id];
        assert_eq!(s.body.len(), 5000);
        assert_eq!(s.trailers, vec![(b"grpc-status".to_vec(), b"0".to_vec())]);
    }

    #[test]
    fn limits_give_431() {
        let mut settings = Settings::default();
        settings.limits.max_fields = 2;
        let mut p = Pair::new(settings, echo);
        let mut h = Headers::new();
        for (n, v) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "t"),
            (":path", "/"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
        ] {
            h.push(n.as_bytes(), v.as_bytes());
        }
        let id = p.client.ops().submit_request::<Client>(&h, false).unwrap();
        p.pump(closed(vec![id]));
        assert_eq!(p.client.handler_ref().streams[&id].status, Some(431));
    }

    fn stall(stream: Arc<Stream>) {
        // Never answers; ends when the stream is aborted.
        while !stream.is_aborted() {
            let _ = stream.read_input(10, true, None);
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn client_reset_aborts_worker_and_frees_stream() {
        let mut p = Pair::new(Settings::default(), stall);
        let id = p.post("/stall", vec![1; 10]);
        p.pump(|_| true);
        p.pump(|_| true);
        p.client.ops().submit_rst_stream(id, error_code::CANCEL).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.server.open_streams() > 0 {
            p.pump(|_| true);
            assert!(std::time::Instant::now() < deadline, "worker not released");
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(p.server.stats().streams_reset_by_peer, 1);
    }

    /// What the log says when a connection ends: the GOAWAY we sent, with
    /// nghttp2's reason for a protocol error, and the client's.
    #[test]
    fn goaways_of_both_sides_are_noted_for_the_log() {
        let mut p = Pair::new(Settings::default(), echo);
        let id = p.get("/f?n=10");
        p.pump(closed(vec![id]));
        assert_eq!(p.server.goaways(), Goaways::default());
        // DATA on stream 0 is a connection error (RFC 9113 6.1).
        let _ = p.server.recv(&[0, 0, 1, 0, 0, 0, 0, 0, 0, b'x']);
        let _ = p.server.collect_output(&mut Frames::default(), 1 << 20);
        let g = p.server.goaways();
        let (code, last, debug) = g.sent.clone().expect("no GOAWAY sent");
        assert_eq!((code, last), (error_code::PROTOCOL_ERROR, id));
        assert!(debug.contains("DATA"), "{debug:?}");
        assert!(g.to_string().starts_with("GOAWAY sent: PROTOCOL_ERROR, last stream 1 (\""), "{g}");
        assert!(g.to_string().ends_with("; no GOAWAY received"), "{g}");

        let mut p = Pair::new(Settings::default(), echo);
        let id = p.get("/f?n=10");
        p.pump(closed(vec![id]));
        p.client.ops().terminate(error_code::ENHANCE_YOUR_CALM).unwrap();
        for _ in 0..10 {
            p.step(usize::MAX);
        }
        let g = p.server.goaways();
        assert_eq!(g.received, Some((error_code::ENHANCE_YOUR_CALM, 0)));
        assert!(g.to_string().ends_with("; GOAWAY received: ENHANCE_YOUR_CALM, last stream 0"), "{g}");
    }

    #[test]
    fn goaway_lets_open_streams_finish() {
        let mut p = Pair::new(Settings::default(), echo);
        let id = p.get("/f?n=200000");
        p.pump(|_| true);
        p.server.goaway(error_code::NO_ERROR, b"");
        p.pump(closed(vec![id]));
        assert_eq!(p.client.handler_ref().goaway, Some(0));
        assert_eq!(p.client.handler_ref().streams[&id].body.len(), 200_000);
    }

    /// Graceful shutdown in two steps: a request the client sent before it
    /// saw the notice is served; the final GOAWAY names it.
    #[test]
    fn shutdown_notice_then_goaway_refuses_nothing_in_flight() {
        let mut p = Pair::new(Settings::default(), echo);
        let first = p.get("/f?n=100");
        p.pump(closed(vec![first]));
        assert!(p.server.shutdown_notice());
        // On the wire before the client reads the notice.
        let second = p.get("/f?n=300");
        p.pump(|c| c.goaways.len() == 1);
        assert_eq!(p.client.handler_ref().goaways, vec![(i32::MAX, error_code::NO_ERROR)]);
        // nghttp2's client answered the PING; the server sees the ACK.
        for _ in 0..10 {
            if p.server.shutdown_notice_acked() {
                break;
            }
            p.step(usize::MAX);
        }
        assert!(p.server.shutdown_notice_acked(), "the client's PING ACK did not arrive");
        p.server.goaway(error_code::NO_ERROR, b"");
        p.pump(closed(vec![second]));
        // What went out, not what the client parsed: when the worker was
        // quick and the second stream was done before the final GOAWAY,
        // nghttp2's client, which then has no stream and has seen a GOAWAY,
        // discards every frame that follows (it "closes"), so its list held
        // the notice only (1 in ~40 runs of the unit suite under load).
        let sent = p.server.goaways().sent.map(|(code, last, _)| (code, last));
        assert_eq!(sent, Some((error_code::NO_ERROR, second)));
        let client = p.client.handler_ref();
        assert_eq!(client.goaways[0], (i32::MAX, error_code::NO_ERROR));
        assert_eq!((client.streams[&second].closed, client.streams[&second].body.len()), (Some(0), 300));
        assert!(!p.server.shutdown_notice(), "no second notice after the final GOAWAY");
    }

    /// More uploads at once than run at once, each larger than its
    /// stream's window, with c1's connection window (every stream's window
    /// at once): the streams waiting for their turn hold nearly all of the
    /// connection's window with their first bytes. It is given back as
    /// DATA arrives, so the running ones get the rest of their bodies.
    /// (Given back as streams consumed, nothing moved again: the running
    /// streams could never consume the half of it that a WINDOW_UPDATE
    /// for the connection waits for.)
    #[test]
    fn uploads_beyond_the_running_streams_never_stall_the_connection_window() {
        let settings = Settings { initial_window_size: 65535, connection_window: 100 * 65535, ..Settings::default() };
        let mut p = Pair::new(settings, echo);
        let body: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
        let ids: Vec<i32> = (0..100).map(|_| p.post("/up", body.clone())).collect();
        p.pump_like_c1(closed(ids.clone()));
        for id in ids {
            let s = &p.client.handler_ref().streams[&id];
            assert_eq!((s.closed, s.body == body), (Some(0), true), "stream {id}");
        }
    }

    /// Submits a POST declaring `content_length`, with `body` and, if given,
    /// trailers after it.
    fn post_declared(p: &mut Pair, content_length: &str, body: Vec<u8>, trailers: bool) -> i32 {
        let mut h = Headers::new();
        for (n, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "t"),
            (":path", "/"),
            ("content-length", content_length),
        ] {
            h.push(n.as_bytes(), v.as_bytes());
        }
        let id = p.client.ops().submit_request::<Client>(&h, true).unwrap();
        p.client.handler().upload.insert(id, (body, 0));
        if trailers {
            let mut t = Headers::new();
            t.push(b"x-checksum", b"1");
            p.client.handler().upload_trailers.insert(id, t);
        }
        id
    }

    #[test]
    fn content_length_mismatch_is_reset() {
        let mut p = Pair::new(Settings::default(), echo);
        let id = post_declared(&mut p, "3", vec![7; 10], false);
        p.pump(closed(vec![id]));
        assert_eq!(p.client.handler_ref().streams[&id].closed, Some(error_code::PROTOCOL_ERROR));
    }

    /// RFC 9113 8.1.1 holds whichever frame ends the body: trailers after
    /// fewer bytes than declared reset the stream, as END_STREAM on DATA
    /// does; after exactly the declared bytes they are a request.
    #[test]
    fn trailers_that_end_a_body_short_of_its_length_reset_the_stream() {
        let mut p = Pair::new(Settings::default(), echo);
        let short = post_declared(&mut p, "10", vec![7; 4], true);
        let exact = post_declared(&mut p, "4", vec![7; 4], true);
        p.pump(closed(vec![short, exact]));
        let client = p.client.handler_ref();
        assert_eq!(client.streams[&short].closed, Some(error_code::PROTOCOL_ERROR));
        assert_eq!((client.streams[&exact].closed, &client.streams[&exact].body[..]), (Some(0), &[7u8; 4][..]));
    }

    /// Trailers that come while their stream waits for a worker are held
    /// with the waiting heads and bounded with them (HPACK amplification:
    /// 64 KiB of trailers each for 100 waiting streams would be ~6 MiB):
    /// beyond the budget a stream is refused, as a new head would be.
    #[test]
    fn trailers_of_waiting_streams_are_bounded_with_their_heads() {
        let settings = Settings { max_active_streams: 1, ..Settings::default() };
        let mut p = Pair::new(settings, stall);
        let value = vec![b'v'; 8000];
        let ids: Vec<i32> = (0..30)
            .map(|_| {
                let id = post_declared(&mut p, "1", vec![7], false);
                let mut t = Headers::new();
                for i in 0..7 {
                    t.push(format!("x-t{i}").as_bytes(), &value);
                }
                p.client.handler().upload_trailers.insert(id, t);
                id
            })
            .collect();
        let refused = |c: &Client| c.streams.values().filter(|s| s.closed == Some(error_code::REFUSED_STREAM)).count();
        p.pump(|c| refused(c) > 0);
        for _ in 0..20 {
            p.pump(|_| true);
        }
        // 29 wait (one runs), ~56 KiB of trailers each: about 18 fit.
        let n = refused(p.client.handler_ref());
        assert!((5..=15).contains(&n), "{n} refused");
        let core = p.server.ng.handler_ref();
        assert!(core.pending.head_bytes <= limits::MAX_PENDING_HEAD_BYTES, "{}", core.pending.head_bytes);
        for id in ids {
            p.client.ops().submit_rst_stream(id, error_code::CANCEL).unwrap();
        }
    }

    /// Streams reset for a body that breaks its content-length are charged
    /// to the bad-request budget as malformed heads are (MadeYouReset): a
    /// client making them at will is ended with ENHANCE_YOUR_CALM. Once per
    /// stream: an overrun that goes on to END_STREAM counts once.
    #[test]
    fn length_mismatches_at_will_end_with_enhance_your_calm() {
        let mut p = Pair::new(Settings::default(), echo);
        let mut sent = 0;
        while sent < limits::BAD_REQUEST_RATE.burst as usize + 100 && p.client.handler_ref().goaway.is_none() {
            let ids: Vec<i32> = (0..50).map(|i| post_declared(&mut p, "3", vec![7; 10], i % 2 == 0)).collect();
            sent += ids.len();
            p.pump(|c| {
                c.goaway.is_some() || ids.iter().all(|id| c.streams.get(id).is_some_and(|s| s.closed.is_some()))
            });
        }
        p.pump(|c| c.goaway.is_some());
        assert_eq!(p.client.handler_ref().goaway, Some(error_code::ENHANCE_YOUR_CALM));
        assert!(sent > limits::BAD_REQUEST_RATE.burst as usize, "calmed after {sent} streams");
    }

    /// A worker that refuses (mod_ssl wanting a renegotiation): the
    /// stream is reset with its code, nothing of what it wrote is sent,
    /// and the stream is released.
    #[test]
    fn a_refusal_resets_the_stream_with_its_code() {
        fn refusing(stream: Arc<Stream>) {
            if stream.request.path.as_deref() != Some(b"/needs-renegotiation") {
                return echo(stream);
            }
            stream.refuse(error_code::HTTP_1_1_REQUIRED).unwrap();
            let _ = stream.write_output(b"not for the client");
            stream.end_output(None);
        }
        let mut p = Pair::new(Settings::default(), refusing);
        let id = p.get("/needs-renegotiation");
        p.pump(closed(vec![id]));
        let client = p.client.handler_ref();
        assert_eq!(client.streams[&id].closed, Some(error_code::HTTP_1_1_REQUIRED));
        assert!(client.streams[&id].status.is_none() && client.streams[&id].body.is_empty());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.server.open_streams() > 0 {
            p.pump(|_| true);
            assert!(std::time::Instant::now() < deadline, "refused stream not released");
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(p.server.stats().streams_reset_by_us, 1);
        // The connection goes on.
        let next = p.get("/after");
        p.pump(closed(vec![next]));
        assert_eq!(p.client.handler_ref().streams[&next].closed, Some(error_code::NO_ERROR));
    }

    /// Our own resets of running streams (a refusal, here while its
    /// handler still runs) are not the client's: they neither count as
    /// its resets (h2status) nor cost it workers. A client's RST_STREAM
    /// does both, NO_ERROR included.
    #[test]
    fn only_the_clients_resets_count_as_its_resets() {
        fn refuse_or_stall(stream: Arc<Stream>) {
            match stream.request.path.as_deref() {
                Some(b"/refuse") => {
                    stream.refuse(error_code::HTTP_1_1_REQUIRED).unwrap();
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    while !stream.is_aborted() && std::time::Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                Some(b"/stall") => stall(stream),
                _ => echo(stream),
            }
        }
        let settings = Settings { max_active_streams: 40, ..Settings::default() };
        let mut p = Pair::new(settings, refuse_or_stall);
        let ids: Vec<i32> = (0..60).map(|_| p.get("/f?n=10")).collect();
        p.pump(closed(ids));
        assert_eq!(p.server.ng.handler_ref().active_limit, 40);
        let refused = p.get("/refuse");
        p.pump(closed(vec![refused]));
        assert_eq!(p.client.handler_ref().streams[&refused].closed, Some(error_code::HTTP_1_1_REQUIRED));
        assert_eq!(p.server.stats().streams_reset_by_peer, 0);
        assert_eq!(p.server.ng.handler_ref().active_limit, 40);
        let stalled = p.get("/stall");
        p.pump(|_| true);
        p.pump(|_| true);
        p.client.ops().submit_rst_stream(stalled, error_code::NO_ERROR).unwrap();
        p.pump(|_| true);
        p.pump(|_| true);
        assert_eq!(p.server.stats().streams_reset_by_peer, 1);
        assert_eq!(p.server.ng.handler_ref().active_limit, 16);
    }

    #[test]
    fn rapid_reset_ends_with_enhance_your_calm() {
        let mut p = Pair::new(Settings::default(), stall);
        for _ in 0..(limits::RST_RATE.burst as usize / 50 + 2) {
            // HEADERS out first (nghttp2 sends no RST for a stream it never
            // opened), then the resets.
            let ids: Vec<i32> = (0..50).map(|_| p.get("/stall")).collect();
            let mut c2s = client_bytes(&mut p.client);
            for id in ids {
                p.client.ops().submit_rst_stream(id, error_code::CANCEL).unwrap();
            }
            c2s.extend_from_slice(&client_bytes(&mut p.client));
            let _ = p.server.recv(&c2s);
            p.pump(|_| true);
            if p.client.handler_ref().goaway.is_some() {
                break;
            }
        }
        p.pump(|c| c.goaway.is_some());
        assert_eq!(p.client.handler_ref().goaway, Some(error_code::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn resets_of_closed_streams_do_not_spend_the_rapid_reset_budget() {
        fn stall_or_echo(stream: Arc<Stream>) {
            if stream.request.path.as_deref() == Some(b"/stall") {
                stall(stream)
            } else {
                echo(stream)
            }
        }
        let mut p = Pair::new(Settings::default(), stall_or_echo);
        let id = p.get("/stall");
        p.pump(|_| true);
        p.client.ops().submit_rst_stream(id, error_code::CANCEL).unwrap();
        p.pump(|_| true);
        // What a client sends for each late DATA frame of the stream it reset.
        let mut late = Vec::new();
        for _ in 0..(limits::RST_RATE.burst as usize + 200) {
            late.extend_from_slice(&[0, 0, 4, frame_type::RST_STREAM, 0]);
            late.extend_from_slice(&(id as u32).to_be_bytes());
            late.extend_from_slice(&error_code::STREAM_CLOSED.to_be_bytes());
        }
        let _ = p.server.recv(&late);
        p.pump(|_| true);
        assert_eq!(p.client.handler_ref().goaway, None);
        let next = p.get("/after");
        p.pump(closed(vec![next]));
        assert_eq!(p.client.handler_ref().streams[&next].closed, Some(error_code::NO_ERROR));
    }

    /// A client that opens the connection's window but keeps its streams'
    /// at 1 KiB: each handler gives up waiting for room (H2StreamTimeout),
    /// and the connection gets fewer workers, as for resets of running
    /// streams. Before, it kept its whole share of workers, each held for a
    /// timeout, stream after stream (the connection-level defence did not
    /// see a window that was open).
    #[test]
    fn streams_starved_by_their_own_window_cost_the_connection_workers() {
        let settings = Settings { stream_timeout: Duration::from_millis(200), ..Settings::default() };
        let options = ng::Options { manual_window_update: true, ..ng::Options::default() };
        let mut p = Pair::with_client(settings, echo, &[(ng::settings_id::INITIAL_WINDOW_SIZE, 1024)], &options);
        p.client.handler().hold_windows = true;
        let before = p.server.ng.handler_ref().active_limit;
        assert!(before > limits::MIN_ACTIVE_STREAMS);
        let ids: Vec<i32> = (0..6).map(|_| p.get("/big?n=1000000")).collect();
        p.pump(closed(ids.clone()));
        for id in ids {
            assert_eq!(p.client.handler_ref().streams[&id].closed, Some(error_code::INTERNAL_ERROR));
        }
        assert_eq!(p.server.ng.handler_ref().active_limit, limits::MIN_ACTIVE_STREAMS);
        assert_eq!(p.client.handler_ref().goaway, None, "the connection goes on");
    }

    #[test]
    fn zero_window_client_gets_one_worker() {
        let mut p = Pair::new(Settings::default(), stall);
        p.client.ops().submit_settings(&[(ng::settings_id::INITIAL_WINDOW_SIZE, 0)]).unwrap();
        p.pump(|_| true);
        let _ids: Vec<i32> = (0..10).map(|_| p.get("/stall")).collect();
        for _ in 0..5 {
            p.pump(|_| true);
        }
        assert_eq!(p.server.stats().streams_dispatched, limits::ZERO_WINDOW_ACTIVE_STREAMS as u64);
    }

    /// Streams the dispatcher would run here go to workers while the client
    /// lets nothing out (their responses would pile up, unbounded, on c1),
    /// and run here again once it opens its window.
    #[test]
    fn a_zero_window_client_gets_no_streams_run_here() {
        static INLINE_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        fn counting(stream: Arc<Stream>) {
            if stream.runs_inline() {
                INLINE_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            echo(stream)
        }
        let mut p = Pair::new(Settings::default(), counting);
        p.server.dispatcher().here = |_| true;
        p.client.ops().submit_settings(&[(ng::settings_id::INITIAL_WINDOW_SIZE, 0)]).unwrap();
        p.pump(|_| true);
        let shut = p.get("/f?n=10");
        for _ in 0..5 {
            p.pump(|_| true);
            p.server.run_here(usize::MAX);
        }
        assert_eq!(p.server.stats().streams_dispatched, 1);
        assert_eq!(INLINE_RUNS.load(std::sync::atomic::Ordering::SeqCst), 0);
        p.client.ops().submit_settings(&[(ng::settings_id::INITIAL_WINDOW_SIZE, 1 << 20)]).unwrap();
        let open = p.get("/g?n=10");
        p.pump(|_| true);
        p.server.run_here(usize::MAX);
        p.pump(closed(vec![shut, open]));
        assert_eq!(INLINE_RUNS.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(p.client.handler_ref().streams[&open].body.len(), 10);
        assert_eq!(p.client.handler_ref().streams[&shut].body.len(), 10);
    }

    #[test]
    fn malformed_request_is_reset_with_protocol_error() {
        let mut p = Pair::new(Settings::default(), echo);
        let mut h = Headers::new();
        // nghttp2's client side does not validate what it sends.
        for (n, v) in [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/"), ("te", "gzip")] {
            h.push(n.as_bytes(), v.as_bytes());
        }
        let id = p.client.ops().submit_request::<Client>(&h, false).unwrap();
        p.pump(closed(vec![id]));
        assert_eq!(p.client.handler_ref().streams[&id].closed, Some(error_code::PROTOCOL_ERROR));
        // The connection lives on.
        let id2 = p.get("/f?n=10");
        p.pump(closed(vec![id2]));
        assert_eq!(p.client.handler_ref().streams[&id2].body.len(), 10);
    }
}

#[cfg(test)]
mod pending_tests {
    use super::*;
    use crate::request::RequestHead;
    use crate::signal::Signal;

    fn stream(id: i32, urgency: u8, tunnel: bool) -> Arc<Stream> {
        let mut req = RequestHead { end_stream: true, urgency, ..Default::default() };
        if tunnel {
            req.method = crate::text::ShortBytes::new(b"CONNECT");
        }
        let signal = Arc::new(Signal::new().unwrap());
        Arc::new(Stream::new(id, Box::new(req), signal, 1024, Duration::from_secs(5), true))
    }

    /// Streams waiting for a worker start most urgent first, in arrival
    /// order within an urgency (most clients send no `priority`: all 3,
    /// arrival order as before).
    #[test]
    fn waiting_streams_start_by_urgency_then_arrival() {
        let mut pending = PendingStreams::default();
        for (id, urgency) in [(1, 5), (3, 3), (5, 5), (7, 0), (9, 3), (11, 7)] {
            pending.push(stream(id, urgency, false));
        }
        assert_eq!(pending.len(), 6);
        let order: Vec<i32> = std::iter::from_fn(|| pending.pop_next()).map(|s| s.id).collect();
        assert_eq!(order, [7, 3, 9, 1, 5, 11]);
        assert!(pending.is_empty() && pending.head_bytes == 0);
    }

    #[test]
    fn taking_some_keeps_the_others_in_order_and_the_totals_right() {
        let mut pending = PendingStreams::default();
        for (id, urgency, tunnel) in [(1, 5, false), (3, 1, true), (5, 5, true), (7, 1, false)] {
            pending.push(stream(id, urgency, tunnel));
        }
        assert_eq!(pending.tunnels, 2);
        let tunnels: Vec<i32> = pending.take_tunnels().iter().map(|s| s.id).collect();
        assert_eq!(tunnels, [3, 5]);
        assert_eq!((pending.len(), pending.tunnels), (2, 0));
        let order: Vec<i32> = std::iter::from_fn(|| pending.pop_next()).map(|s| s.id).collect();
        assert_eq!(order, [7, 1]);
    }

    #[test]
    fn trailers_are_charged_while_their_stream_waits_and_released_with_it() {
        let mut pending = PendingStreams::default();
        let (waiting, running) = (stream(1, 3, false), stream(3, 3, false));
        pending.push(waiting.clone());
        let head = pending.head_bytes;
        // A stream not in the queue is not charged.
        assert!(pending.charge_trailers(&running, 1000));
        assert_eq!(pending.head_bytes, head);
        assert!(pending.charge_trailers(&waiting, 1000));
        assert_eq!(pending.head_bytes, head + 1000);
        assert!(!pending.charge_trailers(&waiting, limits::MAX_PENDING_HEAD_BYTES));
        assert_eq!(pending.head_bytes, head + 1000);
        assert_eq!(pending.pop_next().map(|s| s.id), Some(1));
        assert_eq!((pending.head_bytes, pending.trailer_bytes.len()), (0, 0));
    }
}
