//! An HTTP/2 request head as it arrives in HEADERS/CONTINUATION: pseudo
//! headers, regular fields, limits (LimitRequestFields,
//! LimitRequestFieldSize, LimitRequestLine), cookie crumbs.
//!
//! nghttp2 already rejects what RFC 9113 section 8 calls malformed (its HTTP
//! messaging checks are on); the checks here repeat the field syntax rules
//! so this code is safe on its own (and under a fuzzer), and apply httpd's
//! limits the way the stock module answers them:
//! - a pseudo header longer than LimitRequestLine: 414;
//! - more fields than LimitRequestFields: 431, and far more (limit + 100):
//!   the stream is reset with ENHANCE_YOUR_CALM;
//! - a field longer than LimitRequestFieldSize: 431.
//!   A request that will be answered with an error stores no more fields, so
//!   its memory stays bounded.

use crate::stream::Headers;
use crate::text::ShortBytes;

/// The httpd limits that apply to request heads.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// LimitRequestFields (0 = unlimited).
    pub max_fields: u32,
    /// LimitRequestFieldSize: bytes of "name: value".
    pub max_field_size: u32,
    /// LimitRequestLine: bytes of a pseudo-header value.
    pub max_line: u32,
    /// Decoded bytes of one head (fields counted as HPACK does: name +
    /// value + 32): HPACK can make a small block decode to a huge head.
    pub max_head_bytes: u32,
    /// We sent SETTINGS_ENABLE_CONNECT_PROTOCOL (H2WebSockets): `:protocol`
    /// is allowed on CONNECT (RFC 8441 4); without it, it is malformed.
    pub extended_connect: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        use crate::limits::directive::{LIMIT_REQUEST_FIELDS, LIMIT_REQUEST_FIELD_SIZE, LIMIT_REQUEST_LINE};
        Limits {
            max_fields: LIMIT_REQUEST_FIELDS.1,
            max_field_size: LIMIT_REQUEST_FIELD_SIZE.1,
            max_line: LIMIT_REQUEST_LINE.1,
            max_head_bytes: crate::limits::MAX_REQUEST_HEAD_BYTES,
            extended_connect: false,
        }
    }
}

/// A complete request head, ready for a worker.
#[derive(Clone, Debug, Default)]
pub struct RequestHead {
    pub method: ShortBytes,
    pub scheme: Option<ShortBytes>,
    pub authority: Option<ShortBytes>,
    pub path: Option<ShortBytes>,
    /// `:protocol` of an extended CONNECT (RFC 8441).
    pub protocol: Option<ShortBytes>,
    /// Regular fields in arrival order, cookie crumbs joined into one.
    pub headers: Headers,
    /// Answer with this status instead of processing (431, 414).
    pub error_status: Option<u16>,
    /// Why, for the error log (which limit, which field), as httpd says
    /// it for HTTP/1.1 (AH00561 and the like).
    pub error_reason: Option<Box<str>>,
    /// HEADERS carried END_STREAM: there is no body.
    pub end_stream: bool,
    /// RFC 9218 urgency (0 the most urgent, 7 the least) of its `priority`
    /// field, set by the session (3 without one): the order in which
    /// streams waiting for a worker start.
    pub urgency: u8,
    /// Bytes of the header block as received (for %I accounting).
    pub raw_bytes: usize,
    /// A WebSocket tunnel (extended CONNECT turned into an upgrade GET, see
    /// `websocket.rs`): the `Sec-WebSocket-Accept` its 101 must carry.
    pub websocket_accept: Option<Box<[u8]>>,
    /// The request's number on its connection, from 1 (0: not counted).
    /// It becomes the c2's `keepalives`, which mod_log_config's `%k` logs
    /// less one, as HTTP/1.1 counts the requests of a connection.
    pub number: u32,
    /// When the head was complete, in microseconds since the epoch (an
    /// apr_time_t): the request's `request_time` (0: not recorded).
    pub arrived_us: i64,
}

/// The wall clock in microseconds since the epoch, as apr_time_now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A content-length that is not one number (`RequestHead::content_length`).
#[derive(Debug, PartialEq, Eq)]
pub struct BadContentLength;

impl RequestHead {
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers.get(name)
    }

    /// The declared length of the body (content-length): None if absent,
    /// Err if not a number or given twice with different values. The
    /// session resets a stream whose value is bad or whose DATA do not add
    /// up to it, so on a stream that runs it is the body's length.
    pub fn content_length(&self) -> Result<Option<u64>, BadContentLength> {
        let mut found: Option<u64> = None;
        for (n, v) in self.headers.iter() {
            if n != b"content-length" {
                continue;
            }
            for part in v.split(|&b| b == b',') {
                let t = std::str::from_utf8(part).map_err(|_| BadContentLength)?.trim();
                let n = crate::text::parse_decimal(t.as_bytes()).ok_or(BadContentLength)?;
                match found {
                    Some(prev) if prev != n => return Err(BadContentLength),
                    _ => found = Some(n),
                }
            }
        }
        Ok(found)
    }

    /// Bytes the head holds, fields counted as HPACK does (+ 32 each).
    pub fn decoded_size(&self) -> usize {
        let pseudo = [&self.scheme, &self.authority, &self.path, &self.protocol]
            .iter()
            .map(|v| v.as_ref().map_or(0, |v| v.len() + 32))
            .sum::<usize>();
        self.method.len() + pseudo + self.headers.hpack_size()
    }

    /// Whether the stream becomes a tunnel once the handler agrees: a
    /// WebSocket, or a plain CONNECT (RFC 9113 8.5, mod_proxy_connect).
    /// Its bytes are not buffered, it does not wait for a worker slot and
    /// it gets a worker of its own (it lives as long as the client wants).
    pub fn is_tunnel(&self) -> bool {
        self.websocket_accept.is_some() || (self.method == b"CONNECT" && self.protocol.is_none())
    }
}

