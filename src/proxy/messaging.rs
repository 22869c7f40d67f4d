//! RFC 9113 8.1.1's checks of a backend's response, one stream at a time.
//!
//! nghttp2's own HTTP messaging checks (`no_http_messaging` off) end the
//! whole backend connection (GOAWAY PROTOCOL_ERROR) for a malformed
//! response: a body that breaks its content-length, a header block without
//! `:status`, an interim response that ends the stream, DATA before the
//! head, a bad pseudo-header or connection-specific field (nghttp2 1.68's
//! `nghttp2_session_terminate_session` for each). A backend connection carries
//! many clients' requests, so one such response aborted every other
//! response in flight on it and failed the requests waiting there (a
//! differential run: a download in progress cut and a POST failed, where
//! the stock module lost none). RFC 9113 8.1.1 makes
//! a malformed response a stream error: the engine resets that stream
//! (PROTOCOL_ERROR) and answers its request 502, the others go on.

use crate::request::{is_connection_specific, valid_h2_name, valid_h2_value};

/// What to do with one field of a response head or trailers.
#[derive(Debug, PartialEq, Eq)]
pub enum Field {
    Keep,
    /// Not passed on, the response is not malformed for it: a regular
    /// field whose name or value HTTP/2 does not allow (nghttp2 ignores
    /// those too: backends send `X-Powered-By: PHP ` and the like, and a
    /// 502 for it would fail sites that work over HTTP/1.1), a
    /// `content-length: 0` in a 204 (which widely used servers send), a
    /// `content-length` in trailers (framing, RFC 9110 6.5.1; an HTTP/2
    /// client would reset the stream for it).
    Drop,
}

/// Why a response is malformed (for the error log).
pub type Malformed = &'static str;

/// The state of one backend stream's response.
#[derive(Debug, Default)]
pub struct ResponseCheck {
    /// The request was HEAD: the response has no body.
    head_request: bool,
    /// `:status` of the header block being received.
    status: Option<u16>,
    /// A regular field came in the block being received.
    regular_seen: bool,
    /// The declared length of the body (0 where none may come).
    content_length: Option<u64>,
    /// The final response head came: a later header block is trailers.
    final_seen: bool,
    /// Body bytes received.
    received: u64,
}

impl ResponseCheck {
    pub fn new(method: &[u8]) -> ResponseCheck {
        ResponseCheck { head_request: method == b"HEAD", ..ResponseCheck::default() }
    }

    /// A header block (a head or the trailers) begins.
    pub fn begin_block(&mut self) {
        self.status = None;
        self.regular_seen = false;
    }

    /// One field of the block, as nghttp2's HTTP messaging checks it
    /// (`nghttp2_http_on_header`, `http_response_on_header`).
    pub fn field(&mut self, name: &[u8], value: &[u8]) -> Result<Field, Malformed> {
        let trailers = self.final_seen;
        if let Some(pseudo) = name.strip_prefix(b":") {
            if trailers {
                return Err("a pseudo-header field in trailers");
            }
            if self.regular_seen {
                return Err("a pseudo-header field after a regular one");
            }
            if pseudo != b"status" {
                return Err("an unknown pseudo-header field");
            }
            if self.status.is_some() {
                return Err("two :status fields");
            }
            let status = match value {
                [a, b, c] if value.iter().all(u8::is_ascii_digit) => {
                    (*a - b'0') as u16 * 100 + (*b - b'0') as u16 * 10 + (*c - b'0') as u16
                }
                _ => return Err("a :status that is not three digits"),
            };
            if status == 101 {
                // RFC 9113 8.6: no Upgrade in HTTP/2.
                return Err("status 101");
            }
            self.status = Some(status);
            return Ok(Field::Keep);
        }
        // Set for ignored fields too: a pseudo-header after one is still
        // out of place.
        self.regular_seen = true;
        if !valid_h2_name(name) {
            // Upper case is the one fault in a name nghttp2 does not
            // forgive: HTTP/2 field names are lower case without exception.
            if name.iter().any(u8::is_ascii_uppercase) {
                return Err("an upper-case field name");
            }
            return Ok(Field::Drop);
        }
        if !valid_h2_value(value) {
            return Ok(Field::Drop);
        }
        if is_connection_specific(name) {
            return Err("a connection-specific field");
        }
        if name == b"te" && !value.eq_ignore_ascii_case(b"trailers") {
            return Err("te other than trailers");
        }
        if name != b"content-length" {
            return Ok(Field::Keep);
        }
        if trailers {
            return Ok(Field::Drop);
        }
        let status = self.status.unwrap_or(0);
        if status == 204 {
            if self.content_length.is_some() {
                return Err("two content-length fields");
            }
            if value != b"0" {
                return Err("a content-length in a 204 response");
            }
            self.content_length = Some(0);
            return Ok(Field::Drop);
        }
        if status / 100 == 1 {
            return Err("a content-length in an interim response");
        }
        if self.content_length.is_some() {
            return Err("two content-length fields");
        }
        match crate::text::parse_decimal(value) {
            Some(n) => self.content_length = Some(n),
            None => return Err("an invalid content-length"),
        }
        Ok(Field::Keep)
    }

