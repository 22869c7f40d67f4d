//! Read-only mappings of file regions: a static file's DATA frames are
//! written to the socket straight from the page cache, not first copied
//! into a frame buffer (docs/INTERNALS.md "Static files"). A large file is
//! mapped in windows per response; a smaller one whole, kept for its next
//! responses (`cached`).
//!
//! Only the kernel reads a mapping (the socket write). Read in user space,
//! a page past the end of a file that shrank meanwhile raises SIGBUS; the
//! kernel's copy fails the write with EFAULT instead, which ends the
//! connection as any failed write does. (Bytes cut off within the new
//! last page read as zeros, as from httpd's own mappings.)

use parking_lot::Mutex;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Files up to this size (below `stream::MAP_AT_LEAST`, where a region is
/// sent from windows of its own) are mapped whole, once, and the mapping
/// kept for the next responses of the file (`cached`): mapping and
/// unmapping per response cost more than copying (0.53x HTTP/1.1's req/s
/// at 100 KiB), a kept mapping only the socket write's one copy.
pub const CACHED_MAX: u64 = 1 << 20;
/// At most this many files, and this many bytes of them, are kept mapped
/// in a child. Their pages are shared page cache, but count in the
/// child's RSS once a write has touched them.
const CACHED_FILES: usize = 64;
const CACHED_BYTES: usize = 8 << 20;
/// A kept mapping unused for this long is dropped, so that a file deleted
/// or replaced on disk is let go of soon (a mapping holds its inode).
const CACHED_IDLE: Duration = Duration::from_secs(5);

struct Cached {
    dev: u64,
    ino: u64,
    /// The file's status change time when it was mapped. On overlayfs a
    /// file keeps its device and inode number when a write copies it up
    /// from the image's layer, but the kept mapping still maps the lower
    /// file: without this, the old bytes were served for as long as the
    /// file was asked for every 5 s. A change of any kind moves it.
    changed: (i64, i64),
    map: Arc<FileMap>,
    used: Instant,
}

/// The child's kept mappings (`cached`), swept by the clock.
#[derive(Default)]
pub struct MapCache {
    entries: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    files: Vec<Cached>,
    bytes: usize,
    /// A sweep is scheduled on the clock.
    sweep_armed: bool,
}

static CACHE: once_cell::sync::Lazy<Arc<MapCache>> = once_cell::sync::Lazy::new(Default::default);

/// Makes the child's cache (child_init: not raced for by the first
/// connections).
pub fn child_init() {
    once_cell::sync::Lazy::force(&CACHE);
}

/// Lets go of every kept mapping (the child is stopping).
pub fn clear_cache() {
    let mut entries = CACHE.entries.lock();
    let removed = std::mem::take(&mut entries.files);
    entries.bytes = 0;
    drop(entries);
    drop(removed);
}

/// A mapping of the whole of `file` (at most `CACHED_MAX`) that covers
/// its bytes up to `end`: the child's kept one, or a new one, kept. None
/// when the file is larger, shorter than `end`, or cannot be mapped.
pub fn cached(file: &std::fs::File, end: u64) -> Option<Arc<FileMap>> {
    CACHE.get(file, end, Instant::now())
}

impl MapCache {
    fn get(self: &Arc<Self>, file: &std::fs::File, end: u64, now: Instant) -> Option<Arc<FileMap>> {
        use std::os::unix::fs::MetadataExt;
        // The file as it is now: one that shrank below `end` is not mapped
        // (its region is copied, and the short read resets only its
        // stream); one that grew past a kept mapping is mapped again.
        let meta = file.metadata().ok()?;
        let size = meta.len();
        if end == 0 || size < end || size > CACHED_MAX {
            return None;
        }
        let (dev, ino, changed) = (meta.dev(), meta.ino(), (meta.ctime(), meta.ctime_nsec()));
        let mut entries = self.entries.lock();
        if let Some(c) = entries.files.iter_mut().find(|c| c.dev == dev && c.ino == ino) {
            if c.changed == changed && c.map.covers(0, end as usize) {
                c.used = now;
                return Some(c.map.clone());
            }
        }
        drop(entries);
        let map = Arc::new(FileMap::new(file, 0, size as usize).ok()?);
        // The entries removed here are dropped (unmapped, if nothing else
        // holds them) after the lock is released: an unmapping waits for
        // the other CPUs' TLB flushes, and lookups should not.
        let mut removed = Vec::new();
        let mut entries = self.entries.lock();
        entries.remove_where(|c| c.dev == dev && c.ino == ino, &mut removed);
        while !entries.files.is_empty()
            && (entries.files.len() >= CACHED_FILES || entries.bytes + map.len > CACHED_BYTES)
        {
            entries.evict_least_recent(&mut removed);
        }
        entries.bytes += map.len;
        entries.files.push(Cached { dev, ino, changed, map: map.clone(), used: now });
        if !entries.sweep_armed {
            entries.sweep_armed = crate::clock::schedule(self, CACHED_IDLE, 0);
        }
        drop(entries);
        drop(removed);
        Some(map)
    }

    /// Drops the mappings unused since `CACHED_IDLE` before `now` (after
    /// releasing the lock, as `get` does); true while some are left.
    fn sweep(&self, now: Instant) -> bool {
        let mut removed = Vec::new();
        let mut entries = self.entries.lock();
        entries.remove_where(|c| now.duration_since(c.used) >= CACHED_IDLE, &mut removed);
        entries.sweep_armed = !entries.files.is_empty();
        let left = entries.sweep_armed;
        drop(entries);
        drop(removed);
        left
    }
}

impl CacheEntries {
    /// Moves the entries `gone` picks to `removed`.
    fn remove_where(&mut self, mut gone: impl FnMut(&Cached) -> bool, removed: &mut Vec<Cached>) {
        let from = removed.len();
        removed.extend(self.files.extract_if(.., |c| gone(c)));
        self.bytes -= removed[from..].iter().map(|c| c.map.len).sum::<usize>();
    }

    /// Moves the least recently used entry to `removed`.
    fn evict_least_recent(&mut self, removed: &mut Vec<Cached>) {
        if let Some(i) = self.files.iter().enumerate().min_by_key(|(_, c)| c.used).map(|(i, _)| i) {
            let c = self.files.swap_remove(i);
            self.bytes -= c.map.len;
            removed.push(c);
        }
    }
}

impl crate::clock::Alarm for MapCache {
    fn ring(self: Arc<Self>, _kind: u8) {
        if self.sweep(Instant::now()) {
            // Re-armed under `sweep`'s flag: the next sweep comes one idle
            // period later (an entry may live up to twice CACHED_IDLE).
            if !crate::clock::schedule(&self, CACHED_IDLE, 0) {
                self.entries.lock().sweep_armed = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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

    fn temp_file(tag: &str, len: usize) -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!("h2rs-mapcache-{tag}-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn a_kept_mapping_serves_its_file_until_the_file_grows_or_shrinks() {
        let cache = Arc::new(MapCache::default());
        let now = Instant::now();
        let (path, file) = temp_file("grow", 20_000);
        let first = cache.get(&file, 20_000, now).unwrap();
        assert!(first.covers(0, 20_000) && !first.covers(0, 20_001));
        let again = cache.get(&std::fs::File::open(&path).unwrap(), 5_000, now).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same file, another descriptor: the kept mapping");
        // Grown: mapped again, and the new mapping replaces the old one.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&[8u8; 10_000]).unwrap();
        let grown = cache.get(&file, 30_000, now).unwrap();
        assert!(!Arc::ptr_eq(&first, &grown) && grown.covers(0, 30_000));
        assert_eq!(grown.bytes(29_999, 1), [8]);
        assert_eq!(cache.entries.lock().files.len(), 1);
        assert_eq!(cache.entries.lock().bytes, 30_000);
        // Shrunk below the region's end: not mapped (copied, and the short
        // read resets only its stream).
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(10_000).unwrap();
        assert!(cache.get(&file, 30_000, now).is_none());
        // Too large to keep, or an empty region.
        let (big_path, big) = temp_file("big", CACHED_MAX as usize + 1);
        assert!(cache.get(&big, 100, now).is_none());
        assert!(cache.get(&file, 0, now).is_none());
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&big_path).unwrap();
    }

    #[test]
    fn kept_mappings_are_bounded_and_dropped_when_idle() {
        let cache = Arc::new(MapCache::default());
        let start = Instant::now();
        let files: Vec<_> = (0..CACHED_FILES + 1).map(|i| temp_file(&format!("n{i}"), 4_096)).collect();
        for (i, (_, f)) in files.iter().enumerate() {
            cache.get(f, 4_096, start + Duration::from_millis(i as u64)).unwrap();
        }
        // The least recently used (the first) made room for the last.
        {
            let entries = cache.entries.lock();
            assert_eq!(entries.files.len(), CACHED_FILES);
            assert_eq!(entries.bytes, CACHED_FILES * 4_096);
        }
        let first = cache.get(&files[0].1, 4_096, start + Duration::from_secs(1)).unwrap();
        let again = cache.get(&files[0].1, 4_096, start + Duration::from_secs(1)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // Bytes bound: a file of nearly CACHED_BYTES leaves room for little else.
        let (big_path, big) = temp_file("bytes", CACHED_MAX as usize);
        for _ in 0..CACHED_BYTES / CACHED_MAX as usize {
            cache.get(&big, 1, start + Duration::from_secs(2)).unwrap();
        }
        assert!(cache.entries.lock().bytes <= CACHED_BYTES);
        // Idle ones go; the one used later stays until it is idle too.
        assert!(cache.sweep(start + Duration::from_secs(1) + CACHED_IDLE));
        assert_eq!(cache.entries.lock().files.len(), 1);
        assert!(!cache.sweep(start + Duration::from_secs(2) + CACHED_IDLE));
        assert_eq!(cache.entries.lock().bytes, 0);
        assert!(Arc::strong_count(&first) == 2, "a mapping in use outlives its entry");
        for (path, _) in &files {
            std::fs::remove_file(path).unwrap();
        }
        std::fs::remove_file(&big_path).unwrap();
    }
}