/// What went wrong with a header field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Malformed per RFC 9113 section 8: reset the stream, PROTOCOL_ERROR.
    Malformed(&'static str),
    /// Far beyond the limits: reset the stream, ENHANCE_YOUR_CALM.
    Calm,
}

/// RFC 9110 token characters (field names), one entry per byte value:
/// every field of every request and response is checked byte by byte, and
/// a lookup takes fewer instructions than the chain of range tests.
const TOKEN_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' |
            b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z');
        b += 1;
    }
    table
};

/// Each byte lower-cased if it is a token character, 0 if it is not: a
/// field name is checked and lower-cased in one pass (`Headers::push_token_lowercase`).
pub const TOKEN_LOWER: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        if TOKEN_CHARS[b] {
            table[b] = (b as u8).to_ascii_lowercase();
        }
        b += 1;
    }
    table
};

/// RFC 9110 token characters (field names).
pub fn is_token_char(b: u8) -> bool {
    TOKEN_CHARS[b as usize]
}

/// Whether `name` is a non-empty token.
pub fn is_token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_token_char(b))
}

/// An HTTP/2 field name: lower-case token characters only.
pub fn valid_h2_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_token_char(b) && !b.is_ascii_uppercase())
}

/// A word of eight copies of `b`.
const fn repeated(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Whether a byte of `w` is below the byte repeated in `below` (at most
/// 0x80): `(w - below) & !w & 0x80..80` is not zero exactly then (a borrow
/// only starts at such a byte). With `below` 0x01..01: a zero byte; XOR
/// with a repeated byte first turns that byte into zero.
fn has_byte_below(w: u64, below: u64) -> bool {
    w.wrapping_sub(below) & !w & repeated(0x80) != 0
}

/// Whether `word` holds for a word of `value`, eight bytes at a time (every
/// field of every message passes here, and a byte loop cost ten
/// instructions a byte); the bytes after the last whole word are checked
/// as part of the last eight bytes (a word overlapping the one before). A
/// value shorter than a word: whether `byte` holds for one of its bytes.
#[inline(always)]
fn any_word(value: &[u8], word: impl Fn(u64) -> bool, byte: impl Fn(u8) -> bool) -> bool {
    let Some(last) = value.last_chunk::<8>() else {
        return value.iter().any(|&b| byte(b));
    };
    let (words, _) = value.as_chunks::<8>();
    words.iter().any(|w| word(u64::from_ne_bytes(*w))) || word(u64::from_ne_bytes(*last))
}

/// Whether a field value holds a NUL, CR or LF.
pub fn has_forbidden_value_byte(value: &[u8]) -> bool {
    let ones = repeated(0x01);
    any_word(
        value,
        |w| {
            has_byte_below(w, ones)
                | has_byte_below(w ^ repeated(b'\r'), ones)
                | has_byte_below(w ^ repeated(b'\n'), ones)
        },
        |b| b == 0 || b == b'\r' || b == b'\n',
    )
}

/// Whether a field value holds a control character other than HTAB (any
/// byte below 0x20, or DEL), which httpd's HTTP/1.1 header filter refuses
/// in a response (check_headers: 500, with or without `HttpProtocolOptions
/// Unsafe`) and HTTP/2 clients refuse as a malformed response. A word with
/// a byte below 0x20 is confirmed byte by byte, since HTAB is allowed.
pub fn has_control_byte(value: &[u8]) -> bool {
    fn is_control(b: u8) -> bool {
        (b < 0x20 && b != b'\t') || b == 0x7f
    }
    let suspect = any_word(
        value,
        |w| has_byte_below(w, repeated(0x20)) | has_byte_below(w ^ repeated(0x7f), repeated(0x01)),
        is_control,
    );
    suspect && value.iter().any(|&b| is_control(b))
}

/// RFC 9113 8.2.1: no NUL, CR, LF; no leading or trailing SP/HTAB. Nor
/// any other control byte but HTAB (RFC 9110 5.5's field-value): httpd's
/// HTTP/1.1 answers such a request with 400 (`HttpProtocolOptions Strict`,
/// the default) and nghttp2's checks in the stock module reset it; passed
/// on, the byte would reach CGI environments and proxied backends.
pub fn valid_h2_value(value: &[u8]) -> bool {
    if has_control_byte(value) {
        return false;
    }
    !matches!(value.first(), Some(b' ' | b'\t')) && !matches!(value.last(), Some(b' ' | b'\t'))
}

/// RFC 9113 8.3.1: `:scheme` is a URI scheme (RFC 3986 3.1: ALPHA
/// *( ALPHA / DIGIT / "+" / "-" / "." )), as nghttp2's HTTP checks in the
/// stock module require. Any other scheme than the connection's becomes
/// part of an absolute-form request line (c2), which a space would split.
#[inline]
pub fn is_scheme(value: &[u8]) -> bool {
    match value.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphabetic()
                && rest.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        }
        None => false,
    }
}

