//! The response side of a stream request.
//!
//! httpd's `HTTP_HEADER` filter serialises an HTTP/1 status line and
//! headers. On a stream we remove it and install `H2RS_C2_RESPONSE` in its
//! place: it does what the header filter does to the response (error
//! headers overlay, Vary, Content-Type/Encoding/Language, Expires, ETag
//! removal, Date, Server, header-only statuses, HEAD, error buckets) and
//! hands status and fields to the stream instead of writing text. No
//! chunking, no Connection headers.
//!
//! Interim responses (100 Continue, 103 Early Hints) are written by httpd as
//! HTTP/1.1 text straight to the connection's output; [`InterimParser`]
//! turns that text back into response heads at the network level.

use crate::apr::{BrigadeRef, TableRef};
use crate::ffi;
use crate::request::is_connection_specific;
use crate::stream::{Headers, ResponseHead, KNOWN_COUNT};
use std::ffi::{c_char, CStr};

/// Fields a response must not carry on HTTP/2 (RFC 9113 8.2.2), besides the
/// connection-specific ones.
fn is_dropped_response_field(name: &[u8]) -> bool {
    is_connection_specific(name) || name.eq_ignore_ascii_case(b"te") || name.eq_ignore_ascii_case(b"http2-settings")
}

/// Adds one field to an HTTP/2 response head (lower-cased name, trimmed
/// value), skipping the fields HTTP/2 forbids. Returns false for a field
/// that cannot be sent at all: a name that is not a token, a value with a
/// control character other than HTAB (obs-fold is unfolded by the caller),
/// as HTTP/1.1's header filter refuses them.
pub fn add_response_field(head: &mut Headers, name: &[u8], value: &[u8]) -> bool {
    let known = known_field_name(name);
    if known.is_none() && is_dropped_response_field(name) {
        return true;
    }
    let value = trim_ows(value);
    if crate::request::has_control_byte(value) {
        return false;
    }
    match known {
        Some(index) => {
            head.push_known(index, value);
            true
        }
        None => head.push_token_lowercase(name, value),
    }
}

/// `KNOWN_NAMES` as httpd and its modules spell them.
const KNOWN_SPELLED: [&[u8]; KNOWN_COUNT] = [
    b"Date",
    b"ETag",
    b"Vary",
    b"Server",
    b"Expires",
    b"Location",
    b"Set-Cookie",
    b"Content-Type",
    b"Accept-Ranges",
    b"Last-Modified",
    b"Cache-Control",
    b"Content-Length",
    b"Content-Encoding",
    b"Content-Language",
];

/// The HTTP/2 name of a field as httpd and its modules spell it, for the
/// fields of nearly every response: picked by length and compared whole,
/// such a name skips the forbidden-field checks and the lower-casing pass
/// (a static file's seven fields: ~250 instructions fewer per request,
/// callgrind). Any other spelling takes the general path.
fn known_field_name(name: &[u8]) -> Option<usize> {
    // The index in KNOWN_NAMES (and KNOWN_SPELLED) of the one candidate.
    let index = match name.len() {
        4 => match name[0] {
            b'D' => 0,
            b'E' => 1,
            _ => 2,
        },
        6 => 3,
        7 => 4,
        8 => 5,
        10 => 6,
        12 => 7,
        13 => match name[0] {
            b'A' => 8,
            b'L' => 9,
            _ => 10,
        },
        14 => 11,
        16 => match name.get(8) {
            Some(b'E') => 12,
            _ => 13,
        },
        _ => return None,
    };
    (name == KNOWN_SPELLED[index]).then_some(index)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map(|i| i + 1).unwrap_or(start);
    &v[start..end.max(start)]
}

/// Merges every Vary value into one, without duplicates (case-insensitive),
/// as httpd's fixup_vary does. None when nothing needs to change.
pub fn merged_vary<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut tokens: Vec<&[u8]> = Vec::new();
    let mut count = 0;
    for v in values {
        count += 1;
        for t in v.split(|&b| b == b',' || b.is_ascii_whitespace()) {
            if !t.is_empty() && !tokens.iter().any(|x| x.eq_ignore_ascii_case(t)) {
                tokens.push(t);
            }
        }
    }
    if count == 0 {
        return None;
    }
    Some(tokens.join(&b","[..]))
}

