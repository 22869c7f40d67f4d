//! The panic boundary. Every `extern "C"` function that httpd or nghttp2
//! calls runs its body through [`guard`]: a panic must never unwind into C
//! (undefined behaviour) nor abort the httpd child and every connection on it.
//! A caught panic is logged to the error log and the entry returns the
//! caller-chosen fallback (an error status, a reset stream, a 500).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

/// Runs `body`; if it panics, logs the panic as coming from `entry` and
/// returns `on_panic` instead.
#[inline]
pub fn guard<R>(entry: &'static str, on_panic: R, body: impl FnOnce() -> R) -> R {
    guard_or(entry, body, |_| on_panic)
}

/// Like [`guard`], with the fallback made from the panic's message (and
/// whatever the caller must record of it) instead of given up front.
#[inline]
pub fn guard_or<R>(entry: &'static str, body: impl FnOnce() -> R, on_panic: impl FnOnce(String) -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            let msg = panic_message(&payload);
            crate::log::server_crit(&format!("mod_h2rs: recovered from a panic in {entry}: {msg}"));
            on_panic(msg)
        }
    }
}

/// Like [`guard`] but hands the panic's message to the caller, which can turn
/// it into a protocol action (reset the stream, answer 500).
pub fn catch<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(body)).map_err(|payload| panic_message(&payload))
}

fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Routes panic reports to httpd's error log instead of stderr, once per
/// process. The line says "panicked at <file:line>" so log checks find it.
pub fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location =
                info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_else(|| "?".to_string());
            let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                String::new()
            };
            let thread = std::thread::current();
            crate::log::server_crit(&format!(
                "mod_h2rs: thread '{}' panicked at {location}: {message}",
                thread.name().unwrap_or("?")
            ));
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_returns_value_or_fallback() {
        assert_eq!(guard("test", -1, || 7), 7);
        assert_eq!(catch(|| -> i32 { panic!("boom {}", 1) }), Err("boom 1".to_string()));
    }
}