/// RFC 9113 8.3.1: `:path` is the target's path and query (RFC 9112's
/// origin-form): no space, control byte or DEL, which would split or end
/// the request line httpd parses; bytes from 0x80 up are let through as
/// httpd's own request-line parser and nghttp2's checks let them.
#[inline]
pub fn is_request_target_text(value: &[u8]) -> bool {
    value.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// Connection-specific fields that HTTP/2 forbids (RFC 9113 8.2.2).
/// Every field of every request and response passes here: the length
/// picks the one name to compare.
pub fn is_connection_specific(name: &[u8]) -> bool {
    let candidate: &[u8] = match name.len() {
        7 => b"upgrade",
        10 if name[0].eq_ignore_ascii_case(&b'c') => b"connection",
        10 => b"keep-alive",
        16 => b"proxy-connection",
        17 => b"transfer-encoding",
        _ => return false,
    };
    candidate.eq_ignore_ascii_case(name)
}

/// A request field's name as the stock module hands it to httpd: the
/// first letter and each letter after a '-' upper-cased ("user-agent" ->
/// "User-Agent"), as HTTP/1.1 clients spell most names. Lookups in httpd
/// ignore case, but what iterates the fields keeps it: mod_proxy_http
/// passes the names on to HTTP/1.1 backends as they are (some match them
/// by case), TRACE echoes them, scripts of mod_lua see them.
///
/// The byte after a '-' is the next word's first even when it is another
/// '-' ("a--b" -> "A--b"), as in the stock module.
pub fn camel_case(name: &mut [u8]) {
    let mut word_start = true;
    for b in name.iter_mut() {
        if word_start {
            b.make_ascii_uppercase();
            word_start = false;
        } else {
            word_start = *b == b'-';
        }
    }
}

/// `camel_case` of the request field names browsers and other clients
/// send most, spelled out: one comparison instead of a copy to change.
pub fn known_camel_case(name: &[u8]) -> Option<&'static std::ffi::CStr> {
    Some(match name {
        b"accept" => c"Accept",
        b"accept-encoding" => c"Accept-Encoding",
        b"accept-language" => c"Accept-Language",
        b"authorization" => c"Authorization",
        b"cache-control" => c"Cache-Control",
        b"content-length" => c"Content-Length",
        b"content-type" => c"Content-Type",
        b"cookie" => c"Cookie",
        b"if-modified-since" => c"If-Modified-Since",
        b"if-none-match" => c"If-None-Match",
        b"origin" => c"Origin",
        b"priority" => c"Priority",
        b"range" => c"Range",
        b"referer" => c"Referer",
        b"sec-fetch-dest" => c"Sec-Fetch-Dest",
        b"sec-fetch-mode" => c"Sec-Fetch-Mode",
        b"sec-fetch-site" => c"Sec-Fetch-Site",
        b"upgrade-insecure-requests" => c"Upgrade-Insecure-Requests",
        b"user-agent" => c"User-Agent",
        b"x-forwarded-for" => c"X-Forwarded-For",
        _ => return None,
    })
}

/// At most what `RequestBuilder::with_room` reserves up front (a larger
/// head grows as it comes; the slab allocator serves up to 1 KiB).
const MAX_FIELDS_ROOM: usize = 32;
const MAX_BYTES_ROOM: usize = 1024;

/// Collects the fields of one request head (or of its trailers).
#[derive(Debug)]
pub struct RequestBuilder {
    limits: Limits,
    /// Boxed from the start: the finished head moves into its stream as
    /// this pointer, not as ~300 bytes copied through the frames of the
    /// nghttp2 callback that completes it (see "Thread stacks" in
    /// docs/INTERNALS.md).
    head: Box<RequestHead>,
    method: Option<ShortBytes>,
    cookies: Vec<u8>,
    /// Every field so far but cookie crumbs (whose joined size
    /// LimitRequestFieldSize bounds; browsers send one per cookie): the
    /// bound beyond which the head is abuse (`FIELDS_CALM_MARGIN`).
    fields_seen: u32,
    /// The fields `LimitRequestFields` counts: as HTTP/1.1's header lines,
    /// so no pseudo header (the request line), and the cookie crumbs
    /// as the one `Cookie` line they are joined into (browsers send
    /// one crumb per cookie, RFC 9113 8.2.3).
    fields_counted: u32,
    cookie_counted: bool,
    regular_seen: bool,
    raw_bytes: usize,
}

impl RequestBuilder {
    pub fn new(limits: Limits) -> RequestBuilder {
        RequestBuilder::with_room(limits, 0, 0)
    }

