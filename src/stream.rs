//! One HTTP/2 stream as both sides see it: the client connection (c1) and
//! the worker running the request on a secondary connection (c2).
//!
//! ```text
//!   c1 (nghttp2)                         worker (c2 filters)
//!   push_input/end_input  --> in queue --> read_input
//!   take_consumed         <-- consumed counter (flow control)
//!   peek/take_output      <-- out queue, response, trailers <-- write_output/write_file
//!   close (reset/closed)  --> aborted flag + condvar wake-up
//!   take retire           <-- worker_done (c2 + EOR handed back)
//! ```
//!
//! Invariants:
//! - The out queue never holds more than `out_limit` bytes in memory: a
//!   worker that would exceed it waits (backpressure) until c1 has sent
//!   half of it, or the stream is aborted, or the stream timeout passes.
//!   File regions (static files) are queued as references, not bytes.
//!   Exception: a stream run on c1's own thread (`run_inline`) never
//!   waits, since c1 could not drain the queue while it runs the stream;
//!   its bound is `INLINE_MEM_CAP`, beyond which writes fail.
//! - The in queue holds at most what the client's flow-control window let
//!   it send; c1 reopens the window only for bytes the worker consumed.
//! - Only the worker produces output; only c1 consumes it. The worker is
//!   woken through the condvar, c1 through the session's [`Signal`].
//! - Once `close` ran, writes fail and reads return Aborted, so a handler
//!   stops promptly when the client resets the stream.
//!
//! Nothing here knows httpd: the retire action (release the request and its
//! secondary connection) is an opaque [`Retire`] object.

