//! A safe wrapper around an nghttp2 session (libnghttp2-sys, which bundles
//! nghttp2 1.68 with the rapid-reset and CONTINUATION-flood defences).
//!
//! The session is driven by memory I/O only (`mem_recv`/`mem_send`): the
//! caller owns the socket. nghttp2 reports what it parsed through callbacks;
//! they reach a [`Handler`] with an [`Ops`] handle for the calls nghttp2
//! allows from inside a callback (submit RST_STREAM, trailers...). All
//! `unsafe` needed to talk to nghttp2 lives in this file; every callback
//! runs behind the panic boundary.
//!
//! nghttp2 is not thread-safe: a session is used by one thread at a time
//! (the thread that drives the client connection).

use crate::alloc::nghttp2_mem::FrameBufWatch;
use crate::frames::Frames;
use crate::limits;
use crate::stream::{Headers, KNOWN_NAMES, KNOWN_SET_COOKIE};
use libnghttp2_sys as ng;
use std::ffi::{c_int, c_void};
use std::marker::PhantomData;
use std::ptr;

/// `Handler::invalid_frame`'s reason for a new stream nghttp2 refused
/// (beyond the SETTINGS_MAX_CONCURRENT_STREAMS not yet acknowledged).
pub const LIB_ERR_REFUSED_STREAM: i32 = ng::NGHTTP2_ERR_REFUSED_STREAM;
/// A frame larger than allowed (a header block beyond
/// `Options::max_send_header_block`).
pub const LIB_ERR_FRAME_SIZE_ERROR: i32 = ng::NGHTTP2_ERR_FRAME_SIZE_ERROR;

/// HTTP/2 error codes (RFC 9113 section 7).
pub mod error_code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    pub const INADEQUATE_SECURITY: u32 = 0xc;
    pub const HTTP_1_1_REQUIRED: u32 = 0xd;
}

/// The name RFC 9113 gives an error code (7), for the log; nghttp2's table
/// (`nghttp2_http2_strerror`), with the number for a code it does not know.
pub fn error_code_name(code: u32) -> std::borrow::Cow<'static, str> {
    // SAFETY: nghttp2_http2_strerror returns a static NUL-terminated string
    // for any code.
    let name = unsafe { std::ffi::CStr::from_ptr(ng::nghttp2_http2_strerror(code)) };
    match name.to_str() {
        Ok(known) if known != "unknown" => std::borrow::Cow::Borrowed(known),
        _ => std::borrow::Cow::Owned(format!("error 0x{code:x}")),
    }
}

/// A sent GOAWAY's debug text, for the log: at most 200 bytes (nghttp2's
/// texts are short, ours are ours), lossy UTF-8.
pub fn goaway_debug_text(debug: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(&debug[..debug.len().min(200)])
}

/// The last GOAWAY each side sent on a connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Goaways {
    /// Ours: error code, last stream id, debug text (nghttp2 names the
    /// protocol error there).
    pub sent: Option<(u32, i32, String)>,
    /// The client's: error code, last stream id.
    pub received: Option<(u32, i32)>,
}

impl Goaways {
    // Not generic, unlike the session's callbacks that call them: kept
    // out of the code generated for each session type.
    #[cold]
    #[inline(never)]
    pub fn note_received(slot: &mut Option<Box<Goaways>>, frame: &FrameInfo) {
        slot.get_or_insert_with(Default::default).received = Some((frame.error_code, frame.named_stream_id));
    }

    #[cold]
    #[inline(never)]
    pub fn note_sent(slot: &mut Option<Box<Goaways>>, frame: &FrameInfo, debug: &[u8]) {
        let debug = goaway_debug_text(debug).into_owned();
        slot.get_or_insert_with(Default::default).sent = Some((frame.error_code, frame.named_stream_id, debug));
    }
}

impl std::fmt::Display for Goaways {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sent {
            Some((code, last, debug)) => {
                write!(f, "GOAWAY sent: {}, last stream {last}", error_code_name(*code))?;
                if !debug.is_empty() {
                    write!(f, " ({debug:?})")?;
                }
            }
            None => write!(f, "no GOAWAY sent")?,
        }
        match self.received {
            Some((code, last)) => write!(f, "; GOAWAY received: {}, last stream {last}", error_code_name(code)),
            None => write!(f, "; no GOAWAY received"),
        }
    }
}

/// Frame types (RFC 9113 section 6).
pub mod frame_type {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    /// RFC 9218 7.1.
    pub const PRIORITY_UPDATE: u8 = 0x10;
}

pub mod flags {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// SETTINGS identifiers.
pub mod settings_id {
    pub const HEADER_TABLE_SIZE: i32 = 0x1;
    pub const ENABLE_PUSH: i32 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: i32 = 0x3;
    pub const INITIAL_WINDOW_SIZE: i32 = 0x4;
    pub const MAX_FRAME_SIZE: i32 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: i32 = 0x6;
    pub const ENABLE_CONNECT_PROTOCOL: i32 = 0x8;
    pub const NO_RFC7540_PRIORITIES: i32 = 0x9;
}

/// HEADERS categories as nghttp2 classifies them.
pub mod headers_category {
    pub const REQUEST: u32 = 0;
    pub const RESPONSE: u32 = 1;
    pub const PUSH_RESPONSE: u32 = 2;
    pub const HEADERS: u32 = 3;
}

/// The parts of a frame the session logic looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameInfo {
    pub kind: u8,
    pub stream_id: i32,
    pub flags: u8,
    pub length: usize,
    /// HEADERS only.
    pub headers_category: u32,
    /// RST_STREAM and GOAWAY only.
    pub error_code: u32,
    /// The stream a frame on stream 0 names: GOAWAY's last stream id,
    /// PRIORITY_UPDATE's prioritized stream. (One field: FrameInfo's size
    /// sets the frames of nghttp2's callbacks, on every request's path.)
    pub named_stream_id: i32,
}

impl FrameInfo {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// # Safety
    /// `frame` must point at a frame nghttp2 passed to a callback.
    unsafe fn from_raw(frame: *const ng::nghttp2_frame) -> FrameInfo {
        // SAFETY: every union member starts with the frame header; the
        // type-specific members are read only for their frame type.
        unsafe {
            let hd = (*frame).hd;
            let mut info = FrameInfo {
                kind: hd.type_,
                stream_id: hd.stream_id,
                flags: hd.flags,
                length: hd.length,
                ..Default::default()
            };
            match hd.type_ {
                frame_type::HEADERS => info.headers_category = (*frame).headers.cat,
                frame_type::RST_STREAM => info.error_code = (*frame).rst_stream.error_code,
                frame_type::GOAWAY => {
                    info.error_code = (*frame).goaway.error_code;
                    info.named_stream_id = (*frame).goaway.last_stream_id;
                }
                frame_type::PRIORITY_UPDATE => info.named_stream_id = prioritized_stream_id(frame),
                _ => {}
            }
            info
        }
    }
}

