//! The worker pool: Rust threads that run stream requests through httpd.
//!
//! One pool per child process, started in `child_init` (never in the parent:
//! threads do not survive fork) and joined from a pre-cleanup of the child
//! pool (before its sub-pools, which streams use, are destroyed).
//!
//! Jobs go through one crossbeam channel (FIFO across all connections).
//! The pool starts `min` threads, grows to `max` while every thread is busy
//! and jobs wait, and lets threads above `min` exit after `idle_timeout`.
//! Tunnels (WebSockets) get a dedicated thread each instead (`run_dedicated`):
//! mod_proxy's tunnel holds its thread for the tunnel's whole life, so
//! tunnels must neither wait for pool threads nor take them from ordinary
//! requests. At most `MAX_DEDICATED` such threads exist per child; beyond
//! that, tunnels queue like any job.
//! Each thread registers itself with APR (`ap_thread_current_create`) before
//! it runs httpd code, and has a slot number that keeps secondary connection
//! ids unique (`(c1->id << 8) ^ slot`).

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use crate::signal::Signal;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a job sees of the thread running it.
pub struct WorkerCtx {
    /// Small integer unique among live workers of this process.
    pub slot: u32,
    /// httpd's handle for this thread (`apr_thread_t *`), or NULL in tests.
    pub thread: *mut crate::ffi::apr_thread_t,
}

pub type Job = Box<dyn FnOnce(&WorkerCtx) + Send>;

/// Per-thread set-up and tear-down (httpd registration), swappable in tests.
pub trait ThreadHooks: Send + Sync + 'static {
    fn start(&self) -> *mut crate::ffi::apr_thread_t;
    fn stop(&self, thread: *mut crate::ffi::apr_thread_t);
}

/// Threads without httpd (unit tests).
pub struct PlainThreads;
impl ThreadHooks for PlainThreads {
    fn start(&self) -> *mut crate::ffi::apr_thread_t {
        std::ptr::null_mut()
    }
    fn stop(&self, _thread: *mut crate::ffi::apr_thread_t) {}
}

/// Dedicated (tunnel) threads per child at most.
pub const MAX_DEDICATED: u32 = 4096;

struct Shared {
    rx: Receiver<Job>,
    /// Dedicated threads running.
    dedicated: AtomicU32,
    min: u32,
    max: u32,
    idle_timeout: Duration,
    live: AtomicU32,
    idle: AtomicU32,
    /// Sessions with streams on workers (they share the pool fairly).
    busy_sessions: AtomicU32,
    /// Sessions with streams waiting for room (`Pool::has_room` said no):
    /// woken when a worker finishes a job.
    room_waiters: Mutex<Vec<Weak<Signal>>>,
    stopping: AtomicBool,
    slots: Mutex<Vec<bool>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    hooks: Box<dyn ThreadHooks>,
}

pub struct Pool {
    tx: Mutex<Option<Sender<Job>>>,
    shared: Arc<Shared>,
}

