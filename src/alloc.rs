//! The allocator of the module's own Rust code (its `#[global_allocator]`)
//! and of its nghttp2 sessions (`nghttp2_mem`) in a child process: small
//! objects (up to `MAX_SMALL` bytes), and nghttp2's 16 KiB frame buffers,
//! come from size-class slabs shared by all threads; blocks of the Rust
//! code of 128 KiB or more are mappings of their own (`MAPPED_MIN`);
//! everything else, and small objects before `enable_in_child`, goes to
//! glibc's malloc. APR and httpd keep their allocators.
//!
//! Why: a session moves between the MPM's threads from one event to the
//! next, and its objects are freed on whichever thread ends them. glibc
//! keeps freed small chunks in per-thread caches and per-thread arenas,
//! so with 64 threads per child the heap fragmented and RSS grew with
//! uptime (28 MiB after 100,000 requests, 33-34 after two million, still
//! rising; HTTP/1.1 flat, see docs/INTERNALS.md "Heap: growth with
//! uptime"). Here a freed chunk goes back to the slab it came from, under
//! its size class's lock, and is reused by whichever thread asks next; a
//! slab whose chunks are all free gives its pages back to the kernel
//! (`MADV_DONTNEED`), so memory an attack made the sessions hold is
//! returned when they end.
//!
//! Layout: one region of address space reserved at child start
//! (`REGION_BYTES`, no memory committed until touched), cut into slabs of
//! `SLAB_BYTES`. A slab serves one size class at a time; its header holds
//! the class, the count of live chunks, its own free list and links in the
//! class's list of slabs with room. The headers sit in a table of their own
//! before the first slab (64 to a page), so chunks start at a slab's first
//! byte: the frame buffers' class has page-aligned chunks that own their
//! pages (see `discard_frame_buffer`). A slab emptied while its class has
//! another slab with room is released to a shared stack of free slabs,
//! which any class may take again.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Largest size served from slabs. glibc's per-thread cache takes chunks
/// up to 1,032 bytes; larger ones go to its shared bins anyway.
const MAX_SMALL: usize = 1024;
const SLAB_BYTES: usize = 64 * 1024;
const PAGE_BYTES: usize = 4096;
/// A slab's header in the header table (one cache line).
const HEADER_BYTES: usize = 64;
/// Address space reserved per child: 4,096 slabs. Only touched pages
/// cost memory; past the end, allocations fall back to malloc.
const REGION_BYTES: usize = 256 << 20;
const MAX_SLABS: usize = REGION_BYTES / SLAB_BYTES;
/// Before the first slab: the slab headers, then the free stack's links
/// (`free_next`), in whole slabs so that `base` stays slab-aligned.
const HEADER_TABLE_BYTES: usize = MAX_SLABS * HEADER_BYTES;
const META_BYTES: usize = (HEADER_TABLE_BYTES + MAX_SLABS * 4).next_multiple_of(SLAB_BYTES);
const NONE: usize = usize::MAX;

/// Chunk sizes: 16-byte steps to 128, then four classes per doubling (at
/// most a fifth of a chunk unused); the last class is nghttp2's frame
/// buffers' alone (`FRAME_BUF_CLASS`), five pages each.
const CLASS_SIZES: [usize; 21] =
    [16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 5 * PAGE_BYTES];
const CLASSES: usize = CLASS_SIZES.len();

/// The class of the buffer every nghttp2 session allocates for the frames
/// it serializes: 16,394 bytes (a frame header, a padding length and the
/// largest payload), for the life of the connection. nghttp2 writes only
/// what each frame needs, mostly small HEADERS frames, so only the first
/// page of it is touched. From malloc it cost two resident pages per busy
/// connection (glibc's headers before and after it; measured: 202 of the
/// 500 pages of 100 busy connections' buffers resident), here one. Each
/// chunk is five whole pages that hold nothing else, so a session idle
/// for a while gives its page back (`discard_frame_buffer`); three fit in
/// a slab, and the rest of each chunk is address space never touched.
const FRAME_BUF_CLASS: usize = CLASSES - 1;
/// The sizes of nghttp2's allocations that go to `FRAME_BUF_CLASS` (of
/// nghttp2's, only its frame buffers have them; the Rust code's
/// allocations never come here).
const FRAME_BUF_SIZES: std::ops::RangeInclusive<usize> = 16 * 1024 + 1..=16_400;
const _: () = assert!(3 * CLASS_SIZES[FRAME_BUF_CLASS] <= SLAB_BYTES);
const _: () = assert!(*FRAME_BUF_SIZES.end() <= CLASS_SIZES[FRAME_BUF_CLASS]);

/// Class index for a size, by `(size + 15) / 16` (1..=64).
const CLASS_OF: [u8; MAX_SMALL / 16 + 1] = {
    let mut table = [0u8; MAX_SMALL / 16 + 1];
    let mut units = 1;
    while units <= MAX_SMALL / 16 {
        let mut c = 0;
        while CLASS_SIZES[c] < units * 16 {
            c += 1;
        }
        table[units] = c as u8;
        units += 1;
    }
    table
};

#[repr(C)]
struct SlabHeader {
    class: usize,
    live: usize,
    /// Freed chunks of this slab (each holds the next one's address).
    free: *mut u8,
    /// Offset of the first chunk never handed out.
    bump: usize,
    /// Links in the class's list of slabs with room (slab indexes;
    /// `NONE` ends the list).
    next: usize,
    prev: usize,
}

const _: () = assert!(std::mem::size_of::<SlabHeader>() <= HEADER_BYTES);