/// The stream a PRIORITY_UPDATE frame names. Out of line: inlined into
/// `FrameInfo::from_raw`, it reshuffled the inlining of nghttp2's
/// callbacks, and the session's stack on every request's path grew by a
/// page (test_build.py).
///
/// # Safety
/// `frame` must be a PRIORITY_UPDATE nghttp2 passed to a callback.
#[cold]
#[inline(never)]
unsafe fn prioritized_stream_id(frame: *const ng::nghttp2_frame) -> i32 {
    // SAFETY: a builtin extension: nghttp2 points the payload at its
    // inbound frame's own storage and parses the frame into it before any
    // callback that passes the frame (begin_frame passes only the header);
    // null is checked all the same.
    unsafe {
        let update = (*frame).ext.payload as *const ng::nghttp2_ext_priority_update;
        if update.is_null() {
            return 0;
        }
        (*update).stream_id
    }
}

/// What a callback tells nghttp2 to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Reset the frame's stream with this error code.
    ResetStream(u32),
    /// Tear the whole session down.
    Fatal,
}

/// Answer of the data source for one DATA frame.
#[derive(Debug, PartialEq, Eq)]
pub enum DataRead {
    /// `n` bytes were written to the buffer. `eof`: the body ends here.
    /// `trailers`: send them after the body (the DATA frame then has no
    /// END_STREAM; the trailing HEADERS frame carries it).
    Data { n: usize, eof: bool, trailers: Option<Headers> },
    /// `n` bytes are ready but were not copied: nghttp2 calls
    /// `Handler::send_data` to write the frame's payload straight into the
    /// output (one copy less per byte, and file regions are read directly
    /// into it).
    NoCopy { n: usize, eof: bool, trailers: Option<Headers> },
    /// No data yet: nghttp2 parks the stream until `resume_data`.
    Deferred,
    /// Reset the stream (INTERNAL_ERROR).
    Error,
}

/// The session logic, called by nghttp2 while it parses or serializes.
pub trait Handler {
    /// A frame header arrived (before its payload).
    fn begin_frame(&mut self, _ops: &mut Ops<'_>, _frame: &FrameInfo) {}
    fn begin_headers(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo) -> Flow;
    fn header(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo, name: &[u8], value: &[u8]) -> Flow;
    fn frame_recv(&mut self, ops: &mut Ops<'_>, frame: &FrameInfo) -> Flow;
    fn data_chunk(&mut self, ops: &mut Ops<'_>, stream_id: i32, data: &[u8]) -> Flow;
    fn stream_close(&mut self, ops: &mut Ops<'_>, stream_id: i32, error_code: u32) -> Flow;
    fn read_data(&mut self, ops: &mut Ops<'_>, stream_id: i32, buf: &mut [u8]) -> DataRead;
    /// Appends `length` payload bytes of a DATA frame announced with
    /// `DataRead::NoCopy` to `out` (the frame header and padding are
    /// written around them). False: the bytes are not there (the stream is
    /// reset).
    fn send_data(&mut self, _stream_id: i32, _length: usize, _out: &mut Frames) -> bool {
        false
    }
    fn frame_sent(&mut self, _ops: &mut Ops<'_>, _frame: &FrameInfo) {}
    /// The peer's GOAWAY arrived (before `frame_recv` sees it). Apart from
    /// `frame_recv`, whose stack frame lies under every request.
    fn goaway_received(&mut self, _frame: &FrameInfo) {}
    /// A GOAWAY went out (after `frame_sent`), with its debug text: nghttp2
    /// names there the protocol error it ended the connection for.
    fn goaway_sent(&mut self, _frame: &FrameInfo, _debug: &[u8]) {}
    /// Total payload length (with padding) for a frame about to be sent,
    /// at most `max_payload` (only called with `Options::padding`).
    fn padded_length(&mut self, frame: &FrameInfo, _max_payload: usize) -> usize {
        frame.length
    }
    /// nghttp2 found a received frame invalid and answered it itself;
    /// `lib_error` says why (`LIB_ERR_REFUSED_STREAM`, ...).
    fn invalid_frame(&mut self, _ops: &mut Ops<'_>, _frame: &FrameInfo, _lib_error: i32) {}
    /// A frame we submitted could not be sent (e.g. a header block over
    /// the limit).
    fn frame_not_sent(&mut self, _ops: &mut Ops<'_>, _frame: &FrameInfo, _lib_error: i32) {}
}

/// nghttp2's library error, with its description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NgError(pub i32);

impl NgError {
    pub fn message(&self) -> String {
        // SAFETY: nghttp2_strerror returns a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(ng::nghttp2_strerror(self.0)) }.to_string_lossy().into_owned()
    }

    /// The peer flooded us with frames that need answers (nghttp2's
    /// NGHTTP2_ERR_FLOODED): drop the connection at once.
    pub fn is_flood(&self) -> bool {
        self.0 == ng::NGHTTP2_ERR_FLOODED
    }

    /// Abuse nghttp2 detected on its own: a flood, or more CONTINUATION
    /// frames than `limits::MAX_CONTINUATIONS` (CVE-2024-27316).
    pub fn is_abuse(&self) -> bool {
        self.is_flood() || self.0 == ng::NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
    }

    pub fn is_bad_preface(&self) -> bool {
        self.0 == ng::NGHTTP2_ERR_BAD_CLIENT_MAGIC
    }
}

impl std::fmt::Display for NgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.0)
    }
}

fn check(rv: c_int) -> Result<(), NgError> {
    if rv < 0 {
        Err(NgError(rv))
    } else {
        Ok(())
    }
}

/// Session options beyond SETTINGS.
#[derive(Clone, Debug)]
pub struct Options {
    /// Window updates follow consumption (`consume`), not reception.
    pub manual_window_update: bool,
    /// Largest response header block we serialize.
    pub max_send_header_block: usize,
    /// Largest HPACK dynamic table we use for encoding.
    pub max_deflate_table: usize,
    /// RST_STREAM rate limit (burst, per second): rapid-reset defence.
    pub stream_reset_rate: (u64, u64),
    /// Maximum CONTINUATION frames per header block.
    pub max_continuations: usize,
    /// Maximum SETTINGS entries per frame.
    pub max_settings: usize,
    /// Maximum queued outbound PING/SETTINGS ACKs (flood defence).
    pub max_outbound_ack: usize,
    /// Rate limit of protocol "glitches" (burst, per second).
    pub glitch_rate: (u64, u64),
    /// Leave HTTP semantics checks to the caller. nghttp2 1.68 treats a
    /// malformed request field as a connection error (GOAWAY); RFC 9113
    /// 8.1.1 makes it a stream error, which the session code applies.
    pub no_http_messaging: bool,
    /// Ask the handler for frame padding (H2Padding).
    pub padding: bool,
    /// RFC 9218 extensible priorities (PRIORITY_UPDATE frames). nghttp2
    /// 1.68 schedules by these alone: RFC 7540's PRIORITY frames and
    /// dependency tree are parsed and ignored.
    pub extensible_priorities: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            manual_window_update: true,
            max_send_header_block: limits::directive::MAX_HEADER_BLOCK_LEN.1,
            max_deflate_table: limits::MAX_DEFLATE_TABLE,
            stream_reset_rate: (limits::NGHTTP2_RST_RATE.burst, limits::NGHTTP2_RST_RATE.per_sec),
            max_continuations: limits::MAX_CONTINUATIONS,
            max_settings: limits::MAX_SETTINGS,
            max_outbound_ack: limits::MAX_OUTBOUND_ACK,
            glitch_rate: (limits::GLITCH_RATE.burst, limits::GLITCH_RATE.per_sec),
            no_http_messaging: false,
            padding: false,
            extensible_priorities: false,
        }
    }
}

/// Operations on the session, usable inside callbacks and outside.
pub struct Ops<'a> {
    raw: *mut ng::nghttp2_session,
    _life: PhantomData<&'a mut ()>,
}

/// Pairs a response of up to this many fields passes to nghttp2 from the
/// stack (a `Vec` per response was a malloc and a free per request).
const INLINE_NV: usize = 24;

/// Calls `submit` with nghttp2 name/value pairs pointing into `fields` and
/// `status` (nghttp2 copies them on submit) or, for common names, at static
/// strings it does not copy (`KNOWN_NAMES`, `static_name`); NO_INDEX for
/// fields that must not enter the HPACK table. The pairs are built in
/// place on the stack (up to INLINE_NV; beyond, in a `Vec`): neither
/// initialized first nor moved (~430 instructions a response, callgrind).
/// Inlined (as `submit_response`): its frame holds the pairs.
#[inline(always)]
fn with_nv_list<R>(status: Option<&[u8]>, fields: &Headers, submit: impl FnOnce(&[ng::nghttp2_nv]) -> R) -> R {
    let n = fields.len() + status.is_some() as usize;
    let mut inline = [const { std::mem::MaybeUninit::<ng::nghttp2_nv>::uninit() }; INLINE_NV];
    let mut heap: Vec<ng::nghttp2_nv> = if n > INLINE_NV { Vec::with_capacity(n) } else { Vec::new() };
    let mut len = 0;
    let mut push = |known: Option<usize>, name: &[u8], value: &[u8], sensitive: bool| {
        let mut flags = if sensitive { ng::NGHTTP2_NV_FLAG_NO_INDEX } else { ng::NGHTTP2_NV_FLAG_NONE };
        // A common name is passed as a static string nghttp2 need not copy
        // nor lower-case (it does both for every other name); one the
        // `Headers` recorded by number needs no comparison to find it.
        let name = match known.map(|i| KNOWN_NAMES[i]).or_else(|| static_name(name)) {
            Some(stat) => {
                flags |= ng::NGHTTP2_NV_FLAG_NO_COPY_NAME;
                stat
            }
            None => name,
        };
        let nv = ng::nghttp2_nv {
            name: name.as_ptr() as *mut u8,
            value: value.as_ptr() as *mut u8,
            namelen: name.len(),
            valuelen: value.len(),
            flags: flags as u8,
        };
        if n > INLINE_NV {
            heap.push(nv);
        } else {
            inline[len].write(nv);
            len += 1;
        }
    };
    if let Some(s) = status {
        push(None, b":status", s, false);
    }
    for (known, name, value) in fields.known_iter() {
        let sensitive = match known {
            Some(i) => i == KNOWN_SET_COOKIE,
            None => name == b"set-cookie" || name == b"authorization",
        };
        push(known, name, value, sensitive);
    }
    if n > INLINE_NV {
        submit(&heap)
    } else {
        // SAFETY: `push` wrote the first `len` elements of `inline` (len
        // never exceeds INLINE_NV here: n counts every pair pushed), and
        // MaybeUninit<T> has T's layout.
        let pairs = unsafe { std::slice::from_raw_parts(inline.as_ptr() as *const ng::nghttp2_nv, len) };
        submit(pairs)
    }
}

/// The same lower-case name as a `'static` string, for the names most
/// responses carry. nghttp2 reads a name given with NO_COPY_NAME until the
/// frame is sent; a static string outlives every frame.
fn static_name(name: &[u8]) -> Option<&'static [u8]> {
    Some(match name {
        b":status" => b":status",
        b"date" => b"date",
        b"server" => b"server",
        b"content-type" => b"content-type",
        b"content-length" => b"content-length",
        b"last-modified" => b"last-modified",
        b"etag" => b"etag",
        b"accept-ranges" => b"accept-ranges",
        b"cache-control" => b"cache-control",
        b"expires" => b"expires",
        b"vary" => b"vary",
        b"content-encoding" => b"content-encoding",
        b"content-language" => b"content-language",
        b"content-range" => b"content-range",
        b"location" => b"location",
        b"set-cookie" => b"set-cookie",
        b"age" => b"age",
        b"link" => b"link",
        b"allow" => b"allow",
        b"access-control-allow-origin" => b"access-control-allow-origin",
        b"strict-transport-security" => b"strict-transport-security",
        b"x-content-type-options" => b"x-content-type-options",
        b"x-frame-options" => b"x-frame-options",
        _ => return None,
    })
}

fn status_bytes(status: u16) -> [u8; 3] {
    let s = status.clamp(100, 999);
    [b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8]
}

impl<'a> Ops<'a> {
    pub fn want_read(&self) -> bool {
        // SAFETY: `raw` is the live session this handle was made for.
        unsafe { ng::nghttp2_session_want_read(self.raw) != 0 }
    }