use crate::filemap::{self, FileMap};
use crate::frames::Frames;
use crate::h2status::SessionReport;
use crate::request::RequestHead;
use crate::signal::{Listed, Signal};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Room a `Headers` takes at its first field (pushed, not built with
/// a capacity): fields and bytes.
const FIRST_FIELDS: usize = 8;
const FIRST_BYTES: usize = 256;

/// Bytes a field's record holds besides its name and value: its known
/// name's number and the two lengths.
const RECORD_HEAD: usize = 9;

/// How many names `KNOWN_NAMES` holds.
pub const KNOWN_COUNT: usize = 14;

/// Names common enough in responses that a `Headers` records them by
/// number (`push_known`): nghttp2 then gets the name as a static string it
/// neither copies nor lower-cases, without comparing names again.
pub static KNOWN_NAMES: [&[u8]; KNOWN_COUNT] = [
    b"date",
    b"etag",
    b"vary",
    b"server",
    b"expires",
    b"location",
    b"set-cookie",
    b"content-type",
    b"accept-ranges",
    b"last-modified",
    b"cache-control",
    b"content-length",
    b"content-encoding",
    b"content-language",
];

/// The index of `set-cookie` in `KNOWN_NAMES` (never HPACK-indexed).
pub const KNOWN_SET_COOKIE: usize = 6;

/// A compact list of header fields in one buffer: per field, its known
/// name's number (index + 1 in `KNOWN_NAMES`, 0 for any other name), the
/// name's and the value's length (u32 each), then the name, then the
/// value. One allocation per list, not one for the bytes and one for an
/// index (two lists per request, ~430 instructions a request: callgrind,
/// paced 1 KiB GETs). Fields are only ever walked in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    records: Vec<u8>,
    count: u32,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Room for `fields` fields of `bytes` bytes of names and values.
    pub fn with_capacity(fields: usize, bytes: usize) -> Headers {
        Headers { records: Vec::with_capacity(bytes + fields * RECORD_HEAD), count: 0 }
    }

    fn push_record_head(&mut self, known: u8, name_len: usize, value_len: usize) {
        let [n0, n1, n2, n3] = (name_len as u32).to_ne_bytes();
        let [v0, v1, v2, v3] = (value_len as u32).to_ne_bytes();
        // One append, not three (each checks the capacity).
        self.records.extend_from_slice(&[known, n0, n1, n2, n3, v0, v1, v2, v3]);
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.push_record(0, name, value);
    }

    /// Appends a field named `KNOWN_NAMES[known]`.
    pub fn push_known(&mut self, known: usize, value: &[u8]) {
        self.push_record(known as u8 + 1, KNOWN_NAMES[known], value);
    }

    fn push_record(&mut self, known: u8, name: &[u8], value: &[u8]) {
        let need = RECORD_HEAD + name.len() + value.len();
        if self.records.capacity() == 0 {
            // Room for a typical request's fields at once: grown from
            // empty, the first few fields cost several allocations.
            self.records.reserve((FIRST_BYTES + FIRST_FIELDS * RECORD_HEAD).max(need));
        } else {
            self.records.reserve(need);
        }
        self.push_record_head(known, name.len(), value.len());
        self.records.extend_from_slice(name);
        self.records.extend_from_slice(value);
        self.count += 1;
    }

    /// Appends `name` lower-cased (HTTP/2 field names are lower case) when
    /// it is a token; returns false and appends nothing when it is not.
    /// One pass over the name checks, lower-cases and copies it (three
    /// passes before: ~120 instructions a field, callgrind).
    pub fn push_token_lowercase(&mut self, name: &[u8], value: &[u8]) -> bool {
        if name.is_empty() {
            return false;
        }
        let start = self.records.len();
        self.records.reserve(RECORD_HEAD + name.len() + value.len());
        self.push_record_head(0, name.len(), value.len());
        let mut all_token = true;
        self.records.extend(name.iter().map(|&b| {
            let lower = crate::request::TOKEN_LOWER[b as usize];
            all_token &= lower != 0;
            lower
        }));
        if !all_token {
            self.records.truncate(start);
            return false;
        }
        self.records.extend_from_slice(value);
        self.count += 1;
        true
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Bytes reserved for records.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.records.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Total bytes of names and values.
    pub fn byte_len(&self) -> usize {
        self.records.len() - self.len() * RECORD_HEAD
    }

    /// The fields' size as HPACK counts it (RFC 7541 4.1: name, value and
    /// 32 each).
    pub fn hpack_size(&self) -> usize {
        self.byte_len() + 32 * self.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.known_iter().map(|(_, name, value)| (name, value))
    }

    /// The fields with the index of their name in `KNOWN_NAMES`, if known
    /// by number: (known, name, value).
    pub fn known_iter(&self) -> HeaderIter<'_> {
        HeaderIter { rest: &self.records }
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The fields with every repeated name combined into one field (RFC
    /// 9110 5.3), its values joined by ", " in order, at the place of the
    /// first: what httpd's HTTP/1.1 parser makes of repeated request fields
    /// (`apr_table_compress`, merging), and what handlers expect, as they
    /// read a field with `apr_table_get`, which finds the first one only
    /// (two Host fields were not refused as on HTTP/1.1, and mod_remoteip
    /// saw only the first of two X-Forwarded-For fields). Empty values are
    /// left out of a join. Names compare as stored (a request's are lower
    /// case). None when no name repeats, the common case, found comparing
    /// lengths first without allocating.
    pub fn merged(&self) -> Option<Headers> {
        let repeats = self.iter().enumerate().any(|(i, (n, _))| self.iter().skip(i + 1).any(|(m, _)| m == n));
        if !repeats {
            return None;
        }
        let mut out = Headers::with_capacity(self.len(), self.byte_len() + 2 * self.len());
        for (i, (name, first)) in self.iter().enumerate() {
            if self.iter().take(i).any(|(m, _)| m == name) {
                continue; // joined into the field of its first occurrence
            }
            // Empty values add nothing to a list, and joined they would
            // leave a value ending in a space, which HTTP/2 forbids (a
            // backend the proxy forwards it to would refuse it).
            let mut value = first.to_vec();
            for (_, more) in self.iter().skip(i + 1).filter(|(m, v)| *m == name && !v.is_empty()) {
                if !value.is_empty() {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(more);
            }
            out.push(name, &value);
        }
        Some(out)
    }
}

/// The fields of a [`Headers`], in order: (index in `KNOWN_NAMES` if the
/// name was pushed by number, name, value).
pub struct HeaderIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (Option<usize>, &'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (head, rest) = self.rest.split_first_chunk::<RECORD_HEAD>()?;
        let known = (head[0] as usize).checked_sub(1);
        let name_len = u32::from_ne_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let value_len = u32::from_ne_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let (name, rest) = rest.split_at_checked(name_len)?;
        let (value, rest) = rest.split_at_checked(value_len)?;
        self.rest = rest;
        Some((known, name, value))
    }
}

/// A response head (final or interim) as the worker hands it to c1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Lower-case names, no connection-specific fields.
    pub headers: Headers,
}

/// Bytes a stream run on c1's thread may hold in its output queue, which
/// then has no `out_limit` (c1 cannot drain it while it runs the stream).
/// Such streams are static files: below 16 KiB copied, above queued by
/// file reference; only a file copied because no descriptor was left
/// comes near this.
const INLINE_MEM_CAP: usize = 1 << 20;

/// How long output a handler passed on without a flush may wait for more
/// before c1 sends it anyway (`Stream::arm_late_flush`): below a frame's
/// worth, buffered output otherwise waits for the handler's flush or the
/// end of the response. Short enough for streamed responses (the stock
/// module sends each write at once), long enough that a handler writing
/// steadily still fills whole frames.
pub const LATE_FLUSH_AFTER: Duration = Duration::from_millis(20);

/// A FIFO that holds its first element inline: most body queues only ever
/// hold one chunk (a small response, one DATA frame), and a `VecDeque`
/// would allocate its ring for it, once per stream and queue.
#[derive(Debug)]
struct Fifo<T> {
    /// The front element; `None` only while `rest` is empty too.
    head: Option<T>,
    rest: VecDeque<T>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Fifo<T> {
        Fifo { head: None, rest: VecDeque::new() }
    }
}

impl<T> Fifo<T> {
    fn push_back(&mut self, item: T) {
        if self.head.is_none() {
            self.head = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    fn pop_front(&mut self) -> Option<T> {
        let front = self.head.take();
        self.head = self.rest.pop_front();
        front
    }

    fn front(&self) -> Option<&T> {
        self.head.as_ref()
    }

    fn front_mut(&mut self) -> Option<&mut T> {
        self.head.as_mut()
    }

    fn back_mut(&mut self) -> Option<&mut T> {
        match self.rest.back_mut() {
            Some(back) => Some(back),
            None => self.head.as_mut(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.head.iter().chain(self.rest.iter())
    }
}

/// A FIFO of bytes stored in chunks, for the body queues.
#[derive(Debug, Default)]
pub struct ByteQueue {
    chunks: Fifo<Vec<u8>>,
    /// Bytes of the front chunk already taken.
    front_taken: usize,
    len: usize,
}

/// Writes smaller than this are appended to the last chunk.
const CHUNK: usize = 16 * 1024;
/// The smallest chunk allocated; a chunk grows (doubling) up to `CHUNK`
/// as writes are appended.
const MIN_CHUNK: usize = 256;

impl ByteQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(last) = self.chunks.back_mut() {
            if last.len() + data.len() <= last.capacity() || last.len() + data.len() <= CHUNK {
                last.extend_from_slice(data);
                return;
            }
        }
        // Sized to the write, not to CHUNK: a 1 KiB response would hold
        // 16 KiB, and a malloc that large misses glibc's per-thread cache
        // (chunks are freed on c1, allocated on the worker).
        let mut chunk = Vec::with_capacity(data.len().next_power_of_two().clamp(MIN_CHUNK, CHUNK).max(data.len()));
        chunk.extend_from_slice(data);
        self.chunks.push_back(chunk);
    }

    /// Moves up to `buf.len()` bytes into `buf`; returns how many.
    pub fn take_into(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        self.drain_front(buf.len(), |piece| {
            buf[n..n + piece.len()].copy_from_slice(piece);
            n += piece.len();
        })
    }

    /// Moves up to `max` bytes to the end of `out`; returns how many.
    pub fn take_append(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        self.drain_front(max, |piece| out.extend_from_slice(piece))
    }

    /// Hands up to `max` bytes from the front to `sink`, in pieces, and
    /// removes them; returns how many.
    fn drain_front(&mut self, max: usize, mut sink: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(front) = self.chunks.front() else { break };
            let avail = &front[self.front_taken..];
            let k = avail.len().min(max - n);
            sink(&avail[..k]);
            n += k;
            self.front_taken += k;
            if self.front_taken == front.len() {
                self.chunks.pop_front();
                self.front_taken = 0;
            }
        }
        self.len -= n;
        n
    }

    /// Takes up to `max` bytes as one Vec (the front chunk whole, if it fits).
    pub fn take_vec(&mut self, max: usize) -> Vec<u8> {
        if self.front_taken == 0 {
            if let Some(front) = self.chunks.front() {
                if front.len() <= max {
                    let v = self.chunks.pop_front().unwrap_or_default();
                    self.len -= v.len();
                    return v;
                }
            }
        }
        let mut v = vec![0; max.min(self.len)];
        let n = self.take_into(&mut v);
        v.truncate(n);
        v
    }
}

/// A region of an open file, queued instead of its bytes: c1 reads it
/// straight into the DATA frames it writes (no copy through memory
/// queues, and the worker is free as soon as it queued the region). It
/// holds a descriptor of its own until sent, and is not bounded by the
/// stream's memory limit: `Stream::takes_file_region` bounds how many.
#[derive(Debug)]
pub struct FileRegion {
    pub file: std::fs::File,
    pub offset: u64,
    pub len: u64,
    /// The file may be mapped (`EnableMMAP`, as the FILE bucket says).
    may_map: bool,
    /// The window of it mapped last (`FileRegion::mapped`).
    map: Option<Arc<FileMap>>,
}

/// File regions with at least this much left are sent from windows mapped
/// for them where the connection allows (`Frames::by_reference`), not
/// copied into frames. A smaller region is sent from the child's kept
/// mapping of its whole file (`filemap::cached`, files up to
/// `filemap::CACHED_MAX`), else copied: a window of its own per response,
/// mapped, faulted in and unmapped (a TLB shootdown), costs about what
/// copying a few hundred KiB does (100 KiB `-c 50 -m 10` from mappings:
/// 0.53x HTTP/1.1's req/s; 512 KiB: 1.29x its CPU against 1.09x copying;
/// see docs/INTERNALS.md "Large files from mappings").
const MAP_AT_LEAST: u64 = 1 << 20;

/// File regions queued per stream at most. A multi-range response
/// (`MaxRanges`, 200 by default) is a region per range; beyond this the
/// ranges are copied, bounded by the memory limit and waiting for the
/// client as any other output.
const MAX_FILE_REGIONS_PER_STREAM: usize = 4;

/// File regions alive in the child (each holds a descriptor).
static FILE_REGIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many descriptors queued file regions may hold in the child, so
/// clients that take nothing cannot run it out of descriptors.
fn file_region_budget() -> usize {
    crate::limits::file_region_budget(crate::limits::descriptor_limit())
}

/// Whether the child's file regions are below `file_region_budget`.
pub fn file_regions_within_budget() -> bool {
    FILE_REGIONS.load(Ordering::Relaxed) < file_region_budget()
}

impl FileRegion {
    pub fn new(file: std::fs::File, offset: u64, len: u64, may_map: bool) -> FileRegion {
        FILE_REGIONS.fetch_add(1, Ordering::Relaxed);
        FileRegion { file, offset, len, may_map, map: None }
    }

    /// A mapping that covers the next `k` bytes: the last one, a new
    /// window while at least `MAP_AT_LEAST` is left, else the kept mapping
    /// of the whole file. None if mapping is not for this region (or its
    /// rest), or failed (then it is copied from here on).
    fn mapped(&mut self, k: usize) -> Option<Arc<FileMap>> {
        if let Some(map) = self.map.as_ref().filter(|map| map.covers(self.offset, k)) {
            return Some(map.clone());
        }
        if !self.may_map {
            return None;
        }
        if self.len < MAP_AT_LEAST {
            self.map = filemap::cached(&self.file, self.offset + self.len);
            self.may_map = self.map.is_some();
            return self.map.clone();
        }
        let window = (self.len.min(filemap::WINDOW as u64) as usize).max(k);
        // A file that already shrank is copied, which fails its frame and
        // resets only its stream; a write from a mapping past the end
        // would fail the connection's write.
        let end = self.offset + window as u64;
        let mapping = match self.file.metadata() {
            Ok(meta) if meta.len() >= end => FileMap::new(&self.file, self.offset, window),
            Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) => Err(e),
        };
        match mapping {
            Ok(map) => {
                let map = Arc::new(map);
                self.map = Some(map.clone());
                Some(map)
            }
            Err(_) => {
                self.may_map = false;
                self.map = None;
                None
            }
        }
    }
}

impl Drop for FileRegion {
    fn drop(&mut self) {
        FILE_REGIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A duration in microseconds, saturated (the configured timeouts are a
/// year at most).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Appends `len` bytes of `file` from `offset` to `out`, read straight
/// into its spare capacity (no zero-fill of up to 64 KiB per write first).
/// On error nothing is appended.
fn read_exact_at_append(file: &std::fs::File, offset: u64, len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    out.reserve(len);
    let start = out.len();
    let mut got = 0;
    while got < len {
        let spare = &mut out.spare_capacity_mut()[got..len];
        // SAFETY: pread writes at most `spare.len()` bytes into `spare`,
        // reserved capacity of `out`; the descriptor is open (`file`).
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr() as *mut libc::c_void,
                spare.len(),
                (offset + got as u64) as libc::off_t,
            )
        };
        if n > 0 {
            got += n as usize;
            continue;
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: the `len` bytes after `start` were written by pread above.
    unsafe { out.set_len(start + len) };
    Ok(())
}

#[derive(Debug)]
enum Segment {
    Bytes(ByteQueue),
    File(FileRegion),
}

/// The response body on its way to c1: bytes in memory and file regions,
/// in order. Only the bytes count against the memory limit.
#[derive(Debug, Default)]
pub struct OutputQueue {
    segments: Fifo<Segment>,
    /// Bytes held in memory.
    mem: usize,
    /// Bytes pending in all (memory and files).
    pending: u64,
}

impl OutputQueue {
    /// Bytes held in memory (what `H2StreamMaxMemSize` bounds).
    pub fn len(&self) -> usize {
        self.mem
    }

    /// Bytes pending, in memory and in file regions.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.mem += data.len();
        self.pending += data.len() as u64;
        if let Some(Segment::Bytes(q)) = self.segments.back_mut() {
            q.push(data);
            return;
        }
        let mut q = ByteQueue::default();
        q.push(data);
        self.segments.push_back(Segment::Bytes(q));
    }

    pub fn push_file(&mut self, region: FileRegion) {
        if region.len == 0 {
            return;
        }
        self.pending += region.len;
        self.segments.push_back(Segment::File(region));
    }

    /// Appends exactly `n` pending bytes to `out` (n <= pending): file
    /// regions by reference to a mapping where `out` takes that, else
    /// copied. Fails if a file region can no longer be read whole (the
    /// file shrank or an I/O error): the frame cannot be completed then.
    pub fn take_into(&mut self, out: &mut Frames, n: usize) -> std::io::Result<()> {
        let mut left = n;
        while left > 0 {
            let Some(front) = self.segments.front_mut() else {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            };
            let took = match front {
                Segment::Bytes(q) => {
                    let k = q.take_append(out.buffer(), left);
                    self.mem -= k;
                    k
                }
                Segment::File(region) => {
                    let k = (left as u64).min(region.len) as usize;
                    match out.by_reference().then(|| region.mapped(k)).flatten() {
                        Some(map) => out.push_mapped(map, region.offset, k),
                        None => read_exact_at_append(&region.file, region.offset, k, out.buffer())?,
                    }
                    region.offset += k as u64;
                    region.len -= k as u64;
                    k
                }
            };
            left -= took;
            self.pending -= took as u64;
            let used_up = match front {
                Segment::Bytes(q) => q.is_empty(),
                Segment::File(region) => region.len == 0,
            };
            if used_up {
                self.segments.pop_front();
            }
        }
        Ok(())
    }
}

/// Why a worker's read or write on a stream failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The client reset the stream, or the connection is going away.
    Aborted,
    /// Nothing moved for the stream timeout.
    Timeout,
    /// The request body came slower than RequestReadTimeout's body stage
    /// allows (`reqtimeout`): the stream itself is fine.
    BodyTooSlow,
}

/// What a worker's read of the request body returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Data(Vec<u8>),
    /// End of the body, with the request trailers if any.
    End(Option<Headers>),
    /// Non-blocking read and nothing there yet.
    WouldBlock,
}

/// Where the worker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    Queued,
    Running,
    Done,
}