/// Parses HTTP/1 response heads written as text to a stream's connection
/// (interim responses, or a final one from a handler that bypassed the
/// header filter).
#[derive(Debug, Default)]
pub struct InterimParser {
    buf: Vec<u8>,
}

/// What the parser found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete head.
    Head(ResponseHead),
    /// Not HTTP/1 response text.
    Invalid,
}

const MAX_HEAD: usize = 64 * 1024;

impl InterimParser {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Feeds bytes; returns the heads completed so far and leaves the bytes
    /// after the last complete head in the parser (see `take_rest`).
    pub fn push(&mut self, data: &[u8]) -> Vec<Parsed> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let Some(end) = find_head_end(&self.buf) else {
                if self.buf.len() > MAX_HEAD {
                    out.push(Parsed::Invalid);
                    self.buf.clear();
                }
                break;
            };
            let head = parse_head(&self.buf[..end]);
            self.buf.drain(..end);
            // After a final head come the body's bytes; after a 101 the
            // bytes of the protocol switched to (RFC 9110 15.2.2), which
            // may hold a blank line anywhere: both stay for `take_rest`.
            let last_head = matches!(&head, Some(h) if h.status >= 200 || h.status == 101);
            out.push(head.map(Parsed::Head).unwrap_or(Parsed::Invalid));
            if last_head {
                break;
            }
        }
        out
    }

    /// Bytes after a final response head (or a 101): the beginning of the
    /// body (or of the new protocol's bytes).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// End (exclusive) of a head terminated by an empty line (CRLF or LF).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let next = nl + 1;
        if buf.get(next) == Some(&b'\n') {
            return Some(next + 1);
        }
        if buf.get(next) == Some(&b'\r') && buf.get(next + 1) == Some(&b'\n') {
            return Some(next + 2);
        }
        i = next;
        if i >= buf.len() {
            break;
        }
    }
    None
}

fn parse_head(text: &[u8]) -> Option<ResponseHead> {
    let mut lines = text.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix(b"HTTP/")?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    let code = rest.get(sp + 1..sp + 4)?;
    if !code.iter().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let status = std::str::from_utf8(code).ok()?.parse::<u16>().ok()?;
    // RFC 9110 15: three digits, the first 1 to 5 ("001" would go out as an
    // interim :status the client cannot parse; found by fuzzing).
    if !(100..=599).contains(&status) {
        return None;
    }
    let mut headers = Headers::new();
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obs-fold: continues the previous field's value.
            let last = fields.last_mut()?;
            last.1.push(b' ');
            last.1.extend_from_slice(trim_ows(line));
            continue;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        fields.push((line[..colon].to_vec(), trim_ows(&line[colon + 1..]).to_vec()));
    }
    for (n, v) in &fields {
        // An interim's field that cannot be sent is left out: HTTP/1.1
        // sends it as it is, and the final response follows. (Refused, it
        // reset the stream, final response and all, for a mere hint.)
        if !add_response_field(&mut headers, n, v) && status >= 200 {
            return None;
        }
    }
    Some(ResponseHead { status, headers })
}

// ---- the response filter ---------------------------------------------------

/// `AP_STATUS_IS_HEADER_ONLY`: statuses without a body.
pub fn status_is_header_only(status: i32) -> bool {
    status == 204 || status == 304
}

fn cstr(p: *const c_char) -> Option<&'static [u8]> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL C strings from request_rec fields, alive in the
        // request pool for the whole filter call.
        Some(unsafe { CStr::from_ptr(p) }.to_bytes())
    }
}

/// The `:status` for httpd's `r->status`, as HTTP/1.1's status line gives
/// it (`ap_get_status_line`): a value outside 100-999 (a CGI's `Status:
/// 1000`, say) is sent as 500. An interim status stays one; the caller
/// refuses it as a final status.
pub fn wire_status(status: i32) -> u16 {
    if (100..=999).contains(&status) {
        status as u16
    } else {
        500
    }
}