    pub fn want_write(&self) -> bool {
        // SAFETY: as above.
        unsafe { ng::nghttp2_session_want_write(self.raw) != 0 }
    }

    /// The highest stream id the peer opened that we processed.
    pub fn last_proc_stream_id(&self) -> i32 {
        // SAFETY: as above.
        unsafe { ng::nghttp2_session_get_last_proc_stream_id(self.raw) }
    }

    pub fn submit_settings(&mut self, entries: &[(i32, u32)]) -> Result<(), NgError> {
        let iv: Vec<ng::nghttp2_settings_entry> =
            entries.iter().map(|&(id, value)| ng::nghttp2_settings_entry { settings_id: id, value }).collect();
        // SAFETY: iv is a valid array of iv.len() entries; nghttp2 copies it.
        check(unsafe { ng::nghttp2_submit_settings(self.raw, ng::NGHTTP2_FLAG_NONE as u8, iv.as_ptr(), iv.len()) })
    }

    /// Sets our receive window for the connection (stream 0) or a stream.
    pub fn set_local_window_size(&mut self, stream_id: i32, size: i32) -> Result<(), NgError> {
        // SAFETY: live session; nghttp2 validates the values.
        check(unsafe {
            ng::nghttp2_session_set_local_window_size(self.raw, ng::NGHTTP2_FLAG_NONE as u8, stream_id, size)
        })
    }

    /// Submits a final response; with `body`, DATA frames are pulled from
    /// the handler's `read_data`, else HEADERS carries END_STREAM.
    /// Inlined into its one caller (`process_signals`): out of line, its
    /// 1 KiB frame (the field pairs) sat below the session's on every
    /// response's path, a stack page more per thread (test_build.py).
    #[inline(always)]
    pub fn submit_response<H: Handler>(
        &mut self,
        stream_id: i32,
        status: u16,
        fields: &Headers,
        body: bool,
    ) -> Result<(), NgError> {
        let status = status_bytes(status);
        let provider = ng::nghttp2_data_provider2 {
            source: ng::nghttp2_data_source { ptr: ptr::null_mut() },
            read_callback: Some(read_data_cb::<H>),
        };
        let dp = if body { &provider as *const _ } else { ptr::null() };
        with_nv_list(Some(&status), fields, |nva| {
            // SAFETY: nva points into `fields`/`status`, alive for the call
            // (nghttp2 copies the header data); the provider is copied too.
            check(unsafe { ng::nghttp2_submit_response2(self.raw, stream_id, nva.as_ptr(), nva.len(), dp) })
        })
    }