impl SlabHeader {
    /// No freed chunk, and no room at the end for another of `chunk` bytes:
    /// such a slab is off its class's list of slabs with room.
    fn is_full(&self, chunk: usize) -> bool {
        self.free.is_null() && self.bump + chunk > SLAB_BYTES
    }
}

struct ClassState {
    /// Slabs of this class with at least one free chunk.
    with_room: usize,
}

/// A class's lock on a cache line of its own: the two CPUs' allocations
/// of different sizes do not contend for one line.
#[repr(align(64))]
struct ClassLock(Mutex<ClassState>);

struct FreeSlabs {
    /// Released slabs, reusable by any class; linked through the array
    /// of next indexes in the region's first slab (`free_next`), so that a
    /// released slab keeps no page.
    stack: usize,
    /// Slabs never used yet: `fresh..count`.
    fresh: usize,
}

/// Size-class slabs over one region of address space.
struct Slabs {
    base: AtomicUsize,
    count: AtomicUsize,
    classes: [ClassLock; CLASSES],
    free_slabs: Mutex<FreeSlabs>,
}

impl Slabs {
    const fn new() -> Slabs {
        Slabs {
            base: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            classes: [const { ClassLock(Mutex::new(ClassState { with_room: NONE })) }; CLASSES],
            free_slabs: Mutex::new(FreeSlabs { stack: NONE, fresh: 0 }),
        }
    }

    /// Takes `bytes` of address space for the slabs (reserved, not
    /// committed). Once only; false if the mapping failed.
    fn reserve(&self, bytes: usize) -> bool {
        if self.base.load(Ordering::Acquire) != 0 {
            return true;
        }
        // The header table and the free stack's links, and one slab for
        // the alignment.
        let len = bytes + META_BYTES + SLAB_BYTES;
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choice; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        // Named in /proc/PID/maps as "[anon:mod_h2rs slabs]" where the
        // kernel can (5.17+ with CONFIG_ANON_VMA_NAME); a name also keeps
        // the kernel from merging the mapping with a neighbour.
        // SAFETY: names our own mapping; the name is a static C string.
        unsafe {
            libc::prctl(
                libc::PR_SET_VMA,
                libc::PR_SET_VMA_ANON_NAME as libc::c_ulong,
                p as libc::c_ulong,
                len as libc::c_ulong,
                c"mod_h2rs slabs".as_ptr() as libc::c_ulong,
            );
        }
        // Slabs start at a multiple of their size, so a chunk finds its
        // slab by rounding down. The slack before and after is never used;
        // the META_BYTES before `base` hold the headers and `free_next`.
        let base = (p as usize).next_multiple_of(SLAB_BYTES) + META_BYTES;
        self.count.store((bytes / SLAB_BYTES).min(MAX_SLABS), Ordering::Relaxed);
        self.base.store(base, Ordering::Release);
        true
    }

    fn owns(&self, p: *mut u8) -> bool {
        let base = self.base.load(Ordering::Acquire);
        let addr = p as usize;
        base != 0 && addr >= base && addr < base + self.count.load(Ordering::Relaxed) * SLAB_BYTES
    }

    /// The slab a chunk of this instance lies in.
    fn slab_of(&self, p: *mut u8) -> usize {
        (p as usize - self.base.load(Ordering::Relaxed)) / SLAB_BYTES
    }

    /// The first byte of a slab (its first chunk).
    fn start(&self, slab: usize) -> *mut u8 {
        (self.base.load(Ordering::Relaxed) + slab * SLAB_BYTES) as *mut u8
    }

    /// A slab's header, in the table before the first slab.
    fn header(&self, slab: usize) -> *mut SlabHeader {
        (self.base.load(Ordering::Relaxed) - META_BYTES + slab * HEADER_BYTES) as *mut SlabHeader
    }

    /// The free stack's link of `slab`: an array after the header table
    /// (zero pages until written, in no process's data segment).
    fn free_next(&self, slab: usize) -> &AtomicU32 {
        let links = (self.base.load(Ordering::Relaxed) - META_BYTES + HEADER_TABLE_BYTES) as *const AtomicU32;
        // SAFETY: `slab` < MAX_SLABS, and MAX_SLABS links fit in the
        // META_BYTES reserved before `base` inside our mapping, which lives
        // as long as the process; AtomicU32 has u32's layout and any bits
        // are valid.
        unsafe { &*links.add(slab) }
    }

    fn lock_class(&self, class: usize) -> std::sync::MutexGuard<'_, ClassState> {
        // Nothing panics while a lock is held; a poisoned lock is usable.
        self.classes[class].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A chunk of at least `size` bytes (16 for 0), 16-aligned; None for
    /// more than MAX_SMALL bytes, or when the region is not reserved or is
    /// used up.
    fn alloc(&self, size: usize) -> Option<*mut u8> {
        if size > MAX_SMALL {
            return None;
        }
        self.alloc_class(CLASS_OF[size.div_ceil(16)] as usize)
    }

