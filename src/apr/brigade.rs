//! Brigades and buckets, through the shim's one-line macro helpers.
//!
//! Buckets belong to the bucket allocator of the connection that made them
//! and must be freed on the thread that currently owns that connection.
//! Bytes that cross to another thread are copied out first.

use crate::ffi;
use std::ffi::c_char;
use std::ptr::NonNull;

/// The region of a file a FILE bucket holds.
#[derive(Clone, Copy, Debug)]
pub struct FileBucket {
    /// Open as long as the bucket.
    pub fd: std::os::fd::RawFd,
    pub offset: u64,
    pub len: usize,
    /// The file may be mapped (`EnableMMAP` for its request).
    pub may_map: bool,
}

/// A borrowed brigade.
#[derive(Clone, Copy, Debug)]
pub struct BrigadeRef(NonNull<ffi::apr_bucket_brigade>);

/// A bucket inside a brigade (or removed from one and owned by the caller).
/// Not `Copy`: bytes read from it borrow it, and destroying consumes it.
#[derive(Debug)]
pub struct BucketRef(NonNull<ffi::apr_bucket>);

/// What a bucket is, as far as the module cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketKind(i32);

impl BucketKind {
    pub fn is_metadata(self) -> bool {
        self.0 & ffi::H2RS_BUCKET_METADATA as i32 != 0
    }
    pub fn is_eos(self) -> bool {
        self.0 & ffi::H2RS_BUCKET_EOS as i32 != 0
    }
    pub fn is_flush(self) -> bool {
        self.0 & ffi::H2RS_BUCKET_FLUSH as i32 != 0
    }
    pub fn is_eor(self) -> bool {
        self.0 & ffi::H2RS_BUCKET_EOR as i32 != 0
    }
    pub fn is_error(self) -> bool {
        self.0 & ffi::H2RS_BUCKET_ERROR as i32 != 0
    }
    pub fn is_file(self) -> bool {
        self.0 & ffi::H2RS_BUCKET_FILE as i32 != 0
    }
    pub fn is_eoc(self) -> bool {
        self.0 & ffi::H2RS_BUCKET_EOC as i32 != 0
    }
}

impl BrigadeRef {
    /// # Safety
    /// `bb` must be a live brigade owned by the calling thread while the
    /// handle is used.
    pub unsafe fn from_raw(bb: *mut ffi::apr_bucket_brigade) -> Option<BrigadeRef> {
        NonNull::new(bb).map(BrigadeRef)
    }

    /// A new brigade in `pool` using the allocator `alloc`.
    ///
    /// # Safety
    /// `pool` and `alloc` must be live and owned by the calling thread.
    pub unsafe fn create(pool: *mut ffi::apr_pool_t, alloc: *mut ffi::apr_bucket_alloc_t) -> BrigadeRef {
        // SAFETY: caller contract; apr_brigade_create never returns NULL.
        let bb = unsafe { ffi::apr_brigade_create(pool, alloc) };
        BrigadeRef(NonNull::new(bb).expect("apr_brigade_create returned NULL"))
    }

    pub fn as_ptr(self) -> *mut ffi::apr_bucket_brigade {
        self.0.as_ptr()
    }

    fn alloc(self) -> *mut ffi::apr_bucket_alloc_t {
        // SAFETY: the brigade is live (constructor contract).
        unsafe { (*self.as_ptr()).bucket_alloc }
    }

    pub fn is_empty(self) -> bool {
        // SAFETY: the brigade is live.
        unsafe { ffi::h2rs_shim_brigade_empty(self.as_ptr()) != 0 }
    }

    /// The first bucket, or None for an empty brigade.
    pub fn first(self) -> Option<BucketRef> {
        // SAFETY: the brigade is live; the sentinel marks the end.
        unsafe {
            let b = ffi::h2rs_shim_brigade_first(self.as_ptr());
            if b == ffi::h2rs_shim_brigade_sentinel(self.as_ptr()) {
                None
            } else {
                NonNull::new(b).map(BucketRef)
            }
        }
    }