    /// Submits an interim (1xx) response.
    pub fn submit_interim(&mut self, stream_id: i32, status: u16, fields: &Headers) -> Result<(), NgError> {
        let status = status_bytes(status);
        with_nv_list(Some(&status), fields, |nva| {
            // SAFETY: as for submit_response; no priority spec, no user data.
            check(unsafe {
                ng::nghttp2_submit_headers(
                    self.raw,
                    ng::NGHTTP2_FLAG_NONE as u8,
                    stream_id,
                    ptr::null(),
                    nva.as_ptr(),
                    nva.len(),
                    ptr::null_mut(),
                )
            })
        })
    }

    /// Submits trailers (a HEADERS frame with END_STREAM).
    pub fn submit_trailer(&mut self, stream_id: i32, fields: &Headers) -> Result<(), NgError> {
        with_nv_list(None, fields, |nva| {
            // SAFETY: as for submit_response.
            check(unsafe { ng::nghttp2_submit_trailer(self.raw, stream_id, nva.as_ptr(), nva.len()) })
        })
    }

    pub fn submit_rst_stream(&mut self, stream_id: i32, error_code: u32) -> Result<(), NgError> {
        // SAFETY: live session.
        check(unsafe { ng::nghttp2_submit_rst_stream(self.raw, ng::NGHTTP2_FLAG_NONE as u8, stream_id, error_code) })
    }

    /// Takes a deferred stream back into the outgoing queue.
    pub fn resume_data(&mut self, stream_id: i32) -> Result<(), NgError> {
        // SAFETY: live session; nghttp2 checks the stream.
        check(unsafe { ng::nghttp2_session_resume_data(self.raw, stream_id) })
    }

    /// Tells flow control that `n` bytes of the stream's DATA were consumed
    /// (reopens the stream and connection windows).
    pub fn consume(&mut self, stream_id: i32, n: usize) -> Result<(), NgError> {
        // SAFETY: live session.
        check(unsafe { ng::nghttp2_session_consume(self.raw, stream_id, n) })
    }

    /// Only the stream's window.
    pub fn consume_stream(&mut self, stream_id: i32, n: usize) -> Result<(), NgError> {
        // SAFETY: live session; nghttp2 checks the stream id.
        check(unsafe { ng::nghttp2_session_consume_stream(self.raw, stream_id, n) })
    }

    /// Only the connection window.
    pub fn consume_connection(&mut self, n: usize) -> Result<(), NgError> {
        // SAFETY: live session.
        check(unsafe { ng::nghttp2_session_consume_connection(self.raw, n) })
    }

    pub fn submit_goaway(&mut self, error_code: u32, last_stream_id: i32, debug: &[u8]) -> Result<(), NgError> {
        // SAFETY: debug data is copied by nghttp2.
        check(unsafe {
            ng::nghttp2_submit_goaway(
                self.raw,
                ng::NGHTTP2_FLAG_NONE as u8,
                last_stream_id,
                error_code,
                debug.as_ptr(),
                debug.len(),
            )
        })
    }

    /// GOAWAY with this code and no further processing of the session.
    pub fn terminate(&mut self, error_code: u32) -> Result<(), NgError> {
        // SAFETY: live session.
        check(unsafe { ng::nghttp2_session_terminate_session(self.raw, error_code) })
    }

    /// Server side: GOAWAY with the highest stream id (RFC 9113 6.8), the
    /// first of a graceful shutdown's two; nghttp2 keeps accepting streams.
    pub fn submit_shutdown_notice(&mut self) -> Result<(), NgError> {
        // SAFETY: live session.
        check(unsafe { ng::nghttp2_submit_shutdown_notice(self.raw) })
    }

    pub fn submit_ping(&mut self, opaque: [u8; 8]) -> Result<(), NgError> {
        // SAFETY: opaque data is 8 bytes as required; copied by nghttp2.
        check(unsafe { ng::nghttp2_submit_ping(self.raw, ng::NGHTTP2_FLAG_NONE as u8, opaque.as_ptr()) })
    }

    /// Client side (the proxy's backend sessions, tests): submits a request; with `body`, DATA is pulled
    /// from `read_data`. Returns the new stream id.
    pub fn submit_request<H: Handler>(&mut self, fields: &Headers, body: bool) -> Result<i32, NgError> {
        let provider = ng::nghttp2_data_provider2 {
            source: ng::nghttp2_data_source { ptr: ptr::null_mut() },
            read_callback: Some(read_data_cb::<H>),
        };
        let dp = if body { &provider as *const _ } else { ptr::null() };
        let id = with_nv_list(None, fields, |nva| {
            // SAFETY: as for submit_response.
            unsafe { ng::nghttp2_submit_request2(self.raw, ptr::null(), nva.as_ptr(), nva.len(), dp, ptr::null_mut()) }
        });
        check(id)?;
        Ok(id)
    }

    /// Applies a request's RFC 9218 `priority` field to the stream's
    /// scheduling: urgency 0-7, and incremental (shares bandwidth with its
    /// urgency's other incremental streams) or not (sent whole, one after
    /// another); `priority::parse` says what is ignored. Returns the
    /// urgency.
    pub fn set_priority(&mut self, stream_id: i32, field: &[u8]) -> u8 {
        let pri = crate::priority::parse(field);
        self.set_stream_priority(stream_id, pri.urgency, pri.incremental);
        pri.urgency
    }

    /// Sets a stream's RFC 9218 urgency (0-7) and incremental flag.
    pub fn set_stream_priority(&mut self, stream_id: i32, urgency: u8, incremental: bool) {
        let pri = ng::nghttp2_extpri { urgency: urgency.min(7) as _, inc: incremental as _ };
        // SAFETY: live session; an unknown stream id is an error nghttp2
        // reports (ignored: the stream is gone, nothing to schedule).
        unsafe {
            ng::nghttp2_session_change_extpri_stream_priority(self.raw, stream_id, &pri, 0);
        }
    }

    /// A stream's RFC 9218 (urgency, incremental), if nghttp2 knows it.
    pub fn stream_priority(&self, stream_id: i32) -> Option<(u8, bool)> {
        let mut pri = ng::nghttp2_extpri { urgency: 0, inc: 0 };
        // SAFETY: live session; writes `pri` only.
        let rv = unsafe { ng::nghttp2_session_get_extpri_stream_priority(self.raw, &mut pri, stream_id) };
        (rv == 0).then_some((pri.urgency as u8, pri.inc != 0))
    }

    /// One of our settings as the peer acknowledged it (its default until
    /// then).
    pub fn local_setting(&self, id: i32) -> u32 {
        // SAFETY: live session; reads one setting.
        unsafe { ng::nghttp2_session_get_local_settings(self.raw, id as _) }
    }

    /// A setting the peer sent (its default where it sent none).
    pub fn remote_setting(&self, id: i32) -> u32 {
        // SAFETY: live session; reads one setting.
        unsafe { ng::nghttp2_session_get_remote_settings(self.raw, id as _) }
    }