    /// A chunk of `class`; None when the region is not reserved or is used
    /// up.
    ///
    /// The common case, a chunk from the free list of the class's first
    /// slab with room, is kept short here (a new connection makes ~60
    /// allocations, a request ~9); the rest is `alloc_uncommon`.
    fn alloc_class(&self, class: usize) -> Option<*mut u8> {
        if self.base.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut state = self.lock_class(class);
        let slab = state.with_room;
        if slab != NONE {
            let h = self.header(slab);
            // SAFETY: the slab is in this class's list, whose headers and
            // free chunks only this class's lock holder touches; a free
            // chunk holds the address of the next one.
            unsafe {
                let p = (*h).free;
                if !p.is_null() {
                    let next = *(p as *mut *mut u8);
                    (*h).free = next;
                    (*h).live += 1;
                    if (*h).is_full(CLASS_SIZES[class]) {
                        self.unlink(&mut state, slab);
                    }
                    return Some(p);
                }
            }
        }
        self.alloc_uncommon(&mut state, class)
    }

    /// `alloc_class` when the class has no slab with room (a slab is
    /// taken for it), or its first slab with room has no freed chunk: a
    /// chunk never handed out is cut from the slab's end.
    #[cold]
    #[inline(never)]
    fn alloc_uncommon(&self, state: &mut ClassState, class: usize) -> Option<*mut u8> {
        let chunk = CLASS_SIZES[class];
        if state.with_room == NONE {
            let slab = self.take_slab()?;
            // SAFETY: a slab just taken belongs to no class and no list;
            // its header is ours to initialize (under the class lock).
            unsafe {
                self.header(slab).write(SlabHeader {
                    class,
                    live: 0,
                    free: ptr::null_mut(),
                    bump: 0,
                    next: NONE,
                    prev: NONE,
                });
            }
            state.with_room = slab;
        }
        let slab = state.with_room;
        let h = self.header(slab);
        // SAFETY: the slab is in this class's list, whose headers and free
        // chunks only this class's lock holder touches. It has no freed
        // chunk (`alloc_class` looked), so being on the list it has room
        // at its end.
        unsafe {
            debug_assert!((*h).free.is_null() && !(*h).is_full(chunk));
            let p = self.start(slab).add((*h).bump);
            (*h).bump += chunk;
            (*h).live += 1;
            if (*h).is_full(chunk) {
                self.unlink(state, slab);
            }
            Some(p)
        }
    }

    /// Gives back a chunk `alloc` returned.
    ///
    /// # Safety
    /// `p` came from this instance's `alloc` and is not used afterwards.
    unsafe fn dealloc(&self, p: *mut u8) {
        let slab = self.slab_of(p);
        let h = self.header(slab);
        // SAFETY: `p` is live, so its slab is assigned to a class that
        // stays fixed until the chunk is freed; the write that set it
        // happened before the allocation handed `p` out.
        let class = unsafe { (*h).class };
        let chunk = CLASS_SIZES[class];
        let mut state = self.lock_class(class);
        // SAFETY: under the class lock, as in `alloc`.
        unsafe {
            let was_full = (*h).is_full(chunk);
            *(p as *mut *mut u8) = (*h).free;
            (*h).free = p;
            (*h).live -= 1;
            if was_full || (*h).live == 0 {
                self.relink_after_free(&mut state, slab, was_full);
            }
        }
    }

    /// After a free in `slab`: a slab that was full has room again and goes
    /// to the front of its class's list; an empty slab goes back to the
    /// shared stack unless it is its class's only slab with room (which
    /// would be taken again at the class's next allocation).
    #[cold]
    #[inline(never)]
    fn relink_after_free(&self, state: &mut ClassState, slab: usize, was_full: bool) {
        if was_full {
            self.push_front(state, slab);
        }
        let h = self.header(slab);
        // SAFETY: caller holds the class lock; the header is this class's.
        if unsafe { (*h).live } == 0 && !(state.with_room == slab && unsafe { (*h).next } == NONE) {
            self.unlink(state, slab);
            self.release_slab(slab);
        }
    }

    fn push_front(&self, state: &mut ClassState, slab: usize) {
        let h = self.header(slab);
        // SAFETY: caller holds the class lock; the headers are this class's.
        unsafe {
            (*h).prev = NONE;
            (*h).next = state.with_room;
            if state.with_room != NONE {
                (*self.header(state.with_room)).prev = slab;
            }
        }
        state.with_room = slab;
    }

    fn unlink(&self, state: &mut ClassState, slab: usize) {
        let h = self.header(slab);
        // SAFETY: as in push_front; `slab` is in the class's list.
        unsafe {
            let (prev, next) = ((*h).prev, (*h).next);
            if prev == NONE {
                state.with_room = next;
            } else {
                (*self.header(prev)).next = next;
            }
            if next != NONE {
                (*self.header(next)).prev = prev;
            }
            (*h).prev = NONE;
            (*h).next = NONE;
        }
    }

    fn take_slab(&self) -> Option<usize> {
        let mut free = self.free_slabs.lock().unwrap_or_else(|e| e.into_inner());
        if free.stack != NONE {
            let slab = free.stack;
            let next = self.free_next(slab).load(Ordering::Relaxed);
            free.stack = if next == u32::MAX { NONE } else { next as usize };
            return Some(slab);
        }
        if free.fresh < self.count.load(Ordering::Relaxed) {
            free.fresh += 1;
            return Some(free.fresh - 1);
        }
        None
    }

    /// Returns an empty slab's pages to the kernel and puts it on the
    /// shared stack.
    fn release_slab(&self, slab: usize) {
        // SAFETY: the slab has no live chunk and is in no class's list; the
        // range lies inside our mapping. MADV_DONTNEED on private anonymous
        // memory leaves zero pages behind, which the next use faults in.
        unsafe {
            libc::madvise(self.start(slab) as *mut libc::c_void, SLAB_BYTES, libc::MADV_DONTNEED);
        }
        let mut free = self.free_slabs.lock().unwrap_or_else(|e| e.into_inner());
        let next = if free.stack == NONE { u32::MAX } else { free.stack as u32 };
        self.free_next(slab).store(next, Ordering::Relaxed);
        free.stack = slab;
    }