/// How a stream ended, as c1 saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The response was delivered completely (false: reset or aborted).
    pub complete: bool,
    /// Bytes of frames sent on the stream (for mod_logio's %O).
    pub bytes_sent: u64,
}

/// Releases what a finished stream held (its request and secondary
/// connection). Called by c1, once, after the stream is closed on the
/// connection and the worker is done.
pub trait Retire: Send {
    fn retire(self: Box<Self>, outcome: Outcome);
}

/// Something to poke when a stream's input changes (a tunnel's poll
/// descriptor, see `Stream::watch_input`).
pub trait Wake: Send + Sync {
    fn wake(&self);
}

#[derive(Default)]
struct StreamIo {
    input: ByteQueue,
    input_end: bool,
    /// Boxed, as `trailers`: rare, and a stream in flight is one of the
    /// larger objects of a busy connection.
    input_trailers: Option<Box<Headers>>,
    /// Body bytes the worker took that c1 has not yet acknowledged to the
    /// flow control (nghttp2_session_consume).
    consumed: usize,

    interims: Vec<ResponseHead>,
    response: Option<ResponseHead>,
    /// c1 took the final answer: the response head, or the refusal.
    response_taken: bool,
    /// The worker answers with a stream reset of this code instead of a
    /// response (`refuse`).
    refusal: Option<u32>,
    output: OutputQueue,
    output_end: bool,
    trailers: Option<Box<Headers>>,
    /// The worker waits for room in a full output queue: c1 wakes it once
    /// the queue drained to half (not on every frame: that ping-pong cost
    /// more CPU than the bytes, measured on 10 MiB responses).
    worker_wants_room: bool,
    /// c1 found no data and deferred the stream: tell it when data comes.
    c1_waiting: bool,
    /// A late flush is scheduled on the child's clock (`arm_late_flush`).
    late_flush_armed: bool,
    /// The worker waits for c1's report on the connection
    /// (`session_report`); boxed, as it is rare.
    report_asked: bool,
    report: Option<Box<SessionReport>>,

    closed: Option<u32>,
    worker: Option<WorkerState>,
    /// The handler suspended the request (see `release_slot`).
    slot_released: bool,
    /// The worker gave up waiting for c1 to take its output (the stream
    /// timeout): the client let nothing through.
    output_starved: bool,
    retire: Option<Box<dyn Retire>>,
    /// Woken when input arrives, ends, or the stream closes (a handler
    /// that polls the stream instead of blocking in a read).
    input_watch: Option<Arc<dyn Wake>>,
    /// Woken once c1 drained a full output queue to half, or the stream
    /// closes (a suspended request waiting for room, see `output_room`).
    output_watch: Option<Arc<dyn Wake>>,
}

impl StreamIo {
    /// The response ended and every byte of it (and its trailers) was
    /// taken by c1 for nghttp2.
    fn output_done(&self) -> bool {
        self.output_end && self.output.is_empty() && self.trailers.is_none()
    }
}

pub struct Stream {
    pub id: i32,
    pub request: Box<RequestHead>,
    /// Maximum bytes queued for output (H2StreamMaxMemSize).
    pub out_limit: usize,
    /// How long a worker waits on a stalled queue (H2StreamTimeout, else
    /// Timeout), in microseconds: the connection's server's until the
    /// request's own (name-based) server is known (`set_timeout`).
    timeout_us: AtomicU64,
    /// H2OutputBuffering: when off, every write wakes c1.
    pub buffered: bool,
    io: Mutex<StreamIo>,
    worker_cond: Condvar,
    signal: Arc<Signal>,
    listed: AtomicBool,
    aborted: AtomicBool,
    /// Run on c1's own thread (see `fastpath`): its output queue must not
    /// make it wait, since only c1 drains the queue.
    inline: AtomicBool,
}

impl crate::clock::Alarm for Stream {
    /// A late flush is due (`arm_late_flush`).
    fn ring(self: Arc<Self>, _kind: u8) {
        self.io.lock().late_flush_armed = false;
        self.flush();
    }
}

impl Listed for Stream {
    fn list_id(&self) -> i32 {
        self.id
    }
    fn listed_flag(&self) -> &AtomicBool {
        &self.listed
    }
}

/// What c1 learns about a stream when it looks at it after a wake-up.
#[derive(Default)]
pub struct Progress {
    pub interims: Vec<ResponseHead>,
    /// The final response head, handed over once.
    pub response: Option<ResponseHead>,
    /// Body bytes are queued or the body ended: a deferred data source can
    /// resume.
    pub data_ready: bool,
    /// Request-body bytes to acknowledge to the client's flow control.
    pub consumed: usize,
    pub worker_done: bool,
    /// The request no longer holds a worker though it is not done (its
    /// handler suspended it): it stops counting against the connection's
    /// active streams.
    pub slot_released: bool,
    /// The worker ended without completing its response (failure): reset.
    pub failed: bool,
    /// It failed because it waited the stream timeout for room in its
    /// output queue: the client took nothing (`failed` is set too).
    pub starved: bool,
    /// The worker refused to answer (`Stream::refuse`): reset with this
    /// code. Handed over once.
    pub refused: Option<u32>,
    /// The worker waits for a report on the connection (`give_report`).
    /// Handed over once.
    pub report_asked: bool,
}

/// What c1 learns as it closes a stream (`Stream::close_for_c1`).
pub struct Closing {
    /// The response ended and all of it was handed to nghttp2.
    pub output_complete: bool,
    /// The worker had finished when the stream closed.
    pub worker_done: bool,
    /// The release of the request and its c2, if the worker is done.
    pub retire: Option<Box<dyn Retire>>,
}

/// Result of c1 reading the response body for a DATA frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// `n` bytes ready; `end` = body finished; `trailers` = send these after.
    Data { n: usize, end: bool, trailers: Option<Headers> },
    /// Nothing to send yet.
    Deferred,
}

impl Stream {
    pub fn new(
        id: i32,
        request: Box<RequestHead>,
        signal: Arc<Signal>,
        out_limit: usize,
        timeout: Duration,
        buffered: bool,
    ) -> Stream {
        let input_end = request.end_stream;
        Stream {
            id,
            request,
            out_limit: out_limit.max(1024),
            timeout_us: AtomicU64::new(micros(timeout)),
            buffered,
            io: Mutex::new(StreamIo { input_end, worker: Some(WorkerState::Queued), ..Default::default() }),
            worker_cond: Condvar::new(),
            signal,
            listed: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            inline: AtomicBool::new(false),
        }
    }

