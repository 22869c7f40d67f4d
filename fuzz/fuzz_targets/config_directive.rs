//! config.rs: any directive name and arguments, at server and directory
//! level, merged; durations.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mod_h2rs::config::{apply, parse_duration, DirConfig, ServerConfig, Target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut words = text.split(|c: char| c == ' ' || c == '\n');
    let Some(directive) = words.next() else { return };
    let args: Vec<&str> = words.collect();
    let mut s = ServerConfig::default();
    let r = apply(Target::Server(&mut s), directive, &args);
    if let Err(e) = &r {
        assert!(!e.is_empty());
    }
    let mut d = DirConfig::default();
    let _ = apply(Target::Dir(&mut d), directive, &args);
    let m = ServerConfig::merge(&ServerConfig::default(), &s);
    let _ = (m.max_session_streams(), m.window_size(), m.workers(25), m.max_worker_idle());
    let _ = DirConfig::merge(&DirConfig::default(), &d);
    let _ = parse_duration("X", text);
});