    /// The block ended; `end_stream`: its HEADERS frame ended the stream.
    /// The head's status, or None for trailers.
    pub fn end_block(&mut self, end_stream: bool) -> Result<Option<u16>, Malformed> {
        if self.final_seen {
            if !end_stream {
                return Err("trailers without END_STREAM");
            }
            // Trailers end the body: it must have its declared length.
            self.end_stream()?;
            return Ok(None);
        }
        let Some(status) = self.status else { return Err("a response head without :status") };
        if status / 100 == 1 {
            if end_stream {
                return Err("an interim response with END_STREAM");
            }
            // The next head is another response, with its own length.
            self.content_length = None;
            return Ok(Some(status));
        }
        self.final_seen = true;
        if self.head_request || status == 204 || status == 304 {
            self.content_length = Some(0);
        }
        if end_stream {
            self.end_stream()?;
        }
        Ok(Some(status))
    }

    /// `n` bytes of DATA arrived.
    pub fn data(&mut self, n: usize) -> Result<(), Malformed> {
        if !self.final_seen {
            return Err("DATA before the response head");
        }
        self.received += n as u64;
        if self.content_length.is_some_and(|cl| self.received > cl) {
            return Err("a body longer than its content-length");
        }
        Ok(())
    }

    /// A DATA frame ended the stream (or the head's HEADERS did).
    pub fn end_stream(&self) -> Result<(), Malformed> {
        if !self.final_seen {
            return Err("the stream ended without a final response");
        }
        if self.content_length.is_some_and(|cl| self.received != cl) {
            return Err("a body shorter than its content-length");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(check: &mut ResponseCheck, fields: &[(&str, &str)], end_stream: bool) -> Result<Vec<Field>, Malformed> {
        check.begin_block();
        let kept =
            fields.iter().map(|(n, v)| check.field(n.as_bytes(), v.as_bytes())).collect::<Result<Vec<_>, _>>()?;
        let status = check.end_block(end_stream)?;
        assert_eq!(status.is_none(), fields.iter().all(|(n, _)| !n.starts_with(':')), "{fields:?}");
        Ok(kept)
    }

    #[test]
    fn a_well_formed_response_passes() {
        let mut c = ResponseCheck::new(b"GET");
        let kept = head(&mut c, &[(":status", "103"), ("link", "</a>")], false).unwrap();
        assert_eq!(kept, [Field::Keep, Field::Keep]);
        head(&mut c, &[(":status", "200"), ("content-length", "5"), ("te", "Trailers")], false).unwrap();
        c.data(2).unwrap();
        c.data(3).unwrap();
        head(&mut c, &[("grpc-status", "0")], true).unwrap();
        // Without a length, any body.
        let mut c = ResponseCheck::new(b"GET");
        head(&mut c, &[(":status", "200")], false).unwrap();
        c.data(1 << 20).unwrap();
        c.end_stream().unwrap();
    }

    #[test]
    fn a_body_that_breaks_its_length_is_malformed() {
        let mut c = ResponseCheck::new(b"GET");
        head(&mut c, &[(":status", "200"), ("content-length", "3")], false).unwrap();
        assert_eq!(c.data(6), Err("a body longer than its content-length"));
        let mut c = ResponseCheck::new(b"GET");
        head(&mut c, &[(":status", "200"), ("content-length", "10")], false).unwrap();
        c.data(5).unwrap();
        assert_eq!(c.end_stream(), Err("a body shorter than its content-length"));
        let mut c = ResponseCheck::new(b"GET");
        assert_eq!(
            head(&mut c, &[(":status", "200"), ("content-length", "1")], true),
            Err("a body shorter than its content-length")
        );
    }

    #[test]
    fn no_body_for_head_204_and_304() {
        for (method, status) in [("HEAD", "200"), ("GET", "304"), ("GET", "204")] {
            let mut c = ResponseCheck::new(method.as_bytes());
            head(&mut c, &[(":status", status)], false).unwrap();
            assert_eq!(c.data(1), Err("a body longer than its content-length"), "{method} {status}");
        }
        // HEAD's content-length is the GET's.
        let mut c = ResponseCheck::new(b"HEAD");
        head(&mut c, &[(":status", "200"), ("content-length", "1234")], true).unwrap();
        // A 204's "content-length: 0" is dropped; another value is malformed.
        let mut c = ResponseCheck::new(b"GET");
        assert_eq!(
            head(&mut c, &[(":status", "204"), ("content-length", "0")], true),
            Ok(vec![Field::Keep, Field::Drop])
        );
        let mut c = ResponseCheck::new(b"GET");
        assert!(head(&mut c, &[(":status", "204"), ("content-length", "5")], true).is_err());
    }

    #[test]
    fn malformed_heads() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("server", "x")], false),
            (&[(":status", "200"), (":status", "200")], false),
            (&[(":status", "20")], false),
            (&[(":status", "2x0")], false),
            (&[(":status", "101")], false),
            (&[("server", "x"), (":status", "200")], false),
            (&[(":status", "200"), (":path", "/")], false),
            (&[(":status", "200"), ("Server", "x")], false),
            (&[(":status", "200"), ("connection", "close")], false),
            (&[(":status", "200"), ("transfer-encoding", "chunked")], false),
            (&[(":status", "200"), ("keep-alive", "timeout=5")], false),
            (&[(":status", "200"), ("proxy-connection", "close")], false),
            (&[(":status", "200"), ("upgrade", "h2c")], false),
            (&[(":status", "200"), ("te", "gzip")], false),
            (&[(":status", "200"), ("content-length", "1"), ("content-length", "1")], false),
            (&[(":status", "200"), ("content-length", "-1")], false),
            (&[(":status", "100"), ("content-length", "0")], false),
            (&[(":status", "100")], true),
        ];
        for (fields, end_stream) in cases {
            let mut c = ResponseCheck::new(b"GET");
            assert!(head(&mut c, fields, *end_stream).is_err(), "{fields:?}");
        }
        let mut c = ResponseCheck::new(b"GET");
        assert_eq!(c.data(1), Err("DATA before the response head"));
        assert_eq!(c.end_stream(), Err("the stream ended without a final response"));
    }

    #[test]
    fn fields_http2_does_not_allow_are_dropped_not_fatal() {
        let mut c = ResponseCheck::new(b"GET");
        let fields =
            [(":status", "200"), ("x-powered-by", "PHP "), ("x-a", "a\r\nb"), ("x@y", "1"), ("", "1"), ("ok", "1")];
        let kept = head(&mut c, &fields, false).unwrap();
        assert_eq!(kept, [Field::Keep, Field::Drop, Field::Drop, Field::Drop, Field::Drop, Field::Keep]);
        // A dropped field is still a regular one: a pseudo-header after it
        // is out of place.
        let mut c = ResponseCheck::new(b"GET");
        assert!(head(&mut c, &[("x@y", "1"), (":status", "200")], false).is_err());
        // A content-length in trailers is dropped too.
        let mut c = ResponseCheck::new(b"GET");
        head(&mut c, &[(":status", "200"), ("content-length", "2")], false).unwrap();
        c.data(2).unwrap();
        assert_eq!(head(&mut c, &[("content-length", "99"), ("x-t", "1")], true), Ok(vec![Field::Drop, Field::Keep]));
    }

    #[test]
    fn malformed_trailers() {
        let mut c = ResponseCheck::new(b"GET");
        head(&mut c, &[(":status", "200")], false).unwrap();
        assert_eq!(head(&mut c, &[(":status", "200")], true), Err("a pseudo-header field in trailers"));
        let mut c = ResponseCheck::new(b"GET");
        head(&mut c, &[(":status", "200")], false).unwrap();
        assert_eq!(head(&mut c, &[("x-t", "1")], false), Err("trailers without END_STREAM"));
        // Trailers end the body, short of its length here.
        let mut c = ResponseCheck::new(b"GET");
        head(&mut c, &[(":status", "200"), ("content-length", "10")], false).unwrap();
        c.data(5).unwrap();
        assert_eq!(head(&mut c, &[("grpc-status", "0")], true), Err("a body shorter than its content-length"));
    }
}
