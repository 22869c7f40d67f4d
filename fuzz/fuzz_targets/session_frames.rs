//! session.rs + nghttp2: raw bytes from a client after a valid preface,
//! through a whole server session (every frame callback, request heads,
//! limits, flood budgets), streams answered by a dispatcher that finishes
//! them at once. The output is drained so flow control moves.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mod_h2rs::frames::Frames;
use mod_h2rs::session::{Dispatch, Session, Settings};
use mod_h2rs::signal::Signal;
use mod_h2rs::stream::Stream;
use std::sync::Arc;

struct Done;

impl Dispatch for Done {
    fn dispatch(&mut self, stream: Arc<Stream>) {
        stream.worker_done(None);
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

fuzz_target!(|data: &[u8]| {
    let Ok(signal) = Signal::new() else { return };
    let mut settings = Settings::default();
    settings.max_concurrent_streams = 8;
    settings.limits.max_fields = 20;
    let Ok(mut s) = Session::new(settings, Arc::new(signal), Done) else { return };
    let mut out = Frames::default();
    if s.recv(PREFACE).is_err() {
        return;
    }
    // Feed in chunks the first byte picks, draining output in between.
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = (chunk as usize).max(1) * 7;
    for piece in rest.chunks(chunk) {
        if s.recv(piece).is_err() {
            break;
        }
        s.process_signals();
        out.clear();
        if s.collect_output(&mut out, 1 << 16).is_err() {
            break;
        }
    }
    s.abort_all();
    s.reap_aborted();
});