    /// Gives the pages of a live frame buffer back to the kernel; they read
    /// as zeros when touched again. False (and nothing done) for a pointer
    /// that is not a chunk of `FRAME_BUF_CLASS`.
    ///
    /// # Safety
    /// `p` is a live chunk of this instance whose contents nobody needs.
    unsafe fn discard(&self, p: *mut u8) -> bool {
        if !self.owns(p) {
            return false;
        }
        // SAFETY: as in `dealloc` (caller: `p` is live).
        if unsafe { (*self.header(self.slab_of(p))).class } != FRAME_BUF_CLASS {
            return false;
        }
        // The chunks own whole pages of 4 KiB. On a kernel with larger
        // pages (16 or 64 KiB on some arm64 systems) madvise would round
        // the range up and zero the neighbouring chunks, other sessions'
        // live frame buffers.
        // SAFETY: sysconf has no preconditions.
        if unsafe { libc::sysconf(libc::_SC_PAGESIZE) } != PAGE_BYTES as libc::c_long {
            return false;
        }
        debug_assert_eq!(p as usize % PAGE_BYTES, 0);
        // SAFETY: the chunk's whole pages are its own (page-aligned, five
        // pages, nothing else in them) and inside our mapping; MADV_DONTNEED
        // on private anonymous memory leaves zero pages behind.
        unsafe {
            libc::madvise(p as *mut libc::c_void, CLASS_SIZES[FRAME_BUF_CLASS], libc::MADV_DONTNEED);
        }
        true
    }

    /// The chunk size of a chunk this instance handed out.
    ///
    /// # Safety
    /// As for `dealloc`: `p` is a live chunk of this instance.
    unsafe fn chunk_size(&self, p: *mut u8) -> usize {
        let slab = self.slab_of(p);
        // SAFETY: as in `dealloc`.
        CLASS_SIZES[unsafe { (*self.header(slab)).class }]
    }
}

static SLABS: Slabs = Slabs::new();

/// Switches the module's small allocations to slabs. Called once in
/// `child_init`, before the child's threads start: the parent never uses
/// the slabs, so nothing of them is left behind when httpd unloads the
/// module on a restart. Objects allocated before keep going back to malloc.
pub fn enable_in_child() -> bool {
    SLABS.reserve(REGION_BYTES)
}

/// The module's global allocator (see the module doc).
pub struct ModuleAlloc;

/// Slab chunks are 16-aligned: a layout that needs more goes to malloc.
fn small(layout: &Layout) -> bool {
    layout.align() <= 16
}

/// Allocations of at least this size get a mapping of their own, given
/// back to the kernel when freed: c1's frame buffers (`c1::FRAME_BUFS`,
/// 144 KiB) above all. glibc maps such blocks too, until the first is
/// freed: then it raises its threshold past that size for good, and the
/// frame buffers came from its arenas, where each of the 16 arenas (8 per
/// CPU) kept the most it ever held of them. Measured at 100 KiB `-c 50
/// -m 10` (smaps of all processes at the peak): the arenas' mappings 13
/// MiB against HTTP/1.1's 2.5. Few such blocks are made: the frame buffers
/// are reused, about one is made per 250 taken.
const MAPPED_MIN: usize = 128 * 1024;

/// Where a mapped block starts in its first page. The kernel copies into
/// and out of these blocks (`pread` of file pages into a frame buffer, the
/// socket write out of it) with `rep movsb`, which on this machine's AMD
/// EPYC is 3-6x slower when the destination lies 1-31 bytes past the
/// source modulo a page (measured: a 16 KiB `pread` of a cached file 1.7 µs,
/// 10.1 µs into a destination 9-25 bytes into a page; a 128 KiB socket
/// write 40 µs, 123 µs from 8 bytes before a page's end, where the
/// kernel's page fragment starts). File pages and fresh page fragments
/// start at a page; a frame buffer's DATA payloads sit 9 bytes after each
/// frame header, a few dozen bytes into the buffer. Page-aligned, the
/// buffers doubled the share of the `pread` copy in a profile of 100 KiB
/// files; half a page in, neither copy comes near the window.
const MAPPED_OFFSET: usize = PAGE_BYTES / 2;

fn mapped(layout: &Layout) -> bool {
    layout.size() >= MAPPED_MIN && layout.align() <= MAPPED_OFFSET
}

/// The length of the mapping of a block of `size` bytes.
fn mapping_len(size: usize) -> usize {
    (MAPPED_OFFSET + size).next_multiple_of(PAGE_BYTES)
}

/// A block of `size` bytes in a mapping of its own, `MAPPED_OFFSET` into
/// it, zeroed; null on failure.
fn map_block(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choice; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            mapping_len(size),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    // SAFETY: the mapping is longer than MAPPED_OFFSET.
    unsafe { (p as *mut u8).add(MAPPED_OFFSET) }
}

/// Resizes a block of `map_block(size)` to `new_size` bytes (its mapping
/// moved if need be, the contents kept); null on failure, the block then
/// unchanged.
///
/// # Safety
/// `p` came from `map_block(size)` (or this function, resized to `size`).
unsafe fn remap_block(p: *mut u8, size: usize, new_size: usize) -> *mut u8 {
    // SAFETY: the caller's contract: p is MAPPED_OFFSET into our mapping of
    // mapping_len(size) bytes, which mremap moves or resizes whole.
    let q = unsafe {
        libc::mremap(
            p.sub(MAPPED_OFFSET) as *mut libc::c_void,
            mapping_len(size),
            mapping_len(new_size),
            libc::MREMAP_MAYMOVE,
        )
    };
    if q == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    // SAFETY: as in map_block.
    unsafe { (q as *mut u8).add(MAPPED_OFFSET) }
}