    /// The bucket after `b` in this brigade, or None at the end.
    pub fn next(self, b: &BucketRef) -> Option<BucketRef> {
        // SAFETY: `b` is in this live brigade.
        unsafe {
            let n = ffi::h2rs_shim_bucket_next(b.0.as_ptr());
            if n == ffi::h2rs_shim_brigade_sentinel(self.as_ptr()) {
                None
            } else {
                NonNull::new(n).map(BucketRef)
            }
        }
    }

    /// Appends a heap bucket holding a copy of `data`.
    pub fn push_copy(self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // SAFETY: apr_bucket_heap_create copies `data` (free_func NULL) into
        // memory from the brigade's allocator; the brigade is live.
        unsafe {
            let b = ffi::apr_bucket_heap_create(
                data.as_ptr() as *const c_char,
                data.len() as ffi::apr_size_t,
                None,
                self.alloc(),
            );
            ffi::h2rs_shim_brigade_insert_tail(self.as_ptr(), b);
        }
    }

    /// Appends a transient bucket pointing at `data`: it must stay valid
    /// until the brigade has been passed on (filters set aside what they keep).
    pub fn push_transient(self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // SAFETY: the bucket references `data`, which the caller keeps alive
        // across the ap_pass_brigade call that consumes it.
        unsafe {
            let b = ffi::apr_bucket_transient_create(
                data.as_ptr() as *const c_char,
                data.len() as ffi::apr_size_t,
                self.alloc(),
            );
            ffi::h2rs_shim_brigade_insert_tail(self.as_ptr(), b);
        }
    }

    pub fn push_flush(self) {
        // SAFETY: a metadata bucket from the brigade's allocator.
        unsafe {
            let b = ffi::apr_bucket_flush_create(self.alloc());
            ffi::h2rs_shim_brigade_insert_tail(self.as_ptr(), b);
        }
    }

    pub fn push_eos(self) {
        // SAFETY: a metadata bucket from the brigade's allocator.
        unsafe {
            let b = ffi::apr_bucket_eos_create(self.alloc());
            ffi::h2rs_shim_brigade_insert_tail(self.as_ptr(), b);
        }
    }

    /// Appends `b` (which must not be in another brigade).
    pub fn push_bucket(self, b: BucketRef) {
        // SAFETY: `b` was removed from its brigade (caller), same allocator.
        unsafe { ffi::h2rs_shim_brigade_insert_tail(self.as_ptr(), b.0.as_ptr()) }
    }

    /// Destroys every bucket in the brigade.
    pub fn cleanup(self) {
        // SAFETY: the brigade is live and owned by this thread.
        unsafe {
            ffi::apr_brigade_cleanup(self.as_ptr() as *mut std::ffi::c_void);
        }
    }

    /// Total length of the data buckets (reads indeterminate ones).
    pub fn length(self) -> Result<u64, ffi::apr_status_t> {
        let mut len: ffi::apr_off_t = 0;
        // SAFETY: the brigade is live; read_all=1 resolves unknown lengths.
        let rv = unsafe { ffi::apr_brigade_length(self.as_ptr(), 1, &mut len) };
        if rv == 0 {
            Ok(len.max(0) as u64)
        } else {
            Err(rv)
        }
    }
}

impl BucketRef {
    pub fn as_ptr(&self) -> *mut ffi::apr_bucket {
        self.0.as_ptr()
    }

    pub fn kind(&self) -> BucketKind {
        // SAFETY: the bucket is live.
        BucketKind(unsafe { ffi::h2rs_shim_bucket_kind(self.as_ptr()) })
    }

    /// Length in bytes, or None while unknown (e.g. a pipe or CGI bucket).
    pub fn known_length(&self) -> Option<usize> {
        // SAFETY: the bucket is live.
        let len = unsafe { ffi::h2rs_shim_bucket_length(self.as_ptr()) };
        if len == ffi::apr_size_t::MAX {
            None
        } else {
            Some(len as usize)
        }
    }

