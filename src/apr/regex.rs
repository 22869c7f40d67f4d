//! httpd's regular expressions (`ap_pregcomp`, PCRE underneath), for the
//! patterns of configuration sections the module re-reads (`<ProxyMatch>`),
//! and the shell wildcards of `<Proxy>` sections.

use std::ffi::CString;
use std::ptr::NonNull;

use super::PoolRef;
use crate::ffi;
use crate::proxy::backend_tls::UrlPattern;

/// A pattern compiled in a pool that outlives every use (the configuration
/// pool). Matching only reads it: `ap_regexec` keeps its match data per
/// call, so one `Regex` serves every thread.
pub struct Regex {
    re: NonNull<ffi::ap_regex_t>,
    pattern: String,
}

// SAFETY: the compiled pattern is never written after `compile`, and
// ap_regexec is reentrant (see above).
unsafe impl Send for Regex {}
// SAFETY: as above.
unsafe impl Sync for Regex {}

impl Regex {
    /// Compiles `pattern` (POSIX extended syntax, as mod_proxy compiles its
    /// section patterns) in `pool`; None if it does not compile.
    pub fn compile(pool: PoolRef, pattern: &str) -> Option<Regex> {
        let c = CString::new(pattern).ok()?;
        // SAFETY: a live pool and a NUL-terminated pattern; the result is
        // checked, and lives as long as the pool (see the type's contract).
        let re = unsafe { ffi::ap_pregcomp(pool.as_ptr(), c.as_ptr(), ffi::AP_REG_EXTENDED as i32) };
        Some(Regex { re: NonNull::new(re)?, pattern: pattern.to_string() })
    }
}

impl UrlPattern for Regex {
    fn is_match(&self, url: &str) -> bool {
        let Ok(c) = CString::new(url) else { return false };
        // SAFETY: the compiled pattern is live (type contract); no match
        // offsets are asked for.
        unsafe { ffi::ap_regexec(self.re.as_ptr(), c.as_ptr(), 0, std::ptr::null_mut(), 0) == 0 }
    }
    fn source(&self) -> &str {
        &self.pattern
    }
}

/// A shell wildcard (`*`, `?`, `[...]`; `*` also spans `/`), as mod_proxy
/// matches `<Proxy>` sections that hold one (apr_fnmatch without flags;
/// glibc's fnmatch agrees).
#[derive(Debug)]
pub struct Wildcard {
    pattern: CString,
    source: String,
}

impl Wildcard {
    /// None if `pattern` holds no wildcard (mod_proxy's apr_fnmatch_test)
    /// or a NUL byte.
    pub fn new(pattern: &str) -> Option<Wildcard> {
        if !pattern.contains(['*', '?', '[']) {
            return None;
        }
        Some(Wildcard { pattern: CString::new(pattern).ok()?, source: pattern.to_string() })
    }
}

impl UrlPattern for Wildcard {
    fn is_match(&self, url: &str) -> bool {
        let Ok(url) = CString::new(url) else { return false };
        // SAFETY: two NUL-terminated strings; fnmatch only reads them.
        unsafe { libc::fnmatch(self.pattern.as_ptr(), url.as_ptr(), 0) == 0 }
    }
    fn source(&self) -> &str {
        &self.source
    }
}

impl std::fmt::Debug for Regex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Regex({:?})", self.pattern)
    }
}
