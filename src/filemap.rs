//! Read-only mappings of file regions: a large static file's DATA frames
//! are written to the socket straight from the page cache, not first
//! copied into a frame buffer (docs/INTERNALS.md "Static files").
//!
//! Only the kernel reads a mapping (the socket write). Read in user space,
//! a page past the end of a file that shrank meanwhile raises SIGBUS; the
//! kernel's copy fails the write with EFAULT instead, which ends the
//! connection as any failed write does.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// How much of a file one mapping covers at most. A window's pages count
/// in the child's RSS until it is unmapped: at 10 MiB `-c 4 -m 4`, 1 MiB
/// windows peaked 3 MiB above copying, 4 MiB ones (APR's APR_MMAP_LIMIT)
/// 13 MiB, for a few % less CPU (fewer unmappings).
pub const WINDOW: usize = 1 << 20;

/// A mapped region of a file, unmapped on drop.
#[derive(Debug)]
pub struct FileMap {
    base: NonNull<u8>,
    len: usize,
    /// The file offset of `base` (a multiple of the page size).
    offset: u64,
}

// SAFETY: a read-only mapping that nothing writes through; its address
// range is valid on any thread until drop unmaps it.
unsafe impl Send for FileMap {}
// SAFETY: as above: shared references only ever read.
unsafe impl Sync for FileMap {}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

impl FileMap {
    /// Maps `len` bytes of `file` from `offset` (and the part of the page
    /// before `offset`). `len` must be at least 1.
    pub fn new(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<FileMap> {
        let start = offset - offset % page_size();
        let map_len = (offset - start) as usize + len;
        if len == 0 || start > i64::MAX as u64 {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a new read-only shared mapping of an open descriptor;
        // the kernel picks the address, so nothing else is replaced.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(base as *mut u8).ok_or(std::io::ErrorKind::InvalidData)?;
        Ok(FileMap { base, len: map_len, offset: start })
    }

    /// Whether the file's bytes `offset..offset + len` are mapped.
    pub fn covers(&self, offset: u64, len: usize) -> bool {
        offset >= self.offset && offset + len as u64 <= self.offset + self.len as u64
    }

    /// The file's bytes `offset..offset + len` (covered, see `covers`):
    /// to hand to a socket write, not to read (see the module's comment).
    pub fn bytes(&self, offset: u64, len: usize) -> &[u8] {
        assert!(self.covers(offset, len), "region outside the mapping");
        let at = (offset - self.offset) as usize;
        // SAFETY: `at..at + len` lies within the live mapping (asserted).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(at), len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made in `new`, unmapped once;
        // no slice of it outlives `self` (they borrow it).
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_unaligned_regions() {
        let path = std::env::temp_dir().join(format!("h2rs-filemap-{}", std::process::id()));
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let map = FileMap::new(&file, 5_000, 12_000).unwrap();
        assert!(map.covers(5_000, 12_000));
        assert!(map.covers(4_096, 1));
        assert!(!map.covers(4_095, 1));
        assert!(!map.covers(16_000, 1_001));
        assert_eq!(map.bytes(5_000, 12_000), &data[5_000..17_000]);
        assert_eq!(map.bytes(9_999, 3), &data[9_999..10_002]);
        assert!(FileMap::new(&file, 0, 0).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