/// Builds the HTTP/2 response head from `r`, after doing to `r` what
/// httpd's header filter does (merge_response_headers). Returns None when a
/// field cannot be sent (httpd then answers 500, as HTTP/1 does).
///
/// # Safety
/// `r` must be the live request of the calling filter.
pub unsafe fn build_response(r: *mut ffi::request_rec) -> Option<ResponseHead> {
    // SAFETY: `r` is live (caller); every table and string used belongs to
    // its pool; httpd functions are called as httpd's own filter does.
    unsafe {
        let pool = (*r).pool;
        let headers_out = TableRef::from_raw((*r).headers_out)?;
        if let Some(err) = TableRef::from_raw((*r).err_headers_out) {
            if !err.is_empty() {
                (*r).headers_out = ffi::apr_table_overlay(pool, err.as_ptr(), headers_out.as_ptr());
                err.clear();
            }
        }
        let out = TableRef::from_raw((*r).headers_out)?;
        let env = TableRef::from_raw((*r).subprocess_env);
        if env.and_then(|e| e.get(c"force-no-vary")).is_some() {
            out.unset(c"Vary");
        } else if out.get(c"Vary").is_some() {
            fix_vary(out);
        }
        if (*r).no_cache != 0 && out.get(c"Expires").is_none() {
            let date = ffi::apr_palloc(pool, ffi::APR_RFC822_DATE_LEN as usize) as *mut c_char;
            ffi::ap_recent_rfc822_date(date, (*r).request_time);
            out.addn(c"Expires".as_ptr(), date);
        }
        if let Some(notes) = TableRef::from_raw((*r).notes) {
            if notes.get(c"no-etag").is_some() {
                out.unset(c"ETag");
            }
        }
        if status_is_header_only((*r).status) {
            out.unset(c"Transfer-Encoding");
            out.unset(c"Content-Length");
            (*r).content_type = std::ptr::null();
            (*r).content_encoding = std::ptr::null();
            (*r).content_languages = std::ptr::null_mut();
            (*r).clength = 0;
            (*r).chunked = 0;
        }
        let ctype = ffi::ap_make_content_type(r, (*r).content_type);
        if !ctype.is_null() {
            out.setn(c"Content-Type".as_ptr(), ctype);
        }
        if !(*r).content_encoding.is_null() {
            out.setn(c"Content-Encoding".as_ptr(), (*r).content_encoding);
        }
        let langs = (*r).content_languages;
        if !langs.is_null() && (*langs).nelts > 0 {
            set_content_languages(out, langs);
        }
        if (*r).header_only != 0 && out.get(c"Content-Length") == Some(&b"0"[..]) {
            out.unset(c"Content-Length");
        }
        let proxied = (*r).proxyreq != ffi::PROXYREQ_NONE as i32;
        if !proxied || out.get(c"Date").is_none() {
            let date = ffi::apr_palloc(pool, ffi::APR_RFC822_DATE_LEN as usize) as *mut c_char;
            ffi::ap_recent_rfc822_date(date, (*r).request_time);
            out.setn(c"Date".as_ptr(), date);
        }
        if !proxied || out.get(c"Server").is_none() {
            let banner = ffi::ap_get_server_banner();
            if !banner.is_null() && *banner != 0 {
                out.setn(c"Server".as_ptr(), banner);
            }
        }
        let mut head = ResponseHead { status: wire_status((*r).status), headers: Headers::with_capacity(12, 512) };
        let mut ok = true;
        out.for_each(|k, v| {
            if !add_response_field(&mut head.headers, k, v) {
                ok = false;
            }
        });
        ok.then_some(head)
    }
}

/// The Vary fields as one list of unique names, as httpd's fixup_vary
/// makes them; a single field that is a single name is that already. Out
/// of line (rare), with `set_content_languages`: `build_response`'s frame
/// lies under the deepest calls of every request.
#[cold]
#[inline(never)]
fn fix_vary(out: TableRef) {
    let mut varies = Vec::new();
    out.for_each(|k, v| {
        if k.eq_ignore_ascii_case(b"vary") {
            varies.push(v);
        }
    });
    let list = |v: &&[u8]| v.iter().any(|&b| b == b',' || b.is_ascii_whitespace());
    if varies.len() > 1 || varies.first().is_some_and(list) {
        if let Some(merged) = merged_vary(varies.into_iter()) {
            let merged = std::ffi::CString::new(merged).unwrap_or_default();
            out.set(c"Vary", &merged);
        }
    }
}