    /// Client side: whether a new request may start on this session. Not
    /// once the peer sent GOAWAY, nor once nghttp2 ended the session itself
    /// (it answers a peer's connection error with GOAWAY and from then on
    /// refuses every new stream locally with REFUSED_STREAM), nor once the
    /// stream ids are used up.
    pub fn request_allowed(&self) -> bool {
        // SAFETY: live session; reads its state.
        unsafe { ng::nghttp2_session_check_request_allowed(self.raw) != 0 }
    }

    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS (nghttp2 assumes 100
    /// until the peer's first SETTINGS frame arrives).
    pub fn remote_max_concurrent(&self) -> u32 {
        self.remote_setting(settings_id::MAX_CONCURRENT_STREAMS)
    }

    /// Whether the stream is still known to nghttp2 (open or half-closed).
    pub fn stream_exists(&self, stream_id: i32) -> bool {
        // SAFETY: live session; the result is only compared with NULL.
        unsafe { !ng::nghttp2_session_find_stream(self.raw, stream_id).is_null() }
    }

    /// Whether the peer ended its side of the stream (END_STREAM received),
    /// or the stream is gone.
    pub fn remote_closed(&self, stream_id: i32) -> bool {
        // SAFETY: live session; nghttp2 looks the stream up by id and
        // returns -1 for an unknown one.
        unsafe { ng::nghttp2_session_get_stream_remote_close(self.raw, stream_id) != 0 }
    }

    /// Whether the peer gives us no flow-control window to send with:
    /// SETTINGS_INITIAL_WINDOW_SIZE of (next to) 0, or an exhausted
    /// connection window.
    pub fn peer_window_closed(&self) -> bool {
        // SAFETY: live session; plain getters.
        unsafe {
            ng::nghttp2_session_get_remote_settings(self.raw, ng::NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE)
                < crate::limits::USABLE_INITIAL_WINDOW
                || ng::nghttp2_session_get_remote_window_size(self.raw) <= 0
        }
    }

    /// (stream, connection) send windows the peer granted, for diagnostics.
    pub fn send_windows(&self, stream_id: i32) -> (i32, i32) {
        // SAFETY: live session; nghttp2 checks the stream id.
        unsafe {
            (
                ng::nghttp2_session_get_stream_remote_window_size(self.raw, stream_id),
                ng::nghttp2_session_get_remote_window_size(self.raw),
            )
        }
    }

    /// (stream, connection) receive windows: what the peer may still send
    /// (stream 0: the connection's alone).
    pub fn receive_windows(&self, stream_id: i32) -> (i32, i32) {
        // SAFETY: live session; nghttp2 checks the stream id (-1 for an
        // unknown one).
        unsafe {
            (
                ng::nghttp2_session_get_stream_effective_local_window_size(self.raw, stream_id),
                ng::nghttp2_session_get_effective_local_window_size(self.raw),
            )
        }
    }

    /// nghttp2's state of a stream it still knows.
    pub fn stream_state(&self, stream_id: i32) -> Option<ng::nghttp2_stream_proto_state> {
        // SAFETY: live session; the stream nghttp2 returns is only read,
        // at once, before anything could free it.
        unsafe {
            let stream = ng::nghttp2_session_find_stream(self.raw, stream_id);
            (!stream.is_null()).then(|| ng::nghttp2_stream_get_state(stream))
        }
    }
}

/// An nghttp2 session with its handler.
pub struct Session<H: Handler> {
    raw: *mut ng::nghttp2_session,
    ctx: Box<Ctx<H>>,
}

/// What nghttp2's callbacks reach through `user_data`: the handler, and
/// while `mem_send` runs, the buffer it fills (no-copy DATA frames are
/// written into it by `send_data_cb`, in order with the other frames).
struct Ctx<H> {
    handler: H,
    sink: *mut Frames,
    /// `mem_send`'s limit: a no-copy frame that reaches it pauses nghttp2
    /// (which would otherwise write every frame the windows allow in one
    /// call, a whole large file into memory).
    sink_limit: usize,
    /// The session's frame buffer, as its allocator hooks saw it made (the
    /// user data of the session's `nghttp2_mem`).
    frame_buf: FrameBufWatch,
}

impl<H> Ctx<H> {
    /// The context on the heap, its fields written there in place.
    /// `Box::new(Ctx { handler, .. })` built the context (with a session's
    /// `Core`, ~1 KiB) on the stack first, in a frame under which nghttp2's
    /// session set-up then ran: the deepest any c1 thread goes, and a stack
    /// page more per thread (test_build.py).
    #[inline(never)]
    fn boxed(handler: H) -> Box<Ctx<H>> {
        let mut ctx = Box::<Ctx<H>>::new_uninit();
        let p = ctx.as_mut_ptr();
        // SAFETY: `p` points at the box's uninitialized allocation, and
        // every field is written once, through raw field pointers (no
        // reference to uninitialized memory), before `assume_init`.
        unsafe {
            ptr::addr_of_mut!((*p).handler).write(handler);
            ptr::addr_of_mut!((*p).sink).write(ptr::null_mut());
            ptr::addr_of_mut!((*p).sink_limit).write(0);
            ptr::addr_of_mut!((*p).frame_buf).write(FrameBufWatch::default());
            ctx.assume_init()
        }
    }
}

impl<H: Handler> Session<H> {
    pub fn new_server(handler: H, options: &Options) -> Result<Session<H>, NgError> {
        Session::new(handler, options, true)
    }

    pub fn new_client(handler: H, options: &Options) -> Result<Session<H>, NgError> {
        Session::new(handler, options, false)
    }