impl Pool {
    pub fn new(min: u32, max: u32, idle_timeout: Duration, hooks: Box<dyn ThreadHooks>) -> Arc<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let min = min.max(1);
        let pool = Arc::new(Pool {
            tx: Mutex::new(Some(tx)),
            shared: Arc::new(Shared {
                rx,
                min,
                max: max.max(min),
                idle_timeout,
                dedicated: AtomicU32::new(0),
                live: AtomicU32::new(0),
                idle: AtomicU32::new(0),
                busy_sessions: AtomicU32::new(0),
                room_waiters: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
                slots: Mutex::new(Vec::new()),
                threads: Mutex::new(Vec::new()),
                hooks,
            }),
        });
        for _ in 0..min {
            pool.spawn();
        }
        pool
    }

    fn spawn(&self) -> bool {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::Acquire) {
            return false;
        }
        // Reserve a place under the max before starting the thread.
        let mut live = shared.live.load(Ordering::Acquire);
        loop {
            if live >= shared.max {
                return false;
            }
            match shared.live.compare_exchange(live, live + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => live = now,
            }
        }
        let s = self.shared.clone();
        if self.start_thread("h2rs-worker", move |slot| worker_main(s, slot)) {
            return true;
        }
        shared.live.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Starts a thread with a free slot number; it releases the slot when
    /// `body` returns.
    fn start_thread(&self, name: &str, body: impl FnOnce(u32) + Send + 'static) -> bool {
        let shared = &self.shared;
        let slot = {
            let mut slots = shared.slots.lock();
            match slots.iter().position(|used| !used) {
                Some(i) => {
                    slots[i] = true;
                    i as u32
                }
                None => {
                    slots.push(true);
                    (slots.len() - 1) as u32
                }
            }
        };
        let s = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-{slot}"))
            .stack_size(8 * 1024 * 1024)
            .spawn(move || {
                body(slot);
                s.slots.lock()[slot as usize] = false;
            });
        match spawned {
            Ok(handle) => {
                let mut threads = shared.threads.lock();
                threads.retain(|h| !h.is_finished());
                threads.push(handle);
                true
            }
            Err(e) => {
                shared.slots.lock()[slot as usize] = false;
                crate::log::server_crit(&format!("mod_h2rs: cannot start a worker thread: {e}"));
                false
            }
        }
    }

    /// Runs a long-lived job (a tunnel) on a thread of its own, so that it
    /// neither waits for nor occupies a pool thread. Falls back to the
    /// queue when `MAX_DEDICATED` are running or no thread can be started.
    pub fn run_dedicated(&self, job: Job) -> Result<(), Job> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::Acquire) {
            return Err(job);
        }
        if shared.dedicated.fetch_add(1, Ordering::AcqRel) < MAX_DEDICATED {
            // The job moves into the thread only if it starts; keep a way to
            // get it back otherwise.
            let slot_for_job = Arc::new(Mutex::new(Some(job)));
            let job_in_thread = slot_for_job.clone();
            let s = shared.clone();
            let started = self.start_thread("h2rs-tunnel", move |slot| {
                let thread = s.hooks.start();
                let ctx = WorkerCtx { slot, thread };
                if let Some(job) = job_in_thread.lock().take() {
                    crate::ffi::panic::guard("tunnel job", (), || job(&ctx));
                }
                s.hooks.stop(thread);
                s.dedicated.fetch_sub(1, Ordering::AcqRel);
            });
            if started {
                return Ok(());
            }
            shared.dedicated.fetch_sub(1, Ordering::AcqRel);
            let job = slot_for_job.lock().take();
            return match job {
                Some(job) => self.submit(job),
                None => Ok(()),
            };
        }
        shared.dedicated.fetch_sub(1, Ordering::AcqRel);
        self.submit(job)
    }

    /// Queues a job; grows the pool when no thread is idle. Gives the job
    /// back when the pool is stopping.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let tx = self.tx.lock();
        let Some(tx) = tx.as_ref() else { return Err(job) };
        if let Err(e) = tx.send(job) {
            return Err(e.into_inner());
        }
        // More jobs waiting than idle threads to take them (a burst arrives
        // before the idle threads wake up): grow.
        if self.shared.rx.len() > self.shared.idle.load(Ordering::Acquire) as usize {
            self.spawn();
        }
        Ok(())
    }

    /// (live threads, idle threads, queued jobs)
    pub fn load(&self) -> (u32, u32, usize) {
        (
            self.shared.live.load(Ordering::Acquire),
            self.shared.idle.load(Ordering::Acquire),
            self.shared.rx.len(),
        )
    }

    /// A session starts (`true`) or stops having streams on workers.
    pub fn session_busy(&self, busy: bool) {
        if busy {
            self.shared.busy_sessions.fetch_add(1, Ordering::AcqRel);
        } else {
            let _ = self.shared.busy_sessions.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Streams one busy session may have on workers now: the pool shared
    /// among the busy sessions (`limits::fair_share`).
    pub fn fair_share(&self) -> usize {
        crate::limits::fair_share(self.shared.max, self.shared.busy_sessions.load(Ordering::Acquire))
    }

    /// Whether a session that already has streams on workers may hand over
    /// one more: threads free now (idle ones not claimed by queued jobs,
    /// plus those the pool may still start) beyond the reserve kept for
    /// sessions with nothing running (`limits::worker_reserve`).
    pub fn has_room(&self) -> bool {
        let sh = &self.shared;
        let idle = sh.idle.load(Ordering::Acquire) as i64;
        let live = sh.live.load(Ordering::Acquire) as i64;
        let free = idle - sh.rx.len() as i64 + (sh.max as i64 - live).max(0);
        free > crate::limits::worker_reserve(sh.max) as i64
    }

    /// A session with streams waiting for room: wake its c1 when a worker
    /// finishes a job (it then tries `has_room` again).
    pub fn wait_for_room(&self, signal: &Arc<Signal>) {
        let mut w = self.shared.room_waiters.lock();
        if !w.iter().any(|x| x.as_ptr() == Arc::as_ptr(signal)) {
            w.retain(|x| x.strong_count() > 0);
            w.push(Arc::downgrade(signal));
        }
    }

    pub fn limits(&self) -> (u32, u32) {
        (self.shared.min, self.shared.max)
    }

    /// Stops accepting jobs, lets queued jobs finish, joins every thread.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.tx.lock().take();
        loop {
            let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.shared.threads.lock());
            if handles.is_empty() {
                break;
            }
            for h in handles {
                let _ = h.join();
            }
        }
    }
}

