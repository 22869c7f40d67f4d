//! APR pools.
//!
//! Pools are not thread-safe. A pool that another thread will create
//! sub-pools of (or free into) gets its own allocator guarded by a mutex:
//! [`create_threadsafe`]. Rust values whose lifetime follows a pool are tied
//! to it with [`PoolRef::attach`], which drops them in the pool's cleanup.

use crate::ffi;
use std::ffi::{c_char, c_void, CString};
use std::ptr::{self, NonNull};

/// A borrowed handle to a pool httpd (or we) created elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolRef(NonNull<ffi::apr_pool_t>);

impl PoolRef {
    /// # Safety
    /// `p` must be a live pool, used only on this thread while the handle
    /// is in use (or guarded by its allocator's mutex).
    pub unsafe fn from_raw(p: *mut ffi::apr_pool_t) -> Option<PoolRef> {
        NonNull::new(p).map(PoolRef)
    }

    pub fn as_ptr(self) -> *mut ffi::apr_pool_t {
        self.0.as_ptr()
    }

    /// Zeroed memory for one `T`, freed with the pool (no Drop runs).
    pub fn calloc<T>(self) -> *mut T {
        let size = std::mem::size_of::<T>();
        // SAFETY: the pool is live (constructor contract); apr_palloc
        // aborts via the pool's abort function rather than returning NULL,
        // and the memory is at least `size` bytes, aligned for any C type.
        unsafe {
            let mem = ffi::apr_palloc(self.as_ptr(), size as ffi::apr_size_t) as *mut u8;
            ptr::write_bytes(mem, 0, size);
            mem as *mut T
        }
    }

    /// A NUL-terminated copy of `bytes` in the pool (interior NULs are kept;
    /// C readers see the prefix before the first one).
    pub fn strdup(self, bytes: &[u8]) -> *mut c_char {
        // SAFETY: apr_pstrmemdup copies `len` bytes from a valid slice and
        // appends a NUL; the pool is live.
        unsafe {
            ffi::apr_pstrmemdup(self.as_ptr(), bytes.as_ptr() as *const c_char, bytes.len() as _)
        }
    }

    /// Ties `value` to the pool: it is dropped when the pool is cleared or
    /// destroyed. Returns a pointer valid until then.
    pub fn attach<T>(self, value: T) -> *mut T {
        unsafe extern "C" fn drop_box<T>(data: *mut c_void) -> ffi::apr_status_t {
            crate::ffi::panic::guard("pool cleanup", 0, || {
                // SAFETY: `data` came from Box::into_raw in attach() and the
                // cleanup runs exactly once.
                drop(unsafe { Box::from_raw(data as *mut T) });
                0
            })
        }
        let raw = Box::into_raw(Box::new(value));
        // SAFETY: registers a cleanup with a valid data pointer; the pool is
        // live. apr_pool_cleanup_null is the standard no-op child cleanup.
        unsafe {
            ffi::apr_pool_cleanup_register(
                self.as_ptr(),
                raw as *const c_void,
                Some(drop_box::<T>),
                Some(ffi::apr_pool_cleanup_null),
            );
        }
        raw
    }

    /// Runs `f(data)` before the pool's sub-pools are destroyed (httpd's
    /// "pre-cleanup"): the place to join threads that use sub-pools.
    ///
    /// # Safety
    /// `data` must stay valid until the cleanup has run.
    pub unsafe fn pre_cleanup(
        self,
        data: *const c_void,
        f: unsafe extern "C" fn(*mut c_void) -> ffi::apr_status_t,
    ) {
        // SAFETY: caller guarantees `data`; the pool is live.
        unsafe { ffi::apr_pool_pre_cleanup_register(self.as_ptr(), data, Some(f)) }
    }
}

/// Creates a sub-pool of `parent` with its own allocator, guarded by its own
/// mutex, so that it (and pools made from it) may be handed between threads.
///
/// # Safety
/// `parent` must be a live pool owned by the calling thread for the call.
pub unsafe fn create_threadsafe(
    parent: *mut ffi::apr_pool_t,
    tag: &'static str,
) -> Result<*mut ffi::apr_pool_t, ffi::apr_status_t> {
    let mut allocator: *mut ffi::apr_allocator_t = ptr::null_mut();
    // SAFETY: out-pointer is valid.
    let rv = unsafe { ffi::apr_allocator_create(&mut allocator) };
    if rv != 0 {
        return Err(rv);
    }
    let mut pool: *mut ffi::apr_pool_t = ptr::null_mut();
    // SAFETY: parent is live (caller), allocator was just created.
    let rv = unsafe { ffi::apr_pool_create_ex(&mut pool, parent, None, allocator) };
    if rv != 0 {
        // SAFETY: the allocator is ours and unused.
        unsafe { ffi::apr_allocator_destroy(allocator) };
        return Err(rv);
    }
    let mut mutex: *mut ffi::apr_thread_mutex_t = ptr::null_mut();
    // SAFETY: pool and allocator are ours; the pool owns the allocator from
    // now on (destroyed with it), and the mutex lives in the pool.
    unsafe {
        ffi::apr_allocator_owner_set(allocator, pool);
        let rv = ffi::apr_thread_mutex_create(&mut mutex, ffi::APR_THREAD_MUTEX_DEFAULT, pool);
        if rv != 0 {
            ffi::apr_pool_destroy(pool);
            return Err(rv);
        }
        ffi::apr_allocator_mutex_set(allocator, mutex);
        // Keep at most 1 MiB of freed blocks for reuse per allocator.
        ffi::apr_allocator_max_free_set(allocator, 1024 * 1024);
        let tag = pool_tag(tag);
        ffi::apr_pool_tag(pool, tag);
    }
    Ok(pool)
}

/// Pool tags must outlive the pool: keep one static C string per tag.
fn pool_tag(tag: &'static str) -> *const c_char {
    use once_cell::sync::Lazy;
    use parking_lot::Mutex;
    use std::collections::HashMap;
    static TAGS: Lazy<Mutex<HashMap<&'static str, CString>>> = Lazy::new(Default::default);
    let mut tags = TAGS.lock();
    tags.entry(tag).or_insert_with(|| CString::new(tag).unwrap_or_default()).as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn root_pool() -> *mut ffi::apr_pool_t {
        crate::apr::test_root_pool()
    }

    struct CountDrop(&'static AtomicUsize);
    impl Drop for CountDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn attached_values_drop_with_the_pool() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let root = root_pool();
        // SAFETY: root is live and ours.
        let sub = unsafe { create_threadsafe(root, "test") }.expect("pool");
        // SAFETY: sub is live.
        let pool = unsafe { PoolRef::from_raw(sub) }.expect("non-null");
        let v = pool.attach(CountDrop(&DROPS));
        assert!(!v.is_null());
        let s = pool.strdup(b"abc");
        // SAFETY: strdup returned a NUL-terminated string in the live pool.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(s) }.to_bytes(), b"abc");
        // SAFETY: destroying pools we created.
        unsafe { ffi::apr_pool_destroy(sub) };
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
        // SAFETY: as above.
        unsafe { ffi::apr_pool_destroy(root) };
    }
}