    fn notify_c1(&self) {
        self.signal.notify(self);
    }

    /// True once c1 closed the stream (client reset, connection gone).
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    // ---- worker side ----------------------------------------------------

    /// The stream is to run on c1's thread (the session queued it so): its
    /// output queue grows past `out_limit` instead of waiting for c1 (which
    /// would wait for itself), up to `INLINE_MEM_CAP`, where writes fail.
    pub fn run_inline(&self) {
        self.inline.store(true, Ordering::Relaxed);
    }

    /// Whether the stream is to run on c1's thread (`run_inline`).
    pub fn runs_inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
    }

    /// The stream timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_micros(self.timeout_us.load(Ordering::Relaxed))
    }

    /// The stream timeout of the request's own server, once it is known.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_us.store(micros(timeout), Ordering::Relaxed);
    }

    pub fn worker_started(&self) {
        self.io.lock().worker = Some(WorkerState::Running);
    }

    /// Reads request-body bytes (at most `max`). Blocking reads wait for the
    /// client up to the stream timeout, or up to `body_deadline` if that
    /// comes first (then `BodyTooSlow`).
    pub fn read_input(&self, max: usize, block: bool, body_deadline: Option<Instant>) -> Result<Input, StreamError> {
        let stream_deadline = Instant::now() + self.timeout();
        let (deadline, expired) = match body_deadline {
            Some(b) if b < stream_deadline => (b, StreamError::BodyTooSlow),
            _ => (stream_deadline, StreamError::Timeout),
        };
        let mut io = self.io.lock();
        loop {
            if let Some(code) = io.closed {
                // A stream that closed normally (NO_ERROR) after the client
                // ended its request had the whole body: a handler may still
                // read what is left once its response went out (httpd's
                // ap_discard_request_body at the end of a request); c1 gave
                // the window for it back at the close. Anything else cut the
                // body short.
                if code != crate::nghttp2::error_code::NO_ERROR || !io.input_end {
                    return Err(StreamError::Aborted);
                }
                if !io.input.is_empty() {
                    return Ok(Input::Data(io.input.take_vec(max.max(1))));
                }
                return Ok(Input::End(io.input_trailers.take().map(|t| *t)));
            }
            if !io.input.is_empty() {
                let data = io.input.take_vec(max.max(1));
                io.consumed += data.len();
                // Reopen the client's window promptly once the queue drained
                // or a good part of a window was read.
                let tell = io.input.is_empty() || io.consumed >= 16 * 1024;
                // Input left: a poller of the watch (which the reader
                // drained before reading) must find it readable, as a
                // socket with bytes left would be. mod_proxy's tunnel yields
                // after 10,000 reads with bytes left and polls again: it
                // slept until its timeout, the client's window shut.
                let watch = if io.input.is_empty() { None } else { io.input_watch.clone() };
                drop(io);
                if tell {
                    self.notify_c1();
                }
                if let Some(w) = watch {
                    w.wake();
                }
                return Ok(Input::Data(data));
            }
            if io.input_end {
                return Ok(Input::End(io.input_trailers.take().map(|t| *t)));
            }
            if !block {
                return Ok(Input::WouldBlock);
            }
            if self.worker_cond.wait_until(&mut io, deadline).timed_out() {
                return Err(expired);
            }
        }
    }

    /// The end of the request body, if it is here with no data before it:
    /// its trailers (taken) or `None` for none. For a body of known length,
    /// whose reader (httpd's HTTP_IN) stops at the length and asks no
    /// further, so trailers sent with the last data would go unseen. With
    /// `wait_until`, waits that long for an end not yet here while no data
    /// is queued and the stream is open.
    pub fn take_end(&self, mut wait_until: Option<Instant>) -> Option<Option<Headers>> {
        let mut io = self.io.lock();
        loop {
            let clean = io.closed.is_none_or(|code| code == crate::nghttp2::error_code::NO_ERROR);
            if clean && io.input_end && io.input.is_empty() {
                return Some(io.input_trailers.take().map(|t| *t));
            }
            let until = wait_until.filter(|_| !io.input_end && io.closed.is_none() && io.input.is_empty())?;
            if self.worker_cond.wait_until(&mut io, until).timed_out() {
                wait_until = None;
            }
        }
    }

    /// Registers `watch` to be woken whenever a nonblocking read could now
    /// return something (data, end, or an error). Wakes it at once if that
    /// is already so. A closed stream keeps no watch: the close, which
    /// drops the watches (a watch often holds the stream), is past.
    pub fn watch_input(&self, watch: Arc<dyn Wake>) {
        let mut io = self.io.lock();
        let ready = !io.input.is_empty() || io.input_end || io.closed.is_some();
        if io.closed.is_none() {
            io.input_watch = Some(watch.clone());
        }
        drop(io);
        if ready {
            watch.wake();
        }
    }

    /// Hands the final response head to c1.
    pub fn set_response(&self, head: ResponseHead) -> Result<(), StreamError> {
        let mut io = self.io.lock();
        if io.closed.is_some() {
            return Err(StreamError::Aborted);
        }
        io.response = Some(head);
        Ok(())
    }

    /// Answers with a stream reset of `error_code` instead of a response
    /// (HTTP_1_1_REQUIRED for a request only HTTP/1.1 can serve) and wakes
    /// c1 to send it. Whatever the worker writes after is not sent.
    pub fn refuse(&self, error_code: u32) -> Result<(), StreamError> {
        {
            let mut io = self.io.lock();
            if io.closed.is_some() {
                return Err(StreamError::Aborted);
            }
            io.refusal = Some(error_code);
        }
        self.notify_c1();
        Ok(())
    }

    pub fn has_response(&self) -> bool {
        self.io.lock().response.is_some()
    }

    /// Queues an interim (1xx) response and wakes c1 to send it now.
    pub fn add_interim(&self, head: ResponseHead) -> Result<(), StreamError> {
        {
            let mut io = self.io.lock();
            if io.closed.is_some() {
                return Err(StreamError::Aborted);
            }
            io.interims.push(head);
        }
        self.notify_c1();
        Ok(())
    }

    /// Queues body bytes, waiting while the queue is full (backpressure).
    pub fn write_output(&self, mut data: &[u8]) -> Result<(), StreamError> {
        while !data.is_empty() {
            let mut io = self.io.lock();
            let mut deadline: Option<Instant> = None;
            let mut told_c1 = false;
            let inline = self.inline.load(Ordering::Relaxed);
            if inline && io.output.len() + data.len() > INLINE_MEM_CAP {
                // Not the small static file it was predicted to be (files
                // of 16 KiB and more go by reference): end the stream
                // rather than hold an unbounded body in memory.
                return Err(StreamError::Aborted);
            }
            let limit = if inline { usize::MAX } else { self.out_limit };
            while io.output.len() >= limit && io.closed.is_none() {
                // Full: make sure c1 knows (once), then wait for it to drain.
                if !told_c1 {
                    told_c1 = true;
                    io.c1_waiting = false;
                    drop(io);
                    self.notify_c1();
                    io = self.io.lock();
                    continue;
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + self.timeout());
                io.worker_wants_room = true;
                let timed_out = self.worker_cond.wait_until(&mut io, d).timed_out();
                io.worker_wants_room = false;
                if timed_out && io.output.len() >= self.out_limit {
                    io.output_starved = true;
                    return Err(StreamError::Timeout);
                }
            }
            if io.closed.is_some() {
                return Err(StreamError::Aborted);
            }
            let room = limit - io.output.len();
            let k = room.min(data.len());
            io.output.push(&data[..k]);
            data = &data[k..];
            // Wake c1 if it waits for data (or has yet to see the response
            // head) and enough is there to be worth a frame, or at every
            // write when the admin asked for no buffering. Buffered output
            // that stays below a frame goes out at the handler's flush, at
            // the end, or from the clock (`arm_late_flush`).
            let c1_wants = io.c1_waiting || (io.response.is_some() && !io.response_taken);
            let wake = c1_wants && (!self.buffered || io.output.len() >= (16 * 1024).min(self.out_limit));
            if wake {
                io.c1_waiting = false;
                drop(io);
                self.notify_c1();
            }
        }
        Ok(())
    }

    /// Bytes waiting in the output queue for c1.
    pub fn output_queued(&self) -> usize {
        self.io.lock().output.len()
    }

    /// Room left in the output queue (H2StreamMaxMemSize) for a producer
    /// that must not block (a suspended request resumed on a worker). When
    /// there is none, `watch` is woken once c1 has drained the queue to
    /// half, or the stream closed.
    /// The worker gives up on the stream, its output untaken for the
    /// stream timeout (the proxy's front, which waits in `output_room`
    /// rather than in `write_output`): as `write_output`'s timeout, it
    /// counts as the client starving the stream (`Progress::starved`).
    pub fn note_output_starved(&self) {
        self.io.lock().output_starved = true;
    }

    pub fn output_room(&self, watch: &Arc<dyn Wake>) -> usize {
        let mut io = self.io.lock();
        if io.closed.is_some() {
            return self.out_limit;
        }
        let room = self.out_limit.saturating_sub(io.output.len());
        if room == 0 {
            io.output_watch = Some(watch.clone());
        }
        room
    }

    /// The handler flushed: whatever is queued should go out now.
    pub fn flush(&self) {
        let wake = {
            let mut io = self.io.lock();
            let wake = (io.c1_waiting && !io.output.is_empty()) || (io.response.is_some() && !io.response_taken);
            if wake {
                io.c1_waiting = false;
            }
            wake
        };
        if wake {
            self.notify_c1();
        }
    }

    /// The handler passed output on without a flush and may now wait for
    /// something else (mod_proxy_fcgi waits on its backend that way, where
    /// HTTP/1.1 would hold the bytes until the response ends): unless the
    /// output goes to c1 anyway, schedule a flush `LATE_FLUSH_AFTER` from
    /// now. One per stream at a time; none for a stream c1 runs itself (it
    /// drains the queue when the run ends). One whose output is unbuffered
    /// wakes c1 with every write; a head passed on without body bytes is no
    /// write (a tunnel's 200 before either side has spoken: a chained
    /// CONNECT's, through ProxyRemote, waited for ProxyTimeout), so c1 is
    /// told now.
    pub fn arm_late_flush(self: &Arc<Self>) {
        if self.runs_inline() {
            return;
        }
        if !self.buffered {
            self.flush();
            return;
        }
        {
            let mut io = self.io.lock();
            let waiting_bytes = !io.output.is_empty() || (io.response.is_some() && !io.response_taken);
            if io.late_flush_armed || io.output_end || io.closed.is_some() || !waiting_bytes {
                return;
            }
            io.late_flush_armed = true;
        }
        if !crate::clock::schedule(self, LATE_FLUSH_AFTER, 0) {
            // No clock (unit tests without one): flush at once instead.
            self.io.lock().late_flush_armed = false;
            self.flush();
        }
    }

    /// The response body ended (EOS), with trailers if any.
    pub fn end_output(&self, trailers: Option<Headers>) {
        let mut io = self.io.lock();
        io.output_end = true;
        io.trailers = trailers.filter(|t| !t.is_empty()).map(Box::new);
    }

    /// The request's handler returned SUSPENDED: no worker holds the
    /// stream while it waits (a proxied request waiting for its backend),
    /// so c1 may start other streams in its place.
    pub fn release_slot(&self) {
        self.io.lock().slot_released = true;
        self.notify_c1();
    }

    /// The worker finished with the stream; `retire` releases its request
    /// and connection once c1 is done with the stream too.
    pub fn worker_done(&self, retire: Option<Box<dyn Retire>>) {
        {
            let mut io = self.io.lock();
            io.worker = Some(WorkerState::Done);
            io.retire = retire;
        }
        self.notify_c1();
    }

    /// The `http2-status` handler: asks c1 for a report on the connection
    /// and waits for it (at most the stream timeout). Not on c1's own
    /// thread: c1 would wait for itself (the handler never runs there, as
    /// only static files are run inline).
    pub fn session_report(&self) -> Result<SessionReport, StreamError> {
        if self.runs_inline() {
            return Err(StreamError::Aborted);
        }
        let deadline = Instant::now() + self.timeout();
        let mut io = self.io.lock();
        io.report_asked = true;
        drop(io);
        self.notify_c1();
        let mut io = self.io.lock();
        loop {
            if let Some(report) = io.report.take() {
                return Ok(*report);
            }
            if io.closed.is_some() {
                return Err(StreamError::Aborted);
            }
            if self.worker_cond.wait_until(&mut io, deadline).timed_out() {
                return Err(StreamError::Timeout);
            }
        }
    }

    // ---- c1 side ----------------------------------------------------------

    /// c1 answers `session_report`.
    pub fn give_report(&self, report: SessionReport) {
        self.io.lock().report = Some(Box::new(report));
        self.worker_cond.notify_all();
    }

    /// Request-body bytes from a DATA frame.
    pub fn push_input(&self, data: &[u8]) {
        let mut io = self.io.lock();
        if io.closed.is_some() || io.input_end {
            return;
        }
        io.input.push(data);
        let watch = io.input_watch.clone();
        drop(io);
        self.worker_cond.notify_all();
        if let Some(w) = watch {
            w.wake();
        }
    }

    /// The request body ended (END_STREAM), with trailers if any.
    pub fn end_input(&self, trailers: Option<Headers>) {
        let mut io = self.io.lock();
        io.input_end = true;
        if trailers.is_some() {
            io.input_trailers = trailers.map(Box::new);
        }
        let watch = io.input_watch.clone();
        drop(io);
        self.worker_cond.notify_all();
        if let Some(w) = watch {
            w.wake();
        }
    }

    /// c1 looks at the stream after a wake-up. Takes what c1 must act on.
    pub fn progress(&self) -> Progress {
        Signal::unlist(self);
        let mut io = self.io.lock();
        let mut p = Progress {
            interims: std::mem::take(&mut io.interims),
            consumed: std::mem::take(&mut io.consumed),
            worker_done: io.worker == Some(WorkerState::Done),
            slot_released: io.slot_released,
            report_asked: std::mem::take(&mut io.report_asked),
            ..Default::default()
        };
        if !io.response_taken {
            if let Some(r) = io.response.take() {
                io.response_taken = true;
                p.response = Some(r);
            } else if io.refusal.is_some() {
                io.response_taken = true;
                p.refused = io.refusal;
            }
        }
        p.data_ready = io.response_taken && io.refusal.is_none() && (!io.output.is_empty() || io.output_end);
        // The worker ended without finishing the response (it failed or
        // panicked, or the response broke off after its head): c1 must
        // reset the stream or it would wait forever.
        p.failed =
            p.worker_done && !(io.response_taken && io.output_end) && io.closed.is_none() && io.refusal.is_none();
        p.starved = p.failed && io.output_starved;
        p
    }

    /// Whether the response is complete with no body at all (HEADERS can
    /// carry END_STREAM).
    pub fn body_is_empty_and_done(&self) -> bool {
        self.io.lock().output_done()
    }

    /// c1 prepares a DATA frame of at most `max` bytes: how many are
    /// there, and whether they end the body. The bytes stay queued until
    /// `take_output` (nghttp2's no-copy send).
    pub fn peek_output(&self, max: usize) -> Output {
        let mut io = self.io.lock();
        let n = io.output.pending().min(max as u64) as usize;
        let end = io.output_end && io.output.pending() == n as u64;
        if n == 0 && !end {
            io.c1_waiting = true;
            return Output::Deferred;
        }
        let trailers = if end { io.trailers.take().map(|t| *t) } else { None };
        Output::Data { n, end, trailers }
    }

    /// c1 writes a DATA frame's payload: appends exactly `n` queued bytes
    /// (announced by `peek_output`) to `out`.
    pub fn take_output(&self, out: &mut Frames, n: usize) -> std::io::Result<()> {
        let mut io = self.io.lock();
        let result = io.output.take_into(out, n);
        let drained_to_half = io.output.len() <= self.out_limit / 2;
        let wake_worker = io.worker_wants_room && drained_to_half;
        let watch = if drained_to_half { io.output_watch.take() } else { None };
        drop(io);
        if wake_worker {
            self.worker_cond.notify_all();
        }
        if let Some(w) = watch {
            w.wake();
        }
        result
    }

    /// Whether a file region may be queued (`write_file`), or its bytes
    /// must be copied: at most `MAX_FILE_REGIONS_PER_STREAM` in the queue,
    /// and the child's descriptors for them within `file_region_budget`.
    /// Without a bound a client that opens no window held a descriptor
    /// per range of every stream (200 ranges x 100 streams a connection)
    /// until the child's ran out.
    pub fn takes_file_region(&self) -> bool {
        if self.runs_inline() {
            // Always: it cannot wait for a copy's room, and it has one
            // file and no ranges (`fastpath::candidate`). The budget was
            // checked before it was run here (`C1Dispatch::runs_here`).
            return true;
        }
        if !file_regions_within_budget() {
            return false;
        }
        let io = self.io.lock();
        io.output.segments.iter().filter(|s| matches!(s, Segment::File(_))).count() < MAX_FILE_REGIONS_PER_STREAM
    }

    /// A file region for the response body (static files): queued as a
    /// reference, read by c1 when it sends. Not bounded by the memory
    /// limit, and the worker does not wait for it to be sent: callers ask
    /// `takes_file_region` first.
    pub fn write_file(&self, region: FileRegion) -> Result<(), StreamError> {
        let mut io = self.io.lock();
        if io.closed.is_some() {
            return Err(StreamError::Aborted);
        }
        io.output.push_file(region);
        let wake = std::mem::take(&mut io.c1_waiting);
        drop(io);
        if wake {
            self.notify_c1();
        }
        Ok(())
    }

    /// c1 closed the stream (sent or received END_STREAM both ways, or a
    /// reset): aborts the worker if it still runs. Returns the retire action
    /// if the worker is already done.
    pub fn close(&self, error_code: u32) -> Option<Box<dyn Retire>> {
        let io = self.io.lock();
        self.close_locked(io, error_code)
    }

    /// `close`, and what c1 does with a stream nghttp2 closed, read under
    /// the same lock (it took it six times: ~170 instructions a request).
    pub fn close_for_c1(&self, error_code: u32) -> Closing {
        Signal::unlist(self);
        let io = self.io.lock();
        let output_complete = io.output_done();
        let worker_done = io.worker == Some(WorkerState::Done);
        let retire = self.close_locked(io, error_code);
        Closing { output_complete, worker_done, retire }
    }

    fn close_locked(&self, mut io: parking_lot::MutexGuard<'_, StreamIo>, error_code: u32) -> Option<Box<dyn Retire>> {
        if io.closed.is_none() {
            io.closed = Some(error_code);
        }
        self.aborted.store(true, Ordering::Release);
        let retire = if io.worker == Some(WorkerState::Done) { io.retire.take() } else { None };
        let watches = [io.input_watch.take(), io.output_watch.take()];
        drop(io);
        self.worker_cond.notify_all();
        for w in watches.into_iter().flatten() {
            w.wake();
        }
        retire
    }

    /// After close: takes the retire action once the worker is done.
    pub fn take_retire(&self) -> Option<Box<dyn Retire>> {
        let mut io = self.io.lock();
        if io.worker == Some(WorkerState::Done) {
            io.retire.take()
        } else {
            None
        }
    }

    pub fn worker_state(&self) -> Option<WorkerState> {
        self.io.lock().worker
    }

    /// The queues' state in a few words (for diagnostics in the log).
    pub fn describe(&self) -> String {
        let io = self.io.lock();
        format!(
            "in {} (end {}), out {} ({} in memory of {}; end {}, response taken {}, c1 waiting {}), worker {:?}, closed {:?}",
            io.input.len(), io.input_end, io.output.pending(), io.output.len(), self.out_limit, io.output_end,
            io.response_taken, io.c1_waiting, io.worker, io.closed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn stream(limit: usize) -> (Arc<Stream>, Arc<Signal>) {
        let signal = Arc::new(Signal::new().unwrap());
        let req = Box::new(RequestHead { end_stream: false, ..Default::default() });
        let s = Arc::new(Stream::new(1, req, signal.clone(), limit, Duration::from_secs(5), true));
        (s, signal)
    }

    #[test]
    fn a_stream_in_flight_fits_the_448_byte_slab_class() {
        // An Arc<Stream> lives for every stream in flight (1,000 at `-c 100
        // -m 10`): with its two counts it took the 896-byte class until
        // the rare trailers and the WebSocket accept key were boxed, and
        // the 768-byte one until the request head was (its box, 304
        // bytes, is the builder's: it moves in as a pointer).
        assert!(std::mem::size_of::<Stream>() + 2 * std::mem::size_of::<usize>() <= 448);
    }

    /// Drains `q` in frames of at most 16 KiB into `out`.
    fn drain(q: &mut OutputQueue, out: &mut Frames) {
        while !q.is_empty() {
            let n = q.pending().min(16_384) as usize;
            q.take_into(out, n).unwrap();
        }
    }

    #[test]
    fn file_regions_are_read_in_order_with_bytes() {
        let path = std::env::temp_dir().join(format!("h2rs-region-{}", std::process::id()));
        let content: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let mut q = OutputQueue::default();
        q.push(b"head:");
        q.push_file(FileRegion::new(std::fs::File::open(&path).unwrap(), 100, 40_000, true));
        q.push(b":tail");
        assert_eq!(q.len(), 10);
        assert_eq!(q.pending(), 40_010);
        let mut out = Frames::default();
        drain(&mut q, &mut out);
        let mut want = b"head:".to_vec();
        want.extend_from_slice(&content[100..40_100]);
        want.extend_from_slice(b":tail");
        assert_eq!(out.contiguous(), Some(&want[..]));
        // A region past the end of the file cannot be read whole.
        q.push_file(FileRegion::new(std::fs::File::open(&path).unwrap(), 49_000, 2_000, true));
        let before = out.len();
        assert!(q.take_into(&mut out, 2_000).is_err());
        assert_eq!(out.len(), before);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_stream_takes_a_few_file_regions_at_a_time() {
        let (s, _signal) = stream(1024);
        let path = std::env::temp_dir().join(format!("h2rs-regions-{}", std::process::id()));
        std::fs::write(&path, [7u8; 100]).unwrap();
        for _ in 0..MAX_FILE_REGIONS_PER_STREAM {
            assert!(s.takes_file_region());
            s.write_file(FileRegion::new(std::fs::File::open(&path).unwrap(), 0, 10, false)).unwrap();
            s.write_output(b"-").unwrap();
        }
        assert!(!s.takes_file_region(), "a region per range of a multi-range response, without bound");
        let mut out = Frames::default();
        s.io.lock().output.take_into(&mut out, 11).unwrap();
        assert!(s.takes_file_region(), "one was sent");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn large_file_regions_go_by_reference_where_the_connection_takes_it() {
        let path = std::env::temp_dir().join(format!("h2rs-mapped-{}", std::process::id()));
        let size = filemap::WINDOW + 3 * MAP_AT_LEAST as usize;
        let content: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let region = |may_map| FileRegion::new(std::fs::File::open(&path).unwrap(), 7, size as u64 - 7, may_map);
        let mut want = b"head:".to_vec();
        want.extend_from_slice(&content[7..]);
        for (by_reference, may_map, mapped) in [(true, true, true), (true, false, false), (false, true, false)] {
            let mut q = OutputQueue::default();
            q.push(b"head:");
            q.push_file(region(may_map));
            let mut out = Frames::default();
            out.set_by_reference(by_reference);
            drain(&mut q, &mut out);
            assert_eq!(out.contiguous().is_none(), mapped, "by_reference {by_reference}, may_map {may_map}");
            assert_eq!(out.len(), want.len());
            assert_eq!(out.joined(), want);
        }
        // A window past the end of a file shorter than its region is not
        // mapped: copied, its frame fails at the end (a stream reset, not
        // a failed connection write).
        // (Mapped, the test would die of SIGBUS reading the pieces.)
        let mut q = OutputQueue::default();
        q.push_file(FileRegion::new(std::fs::File::open(&path).unwrap(), 0, size as u64 + MAP_AT_LEAST, true));
        let mut out = Frames::default();
        out.set_by_reference(true);
        while q.pending() > 0 && q.take_into(&mut out, q.pending().min(16_384) as usize).is_ok() {}
        assert_eq!(q.pending(), MAP_AT_LEAST);
        assert_eq!(out.joined(), content);
        // A small region of a file too large to keep mapped is copied (a
        // window of its own costs more than the copy).
        let mut q = OutputQueue::default();
        q.push_file(FileRegion::new(std::fs::File::open(&path).unwrap(), 0, MAP_AT_LEAST - 1, true));
        let mut out = Frames::default();
        out.set_by_reference(true);
        drain(&mut q, &mut out);
        assert_eq!(out.contiguous(), Some(&content[..MAP_AT_LEAST as usize - 1]));
        // A small file goes by reference to the child's kept mapping.
        std::fs::write(&path, &content[..100_000]).unwrap();
        let mut q = OutputQueue::default();
        q.push(b"head:");
        q.push_file(FileRegion::new(std::fs::File::open(&path).unwrap(), 7, 99_993, true));
        let mut out = Frames::default();
        out.set_by_reference(true);
        drain(&mut q, &mut out);
        assert!(out.contiguous().is_none());
        assert_eq!(out.joined(), [&b"head:"[..], &content[7..100_000]].concat());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn byte_queue_roundtrip() {
        let mut q = ByteQueue::default();
        q.push(b"hello ");
        q.push(&vec![b'x'; 40_000]);
        q.push(b"end");
        assert_eq!(q.len(), 6 + 40_000 + 3);
        let mut buf = [0u8; 10];
        assert_eq!(q.take_into(&mut buf), 10);
        assert_eq!(&buf[..6], b"hello ");
        let rest = q.take_vec(usize::MAX);
        let mut all = rest;
        while !q.is_empty() {
            all.extend(q.take_vec(1000));
        }
        assert_eq!(all.len(), 40_000 - 4 + 3);
        assert!(all.ends_with(b"xend"));
    }

    #[test]
    fn fifo_keeps_order_across_its_inline_head() {
        let mut f = Fifo::default();
        assert!(f.front().is_none() && f.back_mut().is_none() && f.pop_front().is_none());
        f.push_back(1);
        assert_eq!(f.back_mut().copied(), Some(1));
        f.push_back(2);
        f.push_back(3);
        *f.back_mut().unwrap() += 10;
        assert_eq!(f.pop_front(), Some(1));
        f.push_back(4);
        assert_eq!(f.front().copied(), Some(2));
        let drained: Vec<_> = std::iter::from_fn(|| f.pop_front()).collect();
        assert_eq!(drained, [2, 13, 4]);
        f.push_back(5);
        assert_eq!((f.front().copied(), f.rest.len()), (Some(5), 0));
    }

    #[test]
    fn small_writes_get_small_chunks_that_grow() {
        let mut q = ByteQueue::default();
        q.push(&[1u8; 1024]);
        // A 1 KiB response holds about 1 KiB, not a 16 KiB chunk.
        assert_eq!(q.chunks.front().map(|c| c.capacity()), Some(1024));
        for _ in 0..15 {
            q.push(&[2u8; 1024]);
        }
        // Appended writes fill one chunk up to CHUNK before a new one starts.
        assert_eq!((q.chunks.rest.len(), q.len()), (0, 16 * 1024));
        q.push(&[3u8; 10]);
        assert_eq!(q.chunks.rest.len(), 1);
        let all = q.take_vec(usize::MAX);
        assert_eq!(all.len(), 16 * 1024);
        assert_eq!(q.take_vec(usize::MAX), [3u8; 10]);
    }

    #[test]
    fn headers_compact_list() {
        let mut h = Headers::new();
        h.push(b"a", b"1");
        assert!(h.push_token_lowercase(b"Content-Type", b"text/plain"));
        assert!(!h.push_token_lowercase(b"Bad Name", b"x"));
        assert!(!h.push_token_lowercase(b"", b"x"));
        assert!(!h.push_token_lowercase(b"caf\xc3\xa9", b"x"));
        let v: Vec<_> = h.iter().collect();
        assert_eq!(v, vec![(&b"a"[..], &b"1"[..]), (&b"content-type"[..], &b"text/plain"[..])]);
        assert_eq!(h.byte_len(), 2 + 22);
        assert_eq!(h.get(b"CONTENT-TYPE"), Some(&b"text/plain"[..]));
    }

    #[test]
    fn known_names_are_lower_case_and_numbered_as_pushed() {
        assert_eq!(KNOWN_NAMES[KNOWN_SET_COOKIE], b"set-cookie");
        let mut h = Headers::new();
        for (i, name) in KNOWN_NAMES.iter().enumerate() {
            assert_eq!(name.to_ascii_lowercase(), *name);
            h.push_known(i, b"v");
            h.push(name, b"w");
        }
        let fields: Vec<_> = h.known_iter().collect();
        for (i, name) in KNOWN_NAMES.iter().enumerate() {
            assert_eq!(fields[2 * i], (Some(i), *name, &b"v"[..]));
            assert_eq!(fields[2 * i + 1], (None, *name, &b"w"[..]), "pushed by name: not numbered");
        }
    }

    #[test]
    fn headers_keep_empty_values_and_order_in_one_allocation() {
        let fields: [(&[u8], &[u8]); 4] =
            [(b"x-empty", b""), (b"a", b"1"), (b"x-empty", b"2"), (b"long", &[b'v'; 300])];
        let mut h = Headers::with_capacity(4, 400);
        let room = h.capacity();
        for (n, v) in fields {
            h.push(n, v);
        }
        assert_eq!(h.capacity(), room, "four fields of 400 bytes fit the room reserved");
        assert_eq!(h.iter().collect::<Vec<_>>(), fields.to_vec());
        assert_eq!((h.len(), h.byte_len()), (4, 7 + 1 + 1 + 7 + 1 + 4 + 300));
        assert_eq!(h.get(b"x-empty"), Some(&b""[..]), "the first one");
        let mut grown = Headers::new();
        for i in 0..100 {
            grown.push(format!("f{i}").as_bytes(), b"v");
        }
        assert_eq!(grown.iter().count(), 100);
        assert_eq!(grown.iter().last(), Some((&b"f99"[..], &b"v"[..])));
    }

    #[test]
    fn output_backpressure_and_order() {
        let (s, _sig) = stream(4096);
        s.set_response(ResponseHead { status: 200, headers: Headers::new() }).unwrap();
        let writer = {
            let s = s.clone();
            thread::spawn(move || {
                let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
                s.write_output(&data).unwrap();
                s.end_output(None);
                s.worker_done(None);
            })
        };
        let p = s.progress();
        assert!(p.response.is_some());
        let mut got = Frames::default();
        loop {
            match s.peek_output(3000) {
                Output::Data { n, end, .. } => {
                    s.take_output(&mut got, n).unwrap();
                    assert!(s.io.lock().output.len() <= 4096);
                    if end {
                        break;
                    }
                }
                Output::Deferred => thread::sleep(Duration::from_millis(1)),
            }
        }
        writer.join().unwrap();
        let want: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(got.contiguous(), Some(&want[..]));
    }

    /// Buffered output below a frame waits for a flush, the end or the
    /// clock: a write does not wake c1, the late flush does, and once.
    #[test]
    fn unflushed_output_goes_to_c1_from_the_clock() {
        crate::clock::start();
        let (s, sig) = stream(64 * 1024);
        s.set_response(ResponseHead { status: 200, headers: Headers::new() }).unwrap();
        s.write_output(b"event: one\n\n").unwrap();
        assert!(sig.take().is_empty(), "a small buffered write woke c1");
        s.arm_late_flush();
        s.arm_late_flush();
        assert!(s.io.lock().late_flush_armed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sig.take().is_empty() {
            assert!(Instant::now() < deadline, "the late flush never woke c1");
            thread::sleep(Duration::from_millis(5));
        }
        assert!(s.progress().response.is_some());
        assert_eq!(s.peek_output(1000), Output::Data { n: 12, end: false, trailers: None });
        assert!(!s.io.lock().late_flush_armed, "armed twice, rang once: the flag is clear again");
        // Nothing to flush after the end of the body, nor for a stream c1
        // runs itself.
        s.end_output(None);
        s.arm_late_flush();
        assert!(!s.io.lock().late_flush_armed);
        let (inline, _sig) = stream(64 * 1024);
        inline.run_inline();
        inline.write_output(b"x").unwrap();
        inline.arm_late_flush();
        assert!(!inline.io.lock().late_flush_armed);
    }

    /// H2OutputBuffering off: every write wakes c1, also before c1 has seen
    /// the response head (it has not deferred the stream yet).
    #[test]
    fn unbuffered_writes_wake_c1_at_once() {
        let signal = Arc::new(Signal::new().unwrap());
        let req = Box::new(RequestHead { end_stream: false, ..Default::default() });
        let s = Arc::new(Stream::new(3, req, signal.clone(), 64 * 1024, Duration::from_secs(5), false));
        s.set_response(ResponseHead { status: 200, headers: Headers::new() }).unwrap();
        s.write_output(b"a").unwrap();
        assert_eq!(signal.take(), [3]);
        assert!(s.progress().response.is_some());
        assert_eq!(s.peek_output(10), Output::Data { n: 1, end: false, trailers: None });
        s.take_output(&mut Frames::default(), 1).unwrap();
        assert_eq!(s.peek_output(10), Output::Deferred);
        s.write_output(b"b").unwrap();
        assert_eq!(signal.take(), [3]);
        s.arm_late_flush();
        assert!(!s.io.lock().late_flush_armed, "unbuffered output needs no late flush");
    }

    #[test]
    fn inline_stream_never_waits_for_itself_but_is_capped() {
        let (s, _sig) = stream(4096);
        s.run_inline();
        // Past out_limit without a reader: no wait (it would be forever).
        s.write_output(&vec![7u8; 100_000]).unwrap();
        assert_eq!(s.output_queued(), 100_000);
        assert_eq!(s.write_output(&vec![7u8; INLINE_MEM_CAP]), Err(StreamError::Aborted));
        assert_eq!(s.output_queued(), 100_000);
    }

    #[test]
    fn a_worker_gets_the_report_c1_gives_once_it_asked() {
        let (s, sig) = stream(1024);
        assert!(!s.progress().report_asked);
        let w = {
            let s = s.clone();
            thread::spawn(move || s.session_report())
        };
        // c1: woken for the stream, it sees the question once.
        let mut asked = false;
        for _ in 0..500 {
            if sig.take().contains(&1) && s.progress().report_asked {
                asked = true;
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        assert!(asked, "c1 was not asked");
        assert!(!s.progress().report_asked);
        let report = SessionReport { requests: 7, ..Default::default() };
        s.give_report(report.clone());
        assert_eq!(w.join().unwrap(), Ok(report));
    }

    #[test]
    fn a_closed_stream_ends_the_wait_for_a_report() {
        let (s, _sig) = stream(1024);
        let w = {
            let s = s.clone();
            thread::spawn(move || s.session_report())
        };
        thread::sleep(Duration::from_millis(50));
        s.close(8);
        assert_eq!(w.join().unwrap(), Err(StreamError::Aborted));
        // Never on c1's own thread: c1 would wait for itself.
        let (inline, _sig) = stream(1024);
        inline.run_inline();
        assert_eq!(inline.session_report(), Err(StreamError::Aborted));
    }

    #[test]
    fn close_aborts_blocked_writer_and_reader() {
        let (s, _sig) = stream(1024);
        let w = {
            let s = s.clone();
            thread::spawn(move || s.write_output(&[0u8; 10_000]))
        };
        let r = {
            let s = s.clone();
            thread::spawn(move || s.read_input(100, true, None))
        };
        thread::sleep(Duration::from_millis(50));
        assert!(s.close(8).is_none());
        assert_eq!(w.join().unwrap(), Err(StreamError::Aborted));
        assert_eq!(r.join().unwrap(), Err(StreamError::Aborted));
        assert!(s.is_aborted());
    }

    #[test]
    fn a_body_deadline_ends_a_read_before_the_stream_timeout() {
        let (s, _sig) = stream(1024);
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(s.read_input(100, true, Some(soon)), Err(StreamError::BodyTooSlow));
        assert!(!s.is_aborted(), "the stream itself is fine");
        // Data there is read whatever the deadline; a deadline past the
        // stream timeout leaves the stream timeout in charge.
        s.push_input(b"late");
        assert_eq!(s.read_input(100, true, Some(soon)).unwrap(), Input::Data(b"late".to_vec()));
        let req = Box::new(RequestHead { end_stream: false, ..Default::default() });
        let quick = Stream::new(3, req, Arc::new(Signal::new().unwrap()), 1024, Duration::from_millis(30), true);
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(quick.read_input(100, true, Some(later)), Err(StreamError::Timeout));
    }

    #[test]
    fn input_consumption_is_reported() {
        let (s, sig) = stream(1024);
        s.push_input(b"abcdef");
        s.end_input(None);
        assert_eq!(s.read_input(100, true, None).unwrap(), Input::Data(b"abcdef".to_vec()));
        assert_eq!(sig.take(), vec![1]);
        assert_eq!(s.progress().consumed, 6);
        assert_eq!(s.read_input(4, true, None).unwrap(), Input::End(None));
    }

    #[test]
    fn the_end_is_taken_early_only_when_nothing_is_before_it() {
        let (s, _sig) = stream(1024);
        assert!(s.take_end(None).is_none(), "no end yet");
        s.push_input(b"body");
        let mut trailers = Headers::new();
        trailers.push(b"x-checksum", b"1");
        s.end_input(Some(trailers));
        assert!(s.take_end(None).is_none(), "data before it");
        assert_eq!(s.read_input(100, true, None).unwrap(), Input::Data(b"body".to_vec()));
        let Some(Some(t)) = s.take_end(None) else { panic!("the end with its trailers") };
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![(&b"x-checksum"[..], &b"1"[..])]);
        // Taken: the end that reads give next has none.
        assert_eq!(s.read_input(100, true, None).unwrap(), Input::End(None));
        // A reset stream's end is not a body's end.
        let (s, _sig) = stream(1024);
        s.end_input(None);
        s.close(8);
        assert!(s.take_end(None).is_none());
    }

    #[test]
    fn a_reader_waits_for_the_end_only_while_the_stream_is_open_and_drained() {
        let (s, _sig) = stream(1024);
        // The end comes from c1 a moment after the reader started waiting.
        let ender = {
            let s = s.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut trailers = Headers::new();
                trailers.push(b"x-checksum", b"2");
                s.end_input(Some(trailers));
            })
        };
        let Some(Some(t)) = s.take_end(Some(Instant::now() + Duration::from_secs(5))) else {
            panic!("the end with its trailers")
        };
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![(&b"x-checksum"[..], &b"2"[..])]);
        ender.join().unwrap();

        // No end within the wait.
        let (s, _sig) = stream(1024);
        let started = Instant::now();
        assert!(s.take_end(Some(started + Duration::from_millis(40))).is_none());
        assert!(started.elapsed() >= Duration::from_millis(40));
        // Data queued before any end, or a reset: nothing to wait for.
        s.push_input(b"more");
        let started = Instant::now();
        assert!(s.take_end(Some(started + Duration::from_secs(5))).is_none());
        let (s, _sig) = stream(1024);
        s.close(8);
        assert!(s.take_end(Some(started + Duration::from_secs(5))).is_none());
        assert!(started.elapsed() < Duration::from_secs(1), "returned at once");
    }

    struct Flag(Arc<AtomicBool>);
    impl Retire for Flag {
        fn retire(self: Box<Self>, _outcome: Outcome) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A watch that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn input_watch_is_woken_for_data_end_and_close() {
        let woken = |c: &Arc<Count>| c.0.load(Ordering::SeqCst);
        let (s, _signal) = stream(1024);
        s.push_input(b"early");
        let count = Arc::new(Count(Default::default()));
        // Data already there: woken at once.
        s.watch_input(count.clone());
        assert_eq!(woken(&count), 1);
        assert!(matches!(s.read_input(100, false, None), Ok(Input::Data(d)) if d == b"early"));
        assert!(matches!(s.read_input(100, false, None), Ok(Input::WouldBlock)));
        s.push_input(b"x");
        assert_eq!(woken(&count), 2);
        s.end_input(None);
        assert_eq!(woken(&count), 3);
        s.close(0);
        assert_eq!(woken(&count), 4);
        assert_eq!(Arc::strong_count(&count), 1, "the close dropped the watch");
        // Watching a closed stream wakes at once and keeps nothing (a
        // proxy front that watched a stream its client had already reset
        // was kept alive with the stream, in a cycle).
        s.watch_input(count.clone());
        assert_eq!(woken(&count), 5);
        assert_eq!(Arc::strong_count(&count), 1);
    }

    /// A read that leaves input queued keeps the watch readable (its reader
    /// drained it before reading), as a socket with bytes left would be.
    #[test]
    fn a_read_that_leaves_input_wakes_the_watch_again() {
        let (s, _signal) = stream(1024);
        let count = Arc::new(Count(Default::default()));
        s.watch_input(count.clone());
        s.push_input(b"0123456789");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(s.read_input(4, false, None), Ok(Input::Data(d)) if d == b"0123"));
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "bytes left: woken");
        assert!(matches!(s.read_input(100, false, None), Ok(Input::Data(d)) if d == b"456789"));
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "none left: not woken");
    }

    #[test]
    fn input_after_a_normal_close_is_the_rest_of_a_complete_body() {
        // The client ended its body and the stream closed normally (the
        // response went out before the handler read everything).
        let (s, _sig) = stream(1024);
        s.push_input(b"rest");
        s.end_input(None);
        s.close_for_c1(0);
        let Ok(Input::Data(d)) = s.read_input(100, true, None) else { panic!("no data") };
        assert_eq!(d, b"rest");
        assert!(matches!(s.read_input(100, true, None), Ok(Input::End(None))));
        // Nothing more to give back to the window: c1 did at the close.
        assert_eq!(s.progress().consumed, 0);

        // A reset, or a close before the client ended its body, cuts it.
        let (s, _sig) = stream(1024);
        s.end_input(None);
        s.close(8);
        assert!(matches!(s.read_input(100, true, None), Err(StreamError::Aborted)));
        let (s, _sig) = stream(1024);
        s.push_input(b"part");
        s.close(0);
        assert!(matches!(s.read_input(100, true, None), Err(StreamError::Aborted)));
    }

    #[test]
    fn retire_after_close_and_done() {
        let (s, _sig) = stream(1024);
        let hit = Arc::new(AtomicBool::new(false));
        assert!(s.close(0).is_none());
        s.worker_done(Some(Box::new(Flag(hit.clone()))));
        let r = s.take_retire().expect("retire after worker_done");
        r.retire(Outcome { complete: true, bytes_sent: 0 });
        assert!(hit.load(Ordering::SeqCst));
        assert!(s.take_retire().is_none());
    }

    #[test]
    fn closing_for_c1_reports_completion_and_the_retire() {
        // A worker read 3 of 10 request bytes and is still running.
        let (s, _sig) = stream(1024);
        s.push_input(b"0123456789");
        let Ok(Input::Data(d)) = s.read_input(3, false, None) else { panic!("no input") };
        assert_eq!(d.len(), 3);
        let c = s.close_for_c1(8);
        assert_eq!((c.output_complete, c.worker_done), (false, false));
        assert!(c.retire.is_none());
        assert!(s.is_aborted());

        // A worker that answered in full and finished: its retire comes back.
        let (s, _sig) = stream(1024);
        s.set_response(ResponseHead { status: 200, headers: Headers::new() }).unwrap();
        s.write_output(b"body").unwrap();
        s.end_output(None);
        let hit = Arc::new(AtomicBool::new(false));
        s.worker_done(Some(Box::new(Flag(hit.clone()))));
        let mut out = Frames::default();
        s.take_output(&mut out, 4).unwrap();
        let c = s.close_for_c1(0);
        assert_eq!((c.output_complete, c.worker_done), (true, true));
        c.retire.expect("the finished worker's retire").retire(Outcome { complete: true, bytes_sent: 4 });
        assert!(hit.load(Ordering::SeqCst));
    }
}
