//! websocket.rs: the extended CONNECT turned into an upgrade request, the
//! accept key, the handler's answer judged; base64 and SHA-1.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mod_h2rs::request::{Limits, RequestBuilder};
use mod_h2rs::stream::{Headers, ResponseHead};
use mod_h2rs::websocket::{accept_for, base64, is_websocket, judge, sha1, to_upgrade_request};

mod common;

fuzz_target!(|data: &[u8]| {
    let accept = accept_for(data);
    assert_eq!(accept.len(), 28);
    assert_eq!(base64(data).len(), data.len().div_ceil(3) * 4);
    let _ = sha1(data);
    let _ = is_websocket(data);
    let fields = common::fields(data);
    let limits = Limits { extended_connect: true, ..Limits::default() };
    let mut b = RequestBuilder::new(limits);
    for (n, v) in &fields {
        if b.add(n, v).is_err() {
            return;
        }
    }
    if let Ok(mut head) = b.finish(false) {
        let mut nonce = [0u8; 16];
        for (i, x) in data.iter().take(16).enumerate() {
            nonce[i] = *x;
        }
        let _ = to_upgrade_request(&mut head, nonce);
    }
    let mut headers = Headers::new();
    for (n, v) in fields.iter().skip(1) {
        headers.push(n, v);
    }
    let status = data.first().map(|&b| 100 + b as u16 * 2).unwrap_or(101);
    let _ = judge(&ResponseHead { status, headers }, accept.as_bytes());
});
