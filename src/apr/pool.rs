//! APR pools.
//!
//! Pools are not thread-safe. A pool that another thread will create
//! sub-pools of (or free into) takes its memory from the process's shared
//! allocator, guarded by a mutex: [`create_threadsafe`]. Rust values whose
//! lifetime follows a pool are tied to it with [`PoolRef::attach`], which
//! drops them in the pool's cleanup.

use crate::ffi;
use std::ffi::{c_char, c_void, CStr};
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
        unsafe { ffi::apr_pstrmemdup(self.as_ptr(), bytes.as_ptr() as *const c_char, bytes.len() as _) }
    }

    /// A NUL-terminated copy of `bytes` in the pool, changed by `edit`
    /// before anyone else sees it.
    pub fn strdup_edited(self, bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> *mut c_char {
        let copy = self.strdup(bytes);
        // SAFETY: `copy` holds `bytes.len()` bytes (and a NUL) in the live
        // pool, written just now and not yet shared with anyone.
        edit(unsafe { std::slice::from_raw_parts_mut(copy as *mut u8, bytes.len()) });
        copy
    }

    /// A NUL-terminated concatenation of `parts` in the pool, built in
    /// place (no intermediate buffer on the heap).
    pub fn concat(self, parts: &[&[u8]]) -> *mut c_char {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // SAFETY: the pool is live; apr_palloc returns at least `len + 1`
        // writable bytes (it aborts rather than returning NULL), and the
        // copies fill exactly the first `len` of them from valid slices.
        unsafe {
            let mem = ffi::apr_palloc(self.as_ptr(), (len + 1) as ffi::apr_size_t) as *mut u8;
            let mut at = 0;
            for part in parts {
                ptr::copy_nonoverlapping(part.as_ptr(), mem.add(at), part.len());
                at += part.len();
            }
            *mem.add(len) = 0;
            mem as *mut c_char
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
        // SAFETY: the box stays valid until its cleanup frees it.
        unsafe { self.cleanup(raw as *const c_void, drop_box::<T>) };
        raw
    }

    /// Runs `f(data)` when the pool is cleared or destroyed (not in a
    /// child process after fork).
    ///
    /// # Safety
    /// `data` must stay valid until the cleanup has run.
    pub unsafe fn cleanup(self, data: *const c_void, f: unsafe extern "C" fn(*mut c_void) -> ffi::apr_status_t) {
        // SAFETY: caller guarantees `data`; the pool is live.
        unsafe { ffi::apr_pool_cleanup_register(self.as_ptr(), data, Some(f), Some(ffi::apr_pool_cleanup_null)) }
    }

    /// Runs `f(data)` before the pool's sub-pools are destroyed (httpd's
    /// "pre-cleanup"): the place to join threads that use sub-pools.
    ///
    /// # Safety
    /// `data` must stay valid until the cleanup has run.
    pub unsafe fn pre_cleanup(self, data: *const c_void, f: unsafe extern "C" fn(*mut c_void) -> ffi::apr_status_t) {
        // SAFETY: caller guarantees `data`; the pool is live.
        unsafe { ffi::apr_pool_pre_cleanup_register(self.as_ptr(), data, Some(f)) }
    }
}

/// Most free memory the shared allocator keeps for reuse; blocks freed
/// beyond it go back to the system.
const SHARED_MAX_FREE: usize = 1024 * 1024;

/// The allocator of every pool [`create_threadsafe`] makes: one per
/// process, guarded by a mutex, never destroyed.
///
/// Not one allocator per pool: Debian's APR maps each 8 KiB block with its
/// own `mmap`, and destroying an allocator unmaps its blocks, so a session
/// or c2 pool with an allocator of its own cost about 4 mmaps to make and
/// 4 munmaps to destroy. A munmap in a process with threads on other CPUs
/// flushes their TLBs by IPI: a burst of new connections spent half its
/// CPU there. Freed into one allocator, the blocks are reused by the next
/// pool, as httpd's own per-thread allocators reuse theirs.
fn shared_allocator() -> Result<*mut ffi::apr_allocator_t, ffi::apr_status_t> {
    static SHARED: once_cell::sync::OnceCell<usize> = once_cell::sync::OnceCell::new();
    SHARED
        .get_or_try_init(|| {
            let mut allocator: *mut ffi::apr_allocator_t = ptr::null_mut();
            // SAFETY: out-pointer is valid.
            let rv = unsafe { ffi::apr_allocator_create(&mut allocator) };
            if rv != 0 {
                return Err(rv);
            }
            // A pool of the allocator's own holds its mutex; it owns the
            // allocator and, like it, lives as long as the process.
            let mut home: *mut ffi::apr_pool_t = ptr::null_mut();
            let mut mutex: *mut ffi::apr_thread_mutex_t = ptr::null_mut();
            // SAFETY: the allocator was just created and is ours; `home` is
            // made from it and owns it; the mutex lives in `home`.
            unsafe {
                let rv = ffi::apr_pool_create_unmanaged_ex(&mut home, None, allocator);
                if rv != 0 {
                    ffi::apr_allocator_destroy(allocator);
                    return Err(rv);
                }
                ffi::apr_allocator_owner_set(allocator, home);
                let rv = ffi::apr_thread_mutex_create(&mut mutex, ffi::APR_THREAD_MUTEX_DEFAULT, home);
                if rv != 0 {
                    ffi::apr_pool_destroy(home);
                    return Err(rv);
                }
                ffi::apr_allocator_mutex_set(allocator, mutex);
                ffi::apr_allocator_max_free_set(allocator, SHARED_MAX_FREE as ffi::apr_size_t);
                ffi::apr_pool_tag(home, c"h2rs_shared_allocator".as_ptr());
            }
            Ok(allocator as usize)
        })
        .map(|&a| a as *mut ffi::apr_allocator_t)
}

/// Makes the process's shared allocator now (`child_init`), so that the
/// first connections do not race to make it (see `c1::child_init`). A
/// failure here is tried again at first use.
pub fn init_shared_allocator() -> Result<(), ffi::apr_status_t> {
    shared_allocator().map(|_| ())
}

/// Creates a sub-pool of `parent` on the process's shared, mutex-guarded
/// allocator (`shared_allocator`), so that it (and pools made from it)
/// may be handed between threads.
///
/// # Safety
/// `parent` must be a live pool owned by the calling thread for the call.
pub unsafe fn create_threadsafe(
    parent: *mut ffi::apr_pool_t,
    tag: &'static CStr,
) -> Result<*mut ffi::apr_pool_t, ffi::apr_status_t> {
    let allocator = shared_allocator()?;
    let mut pool: *mut ffi::apr_pool_t = ptr::null_mut();
    // SAFETY: parent is live (caller); the allocator lives as long as the
    // process and its mutex makes it safe to use from any thread.
    let rv = unsafe { ffi::apr_pool_create_ex(&mut pool, parent, None, allocator) };
    if rv != 0 {
        return Err(rv);
    }
    // SAFETY: the pool was just created; the tag is a static C string, as
    // APR keeps the pointer.
    unsafe { ffi::apr_pool_tag(pool, tag.as_ptr()) };
    Ok(pool)
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
    fn strdup_edited_changes_the_copy_only() {
        let root = root_pool();
        // SAFETY: root is live and ours.
        let pool = unsafe { PoolRef::from_raw(root) }.expect("pool");
        let original = b"user-agent".to_vec();
        let copy = pool.strdup_edited(&original, |b| b.make_ascii_uppercase());
        // SAFETY: strdup_edited returns a NUL-terminated string in the live pool.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(copy) }.to_bytes(), b"USER-AGENT");
        assert_eq!(original, b"user-agent");
        // SAFETY: destroying the pool we created.
        unsafe { ffi::apr_pool_destroy(root) };
    }

    #[test]
    fn concat_joins_parts_with_a_nul() {
        let root = root_pool();
        // SAFETY: root is live and ours.
        let pool = unsafe { PoolRef::from_raw(root) }.expect("pool");
        let joined = pool.concat(&[b"GET", b" ", b"", b"/a?b", b" HTTP/2.0"]);
        // SAFETY: concat returns a NUL-terminated string in the live pool.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(joined) }.to_bytes(), b"GET /a?b HTTP/2.0");
        // SAFETY: as above.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(pool.concat(&[])) }.to_bytes(), b"");
        // SAFETY: destroying the pool we created.
        unsafe { ffi::apr_pool_destroy(root) };
    }

    #[test]
    fn threadsafe_pools_share_one_allocator_across_threads() {
        let root = root_pool();
        // SAFETY: root is live and ours.
        let first = unsafe { create_threadsafe(root, c"test") }.expect("pool");
        // SAFETY: both pools are live.
        let shared = unsafe { ffi::apr_pool_allocator_get(first) } as usize;
        assert_ne!(shared, 0);
        // SAFETY: destroying a pool we created.
        unsafe { ffi::apr_pool_destroy(first) };
        // Pools made, filled and destroyed on several threads at once, each
        // one's blocks going back to the shared allocator for the others.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let root = root_pool();
                    for i in 0..500 {
                        // SAFETY: root is this thread's; the sub-pool is
                        // used and destroyed here.
                        unsafe {
                            let p = create_threadsafe(root, c"test").expect("pool");
                            assert_eq!(ffi::apr_pool_allocator_get(p) as usize, shared);
                            // More than one 8 KiB block, so blocks are taken
                            // and given back.
                            let mem = ffi::apr_palloc(p, 20_000) as *mut u8;
                            std::ptr::write_bytes(mem, (t * 31 + i) as u8, 20_000);
                            assert_eq!(*mem.add(19_999), (t * 31 + i) as u8);
                            ffi::apr_pool_destroy(p);
                        }
                    }
                    // SAFETY: this thread's root pool, no sub-pools left.
                    unsafe { ffi::apr_pool_destroy(root) };
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        // SAFETY: ours, no sub-pools left.
        unsafe { ffi::apr_pool_destroy(root) };
    }

    #[test]
    fn attached_values_drop_with_the_pool() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let root = root_pool();
        // SAFETY: root is live and ours.
        let sub = unsafe { create_threadsafe(root, c"test") }.expect("pool");
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