    /// Reads the bucket's bytes. A blocking read of a bucket of unknown
    /// length morphs it into a heap bucket followed by the rest.
    pub fn read(&self, block: bool) -> Result<&[u8], ffi::apr_status_t> {
        let mut data: *const c_char = std::ptr::null();
        let mut len: ffi::apr_size_t = 0;
        let mode = if block { ffi::APR_BLOCK_READ } else { ffi::APR_NONBLOCK_READ };
        // SAFETY: the bucket is live; on success `data` points at `len`
        // bytes valid as long as the bucket (borrowed by the result).
        let rv = unsafe { ffi::h2rs_shim_bucket_read(self.as_ptr(), &mut data, &mut len, mode) };
        if rv != 0 {
            return Err(rv);
        }
        if len == 0 || data.is_null() {
            return Ok(&[]);
        }
        // SAFETY: see above.
        Ok(unsafe { std::slice::from_raw_parts(data as *const u8, len as usize) })
    }

    /// A FILE bucket's region of its file.
    pub fn file_region(&self) -> Option<FileBucket> {
        if !self.kind().is_file() {
            return None;
        }
        let mut file: *mut ffi::apr_file_t = std::ptr::null_mut();
        let mut offset: ffi::apr_off_t = 0;
        let mut len: ffi::apr_size_t = 0;
        let mut can_mmap: std::ffi::c_int = 0;
        let mut fd: ffi::apr_os_file_t = -1;
        // SAFETY: a FILE bucket (kind checked) holds an apr_file_t; the
        // descriptor stays open as long as the bucket.
        unsafe {
            ffi::h2rs_shim_file_bucket(self.as_ptr(), &mut file, &mut offset, &mut len, &mut can_mmap);
            if file.is_null() || ffi::apr_os_file_get(&mut fd, file) != 0 {
                return None;
            }
        }
        Some(FileBucket { fd, offset: offset.max(0) as u64, len: len as usize, may_map: can_mmap != 0 })
    }

    /// Splits the bucket so that it holds the first `at` bytes.
    pub fn split(&self, at: usize) -> Result<(), ffi::apr_status_t> {
        // SAFETY: the bucket is live and in a brigade.
        let rv = unsafe { ffi::h2rs_shim_bucket_split(self.as_ptr(), at as ffi::apr_size_t) };
        if rv == 0 {
            Ok(())
        } else {
            Err(rv)
        }
    }

    /// The HTTP status of an error bucket.
    pub fn error_status(&self) -> i32 {
        debug_assert!(self.kind().is_error());
        // SAFETY: only called on AP_BUCKET_IS_ERROR buckets (kind check).
        unsafe { ffi::h2rs_shim_error_bucket_status(self.as_ptr()) }
    }

    /// Takes the bucket out of its brigade; the caller now owns it.
    pub fn remove(&self) {
        // SAFETY: the bucket is live and linked in a brigade.
        unsafe { ffi::h2rs_shim_bucket_remove(self.as_ptr()) }
    }

    /// Removes and destroys the bucket.
    pub fn delete(self) {
        // SAFETY: the bucket is live and linked; consumed here.
        unsafe { ffi::h2rs_shim_bucket_delete(self.as_ptr()) }
    }

    /// Destroys a bucket that is no longer in any brigade.
    pub fn destroy(self) {
        // SAFETY: the caller removed the bucket; consumed here.
        unsafe { ffi::h2rs_shim_bucket_destroy(self.as_ptr()) }
    }

    /// # Safety
    /// `b` must be a live bucket owned by the calling thread.
    pub unsafe fn from_raw(b: *mut ffi::apr_bucket) -> Option<BucketRef> {
        NonNull::new(b).map(BucketRef)
    }
}