/// Gives back a block of `map_block(size)`.
///
/// # Safety
/// `p` came from `map_block(size)` (or `remap_block` to `size`) and is not
/// used again.
unsafe fn unmap_block(p: *mut u8, size: usize) {
    // SAFETY: the caller's contract: our whole mapping, no longer used.
    unsafe { libc::munmap(p.sub(MAPPED_OFFSET) as *mut libc::c_void, mapping_len(size)) };
}

// SAFETY: every pointer handed out is either a slab chunk of at least the
// layout's size and 16-aligned (layouts needing more alignment never go to
// slabs), a mapping of its own for a `mapped` layout, or comes from
// `System` with the same layout; `owns` tells slab chunks apart by
// address, and the layout (which the caller passes back unchanged) the
// mappings from `System`'s blocks, so each goes back where it came from.
unsafe impl GlobalAlloc for ModuleAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if small(&layout) {
            if let Some(p) = SLABS.alloc(layout.size()) {
                return p;
            }
        }
        if mapped(&layout) {
            return map_block(layout.size());
        }
        // SAFETY: caller's contract (non-zero size) passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if small(&layout) {
            if let Some(p) = SLABS.alloc(layout.size()) {
                // SAFETY: the chunk has at least layout.size() bytes.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
                return p;
            }
        }
        if mapped(&layout) {
            // A new anonymous mapping is zeroed.
            return map_block(layout.size());
        }
        // SAFETY: as in alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if SLABS.owns(p) {
            // SAFETY: caller's contract: p is live and ours.
            unsafe { SLABS.dealloc(p) }
        } else if mapped(&layout) {
            // SAFETY: not a slab chunk, and of a mapped layout: alloc
            // mapped it for this size.
            unsafe { unmap_block(p, layout.size()) }
        } else {
            // SAFETY: not a slab chunk, so System handed it out with this layout.
            unsafe { System.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the new layout is valid (the caller guarantees new_size
        // does not overflow isize with this alignment).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if SLABS.owns(p) {
            // SAFETY: p is a live slab chunk.
            if new_size <= unsafe { SLABS.chunk_size(p) } {
                return p;
            }
        } else if mapped(&layout) && mapped(&new_layout) {
            // SAFETY: not a slab chunk, and of a mapped layout: alloc
            // mapped it for this size (as in dealloc).
            return unsafe { remap_block(p, layout.size(), new_size) };
        } else if !mapped(&layout) && !mapped(&new_layout) {
            // SAFETY: caller's contract; System's pointer with its layout,
            // and a new size System serves as well.
            return unsafe { System.realloc(p, layout, new_size) };
        }
        // From one kind of block to another: a new block, the contents
        // copied, the old one freed where it came from.
        // SAFETY: both blocks are live for the copy of the old contents
        // (at most the smaller size); p goes back by its own layout.
        unsafe {
            let q = self.alloc(new_layout);
            if !q.is_null() {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
            q
        }
    }
}

/// nghttp2's allocator (`nghttp2_mem`): its small objects (streams,
/// queued frames, HPACK table entries) come from the same slabs as the
/// Rust code's, its frame buffer from a class of its own
/// (`FRAME_BUF_CLASS`); larger ones (the session) from malloc.
pub mod nghttp2_mem {
    use super::{ptr, FRAME_BUF_CLASS, FRAME_BUF_SIZES, SLABS};
    use crate::ffi::panic::guard;
    use libc::{c_void, size_t};
    use std::cell::Cell;

    /// A session's frame buffer as its allocator hooks see it: the user
    /// data of the session's `nghttp2_mem`, so that the session can give
    /// the buffer's pages back while it is idle (`discard_frame_buffer`).
    #[derive(Debug, Default)]
    pub struct FrameBufWatch {
        /// The frame buffer nghttp2 allocated while the session was made,
        /// as long as it lives (0 once nghttp2 freed or moved it).
        buf: Cell<usize>,
        /// The session is being made: its first allocation of a frame
        /// buffer's size is the frame buffer.
        capturing: Cell<bool>,
    }

    impl FrameBufWatch {
        /// Brackets the making of the session.
        pub fn capture(&self, on: bool) {
            self.capturing.set(on);
        }

        fn allocated(&self, p: *mut c_void, size: size_t) {
            if self.capturing.get() && self.buf.get() == 0 && FRAME_BUF_SIZES.contains(&size) {
                self.buf.set(p as usize);
            }
        }

        fn released(&self, p: *mut c_void) {
            if self.buf.get() == p as usize {
                self.buf.set(0);
            }
        }

        #[cfg(test)]
        pub fn is_set(&self) -> bool {
            self.buf.get() != 0
        }
    }

    /// The watch a hook's user data points at, if any.
    ///
    /// # Safety
    /// `user` is null or the `FrameBufWatch` of the calling session, which
    /// outlives the session.
    unsafe fn watch<'a>(user: *mut c_void) -> Option<&'a FrameBufWatch> {
        // SAFETY: caller's contract.
        unsafe { (user as *const FrameBufWatch).as_ref() }
    }

    /// Gives the pages of the session's frame buffer back to the kernel
    /// (they are faulted in again, zeroed, by the next frame). True if
    /// there was a slab buffer to discard.
    ///
    /// # Safety
    /// Nothing of the buffer is needed: the session has no frame in flight
    /// (nghttp2 resets the buffer before it serializes the next one), and
    /// no other thread uses the session meanwhile.
    pub unsafe fn discard_frame_buffer(watch: &FrameBufWatch) -> bool {
        let p = watch.buf.get() as *mut u8;
        // SAFETY: a live chunk (the watch forgets it when nghttp2 frees or
        // moves it) whose contents are not needed (caller).
        !p.is_null() && unsafe { SLABS.discard(p) }
    }

    /// nghttp2 frees without a size, so each entry point tells a slab chunk
    /// from malloc's by its address, as the global allocator does.
    fn malloc(size: size_t) -> *mut c_void {
        let chunk =
            if FRAME_BUF_SIZES.contains(&size) { SLABS.alloc_class(FRAME_BUF_CLASS) } else { SLABS.alloc(size) };
        match chunk {
            Some(p) => p as *mut c_void,
            // SAFETY: plain malloc.
            None => unsafe { libc::malloc(size) },
        }
    }

    /// # Safety
    /// nghttp2 calls these with pointers they returned, as malloc's API,
    /// and with its session's user data (see `watch`).
    pub unsafe extern "C" fn alloc(size: size_t, user: *mut c_void) -> *mut c_void {
        guard("nghttp2 malloc", ptr::null_mut(), || {
            let p = malloc(size);
            // SAFETY: nghttp2 passes its session's user data.
            if let Some(w) = unsafe { watch(user) } {
                w.allocated(p, size);
            }
            p
        })
    }

    /// # Safety
    /// As for `alloc`.
    pub unsafe extern "C" fn free(p: *mut c_void, user: *mut c_void) {
        guard("nghttp2 free", (), || {
            // nghttp2 frees many pointers it never set (about 25 a
            // connection): nothing to do for those.
            if p.is_null() {
                return;
            }
            // SAFETY: nghttp2 passes its session's user data.
            if let Some(w) = unsafe { watch(user) } {
                w.released(p);
            }
            if SLABS.owns(p as *mut u8) {
                // SAFETY: a live slab chunk nghttp2 got from `alloc`.
                unsafe { SLABS.dealloc(p as *mut u8) }
            } else {
                // SAFETY: null or malloc's pointer.
                unsafe { libc::free(p) }
            }
        })
    }

    /// # Safety
    /// As for `alloc`.
    pub unsafe extern "C" fn calloc(n: size_t, size: size_t, _user: *mut c_void) -> *mut c_void {
        guard("nghttp2 calloc", ptr::null_mut(), || {
            let Some(bytes) = n.checked_mul(size) else { return ptr::null_mut() };
            if let Some(p) = SLABS.alloc(bytes) {
                // SAFETY: the chunk holds at least `bytes`.
                unsafe { ptr::write_bytes(p, 0, bytes) };
                return p as *mut c_void;
            }
            // SAFETY: plain calloc.
            unsafe { libc::calloc(n, size) }
        })
    }

    /// # Safety
    /// As for `alloc`.
    pub unsafe extern "C" fn realloc(p: *mut c_void, size: size_t, user: *mut c_void) -> *mut c_void {
        guard("nghttp2 realloc", ptr::null_mut(), || {
            // SAFETY: nghttp2 passes its session's user data.
            let w = unsafe { watch(user) };
            if p.is_null() {
                // How nghttp2 allocates its frame buffer.
                let q = malloc(size);
                if let Some(w) = w {
                    w.allocated(q, size);
                }
                return q;
            }
            if let Some(w) = w {
                w.released(p);
            }
            if !SLABS.owns(p as *mut u8) {
                // SAFETY: null or malloc's pointer.
                return unsafe { libc::realloc(p, size) };
            }
            // SAFETY: a live slab chunk.
            let have = unsafe { SLABS.chunk_size(p as *mut u8) };
            if size <= have {
                return p;
            }
            let q = malloc(size);
            if !q.is_null() {
                // SAFETY: both live; the old chunk holds `have` < `size` bytes.
                unsafe {
                    ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, have);
                    SLABS.dealloc(p as *mut u8);
                }
            }
            q
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_sessions_watch_keeps_the_frame_buffer_made_with_the_session_until_it_is_freed() {
            let w = FrameBufWatch::default();
            let (a, b) = (0x1000 as *mut libc::c_void, 0x2000 as *mut libc::c_void);
            w.allocated(a, 16_394);
            assert!(!w.is_set(), "only while the session is made");
            w.capture(true);
            w.allocated(b, 1024);
            assert!(!w.is_set(), "only a frame buffer's size");
            w.allocated(a, 16_394);
            w.allocated(b, 16_394);
            w.capture(false);
            assert_eq!(w.buf.get(), a as usize, "the first one");
            w.released(b);
            assert!(w.is_set());
            w.released(a);
            assert!(!w.is_set(), "forgotten once freed or moved");
            // SAFETY: nothing to discard: the watch holds no buffer.
            assert!(!unsafe { discard_frame_buffer(&w) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slabs(bytes: usize) -> Slabs {
        let s = Slabs::new();
        assert!(s.reserve(bytes));
        s
    }

    /// Fills `len` bytes at `p` with a pattern of `seed` (or checks them).
    ///
    /// # Safety
    /// `p` has `len` bytes.
    unsafe fn pattern(p: *mut u8, len: usize, seed: u8, check: bool) {
        for i in 0..len {
            let want = (i as u8).wrapping_mul(31).wrapping_add(seed);
            // SAFETY: i < len.
            unsafe {
                if check {
                    assert_eq!(*p.add(i), want, "byte {i}");
                } else {
                    *p.add(i) = want;
                }
            }
        }
    }

    #[test]
    fn large_blocks_are_mapped_and_keep_their_contents_through_every_resize() {
        let a = ModuleAlloc;
        let layout = |size| Layout::from_size_align(size, 8).unwrap();
        assert!(!mapped(&layout(MAPPED_MIN - 1)) && mapped(&layout(MAPPED_MIN)));
        assert!(!mapped(&Layout::from_size_align(MAPPED_MIN, PAGE_BYTES).unwrap()), "alignment past the offset");
        // SAFETY: each block is used within its size and freed once, with
        // the layout it has at that moment.
        unsafe {
            let p = a.alloc(layout(5000));
            pattern(p, 5000, 1, false);
            // malloc's block to a mapping
            let p = a.realloc(p, layout(5000), 200_000);
            assert_eq!(p as usize % PAGE_BYTES, MAPPED_OFFSET, "a mapping of its own");
            pattern(p, 5000, 1, true);
            pattern(p, 200_000, 2, false);
            // mapping to a larger mapping (mremap)
            let p = a.realloc(p, layout(200_000), 700_000);
            pattern(p, 200_000, 2, true);
            // and back to malloc
            let p = a.realloc(p, layout(700_000), 6000);
            pattern(p, 6000, 2, true);
            a.dealloc(p, layout(6000));
            let z = a.alloc_zeroed(layout(300_000));
            assert!((0..300_000).all(|i| *z.add(i) == 0));
            a.dealloc(z, layout(300_000));
        }
    }

    #[test]
    fn sizes_map_to_the_smallest_class_that_fits() {
        for size in 1..=MAX_SMALL {
            let c = CLASS_OF[size.div_ceil(16)] as usize;
            assert!(CLASS_SIZES[c] >= size, "{size}");
            assert!(c == 0 || CLASS_SIZES[c - 1] < size, "{size}");
        }
    }

    #[test]
    fn chunks_are_aligned_distinct_and_reused() {
        let s = slabs(4 * SLAB_BYTES);
        assert_eq!(s.alloc(MAX_SMALL + 1), None, "larger blocks are malloc's");
        let zero = s.alloc(0).expect("a zero-byte block is a 16-byte chunk");
        // SAFETY: a live chunk of `s`.
        unsafe { s.dealloc(zero) };
        let a: Vec<*mut u8> = (0..100).map(|_| s.alloc(40).unwrap()).collect();
        for (i, &p) in a.iter().enumerate() {
            assert_eq!(p as usize % 16, 0);
            // SAFETY: each chunk has 48 bytes.
            unsafe { ptr::write_bytes(p, i as u8, 40) };
        }
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 100);
        for (i, &p) in a.iter().enumerate() {
            // SAFETY: written above.
            assert_eq!(unsafe { *p.add(39) }, i as u8);
        }
        // SAFETY: live chunks of `s`.
        unsafe { s.dealloc(a[7]) };
        assert_eq!(s.alloc(33), Some(a[7]), "a freed chunk is handed out again first");
        for &p in &a {
            // SAFETY: as above.
            unsafe { s.dealloc(p) };
        }
    }

    #[test]
    fn nghttp2_frame_buffers_have_a_class_of_their_own_three_to_a_slab_on_pages_of_their_own() {
        // nghttp2's NGHTTP2_FRAMEBUF_CHUNKLEN: frame header, pad length,
        // largest payload.
        let framebuf = 9 + 1 + 16_384;
        assert!(FRAME_BUF_SIZES.contains(&framebuf));
        assert!(!FRAME_BUF_SIZES.contains(&(16 * 1024)));
        let s = slabs(2 * SLAB_BYTES);
        let bufs: Vec<*mut u8> = (0..3).map(|_| s.alloc_class(FRAME_BUF_CLASS).unwrap()).collect();
        for (i, &p) in bufs.iter().enumerate() {
            assert_eq!(p as usize % PAGE_BYTES, 0, "page-aligned");
            assert_eq!(s.slab_of(p), s.slab_of(bufs[0]), "three to a slab");
            // SAFETY: live chunks of `s`, CLASS_SIZES[FRAME_BUF_CLASS] bytes each.
            unsafe {
                assert_eq!(s.chunk_size(p), CLASS_SIZES[FRAME_BUF_CLASS]);
                ptr::write_bytes(p, i as u8, framebuf);
            }
        }
        let fourth = s.alloc_class(FRAME_BUF_CLASS).unwrap();
        assert_ne!(s.slab_of(fourth), s.slab_of(bufs[0]));
        assert_eq!(s.alloc(16), None, "both slabs taken");
        // SAFETY: live chunks of `s`.
        unsafe {
            assert_eq!(*bufs[2].add(framebuf - 1), 2, "chunks do not overlap");
            s.dealloc(bufs[1]);
        }
        assert_eq!(s.alloc_class(FRAME_BUF_CLASS), Some(bufs[1]), "a freed buffer is reused first");
        for p in bufs.into_iter().chain([fourth]) {
            // SAFETY: live chunks of `s`.
            unsafe { s.dealloc(p) };
        }
        assert!(s.alloc(16).is_some(), "emptied slabs serve other classes");
    }

    #[test]
    fn a_discarded_frame_buffer_reads_as_zeros_and_its_neighbours_keep_their_bytes() {
        let s = slabs(2 * SLAB_BYTES);
        let bufs: Vec<*mut u8> = (0..3).map(|_| s.alloc_class(FRAME_BUF_CLASS).unwrap()).collect();
        let small = s.alloc(64).unwrap();
        for (i, &p) in bufs.iter().enumerate() {
            // SAFETY: live chunks of CLASS_SIZES[FRAME_BUF_CLASS] bytes.
            unsafe { ptr::write_bytes(p, 0x10 + i as u8, CLASS_SIZES[FRAME_BUF_CLASS]) };
        }
        // SAFETY: live chunks whose contents this test no longer needs.
        unsafe {
            assert!(s.discard(bufs[1]));
            assert!(!s.discard(small), "only frame buffers are discarded");
            assert!(!s.discard(ptr::null_mut::<u8>().wrapping_add(4096)), "nor anything not ours");
        }
        // SAFETY: reads and writes of live chunks.
        unsafe {
            assert_eq!(*bufs[1], 0);
            assert_eq!(*bufs[1].add(CLASS_SIZES[FRAME_BUF_CLASS] - 1), 0);
            assert_eq!(*bufs[0].add(CLASS_SIZES[FRAME_BUF_CLASS] - 1), 0x10);
            assert_eq!(*bufs[2], 0x12);
            // Usable again: the next frame faults a fresh page in.
            ptr::write_bytes(bufs[1], 0x77, 100);
            assert_eq!(*bufs[1].add(99), 0x77);
            s.dealloc(small);
            for p in bufs {
                s.dealloc(p);
            }
        }
    }

    #[test]
    fn an_emptied_slab_goes_to_another_class_and_its_pages_are_given_back() {
        let s = slabs(2 * SLAB_BYTES);
        let per_slab = SLAB_BYTES / 1024;
        // Fill both slabs with 1 KiB chunks: the region is used up.
        let big: Vec<*mut u8> = (0..2 * per_slab).map(|_| s.alloc(1000).unwrap()).collect();
        assert_eq!(s.alloc(16), None, "no slab left for another class");
        for &p in &big {
            // SAFETY: live chunks; touch them so that there are pages to give back.
            unsafe { ptr::write_bytes(p, 0xab, 1000) };
        }
        for &p in &big {
            // SAFETY: as above.
            unsafe { s.dealloc(p) };
        }
        // One slab was released, the class keeps the other with room.
        let small = s.alloc(16).expect("the released slab serves another class");
        // SAFETY: a live chunk of `s`.
        unsafe { s.dealloc(small) };
        let again = s.alloc(1000).unwrap();
        assert!(big.contains(&again));
        // SAFETY: as above.
        unsafe { s.dealloc(again) };
    }

    #[test]
    fn a_released_slab_reads_back_as_zero_pages() {
        let s = slabs(2 * SLAB_BYTES);
        let per_slab = SLAB_BYTES / 1024;
        let first: Vec<*mut u8> = (0..per_slab).map(|_| s.alloc(1024).unwrap()).collect();
        let second: Vec<*mut u8> = (0..per_slab).map(|_| s.alloc(1024).unwrap()).collect();
        for &p in first.iter().chain(&second) {
            // SAFETY: live chunks.
            unsafe { ptr::write_bytes(p, 0xcd, 1024) };
        }
        for &p in &first {
            // SAFETY: as above.
            unsafe { s.dealloc(p) };
        }
        // The first slab emptied while the second (full) was not in the
        // list: it is the class's only slab with room, so it stays.
        let p = s.alloc(1024).unwrap();
        assert!(first.contains(&p));
        // SAFETY: as above.
        unsafe { s.dealloc(p) };
        for &p in &second {
            // SAFETY: as above.
            unsafe { s.dealloc(p) };
        }
        // The second slab emptied while the first still had room: it went
        // back to the stack with all its pages given back (zero when read
        // again); the first kept its bytes.
        for &p in &second {
            // SAFETY: the mapping stays ours; a read of released memory.
            assert_eq!(unsafe { *p.add(100) }, 0);
        }
        for &p in &first {
            // SAFETY: as above; this slab was kept.
            assert_eq!(unsafe { *p.add(100) }, 0xcd);
        }
    }

    #[test]
    fn threads_allocating_and_freeing_each_others_chunks_agree() {
        let s = std::sync::Arc::new(slabs(64 * SLAB_BYTES));
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, usize, u8)>(256);
        let producer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..20_000usize {
                    let size = 1 + (i * 37) % MAX_SMALL;
                    let p = s.alloc(size).unwrap();
                    // SAFETY: the chunk has at least `size` bytes.
                    unsafe { ptr::write_bytes(p, i as u8, size) };
                    tx.send((p as usize, size, i as u8)).unwrap();
                }
            })
        };
        let mut n = 0;
        for (p, size, byte) in rx {
            let p = p as *mut u8;
            // SAFETY: the producer wrote `size` bytes and handed the chunk over.
            unsafe {
                assert_eq!(*p, byte);
                assert_eq!(*p.add(size - 1), byte);
                s.dealloc(p);
            }
            n += 1;
        }
        producer.join().unwrap();
        assert_eq!(n, 20_000);
    }

    #[test]
    fn nothing_is_served_before_the_region_is_reserved() {
        let s = Slabs::new();
        assert_eq!(s.alloc(16), None);
        assert!(!s.owns(16 as *mut u8));
    }
}