    fn new(handler: H, options: &Options, server: bool) -> Result<Session<H>, NgError> {
        let mut ctx = Ctx::boxed(handler);
        // Both user data pointers (the callbacks' and the allocator's) come
        // from this one pointer to the boxed context.
        let ctx_ptr = &mut *ctx as *mut Ctx<H>;
        // nghttp2 allocates through the module's slabs; it copies the struct
        // into the session. The allocator's user data is the context's
        // watch, which outlives the session (see Drop).
        let mut mem = ng::nghttp2_mem {
            // SAFETY: a field address of the live context (no reference made).
            mem_user_data: unsafe { ptr::addr_of_mut!((*ctx_ptr).frame_buf) } as *mut c_void,
            malloc: Some(crate::alloc::nghttp2_mem::alloc),
            free: Some(crate::alloc::nghttp2_mem::free),
            calloc: Some(crate::alloc::nghttp2_mem::calloc),
            realloc: Some(crate::alloc::nghttp2_mem::realloc),
        };
        let mut callbacks: *mut ng::nghttp2_session_callbacks = ptr::null_mut();
        let mut opt: *mut ng::nghttp2_option = ptr::null_mut();
        let mut raw: *mut ng::nghttp2_session = ptr::null_mut();
        // SAFETY: standard nghttp2 set-up. The callbacks and options are
        // copied into the session and freed right after. The user data is
        // the boxed context, whose address is stable for the session's life
        // (the Box moves into the returned Session, the heap value does not).
        unsafe {
            check(ng::nghttp2_session_callbacks_new(&mut callbacks))?;
            ng::nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, Some(begin_frame_cb::<H>));
            ng::nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, Some(begin_headers_cb::<H>));
            ng::nghttp2_session_callbacks_set_on_header_callback(callbacks, Some(header_cb::<H>));
            ng::nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, Some(frame_recv_cb::<H>));
            ng::nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, Some(data_chunk_cb::<H>));
            ng::nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, Some(stream_close_cb::<H>));
            ng::nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, Some(frame_send_cb::<H>));
            ng::nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks, Some(invalid_frame_cb::<H>));
            ng::nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks, Some(frame_not_send_cb::<H>));
            ng::nghttp2_session_callbacks_set_send_data_callback(callbacks, Some(send_data_cb::<H>));
            if options.padding {
                ng::nghttp2_session_callbacks_set_select_padding_callback2(callbacks, Some(padding_cb::<H>));
            }
            if let Err(e) = check(ng::nghttp2_option_new(&mut opt)) {
                ng::nghttp2_session_callbacks_del(callbacks);
                return Err(e);
            }
            ng::nghttp2_option_set_no_auto_window_update(opt, options.manual_window_update as c_int);
            ng::nghttp2_option_set_max_send_header_block_length(opt, options.max_send_header_block);
            ng::nghttp2_option_set_max_deflate_dynamic_table_size(opt, options.max_deflate_table);
            ng::nghttp2_option_set_stream_reset_rate_limit(
                opt,
                options.stream_reset_rate.0,
                options.stream_reset_rate.1,
            );
            ng::nghttp2_option_set_max_continuations(opt, options.max_continuations);
            ng::nghttp2_option_set_max_settings(opt, options.max_settings);
            ng::nghttp2_option_set_max_outbound_ack(opt, options.max_outbound_ack);
            ng::nghttp2_option_set_glitch_rate_limit(opt, options.glitch_rate.0, options.glitch_rate.1);
            ng::nghttp2_option_set_no_http_messaging(opt, options.no_http_messaging as c_int);
            if options.extensible_priorities {
                ng::nghttp2_option_set_builtin_recv_extension_type(opt, ng::NGHTTP2_PRIORITY_UPDATE as u8);
            }
            let user_data = ctx_ptr as *mut c_void;
            (*ctx_ptr).frame_buf.capture(true);
            let rv = if server {
                ng::nghttp2_session_server_new3(&mut raw, callbacks, user_data, opt, &mut mem)
            } else {
                ng::nghttp2_session_client_new3(&mut raw, callbacks, user_data, opt, &mut mem)
            };
            (*ctx_ptr).frame_buf.capture(false);
            ng::nghttp2_session_callbacks_del(callbacks);
            ng::nghttp2_option_del(opt);
            check(rv)?;
        }
        Ok(Session { raw, ctx })
    }

    pub fn handler(&mut self) -> &mut H {
        &mut self.ctx.handler
    }

    /// Gives the pages of the session's frame buffer back to the kernel,
    /// for a session that has been idle a while: nghttp2 keeps the buffer
    /// (16 KiB, one page of it touched) for the connection's life. Nothing
    /// is done while the session has something to send. True if pages were
    /// given back.
    pub fn discard_frame_buffer(&mut self) -> bool {
        if self.ops().want_write() {
            return false;
        }
        // SAFETY: nothing to send, so no frame is in flight in the buffer
        // (nghttp2 resets it before serializing the next frame); we hold
        // the session exclusively (&mut self).
        unsafe { crate::alloc::nghttp2_mem::discard_frame_buffer(&self.ctx.frame_buf) }
    }

    /// Whether the allocator hooks know the session's frame buffer.
    #[cfg(test)]
    pub fn frame_buffer_known(&self) -> bool {
        self.ctx.frame_buf.is_set()
    }

    pub fn handler_ref(&self) -> &H {
        &self.ctx.handler
    }

    pub fn ops(&mut self) -> Ops<'_> {
        Ops { raw: self.raw, _life: PhantomData }
    }

    /// The handler and the session operations at once.
    pub fn split(&mut self) -> (&mut H, Ops<'_>) {
        (&mut self.ctx.handler, Ops { raw: self.raw, _life: PhantomData })
    }

    /// Feeds received bytes; callbacks run during this call.
    pub fn mem_recv(&mut self, data: &[u8]) -> Result<usize, NgError> {
        // SAFETY: valid slice; callbacks reach the handler through the user
        // data pointer while no other reference to it is live (we hold
        // &mut self).
        let n = unsafe { ng::nghttp2_session_mem_recv2(self.raw, data.as_ptr(), data.len()) };
        if n < 0 {
            Err(NgError(n as i32))
        } else {
            Ok(n as usize)
        }
    }

    /// Serializes pending frames into `out` until nothing is left or `out`
    /// used `limit` of its write budget (`Frames::budget_used`). Returns
    /// the bytes added.
    pub fn mem_send(&mut self, out: &mut Frames, limit: usize) -> Result<usize, NgError> {
        let start = out.len();
        while out.budget_used() < limit {
            let mut data: *const u8 = ptr::null();
            // No-copy DATA payloads go into `out` from send_data_cb during
            // the call; the pointer is re-derived for each call and cleared
            // before `out` is used again here.
            self.ctx.sink = out as *mut Frames;
            self.ctx.sink_limit = limit;
            // SAFETY: on success `data` points at `n` bytes owned by nghttp2,
            // valid until the next call on the session; we copy them now.
            let n = unsafe { ng::nghttp2_session_mem_send2(self.raw, &mut data) };
            self.ctx.sink = ptr::null_mut();
            if n < 0 {
                return Err(NgError(n as i32));
            }
            if n == 0 {
                break;
            }
            // SAFETY: see above.
            out.buffer().extend_from_slice(unsafe { std::slice::from_raw_parts(data, n as usize) });
        }
        Ok(out.len() - start)
    }

    /// h2c Upgrade: takes the HTTP2-Settings payload and makes stream 1
    /// the upgraded request (half-closed remote when `head_request` or no
    /// body follows).
    pub fn upgrade(&mut self, settings_payload: &[u8], head_request: bool) -> Result<(), NgError> {
        // SAFETY: payload slice valid for the call; no stream user data.
        check(unsafe {
            ng::nghttp2_session_upgrade2(
                self.raw,
                settings_payload.as_ptr(),
                settings_payload.len(),
                head_request as c_int,
                ptr::null_mut(),
            )
        })
    }
}

impl<H: Handler> Drop for Session<H> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from nghttp2_session_*_new2 and is freed once,
        // before `ctx` (whose frame-buffer watch its frees still reach).
        unsafe { ng::nghttp2_session_del(self.raw) }
    }
}

// ---- callbacks --------------------------------------------------------------
//
// Each recovers the handler from `user_data`, runs it behind the panic
// boundary, and maps the result to nghttp2's return conventions. A panic in
// a stream-scoped callback resets that stream; elsewhere it ends the session.

/// # Safety
/// `user_data` is the context pointer given at session creation, and no
/// other reference to the handler is live during a callback.
unsafe fn handler<'a, H>(user_data: *mut c_void) -> &'a mut H {
    // SAFETY: caller contract.
    unsafe { &mut (*(user_data as *mut Ctx<H>)).handler }
}

fn ops<'a>(session: *mut ng::nghttp2_session) -> Ops<'a> {
    Ops { raw: session, _life: PhantomData }
}

fn flow_result(ops: &mut Ops<'_>, stream_id: i32, flow: Flow, temporal: bool) -> c_int {
    match flow {
        Flow::Continue => 0,
        Flow::ResetStream(code) => {
            let _ = ops.submit_rst_stream(stream_id, code);
            if temporal {
                ng::NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
            } else {
                0
            }
        }
        Flow::Fatal => ng::NGHTTP2_ERR_CALLBACK_FAILURE,
    }
}