    /// A builder whose regular fields have room for about `fields` fields
    /// of `bytes` bytes in all (the size of a previous head; 0 for a
    /// default first reservation at the first field).
    pub fn with_room(limits: Limits, fields: usize, bytes: usize) -> RequestBuilder {
        let headers = if fields == 0 {
            Headers::default()
        } else {
            // A little slack: the next request may carry a field more
            // (a cookie set meanwhile, a conditional header). Capped: one
            // huge head must not make every later one reserve as much.
            Headers::with_capacity((fields + 1).min(MAX_FIELDS_ROOM), (bytes + bytes / 4 + 16).min(MAX_BYTES_ROOM))
        };
        // Made in its box, then given the fields: a head built on the stack
        // and moved in cost ~700 bytes of frame under nghttp2's header
        // callbacks, the deepest stack of every thread serving HTTP/2.
        let mut head: Box<RequestHead> = Box::default();
        head.headers = headers;
        RequestBuilder {
            limits,
            head,
            method: None,
            cookies: Vec::new(),
            fields_seen: 0,
            fields_counted: 0,
            cookie_counted: false,
            regular_seen: false,
            raw_bytes: 0,
        }
    }

    /// The request will be answered with `status` for `reason` (the
    /// first one counts): what was stored is not needed any more (only
    /// the pseudo headers are kept). Kept, 100 streams of fields just
    /// within the limits held their 64 KiB each until answered.
    #[cold]
    #[inline(never)]
    fn fail(&mut self, status: u16, reason: std::fmt::Arguments<'_>) {
        if self.head.error_status.is_none() {
            self.head.error_status = Some(status);
            self.head.error_reason = Some(reason.to_string().into_boxed_str());
        }
        self.head.headers = Headers::default();
        self.cookies = Vec::new();
    }