/// Content-Language from `r->content_languages`, with the names the field
/// already had that they leave out.
///
/// # Safety
/// `langs` is the request's live array of C strings.
#[cold]
#[inline(never)]
unsafe fn set_content_languages(out: TableRef, langs: *const ffi::apr_array_header_t) {
    // SAFETY: caller contract.
    unsafe {
        let elts = (*langs).elts as *const *const c_char;
        let mut joined: Vec<u8> = Vec::new();
        for i in 0..(*langs).nelts as usize {
            if let Some(l) = cstr(*elts.add(i)) {
                if !joined.is_empty() {
                    joined.push(b',');
                }
                joined.extend_from_slice(l);
            }
        }
        if let Some(existing) = out.get(c"Content-Language") {
            for tok in existing.split(|&b| b == b',').map(trim_ows).filter(|t| !t.is_empty()) {
                let present = joined.split(|&b| b == b',').any(|x| x.eq_ignore_ascii_case(tok));
                if !present {
                    joined.push(b',');
                    joined.extend_from_slice(tok);
                }
            }
        }
        let joined = std::ffi::CString::new(joined).unwrap_or_default();
        out.set(c"Content-Language", &joined);
    }
}

/// Request trailers from `r->trailers_out`, if any.
///
/// # Safety
/// `r` must be live.
pub unsafe fn trailers_of(r: *mut ffi::request_rec) -> Option<Headers> {
    // SAFETY: caller contract.
    let t = unsafe { TableRef::from_raw((*r).trailers_out) }?;
    if t.is_empty() {
        return None;
    }
    let mut h = Headers::new();
    t.for_each(|k, v| {
        add_response_field(&mut h, k, v);
    });
    (!h.is_empty()).then_some(h)
}