fn worker_main(shared: Arc<Shared>, slot: u32) {
    let thread = shared.hooks.start();
    let ctx = WorkerCtx { slot, thread };
    loop {
        shared.idle.fetch_add(1, Ordering::AcqRel);
        let above_min = shared.live.load(Ordering::Acquire) > shared.min;
        let job = if above_min {
            shared.rx.recv_timeout(shared.idle_timeout)
        } else {
            shared.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        shared.idle.fetch_sub(1, Ordering::AcqRel);
        match job {
            Ok(job) => {
                crate::ffi::panic::guard("worker job", (), || job(&ctx));
                // A thread is free: sessions waiting for room may go on.
                let waiters = std::mem::take(&mut *shared.room_waiters.lock());
                for w in waiters {
                    if let Some(s) = w.upgrade() {
                        s.wake();
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                // Idle above the minimum: leave, unless others left first.
                let live = shared.live.load(Ordering::Acquire);
                if live > shared.min
                    && shared.live.compare_exchange(live, live - 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
                {
                    break;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                shared.live.fetch_sub(1, Ordering::AcqRel);
                break;
            }
        }
    }
    shared.hooks.stop(thread);
}

/// The pool of this child process.
static POOL: Mutex<Option<Arc<Pool>>> = Mutex::new(None);

pub fn install(pool: Arc<Pool>) {
    *POOL.lock() = Some(pool);
}

pub fn current() -> Option<Arc<Pool>> {
    POOL.lock().clone()
}

/// Removes the process pool and joins its threads.
pub fn shutdown() {
    let pool = POOL.lock().take();
    if let Some(p) = pool {
        p.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn runs_jobs_grows_and_shuts_down() {
        let pool = Pool::new(1, 4, Duration::from_millis(50), Box::new(PlainThreads));
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        for _ in 0..4 {
            let d = done.clone();
            let tx = tx.clone();
            pool.submit(Box::new(move |ctx| {
                tx.send(ctx.slot).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                d.fetch_add(1, Ordering::SeqCst);
            }))
            .ok()
            .unwrap();
        }
        let mut slots: Vec<u32> = (0..4).map(|_| rx.recv().unwrap()).collect();
        slots.sort();
        slots.dedup();
        assert!(slots.len() > 1, "pool did not grow: {slots:?}");
        assert!(pool.load().0 <= 4);
        // Idle threads above min leave again.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pool.load().0, 1);
        pool.shutdown();
        assert_eq!(done.load(Ordering::SeqCst), 4);
        assert!(pool.submit(Box::new(|_| {})).is_err());
    }

    #[test]
    fn dedicated_jobs_do_not_wait_for_pool_threads() {
        let pool = Pool::new(1, 1, Duration::from_secs(1), Box::new(PlainThreads));
        // The only pool thread is busy until released.
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
        pool.submit(Box::new(move |_| {
            let _ = release_rx.recv();
        }))
        .ok()
        .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..3 {
            let tx = tx.clone();
            pool.run_dedicated(Box::new(move |ctx| tx.send((i, ctx.slot)).unwrap())).ok().unwrap();
        }
        let mut got: Vec<(i32, u32)> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        got.sort();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        release_tx.send(()).unwrap();
        pool.shutdown();
        assert_eq!(pool.shared.dedicated.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_worker() {
        let pool = Pool::new(1, 1, Duration::from_secs(1), Box::new(PlainThreads));
        pool.submit(Box::new(|_| panic!("job panic (expected in this test)"))).ok().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        pool.submit(Box::new(move |_| tx.send(1).unwrap())).ok().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        pool.shutdown();
    }
}
