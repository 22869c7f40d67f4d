//! Logging into httpd's error log with this module's tag (`[http2:...]`;
//! the reverse proxy's lines `[proxy_http2:...]`, as the stock
//! mod_proxy_http2's, so that `LogLevel proxy_http2:...` sets their level).
//!
//! Messages are formatted in Rust and passed as one "%s" argument: APR's
//! printf knows neither Rust types nor `%llu`. The `*_enabled` checks come
//! first so disabled levels cost no formatting.

use crate::ffi;
use std::ffi::CString;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum Level {
    Emerg = 0,
    Alert = 1,
    Crit = 2,
    Error = 3,
    Warn = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
    Trace1 = 8,
    Trace2 = 9,
    Trace3 = 10,
}

/// The module a line is tagged with (and whose `LogLevel` applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Http2 = 0,
    Proxy = 1,
    /// mod_reqtimeout's (http2 where it is not loaded).
    Reqtimeout = 2,
}

/// A message as a C string; interior NULs (from client data) become '?'.
#[cfg_attr(any(test, fuzzing), allow(dead_code))]
fn c_message(msg: &str) -> CString {
    CString::new(msg.replace('\0', "?")).unwrap_or_default()
}

#[cfg(not(any(test, fuzzing)))]
mod sink {
    use super::*;

    pub(crate) fn conn_enabled(c: *const ffi::conn_rec, level: Level) -> bool {
        // SAFETY: `c` is a live conn_rec handed to us by httpd (callers only
        // log about connections they are currently processing).
        !c.is_null() && unsafe { ffi::h2rs_shim_log_c_enabled(c, level as i32) } != 0
    }

    pub fn conn(c: *const ffi::conn_rec, level: Level, msg: &str) {
        let m = c_message(msg);
        // SAFETY: as above; `m` outlives the call and is NUL-terminated.
        unsafe { ffi::h2rs_shim_log_c(c, level as i32, 0, m.as_ptr()) }
    }

    pub fn request(r: *const ffi::request_rec, level: Level, tag: Tag, msg: &str) {
        let m = c_message(msg);
        // SAFETY: `r` is the live request being processed by the caller.
        unsafe { ffi::h2rs_shim_log_r(r, level as i32, 0, tag as i32, m.as_ptr()) }
    }

    pub(crate) fn server_enabled(s: *const ffi::server_rec, level: Level, tag: Tag) -> bool {
        // SAFETY: a NULL server means the main server to the shim; a
        // non-NULL one is a server_rec from the config, alive for the
        // whole generation.
        unsafe { ffi::h2rs_shim_log_s_enabled(s, level as i32, tag as i32) != 0 }
    }

    pub fn server(s: *const ffi::server_rec, level: Level, tag: Tag, msg: &str) {
        let m = c_message(msg);
        // SAFETY: see server_enabled; ap_log_error accepts NULL.
        unsafe { ffi::h2rs_shim_log_s(s, level as i32, 0, tag as i32, m.as_ptr()) }
    }
}

/// Unit tests and fuzz targets (cargo fuzz sets `--cfg fuzzing`) run
/// without httpd: log lines go to stderr.
#[cfg(any(test, fuzzing))]
mod sink {
    use super::*;
    pub(crate) fn conn_enabled(_c: *const ffi::conn_rec, _level: Level) -> bool {
        true
    }
    pub fn conn(_c: *const ffi::conn_rec, level: Level, msg: &str) {
        eprintln!("[{level:?}] {msg}");
    }
    pub fn request(_r: *const ffi::request_rec, level: Level, _tag: Tag, msg: &str) {
        eprintln!("[{level:?}] {msg}");
    }
    pub(crate) fn server_enabled(_s: *const ffi::server_rec, _level: Level, _tag: Tag) -> bool {
        true
    }
    pub fn server(_s: *const ffi::server_rec, level: Level, _tag: Tag, msg: &str) {
        eprintln!("[{level:?}] {msg}");
    }
}

pub(crate) use sink::conn_enabled;

pub(crate) fn server_enabled(s: *const ffi::server_rec, level: Level) -> bool {
    sink::server_enabled(s, level, Tag::Http2)
}

pub fn conn(c: *const ffi::conn_rec, level: Level, msg: &str) {
    if conn_enabled(c, level) {
        sink::conn(c, level, msg)
    }
}

pub fn request(r: *const ffi::request_rec, level: Level, msg: &str) {
    sink::request(r, level, Tag::Http2, msg)
}

pub fn server(s: *const ffi::server_rec, level: Level, msg: &str) {
    if server_enabled(s, level) {
        sink::server(s, level, Tag::Http2, msg)
    }
}

/// A critical line about the process as a whole (panics, thread failures).
pub fn server_crit(msg: &str) {
    sink::server(std::ptr::null(), Level::Crit, Tag::Http2, msg)
}

/// A line about a request that mod_reqtimeout writes over HTTP/1.1,
/// tagged as its (`LogLevel reqtimeout:info` shows it there too).
pub fn reqtimeout_request(r: *const ffi::request_rec, level: Level, msg: &str) {
    sink::request(r, level, Tag::Reqtimeout, msg)
}

/// A reverse-proxy line about a request.
pub fn proxy_request(r: *const ffi::request_rec, level: Level, msg: &str) {
    sink::request(r, level, Tag::Proxy, msg)
}

/// Whether reverse-proxy lines at `level` reach the main server's log.
pub(crate) fn proxy_enabled(level: Level) -> bool {
    sink::server_enabled(std::ptr::null(), level, Tag::Proxy)
}

/// A reverse-proxy line in the main server's log (the engine's threads
/// serve every virtual host).
pub fn proxy(level: Level, msg: &str) {
    if proxy_enabled(level) {
        sink::server(std::ptr::null(), level, Tag::Proxy, msg)
    }
}

/// `clog!(c, Level::Debug, "fmt", args..)`: log about a connection, formatting
/// only when the level is enabled for it.
#[macro_export]
macro_rules! clog {
    ($c:expr, $level:expr, $($arg:tt)+) => {{
        let c = $c as *const $crate::ffi::conn_rec;
        if $crate::log::conn_enabled(c, $level) {
            $crate::log::conn(c, $level, &format!($($arg)+));
        }
    }};
}

/// `plog!(Level::Info, "fmt", args..)`: a reverse-proxy line in the main
/// server's log, formatted only when its level is enabled.
#[macro_export]
macro_rules! plog {
    ($level:expr, $($arg:tt)+) => {{
        if $crate::log::proxy_enabled($level) {
            $crate::log::proxy($level, &format!($($arg)+));
        }
    }};
}

/// `slog!(s, Level::Warn, "fmt", args..)`: log about a server (NULL: main).
#[macro_export]
macro_rules! slog {
    ($s:expr, $level:expr, $($arg:tt)+) => {{
        let s = $s as *const $crate::ffi::server_rec;
        if $crate::log::server_enabled(s, $level) {
            $crate::log::server(s, $level, &format!($($arg)+));
        }
    }};
}