unsafe extern "C" fn begin_frame_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    hd: *const ng::nghttp2_frame_hd,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 begin_frame", ng::NGHTTP2_ERR_CALLBACK_FAILURE, || {
        // SAFETY: nghttp2 passes a valid frame header and our user data.
        let (h, hd) = unsafe { (handler::<H>(user_data), *hd) };
        let info = FrameInfo {
            kind: hd.type_,
            stream_id: hd.stream_id,
            flags: hd.flags,
            length: hd.length,
            ..Default::default()
        };
        h.begin_frame(&mut ops(session), &info);
        0
    })
}

unsafe extern "C" fn begin_headers_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    frame: *const ng::nghttp2_frame,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 begin_headers", ng::NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE, || {
        // SAFETY: nghttp2 passes a valid frame and our user data.
        let (h, info) = unsafe { (handler::<H>(user_data), FrameInfo::from_raw(frame)) };
        let mut o = ops(session);
        let flow = h.begin_headers(&mut o, &info);
        flow_result(&mut o, info.stream_id, flow, true)
    })
}

unsafe extern "C" fn header_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    frame: *const ng::nghttp2_frame,
    name: *const u8,
    namelen: usize,
    value: *const u8,
    valuelen: usize,
    _flags: u8,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 header", ng::NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE, || {
        // SAFETY: nghttp2 passes valid name/value buffers of the given
        // lengths (non-NULL, NUL-terminated), a valid frame, our user data.
        let (h, info, n, v) = unsafe {
            (
                handler::<H>(user_data),
                FrameInfo::from_raw(frame),
                std::slice::from_raw_parts(name, namelen),
                std::slice::from_raw_parts(value, valuelen),
            )
        };
        let mut o = ops(session);
        let flow = h.header(&mut o, &info, n, v);
        flow_result(&mut o, info.stream_id, flow, true)
    })
}

unsafe extern "C" fn frame_recv_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    frame: *const ng::nghttp2_frame,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 frame_recv", ng::NGHTTP2_ERR_CALLBACK_FAILURE, || {
        // SAFETY: as above.
        let (h, info) = unsafe { (handler::<H>(user_data), FrameInfo::from_raw(frame)) };
        if info.kind == frame_type::GOAWAY {
            h.goaway_received(&info);
        }
        let mut o = ops(session);
        if info.kind == frame_type::PRIORITY_UPDATE {
            // SAFETY: nghttp2 passed this PRIORITY_UPDATE to the callback.
            unsafe { reapply_priority_update(&mut o, frame) };
        }
        let flow = h.frame_recv(&mut o, &info);
        flow_result(&mut o, info.stream_id, flow, false)
    })
}

/// Applies a PRIORITY_UPDATE's value again, parsed as `set_priority` parses
/// a request's field: nghttp2 applied it with its own parser already, which
/// drops the whole value where RFC 9218 ignores one parameter (`u=9, i`).
/// The stream is the one nghttp2 found or opened (idle) for it; where it
/// has none (a closed stream), nghttp2 refuses the change and nothing
/// happens. Out of line, as `prioritized_stream_id`.
///
/// # Safety
/// `frame` must be a PRIORITY_UPDATE nghttp2 passed to a callback.
#[cold]
#[inline(never)]
unsafe fn reapply_priority_update(ops: &mut Ops<'_>, frame: *const ng::nghttp2_frame) {
    // SAFETY: as for `prioritized_stream_id`; the field value is nghttp2's
    // inbound buffer, `field_value_len` bytes, alive for the callback.
    let (stream_id, field) = unsafe {
        let update = (*frame).ext.payload as *const ng::nghttp2_ext_priority_update;
        if update.is_null() || (*update).field_value.is_null() {
            return;
        }
        let u = &*update;
        (u.stream_id, std::slice::from_raw_parts(u.field_value, u.field_value_len))
    };
    if stream_id != 0 {
        ops.set_priority(stream_id, field);
    }
}

unsafe extern "C" fn data_chunk_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    _flags: u8,
    stream_id: i32,
    data: *const u8,
    len: usize,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 data_chunk", ng::NGHTTP2_ERR_CALLBACK_FAILURE, || {
        // SAFETY: nghttp2 passes `len` valid bytes at `data`.
        let (h, d) = unsafe {
            let d = if len == 0 { &[][..] } else { std::slice::from_raw_parts(data, len) };
            (handler::<H>(user_data), d)
        };
        let mut o = ops(session);
        let flow = h.data_chunk(&mut o, stream_id, d);
        flow_result(&mut o, stream_id, flow, false)
    })
}

unsafe extern "C" fn stream_close_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    stream_id: i32,
    error_code: u32,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 stream_close", ng::NGHTTP2_ERR_CALLBACK_FAILURE, || {
        // SAFETY: our user data.
        let h = unsafe { handler::<H>(user_data) };
        let mut o = ops(session);
        let flow = h.stream_close(&mut o, stream_id, error_code);
        flow_result(&mut o, stream_id, flow, false)
    })
}

unsafe extern "C" fn frame_send_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    frame: *const ng::nghttp2_frame,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 frame_send", ng::NGHTTP2_ERR_CALLBACK_FAILURE, || {
        // SAFETY: as above.
        let (h, info) = unsafe { (handler::<H>(user_data), FrameInfo::from_raw(frame)) };
        h.frame_sent(&mut ops(session), &info);
        if info.kind == frame_type::GOAWAY {
            // SAFETY: a GOAWAY frame's opaque data is `opaque_data_len`
            // bytes nghttp2 owns until the callback returns (or none).
            let debug = unsafe {
                let g = &(*frame).goaway;
                if g.opaque_data.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(g.opaque_data, g.opaque_data_len)
                }
            };
            h.goaway_sent(&info, debug);
        }
        0
    })
}

unsafe extern "C" fn invalid_frame_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    frame: *const ng::nghttp2_frame,
    lib_error: c_int,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 invalid_frame", ng::NGHTTP2_ERR_CALLBACK_FAILURE, || {
        // SAFETY: as above.
        let (h, info) = unsafe { (handler::<H>(user_data), FrameInfo::from_raw(frame)) };
        h.invalid_frame(&mut ops(session), &info, lib_error);
        0
    })
}

unsafe extern "C" fn frame_not_send_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    frame: *const ng::nghttp2_frame,
    lib_error: c_int,
    user_data: *mut c_void,
) -> c_int {
    crate::ffi::panic::guard("nghttp2 frame_not_send", ng::NGHTTP2_ERR_CALLBACK_FAILURE, || {
        // SAFETY: as above.
        let (h, info) = unsafe { (handler::<H>(user_data), FrameInfo::from_raw(frame)) };
        h.frame_not_sent(&mut ops(session), &info, lib_error);
        0
    })
}

unsafe extern "C" fn padding_cb<H: Handler>(
    _session: *mut ng::nghttp2_session,
    frame: *const ng::nghttp2_frame,
    max_payloadlen: usize,
    user_data: *mut c_void,
) -> ng::nghttp2_ssize {
    crate::ffi::panic::guard("nghttp2 padding", ng::NGHTTP2_ERR_CALLBACK_FAILURE as ng::nghttp2_ssize, || {
        // SAFETY: as above.
        let (h, info) = unsafe { (handler::<H>(user_data), FrameInfo::from_raw(frame)) };
        h.padded_length(&info, max_payloadlen).clamp(info.length, max_payloadlen.max(info.length)) as ng::nghttp2_ssize
    })
}

