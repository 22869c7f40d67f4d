//! WebSockets over HTTP/2 (RFC 8441), the protocol part.
//!
//! An extended CONNECT (`:method CONNECT`, `:protocol websocket`) becomes,
//! for httpd, the HTTP/1.1 upgrade request every WebSocket handler knows:
//! `GET` with `Upgrade: websocket`, `Connection: Upgrade` and a fresh
//! `Sec-WebSocket-Key`. The handler's answer is judged here:
//! - a 101 carrying the `Sec-WebSocket-Accept` that matches our key opens
//!   the tunnel: the client sees `:status 200` (RFC 8441 5), without the
//!   HTTP/1.1 upgrade fields;
//! - a 101 without (or with a wrong) accept value, or any 2xx (a static
//!   file, a handler that ignored the upgrade), must not look like an open
//!   tunnel: it becomes 502 without a body;
//! - 3xx, 4xx and 5xx go back unchanged: the client sees why it was refused.
//!
//! Pure: no httpd, no I/O.

use crate::request::RequestHead;
use crate::stream::{Headers, ResponseHead};
use crate::text::ShortBytes;

/// RFC 6455 1.3: appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether `:protocol` names the WebSocket protocol (RFC 8441 4).
pub fn is_websocket(protocol: &[u8]) -> bool {
    protocol.eq_ignore_ascii_case(b"websocket")
}

/// Turns a validated extended CONNECT for `websocket` into the HTTP/1.1
/// upgrade request (in place). `nonce` is 16 random bytes for the key.
/// Returns the `Sec-WebSocket-Accept` value a real WebSocket answer carries.
pub fn to_upgrade_request(head: &mut RequestHead, nonce: [u8; 16]) -> Vec<u8> {
    let key = base64(&nonce);
    head.method = ShortBytes::new(b"GET");
    let mut headers = Headers::with_capacity(head.headers.len() + 3, head.headers.byte_len() + 64);
    headers.push(b"upgrade", b"websocket");
    headers.push(b"connection", b"Upgrade");
    headers.push(b"sec-websocket-key", key.as_bytes());
    for (name, value) in head.headers.iter() {
        // A client has no business sending its own key over HTTP/2.
        if !name.eq_ignore_ascii_case(b"sec-websocket-key") {
            headers.push(name, value);
        }
    }
    head.headers = headers;
    accept_for(key.as_bytes()).into_bytes()
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 4.2.2).
pub fn accept_for(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(ACCEPT_GUID);
    base64(&sha1(&input))
}

/// What to tell the client about the handler's answer to a tunnel request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still an interim response (100, 103): pass it on, wait for more.
    Interim,
    /// The tunnel is open: send this head (200), then the tunnel's bytes.
    Open(ResponseHead),
    /// Not a tunnel: send this head and end the stream, dropping any body.
    Refuse(ResponseHead),
    /// An error answer (3xx-5xx): send it unchanged, with its body.
    PassOn,
}

/// Judges the handler's response head to a tunnel request whose key
/// expects `expected_accept`.
pub fn judge(head: &ResponseHead, expected_accept: &[u8]) -> Verdict {
    match head.status {
        101 => {
            if head.headers.get(b"sec-websocket-accept") == Some(expected_accept) {
                let mut headers = Headers::new();
                for (name, value) in head.headers.iter() {
                    let hop_by_hop = [&b"sec-websocket-accept"[..], b"upgrade", b"connection"]
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(name));
                    if !hop_by_hop {
                        headers.push(name, value);
                    }
                }
                Verdict::Open(ResponseHead { status: 200, headers })
            } else {
                Verdict::Refuse(bad_gateway())
            }
        }
        100..=199 => Verdict::Interim,
        200..=299 => Verdict::Refuse(bad_gateway()),
        _ => Verdict::PassOn,
    }
}

/// The answer for a resource that did not open a WebSocket.
pub fn bad_gateway() -> ResponseHead {
    let mut headers = Headers::new();
    headers.push(b"content-length", b"0");
    ResponseHead { status: 502, headers }
}

/// Standard base64 with padding (RFC 4648 4).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1 (FIPS 180-4), only for the WebSocket accept value, where RFC 6455
/// prescribes it; not used for anything that needs collision resistance.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_known_answers() {
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(hex(&sha1(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(&sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
        assert_eq!(hex(&sha1(&vec![b'a'; 1000])), "291e9a6c66994949b57ba5e650361e98fc36b1ba");
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn connect_head() -> RequestHead {
        let mut headers = Headers::new();
        headers.push(b"sec-websocket-version", b"13");
        headers.push(b"sec-websocket-key", b"client-sent");
        headers.push(b"sec-websocket-protocol", b"chat");
        RequestHead {
            method: b"CONNECT".into(),
            scheme: Some(b"https".into()),
            authority: Some(b"example.org".into()),
            path: Some(b"/ws".into()),
            protocol: Some(b"websocket".into()),
            headers,
            ..Default::default()
        }
    }

    #[test]
    fn connect_becomes_an_upgrade_get() {
        let mut head = connect_head();
        let accept = to_upgrade_request(&mut head, *b"the sample nonce");
        assert_eq!(head.method, b"GET");
        assert_eq!(head.header(b"upgrade"), Some(&b"websocket"[..]));
        assert_eq!(head.header(b"connection"), Some(&b"Upgrade"[..]));
        assert_eq!(head.header(b"sec-websocket-key"), Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..]));
        assert_eq!(head.headers.iter().filter(|(n, _)| *n == b"sec-websocket-key").count(), 1);
        assert_eq!(head.header(b"sec-websocket-protocol"), Some(&b"chat"[..]));
        assert_eq!(head.header(b"sec-websocket-version"), Some(&b"13"[..]));
        assert_eq!(accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn response(status: u16, fields: &[(&str, &str)]) -> ResponseHead {
        let mut headers = Headers::new();
        for (n, v) in fields {
            headers.push(n.as_bytes(), v.as_bytes());
        }
        ResponseHead { status, headers }
    }

    #[test]
    fn verdicts() {
        let accept = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let ok = response(
            101,
            &[
                ("upgrade", "websocket"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                ("sec-websocket-protocol", "chat"),
            ],
        );
        match judge(&ok, accept) {
            Verdict::Open(head) => {
                assert_eq!(head.status, 200);
                assert_eq!(head.headers.get(b"sec-websocket-accept"), None);
                assert_eq!(head.headers.get(b"upgrade"), None);
                assert_eq!(head.headers.get(b"sec-websocket-protocol"), Some(&b"chat"[..]));
            }
            other => panic!("{other:?}"),
        }
        let wrong = response(101, &[("sec-websocket-accept", "nope")]);
        assert_eq!(judge(&wrong, accept), Verdict::Refuse(bad_gateway()));
        assert_eq!(judge(&response(101, &[]), accept), Verdict::Refuse(bad_gateway()));
        assert_eq!(judge(&response(200, &[("content-type", "text/html")]), accept), Verdict::Refuse(bad_gateway()));
        assert_eq!(judge(&response(204, &[]), accept), Verdict::Refuse(bad_gateway()));
        assert_eq!(judge(&response(103, &[]), accept), Verdict::Interim);
        assert_eq!(judge(&response(404, &[]), accept), Verdict::PassOn);
        assert_eq!(judge(&response(302, &[]), accept), Verdict::PassOn);
    }
}
