//! negotiation.rs: the HTTP2-Settings header of an h2c Upgrade, the
//! HTTP/1.1 request that becomes stream 1, TLS names.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mod_h2rs::negotiation::{decode_http2_settings, setting_valid, tls_acceptable, upgraded_request};
use mod_h2rs::request::Limits;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Some(payload) = decode_http2_settings(data) {
        assert!(payload.len() % 6 == 0 && payload.len() <= 6 * mod_h2rs::limits::MAX_SETTINGS);
        for e in payload.chunks_exact(6) {
            assert!(setting_valid(u16::from_be_bytes([e[0], e[1]]), u32::from_be_bytes([e[2], e[3], e[4], e[5]])));
        }
        // Round trip through the encoder the WebSocket code uses.
        let b64 = mod_h2rs::websocket::base64(&payload);
        assert_eq!(decode_http2_settings(b64.as_bytes()).as_deref(), Some(&payload[..]));
    }
    let mut lines = data.splitn(4, |&b| b == b'\n');
    let (Some(method), Some(target), Some(authority)) = (lines.next(), lines.next(), lines.next()) else { return };
    let rest = lines.next().unwrap_or(b"");
    let _ = upgraded_request(method, target, authority, common::fields(rest).into_iter(), Limits::default());
    if let Ok(s) = std::str::from_utf8(data) {
        let (protocol, rest) = s.split_once('\n').unwrap_or((s, s));
        let (cipher, compression) = rest.split_once('\n').unwrap_or((rest, "NULL"));
        let _ = (
            tls_acceptable(Some(protocol), Some(cipher), Some(compression), true),
            tls_acceptable(Some(s), None, None, false),
        );
    }
});
