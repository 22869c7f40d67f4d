//! Thin safe wrappers over the APR objects the module touches: pools,
//! brigades and buckets, tables. Each wrapper is a non-`Send` handle to an
//! object httpd owns; constructing one from a raw pointer is the `unsafe`
//! step, using it afterwards is not.

pub mod brigade;
pub mod pool;
pub mod regex;
pub mod table;

pub use brigade::{BrigadeRef, BucketKind, BucketRef, FileBucket};
pub use pool::PoolRef;
pub use table::TableRef;

use crate::ffi;

/// APR status codes the module reacts to.
pub mod status {
    use crate::ffi::apr_status_t;
    pub const SUCCESS: apr_status_t = 0;
    pub const EOF: apr_status_t = crate::ffi::APR_EOF as apr_status_t;
    pub const EAGAIN: apr_status_t = crate::ffi::APR_EAGAIN as apr_status_t;
    pub const TIMEUP: apr_status_t = crate::ffi::APR_TIMEUP as apr_status_t;
    pub const ECONNABORTED: apr_status_t = crate::ffi::APR_ECONNABORTED as apr_status_t;
    pub const ECONNRESET: apr_status_t = libc::ECONNRESET as apr_status_t;
    pub const EINVAL: apr_status_t = libc::EINVAL as apr_status_t;
    pub const ENOMEM: apr_status_t = libc::ENOMEM as apr_status_t;
    pub const ENOTIMPL: apr_status_t = crate::ffi::APR_ENOTIMPL as apr_status_t;
    pub const EGENERAL: apr_status_t = crate::ffi::APR_EGENERAL as apr_status_t;
    pub const ENOSPC: apr_status_t = libc::ENOSPC as apr_status_t;

    /// `APR_STATUS_IS_EAGAIN`: EAGAIN and EWOULDBLOCK are the same on Linux.
    pub fn is_eagain(rv: apr_status_t) -> bool {
        rv == EAGAIN || rv == libc::EWOULDBLOCK as apr_status_t
    }

    /// `APR_STATUS_IS_TIMEUP` (also ETIMEDOUT from a socket timeout).
    pub fn is_timeup(rv: apr_status_t) -> bool {
        rv == TIMEUP || rv == libc::ETIMEDOUT as apr_status_t
    }
}

/// Whether every filter of the chain from `f` on has a name (as httpd
/// registered it, lower case) that `allowed` accepts.
///
/// # Safety
/// `f` must be NULL or the head of a live filter chain owned by the
/// calling thread (filter records live for the process).
pub unsafe fn filter_chain_all(f: *mut ffi::ap_filter_t, allowed: impl Fn(&[u8]) -> bool) -> bool {
    // SAFETY: caller contract; each record and its name are checked for
    // NULL before use (records live for the process).
    unsafe {
        filter_chain_all_recs(f, |rec| {
            !rec.is_null() && !(*rec).name.is_null() && allowed(std::ffi::CStr::from_ptr((*rec).name).to_bytes())
        })
    }
}

/// Whether every filter of the chain from `f` on has a record (its
/// `ap_filter_rec_t`, one per registered filter for the process) that
/// `allowed` accepts: comparing records is cheaper than names.
///
/// # Safety
/// As `filter_chain_all`.
pub unsafe fn filter_chain_all_recs(
    f: *mut ffi::ap_filter_t,
    allowed: impl Fn(*const ffi::ap_filter_rec_t) -> bool,
) -> bool {
    // SAFETY: caller contract.
    unsafe { find_filter(f, |rec| !allowed(rec)).is_null() }
}

/// Removes the first filter of the chain from `f` on whose record is
/// `rec` (what `ap_remove_output_filter_byhandle` does by name, without
/// looking the name up in httpd's registry on every call).
///
/// # Safety
/// As `filter_chain_all`; the chain is an output chain.
pub unsafe fn remove_output_filter_rec(f: *mut ffi::ap_filter_t, rec: *const ffi::ap_filter_rec_t) {
    // SAFETY: caller contract; the filter found is live in its chain.
    unsafe {
        let found = find_filter(f, |r| std::ptr::eq(r, rec));
        if !found.is_null() {
            ffi::ap_remove_output_filter(found);
        }
    }
}

/// The first filter of the chain from `f` on whose record `pred` accepts,
/// or NULL.
///
/// # Safety
/// As `filter_chain_all`.
unsafe fn find_filter(
    mut f: *mut ffi::ap_filter_t,
    pred: impl Fn(*const ffi::ap_filter_rec_t) -> bool,
) -> *mut ffi::ap_filter_t {
    // SAFETY: caller contract: every filter of the chain is live.
    unsafe {
        while !f.is_null() && !pred((*f).frec) {
            f = (*f).next;
        }
    }
    f
}

/// Current time in APR's microseconds.
pub fn now() -> ffi::apr_time_t {
    // SAFETY: apr_time_now has no preconditions.
    unsafe { ffi::apr_time_now() }
}

/// Tests: a fresh root pool (APR initialised once per test process; APR's
/// initialisation is not safe to run concurrently).
#[cfg(test)]
pub fn test_root_pool() -> *mut ffi::apr_pool_t {
    static INIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: apr_initialize runs once; pool creation with a NULL parent
    // uses APR's global pool, which is thread-safe once initialised.
    unsafe {
        INIT.call_once(|| {
            ffi::apr_initialize();
        });
        let mut p = std::ptr::null_mut();
        assert_eq!(ffi::apr_pool_create_ex(&mut p, std::ptr::null_mut(), None, std::ptr::null_mut()), 0);
        p
    }
}