    /// Adds one field. Errors reset the stream; limit violations are
    /// remembered and answered once the head is complete.
    pub fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeaderError> {
        self.raw_bytes += name.len() + value.len() + 32;
        // A crumb that would be joined counts only by its size; an empty
        // one, or one after the head failed, is not joined at all.
        if name != b"cookie" || value.is_empty() || self.head.error_status.is_some() {
            self.fields_seen += 1;
        }
        let max = self.limits.max_fields;
        if max > 0 && self.fields_seen > max.saturating_add(crate::limits::FIELDS_CALM_MARGIN) {
            return Err(HeaderError::Calm);
        }
        if self.raw_bytes > self.limits.max_head_bytes as usize {
            let max = self.limits.max_head_bytes;
            self.fail(431, format_args!("request header fields exceed {max} bytes in all"));
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                return Err(HeaderError::Malformed("pseudo header after regular field"));
            }
            let valid = match pseudo {
                b"scheme" => is_scheme(value),
                b"path" => is_request_target_text(value),
                _ => valid_h2_value(value),
            };
            if !valid {
                return Err(HeaderError::Malformed("invalid pseudo header value"));
            }
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.head.scheme,
                b"authority" => &mut self.head.authority,
                b"path" => &mut self.head.path,
                b"protocol" => &mut self.head.protocol,
                _ => return Err(HeaderError::Malformed("unknown pseudo header")),
            };
            if slot.is_some() {
                return Err(HeaderError::Malformed("duplicate pseudo header"));
            }
            let max_line = self.limits.max_line as usize;
            if value.len() > max_line {
                // Kept cut at the limit, for the access log's %r (as
                // HTTP/1.1 logs a request line that is too long).
                *slot = Some(ShortBytes::new(&value[..max_line]));
                let name = String::from_utf8_lossy(pseudo);
                self.fail(414, format_args!("request :{name} longer than LimitRequestLine ({max_line})"));
                return Ok(());
            }
            *slot = Some(ShortBytes::new(value));
            return Ok(());
        }
        self.regular_seen = true;
        if !valid_h2_name(name) {
            return Err(HeaderError::Malformed("invalid field name"));
        }
        if !valid_h2_value(value) {
            return Err(HeaderError::Malformed("invalid field value"));
        }
        if is_connection_specific(name) {
            return Err(HeaderError::Malformed("connection-specific field"));
        }
        // "trailers" is a case-insensitive literal (RFC 9110 10.1.4).
        if name == b"te" && !value.eq_ignore_ascii_case(b"trailers") {
            return Err(HeaderError::Malformed("te other than trailers"));
        }
        if name != b"cookie" || !self.cookie_counted {
            self.fields_counted += 1;
            self.cookie_counted |= name == b"cookie";
        }
        if max > 0 && self.fields_counted > max {
            self.fail(431, format_args!("request has more than LimitRequestFields ({max}) fields"));
        }
        if name.len() + 2 + value.len() > self.limits.max_field_size as usize {
            let shown = String::from_utf8_lossy(&name[..name.len().min(80)]);
            self.fail(431, format_args!("request header exceeds LimitRequestFieldSize: {shown}"));
        }
        if self.head.error_status.is_some() {
            // Answered with an error anyway: keep nothing more.
            return Ok(());
        }
        if name == b"cookie" {
            if value.is_empty() {
                // An empty crumb adds nothing (and "a=1; " would end in a
                // space, an invalid value; found by fuzzing).
                return Ok(());
            }
            if !self.cookies.is_empty() {
                self.cookies.extend_from_slice(b"; ");
            }
            self.cookies.extend_from_slice(value);
            if self.cookies.len() > self.limits.max_field_size as usize {
                self.fail(
                    431,
                    format_args!("request header exceeds LimitRequestFieldSize: cookie (its crumbs joined)"),
                );
            }
            return Ok(());
        }
        self.head.headers.push(name, value);
        Ok(())
    }

    /// Completes the head. Checks the pseudo headers RFC 9113 8.3 requires.
    pub fn finish(mut self, end_stream: bool) -> Result<Box<RequestHead>, HeaderError> {
        let Some(method) = self.method.take() else {
            return Err(HeaderError::Malformed("missing :method"));
        };
        let head = &mut self.head;
        head.method = method;
        if !is_token(&head.method) {
            return Err(HeaderError::Malformed("invalid :method"));
        }
        let is_connect = head.method == b"CONNECT";
        if is_connect && head.protocol.is_none() {
            // Plain CONNECT: :authority only (RFC 9113 8.5).
            if head.scheme.is_some() || head.path.is_some() || head.authority.is_none() {
                return Err(HeaderError::Malformed("CONNECT with :scheme/:path or without :authority"));
            }
        } else {
            if head.protocol.is_some() {
                if !is_connect {
                    return Err(HeaderError::Malformed(":protocol on a method other than CONNECT"));
                }
                if !self.limits.extended_connect {
                    return Err(HeaderError::Malformed(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL"));
                }
                if head.authority.is_none() {
                    return Err(HeaderError::Malformed("extended CONNECT without :authority"));
                }
            }
            if head.scheme.is_none() {
                return Err(HeaderError::Malformed("missing :scheme"));
            }
            match &head.path {
                None => return Err(HeaderError::Malformed("missing :path")),
                // Kept empty when over the length limit (answered 414).
                Some(_) if head.error_status.is_some() => {}
                Some(p) if p.is_empty() => return Err(HeaderError::Malformed("empty :path")),
                // RFC 9113 8.3.1: the absolute-path and query of the target
                // URI, or "*" for OPTIONS. An absolute URI here would become
                // an absolute-form request line, whose host httpd prefers to
                // :authority, and which mod_proxy takes for a forward-proxy
                // request whatever H2ProxyRequests says.
                Some(p) if !(p.starts_with(b"/") || (&**p == b"*" && head.method == b"OPTIONS")) => {
                    return Err(HeaderError::Malformed(":path neither an absolute path nor * for OPTIONS"));
                }
                _ => {}
            }
        }
        if !self.cookies.is_empty() {
            let cookies = std::mem::take(&mut self.cookies);
            self.head.headers.push(b"cookie", &cookies);
        }
        if let Some(merged) = self.head.headers.merged() {
            self.head.headers = merged;
        }
        self.head.end_stream = end_stream;
        self.head.raw_bytes = self.raw_bytes;
        Ok(self.head)
    }

    /// Completes a trailer block (no pseudo headers allowed). A block over
    /// the limits (LimitRequestFields, LimitRequestFieldSize) is refused:
    /// what was kept of it is gone (`fail`), and handing the handler the
    /// body as complete without them would lose trailers it may check (a
    /// checksum). HTTP/1.1 fails the body read with 400 there.
    pub fn finish_trailers(self) -> Result<Headers, HeaderError> {
        let h = &self.head;
        if h.error_status.is_some() {
            return Err(HeaderError::Malformed("trailers over the request field limits"));
        }
        if self.method.is_some()
            || h.scheme.is_some()
            || h.authority.is_some()
            || h.path.is_some()
            || h.protocol.is_some()
        {
            return Err(HeaderError::Malformed("pseudo header in trailers"));
        }
        let mut headers = self.head.headers;
        if !self.cookies.is_empty() {
            headers.push(b"cookie", &self.cookies);
        }
        Ok(headers.merged().unwrap_or(headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camel(name: &str) -> String {
        let mut b = name.as_bytes().to_vec();
        camel_case(&mut b);
        String::from_utf8(b).expect("ascii")
    }

    #[test]
    fn scheme_and_path_have_the_syntax_of_their_uri_parts() {
        for ok in ["http", "https", "coap+tcp", "x-1.b"] {
            assert!(is_scheme(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "1http", "ht tp", "http:", "+x", "h\ttp"] {
            assert!(!is_scheme(bad.as_bytes()), "{bad:?}");
        }
        for ok in ["/", "/a?b=c&d", "/%20/~x", "*", "/\u{e9}"] {
            assert!(is_request_target_text(ok.as_bytes()), "{ok}");
        }
        for bad in ["/a b", "/a\tb", "/a\x7f", "/a\x01"] {
            assert!(!is_request_target_text(bad.as_bytes()), "{bad:?}");
        }
        let mut b = RequestBuilder::new(Limits::default());
        assert!(matches!(b.add(b":path", b"/a b"), Err(HeaderError::Malformed(_))));
        let mut b = RequestBuilder::new(Limits::default());
        assert!(matches!(b.add(b":scheme", b"http x"), Err(HeaderError::Malformed(_))));
    }

    #[test]
    fn the_declared_length_is_one_number_or_none() {
        let with = |value: &[u8]| {
            let mut head = RequestHead::default();
            head.headers.push(b"content-length", value);
            head.content_length()
        };
        assert_eq!(with(b"7"), Ok(Some(7)));
        assert_eq!(with(b"18446744073709551615"), Ok(Some(u64::MAX)));
        assert_eq!(with(b"7, 7"), Ok(Some(7)));
        assert_eq!(with(b"7, 8"), Err(BadContentLength));
        assert_eq!(with(b"-1"), Err(BadContentLength));
        assert_eq!(with(b"18446744073709551616"), Err(BadContentLength));
        assert_eq!(RequestHead::default().content_length(), Ok(None));
    }

    #[test]
    fn request_field_names_are_camel_cased_as_the_stock_module_does() {
        assert_eq!(camel("user-agent"), "User-Agent");
        assert_eq!(camel("te"), "Te");
        assert_eq!(camel("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(camel("a--b-"), "A--b-");
        assert_eq!(camel("-x"), "-x");
        assert_eq!(camel("x_y-1z"), "X_y-1z");
        assert_eq!(camel(""), "");
    }

    #[test]
    fn known_names_are_spelled_as_camel_case_would() {
        let known = [
            "accept",
            "accept-encoding",
            "accept-language",
            "authorization",
            "cache-control",
            "content-length",
            "content-type",
            "cookie",
            "if-modified-since",
            "if-none-match",
            "origin",
            "priority",
            "range",
            "referer",
            "sec-fetch-dest",
            "sec-fetch-mode",
            "sec-fetch-site",
            "upgrade-insecure-requests",
            "user-agent",
            "x-forwarded-for",
        ];
        for name in known {
            let spelled = known_camel_case(name.as_bytes()).unwrap_or_else(|| panic!("{name} not known"));
            assert_eq!(spelled.to_str().expect("ascii"), camel(name), "{name}");
        }
        assert_eq!(known_camel_case(b"x-custom"), None);
        assert_eq!(known_camel_case(b"Accept"), None, "names arrive lower-cased; others are copied");
    }

    fn build(fields: &[(&str, &str)], limits: Limits) -> Result<Box<RequestHead>, HeaderError> {
        let mut b = RequestBuilder::new(limits);
        for (n, v) in fields {
            b.add(n.as_bytes(), v.as_bytes())?;
        }
        b.finish(true)
    }

    const GET: [(&str, &str); 4] =
        [(":method", "GET"), (":scheme", "http"), (":authority", "example.org"), (":path", "/a?b")];

    #[test]
    fn a_builder_with_room_holds_a_head_of_that_size_without_growing_and_caps_the_room() {
        let empty = RequestBuilder::with_room(Limits::default(), 0, 0);
        assert_eq!(empty.head.headers.capacity(), 0, "no room before the first field");

        let fields = [("user-agent", "h2load nghttp2/1.52.0"), ("accept", "*/*")];
        let bytes: usize = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
        let mut b = RequestBuilder::with_room(Limits::default(), fields.len(), bytes);
        let room = b.head.headers.capacity();
        for (n, v) in GET.iter().chain(&fields) {
            b.add(n.as_bytes(), v.as_bytes()).unwrap();
        }
        assert_eq!(b.head.headers.capacity(), room, "the head fit in the room reserved");
        let head = b.finish(true).unwrap();
        assert_eq!((head.headers.len(), head.headers.byte_len()), (fields.len(), bytes));

        let huge = RequestBuilder::with_room(Limits::default(), 10_000, 1 << 20);
        assert_eq!(huge.head.headers.capacity(), Headers::with_capacity(MAX_FIELDS_ROOM, MAX_BYTES_ROOM).capacity());
    }

    #[test]
    fn token_table_is_rfc_9110_tchar() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token_char(b), tchar, "byte {b}");
            assert_eq!(TOKEN_LOWER[b as usize], if tchar { b.to_ascii_lowercase() } else { 0 }, "byte {b}");
        }
        assert!(is_token(b"X-Custom_1"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(!is_token(b"a:b"));
    }

    #[test]
    fn connection_specific_fields_are_known_in_any_case_and_nothing_else() {
        for name in ["connection", "Keep-Alive", "PROXY-CONNECTION", "transfer-encoding", "Upgrade"] {
            assert!(is_connection_specific(name.as_bytes()), "{name}");
        }
        for name in ["", "te", "upgrades", "connectiox", "keep-alivf", "konnection", "cache-control", "proxy-connectio"]
        {
            assert!(!is_connection_specific(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn forbidden_value_bytes_are_found_at_every_position() {
        // Every length around the 8-byte words, the bad byte at every
        // position (word-aligned, in the tail) and near bytes that are not
        // bad (0x01, 0x0b, 0x0c, 0x0e, 0x80, 0xff).
        for len in 0..40 {
            for fill in [b'a', 0x01, 0x0b, 0x0c, 0x0e, 0x80, 0xff] {
                let clean = vec![fill; len];
                assert!(!has_forbidden_value_byte(&clean), "len {len} fill {fill}");
                for pos in 0..len {
                    for bad in [0u8, b'\r', b'\n'] {
                        let mut v = clean.clone();
                        v[pos] = bad;
                        assert!(has_forbidden_value_byte(&v), "len {len} pos {pos} bad {bad}");
                    }
                }
            }
        }
    }

    #[test]
    fn control_bytes_are_found_at_every_position() {
        // As above, with every control byte, DEL, and the bytes around
        // them that are allowed (HTAB, SP, '~', 0x80, 0xff).
        for len in 0..40 {
            for fill in [b'a', b'\t', b' ', b'~', 0x80, 0xff] {
                let clean = vec![fill; len];
                assert!(!has_control_byte(&clean), "len {len} fill {fill}");
                for pos in 0..len {
                    for bad in (0u8..0x20).filter(|&b| b != b'\t').chain([0x7f]) {
                        let mut v = clean.clone();
                        v[pos] = bad;
                        assert!(has_control_byte(&v), "len {len} pos {pos} bad {bad}");
                    }
                }
            }
        }
    }

    #[test]
    fn plain_get() {
        let mut f = GET.to_vec();
        f.push(("accept", "*/*"));
        f.push(("cookie", "a=1"));
        f.push(("cookie", ""));
        f.push(("cookie", "b=2"));
        f.push(("te", "Trailers"));
        let h = build(&f, Limits::default()).unwrap();
        assert_eq!(h.method, b"GET");
        assert_eq!(h.path.as_deref(), Some(&b"/a?b"[..]));
        assert_eq!(h.header(b"cookie"), Some(&b"a=1; b=2"[..]));
        assert_eq!(h.header(b"accept"), Some(&b"*/*"[..]));
        assert!(h.error_status.is_none() && h.end_stream);
    }

    #[test]
    fn malformed_fields_reset() {
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![(":method", "GET"), (":scheme", "http"), (":authority", "x")],
            vec![(":scheme", "http"), (":path", "/"), (":authority", "x")],
            vec![(":method", "GET"), (":method", "GET"), (":scheme", "http"), (":path", "/")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), ("Upper", "x")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), ("connection", "close")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), ("te", "gzip")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), ("x", " lead")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), ("x", "a\rb")],
            vec![(":method", "GET"), (":scheme", "http"), ("x", "1"), (":path", "/")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), (":foo", "1")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "")],
            vec![(":method", "CONNECT"), (":authority", "x:1"), (":path", "/")],
            vec![(":method", "GET"), (":protocol", "websocket"), (":scheme", "http"), (":path", "/")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "index.html")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "http://other.example/")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "*")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), ("x", "a\x01b")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), ("x", "a\x7fb")],
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/a\x1fb")],
        ];
        for c in cases {
            assert!(matches!(build(&c, Limits::default()), Err(HeaderError::Malformed(_))), "{c:?}");
        }
        let mut b = RequestBuilder::new(Limits::default());
        assert!(b.add(b"x", b"a\rb").is_err());
    }

    #[test]
    fn repeated_fields_are_joined_as_http1_joins_them() {
        let mut f = GET.to_vec();
        f.extend([("x-forwarded-for", "198.51.100.7"), ("accept", "a/b"), ("x-forwarded-for", "203.0.113.9")]);
        f.extend([("cookie", "a=1"), ("host", "a"), ("cookie", "b=2"), ("host", "b"), ("x-forwarded-for", "")]);
        f.extend([("x-empty", ""), ("x-empty", "")]);
        let h = build(&f, Limits::default()).unwrap();
        let fields: Vec<_> = h.headers.iter().collect();
        assert_eq!(
            fields,
            [
                (&b"x-forwarded-for"[..], &b"198.51.100.7, 203.0.113.9"[..]),
                (b"accept", b"a/b"),
                (b"host", b"a, b"),
                (b"x-empty", b""),
                (b"cookie", b"a=1; b=2"),
            ]
        );
        let mut b = RequestBuilder::new(Limits::default());
        for (n, v) in [("x-t", "1"), ("x-t", "2")] {
            b.add(n.as_bytes(), v.as_bytes()).unwrap();
        }
        assert_eq!(b.finish_trailers().unwrap().iter().collect::<Vec<_>>(), [(&b"x-t"[..], &b"1, 2"[..])]);
        // Over LimitRequestFieldSize: refused, not passed on empty.
        let mut b = RequestBuilder::new(Limits { max_field_size: 100, ..Limits::default() });
        b.add(b"x-ok", b"1").unwrap();
        b.add(b"x-checksum", &[b'c'; 200]).unwrap();
        assert!(matches!(b.finish_trailers(), Err(HeaderError::Malformed(_))));
    }

    #[test]
    fn asterisk_form_tabs_and_obs_text_are_accepted() {
        let options = [(":method", "OPTIONS"), (":scheme", "http"), (":authority", "x"), (":path", "*")];
        assert_eq!(build(&options, Limits::default()).unwrap().path.as_deref(), Some(&b"*"[..]));
        let mut f = GET.to_vec();
        f.push(("x-tab", "a\tb"));
        f.push(("x-obs", "caf\u{e9}"));
        let h = build(&f, Limits::default()).unwrap();
        assert_eq!(h.header(b"x-tab"), Some(&b"a\tb"[..]));
        assert_eq!(h.header(b"x-obs"), Some("caf\u{e9}".as_bytes()));
    }

    #[test]
    fn connect_forms() {
        let h = build(&[(":method", "CONNECT"), (":authority", "x:443")], Limits::default()).unwrap();
        assert_eq!(h.method, b"CONNECT");
        assert!(h.is_tunnel(), "a plain CONNECT is a tunnel (mod_proxy_connect)");
        let extended = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/ws"),
            (":authority", "x"),
        ];
        let allowed = Limits { extended_connect: true, ..Limits::default() };
        let h = build(&extended, allowed).unwrap();
        assert_eq!(h.protocol.as_deref(), Some(&b"websocket"[..]));
        // A tunnel only once the session made it a WebSocket upgrade.
        assert!(!h.is_tunnel());
        // Not advertised (H2WebSockets off): malformed.
        assert!(matches!(build(&extended, Limits::default()), Err(HeaderError::Malformed(_))));
        // RFC 8441 4: :scheme, :path and :authority are all required.
        for skip in 2..5 {
            let fields: Vec<_> = extended.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, f)| *f).collect();
            assert!(matches!(build(&fields, allowed), Err(HeaderError::Malformed(_))), "{fields:?}");
        }
    }

    #[test]
    fn decoded_head_size_is_bounded() {
        // 20 fields of 4000 bytes: within LimitRequestFields and the field
        // size, beyond max_head_bytes: 431, and nothing is kept.
        let limits = Limits { max_head_bytes: 64 * 1024, ..Limits::default() };
        let mut b = RequestBuilder::new(limits);
        for (n, v) in GET {
            b.add(n.as_bytes(), v.as_bytes()).unwrap();
        }
        let big = vec![b'B'; 4000];
        for _ in 0..20 {
            b.add(b"x-bomb", &big).unwrap();
        }
        let h = b.finish(true).unwrap();
        assert_eq!(h.error_status, Some(431));
        assert_eq!(h.headers.len(), 0);
        assert!(h.decoded_size() < 1024);
    }

    #[test]
    fn limits_answer_431_414_and_calm() {
        let limits = Limits { max_fields: 3, max_field_size: 20, max_line: 12, ..Limits::default() };
        let mut f = GET.to_vec();
        f[3] = (":path", "/0123456789ab");
        assert_eq!(build(&f, limits).unwrap().error_status, Some(414));
        let mut f = GET.to_vec();
        f.push(("a", "0123456789012345678901"));
        assert_eq!(build(&f, limits).unwrap().error_status, Some(431));
        let mut f = GET.to_vec();
        for _ in 0..4 {
            f.push(("a", "1"));
        }
        let h = build(&f, limits).unwrap();
        assert_eq!(h.error_status, Some(431));
        assert!(h.headers.len() < 4);
        // As HTTP/1.1 counts header lines: no pseudo header, and the
        // cookie crumbs as the one line they are joined into.
        let mut f = GET.to_vec();
        f.extend([("a", "1"), ("cookie", "x=1"), ("cookie", "y=2"), ("cookie", "z=3"), ("b", "2")]);
        let h = build(&f, limits).unwrap();
        assert_eq!(h.error_status, None);
        assert_eq!(h.header(b"cookie"), Some(&b"x=1; y=2; z=3"[..]));
        f.push(("c", "3"));
        assert_eq!(build(&f, limits).unwrap().error_status, Some(431));
        // Nor do the crumbs count towards the abuse bound: 300 small
        // cookies are a browser's, within LimitRequestFieldSize.
        let mut f = GET.to_vec();
        f.extend(std::iter::repeat_n(("cookie", "k=v"), 300));
        let wide = Limits { max_field_size: 8190, ..limits };
        assert_eq!(build(&f, wide).unwrap().error_status, None);
        // Empty crumbs are not joined: they count.
        let mut f = GET.to_vec();
        f.extend(std::iter::repeat_n(("cookie", ""), 300));
        assert_eq!(build(&f, wide).unwrap_err(), HeaderError::Calm);
        let mut b = RequestBuilder::new(limits);
        let mut last = Ok(());
        for _ in 0..200 {
            last = b.add(b"a", b"1");
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(HeaderError::Calm));
    }

    #[test]
    fn trailers() {
        let mut b = RequestBuilder::new(Limits::default());
        b.add(b"grpc-status", b"0").unwrap();
        assert_eq!(b.finish_trailers().unwrap().get(b"grpc-status"), Some(&b"0"[..]));
        let mut b = RequestBuilder::new(Limits::default());
        b.add(b":path", b"/").unwrap();
        assert!(b.finish_trailers().is_err());
    }
}
