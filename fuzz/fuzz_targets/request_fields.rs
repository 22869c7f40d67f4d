//! request.rs: an HTTP/2 request head (and trailers) field by field, with
//! small limits so the limit paths are reached too; priority.rs: each
//! field's value as a `priority` field.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mod_h2rs::request::{valid_h2_name, valid_h2_value, HeaderError, Limits, RequestBuilder};

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let limits = Limits {
        max_fields: (flags & 0x0f) as u32 * 4,
        max_field_size: 64 << (flags >> 6),
        max_line: 128,
        max_head_bytes: 1024 << (flags >> 6),
        extended_connect: flags & 0x10 != 0,
    };
    let fields = common::fields(rest);
    let mut b = RequestBuilder::new(limits);
    let mut ok = true;
    for (name, value) in &fields {
        assert!(mod_h2rs::priority::parse(value).urgency <= 7);
        match b.add(name, value) {
            Ok(()) => {}
            Err(HeaderError::Calm) | Err(HeaderError::Malformed(_)) => {
                ok = false;
                break;
            }
        }
    }
    if ok {
        if let Ok(head) = b.finish(flags & 0x20 != 0) {
            // A head that passed holds only valid regular fields, within the
            // limits, unless it is to be answered with an error.
            if head.error_status.is_none() {
                for (n, v) in head.headers.iter() {
                    assert!(valid_h2_name(n) || n == b"host", "{n:?}");
                    assert!(valid_h2_value(v), "{v:?}");
                    // Each field within the limit; a repeated name's joined
                    // value (and the cookie crumbs') may be longer.
                    let repeated = fields.iter().filter(|(m, _)| *m == n).count() > 1;
                    assert!(n.len() + 2 + v.len() <= limits.max_field_size as usize || n == b"cookie" || repeated);
                }
                assert!(!head.method.is_empty());
            }
        }
    }
    let mut t = RequestBuilder::new(limits);
    for (name, value) in &fields {
        if t.add(name, value).is_err() {
            return;
        }
    }
    let _ = t.finish_trailers();
});