unsafe extern "C" fn read_data_cb<H: Handler>(
    session: *mut ng::nghttp2_session,
    stream_id: i32,
    buf: *mut u8,
    length: usize,
    data_flags: *mut u32,
    _source: *mut ng::nghttp2_data_source,
    user_data: *mut c_void,
) -> ng::nghttp2_ssize {
    crate::ffi::panic::guard(
        "nghttp2 read_data",
        ng::NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE as ng::nghttp2_ssize,
        || {
            // SAFETY: nghttp2 gives a writable buffer of `length` bytes.
            let (h, b) = unsafe { (handler::<H>(user_data), std::slice::from_raw_parts_mut(buf, length)) };
            let mut o = ops(session);
            let (n, eof, trailers, no_copy) = match h.read_data(&mut o, stream_id, b) {
                DataRead::Data { n, eof, trailers } => (n, eof, trailers, false),
                DataRead::NoCopy { n, eof, trailers } => (n, eof, trailers, true),
                DataRead::Deferred => return ng::NGHTTP2_ERR_DEFERRED as ng::nghttp2_ssize,
                DataRead::Error => return ng::NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE as ng::nghttp2_ssize,
            };
            let mut f = if no_copy { ng::NGHTTP2_DATA_FLAG_NO_COPY } else { 0u32 };
            if eof {
                f |= ng::NGHTTP2_DATA_FLAG_EOF;
                if let Some(t) = trailers {
                    f |= ng::NGHTTP2_DATA_FLAG_NO_END_STREAM;
                    if o.submit_trailer(stream_id, &t).is_err() {
                        // Without its trailer the stream would never end.
                        f &= !ng::NGHTTP2_DATA_FLAG_NO_END_STREAM;
                    }
                }
            }
            // SAFETY: data_flags is a valid out-pointer from nghttp2.
            unsafe { *data_flags = f };
            n.min(length) as ng::nghttp2_ssize
        },
    )
}

/// Writes a no-copy DATA frame into the buffer `mem_send` is filling:
/// header, pad length, the handler's payload bytes, padding.
unsafe extern "C" fn send_data_cb<H: Handler>(
    _session: *mut ng::nghttp2_session,
    frame: *mut ng::nghttp2_frame,
    framehd: *const u8,
    length: usize,
    _source: *mut ng::nghttp2_data_source,
    user_data: *mut c_void,
) -> c_int {
    // SAFETY: user_data is our context; `sink` is set by mem_send for the
    // duration of nghttp2_session_mem_send2 (the only caller of this
    // callback) and points at its live, otherwise unused buffer; null
    // outside mem_send.
    let sink = unsafe { (*(user_data as *mut Ctx<H>)).sink };
    // SAFETY: as above; the mark is read before anything is written.
    let Some(start) = (unsafe { sink.as_ref() }).map(Frames::mark) else {
        return ng::NGHTTP2_ERR_CALLBACK_FAILURE;
    };
    crate::ffi::panic::guard_or(
        "nghttp2 send_data",
        || {
            // SAFETY: as above; framehd is 9 bytes and frame a valid DATA frame
            // (nghttp2's docs).
            let (ctx, header, stream_id, padlen) = unsafe {
                let ctx = &mut *(user_data as *mut Ctx<H>);
                (ctx, std::slice::from_raw_parts(framehd, 9), (*frame).hd.stream_id, (*frame).data.padlen)
            };
            // SAFETY: checked non-null above; the handler below does not touch
            // the sink but through `out`.
            let out = unsafe { &mut *sink };
            out.buffer().extend_from_slice(header);
            if padlen > 0 {
                out.buffer().push((padlen - 1) as u8);
            }
            if !ctx.handler.send_data(stream_id, length, out) {
                out.rollback(start);
                return ng::NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
            if padlen > 1 {
                let buf = out.buffer();
                buf.resize(buf.len() + padlen - 1, 0);
            }
            if out.budget_used() >= ctx.sink_limit {
                // The frame is written; mem_send2 returns so the buffer goes out.
                return ng::NGHTTP2_ERR_PAUSE;
            }
            0
        },
        // A panic mid-frame: nghttp2 takes the frame for unsent (and resets
        // its stream), so none of it may stay in the buffer, or the client
        // would read the next frames as this one's payload.
        |_| {
            // SAFETY: as above; the body's `out` is gone with its unwound
            // frame.
            unsafe { (*sink).rollback(start) };
            ng::NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_named_as_rfc_9113_names_them() {
        assert_eq!(error_code_name(error_code::PROTOCOL_ERROR), "PROTOCOL_ERROR");
        assert_eq!(error_code_name(0x4), "SETTINGS_TIMEOUT");
        assert_eq!(error_code_name(error_code::HTTP_1_1_REQUIRED), "HTTP_1_1_REQUIRED");
        assert_eq!(error_code_name(0xff), "error 0xff");
    }

    #[test]
    fn static_names_are_the_same_bytes_and_lower_case() {
        for name in [&b"date"[..], b"content-type", b"x-frame-options", b":status", b"set-cookie"] {
            assert_eq!(static_name(name), Some(name));
        }
        for name in [&b"Date"[..], b"x-custom", b"", b"content-typ"] {
            assert_eq!(static_name(name), None);
        }
    }

    #[test]
    fn nv_lists_pass_numbered_names_as_static_strings_and_never_index_cookies() {
        let mut h = Headers::new();
        h.push_known(KNOWN_SET_COOKIE, b"a=1");
        h.push_known(0, b"Tue, 01 Dec 2026 00:00:00 GMT");
        h.push(b"set-cookie", b"b=2");
        h.push(b"x-custom", b"1");
        with_nv_list(None, &h, |nva| {
            let flags: Vec<u32> = nva.iter().map(|nv| nv.flags as u32).collect();
            let (static_name, no_index) = (ng::NGHTTP2_NV_FLAG_NO_COPY_NAME, ng::NGHTTP2_NV_FLAG_NO_INDEX);
            assert_eq!(flags, [static_name | no_index, static_name, static_name | no_index, 0]);
            // The numbered names point at the table's own bytes.
            assert_eq!(nva[0].name as *const u8, KNOWN_NAMES[KNOWN_SET_COOKIE].as_ptr());
            assert_eq!(nva[1].name as *const u8, KNOWN_NAMES[0].as_ptr());
        });
    }

    #[test]
    fn nv_lists_beyond_the_inline_pairs_spill_to_the_heap_in_order() {
        for n in [0, 1, INLINE_NV - 1, INLINE_NV, INLINE_NV + 5] {
            let mut h = Headers::new();
            for i in 0..n {
                h.push(format!("x-f{i}").as_bytes(), b"v");
            }
            with_nv_list(Some(b"200"), &h, |nva| {
                assert_eq!(nva.len(), n + 1);
                // SAFETY: the pairs point into `h` and the status, both alive.
                let name = |nv: &ng::nghttp2_nv| unsafe { std::slice::from_raw_parts(nv.name, nv.namelen) }.to_vec();
                assert_eq!(name(&nva[0]), b":status");
                assert_ne!(nva[0].flags as u32 & ng::NGHTTP2_NV_FLAG_NO_COPY_NAME, 0);
                for (i, nv) in nva[1..].iter().enumerate() {
                    assert_eq!(name(nv), format!("x-f{i}").as_bytes());
                    assert_eq!(nv.flags as u32 & ng::NGHTTP2_NV_FLAG_NO_COPY_NAME, 0);
                }
            });
        }
    }
}
