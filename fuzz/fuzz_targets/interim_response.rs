//! response.rs: the HTTP/1 response heads a handler writes (interim 1xx and
//! the final head of a tunnel), fed in two pieces; response field checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mod_h2rs::request::{has_forbidden_value_byte, is_token};
use mod_h2rs::response::{add_response_field, merged_vary, InterimParser, Parsed};
use mod_h2rs::stream::Headers;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map(|&b| b as usize % (data.len() + 1)).unwrap_or(0);
    let mut p = InterimParser::default();
    let mut parsed = p.push(&data[..cut]);
    parsed.extend(p.push(&data[cut..]));
    for x in &parsed {
        if let Parsed::Head(h) = x {
            assert!((100..1000).contains(&h.status));
            for (n, v) in h.headers.iter() {
                // What HTTP/2 may carry: a lower-case token name, a value
                // without NUL, CR or LF.
                assert!(is_token(n) && !n.iter().any(u8::is_ascii_uppercase), "{n:?}");
                assert!(!has_forbidden_value_byte(v), "{n:?}: {v:?}");
            }
        }
    }
    let _ = p.take_rest();
    let mut head = Headers::new();
    for line in data.split(|&b| b == b'\n') {
        if let Some(i) = line.iter().position(|&b| b == b':') {
            let _ = add_response_field(&mut head, &line[..i], &line[i + 1..]);
        }
    }
    let _ = merged_vary(data.split(|&b| b == b'\n'));
});