/// Drops the data buckets of a brigade whose response has no body (HEAD,
/// 204, 304), keeping metadata (EOS, FLUSH, EOR...).
pub fn drop_body(bb: BrigadeRef) {
    let mut cur = bb.first();
    while let Some(b) = cur {
        cur = bb.next(&b);
        if !b.kind().is_metadata() {
            b.delete();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::KNOWN_NAMES;

    #[test]
    fn status_outside_100_to_999_is_sent_as_500() {
        assert_eq!([99, 0, -5, 1000].map(wire_status), [500; 4]);
        assert_eq!([100, 103, 200, 599, 600, 999].map(wire_status), [100, 103, 200, 599, 600, 999]);
    }

    #[test]
    fn interim_then_final() {
        let mut p = InterimParser::default();
        let out = p.push(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n");
        assert_eq!(out.len(), 1);
        let Parsed::Head(h) = &out[0] else { panic!() };
        assert_eq!(h.status, 100);
        let out = p.push(b"\r\nHTTP/1.1 200 OK\r\nConnection: close\r\nX-A: 1\r\n\r\nbody");
        assert_eq!(out.len(), 2);
        let Parsed::Head(h) = &out[0] else { panic!() };
        assert_eq!((h.status, h.headers.get(b"link")), (103, Some(&b"</a.css>; rel=preload"[..])));
        let Parsed::Head(h) = &out[1] else { panic!() };
        assert_eq!(h.status, 200);
        assert_eq!(h.headers.get(b"connection"), None);
        assert_eq!(h.headers.get(b"x-a"), Some(&b"1"[..]));
        assert_eq!(p.take_rest(), b"body");
    }

    /// A 101 and the first WebSocket frames in one write: the frames hold
    /// a blank line, which is no head (they were parsed as one, the bytes
    /// before it lost and the stream reset).
    #[test]
    fn the_bytes_after_a_101_are_the_new_protocols() {
        let mut p = InterimParser::default();
        let frames = b"\x81\x07a\r\n\r\nb\n\n";
        let mut data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        data.extend_from_slice(frames);
        let out = p.push(&data);
        assert_eq!(out.len(), 1);
        let Parsed::Head(h) = &out[0] else { panic!("{out:?}") };
        assert_eq!(h.status, 101);
        assert_eq!(p.take_rest(), frames);
    }

    #[test]
    fn httpds_spellings_of_common_fields_map_to_their_lower_case_names() {
        // Each spelling is found by its length (and a letter) alone.
        for name in KNOWN_SPELLED {
            let known = known_field_name(name);
            assert_eq!(known.map(|i| KNOWN_NAMES[i]), Some(&name.to_ascii_lowercase()[..]), "{name:?}");
        }
        // Other spellings, and forbidden fields of a known length, take the
        // general path (where Connection is dropped).
        for name in [&b"date"[..], b"DATE", b"Etag", b"Connection", b"Keep-Alive", b"Content-Typf", b"X", b""] {
            assert_eq!(known_field_name(name), None, "{name:?}");
        }
        let mut h = Headers::new();
        assert!(add_response_field(&mut h, b"Connection", b"close"));
        assert!(add_response_field(&mut h, b"ETag", b"\"1\""));
        assert!(add_response_field(&mut h, b"CONTENT-type", b"text/plain"));
        assert_eq!(h.iter().collect::<Vec<_>>(), [(&b"etag"[..], &b"\"1\""[..]), (b"content-type", b"text/plain")]);
        // httpd's own spelling is recorded by number, another one by name.
        let known: Vec<_> = h.known_iter().map(|(k, _, _)| k).collect();
        assert_eq!(known, [Some(1), None]);
    }

    #[test]
    fn status_out_of_range_is_invalid() {
        for head in [&b"HTTP/2.1 001 X\r\n\r\n"[..], b"HTTP/1.1 099 X\r\n\r\n", b"HTTP/1.1 600 X\r\n\r\n"] {
            let mut p = InterimParser::default();
            assert_eq!(p.push(head), vec![Parsed::Invalid], "{head:?}");
        }
    }

    #[test]
    fn an_interims_unsendable_field_is_left_out_a_final_heads_is_not() {
        let mut p = InterimParser::default();
        let out =
            p.push(b"HTTP/1.1 103 Early\r\nBad Name: x\r\nLink: <a>\r\n\r\nHTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n");
        let Parsed::Head(h) = &out[0] else { panic!("{out:?}") };
        assert_eq!((h.status, h.headers.len(), h.headers.get(b"link")), (103, 1, Some(&b"<a>"[..])));
        assert_eq!(out[1], Parsed::Invalid);
    }

    #[test]
    fn invalid_text_is_reported() {
        let mut p = InterimParser::default();
        assert_eq!(p.push(b"garbage\r\n\r\n"), vec![Parsed::Invalid]);
        let mut p = InterimParser::default();
        assert!(p.push(b"HTTP/1.1 100 Continue\r\n").is_empty());
    }

    #[test]
    fn obs_fold_and_fields() {
        let mut p = InterimParser::default();
        let out = p.push(b"HTTP/1.1 103 Early\r\nLink: <a>,\r\n <b>\r\n\r\n");
        let Parsed::Head(h) = &out[0] else { panic!() };
        assert_eq!(h.headers.get(b"link"), Some(&b"<a>, <b>"[..]));
        let mut h = Headers::new();
        assert!(add_response_field(&mut h, b"Transfer-Encoding", b"chunked"));
        assert!(h.is_empty());
        assert!(!add_response_field(&mut h, b"Bad Name", b"x"));
        assert!(!add_response_field(&mut h, b"x", b"a\nb"));
        assert!(add_response_field(&mut h, b"X-Ok", b" v "));
        assert!(add_response_field(&mut h, b"Last-Modified", b" Tue, 01 Dec 2026 10:00:00 GMT"));
        assert!(!add_response_field(&mut h, b"ETag", b"\"a\r\nb\""), "a known name's value is checked too");
        assert_eq!(h.get(b"x-ok"), Some(&b"v"[..]));
    }

    #[test]
    fn vary_is_merged() {
        let v = merged_vary([&b"Accept-Encoding"[..], &b"accept-encoding, User-Agent"[..]].into_iter());
        assert_eq!(v.as_deref(), Some(&b"Accept-Encoding,User-Agent"[..]));
        let v = merged_vary([&b"Origin Accept,origin"[..]].into_iter());
        assert_eq!(v.as_deref(), Some(&b"Origin,Accept"[..]));
    }
}
