//! The worker pool: Rust threads that run stream requests through httpd.
//!
//! One pool per child process, started in `child_init` (never in the parent:
//! threads do not survive fork) and joined from a pre-cleanup of the child
//! pool (before its sub-pools, which streams use, are destroyed).
//!
//! A job goes straight to the thread that went idle last (LIFO: its stack
//! and caches are warm, and the threads idle longest are the ones that time
//! out), or into one FIFO queue across all connections when no thread is
//! idle. One thread at most spins briefly for the next job before it
//! sleeps (a burst of small requests then costs no wake-up each); the others
//! sleep on a condition variable of their own. So under load only as many
//! threads run as the load needs, and the rest stay cold: their stacks,
//! malloc caches and arenas are never touched (with a shared FIFO channel
//! every thread took turns, and each cost ~100 KiB of RSS once it had run
//! requests). The pool starts `start` threads (at most `min`), grows to
//! `max` while every thread is busy and jobs wait, and lets threads above
//! `min` exit after `idle_timeout`.
//! Tunnels (WebSockets) get a dedicated thread each instead (`run_dedicated`):
//! mod_proxy's tunnel holds its thread for the tunnel's whole life, so
//! tunnels must neither wait for pool threads nor take them from ordinary
//! requests. At most `MAX_DEDICATED` such threads exist per child; beyond
//! that, tunnels queue like any job.
//! Each thread registers itself with APR (`ap_thread_current_create`) before
//! it runs httpd code, and has a slot number that keeps secondary connection
//! ids unique (`(c1->id << 8) ^ slot`).

use crate::signal::Signal;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
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

/// The slot of a stream run on c1's own thread (`fastpath`): one at a time
/// per connection, and beyond every thread's slot (the lowest free
/// index), so its secondary connection's id (`C2::process`) is its own.
pub const C1_SLOT: u32 = 0xFFFF;

/// Per-thread set-up and tear-down (httpd registration), swappable in tests.
pub trait ThreadHooks: Send + Sync + 'static {
    fn start(&self) -> *mut crate::ffi::apr_thread_t;
    fn stop(&self, thread: *mut crate::ffi::apr_thread_t);
    /// Stack size of the pool's threads.
    fn stack_size(&self) -> usize {
        DEFAULT_STACK_SIZE
    }
}

/// Stack size of the pool's threads unless the MPM's `ThreadStackSize`
/// says otherwise (glibc's default for new threads here).
pub const DEFAULT_STACK_SIZE: usize = 8 * 1024 * 1024;

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

/// What an idle thread is handed.
enum Handoff {
    Nothing,
    Job(Job),
    Stop,
}

/// An idle thread's own wake-up: it sleeps on `cv` until `handoff` holds
/// something.
struct IdleThread {
    handoff: Mutex<Handoff>,
    cv: Condvar,
}

impl IdleThread {
    fn give(&self, what: Handoff) {
        *self.handoff.lock() = what;
        self.cv.notify_one();
    }

    /// Waits for a handoff, until `deadline` if given (`None` on timeout).
    fn wait(&self, deadline: Option<std::time::Instant>) -> Option<Handoff> {
        let mut h = self.handoff.lock();
        loop {
            if !matches!(*h, Handoff::Nothing) {
                return Some(std::mem::replace(&mut *h, Handoff::Nothing));
            }
            match deadline {
                Some(d) => {
                    if self.cv.wait_until(&mut h, d).timed_out() && matches!(*h, Handoff::Nothing) {
                        return None;
                    }
                }
                None => self.cv.wait(&mut h),
            }
        }
    }
}

/// Jobs waiting for a thread and threads waiting for a job (never both).
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Idle threads, the most recently idle last.
    idle: Vec<Arc<IdleThread>>,
    /// No more jobs are taken (shutdown).
    closed: bool,
    /// A thread is spinning for the next job (it takes queued jobs without
    /// being handed them).
    spinning: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// `queue.jobs.len()`, readable without the lock.
    queued: AtomicUsize,
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
    shared: Arc<Shared>,
}

impl Pool {
    /// A pool of `min` to `max` threads, `start` of them started now (the
    /// others when jobs wait for a thread).
    pub fn new(min: u32, max: u32, start: u32, idle_timeout: Duration, hooks: Box<dyn ThreadHooks>) -> Arc<Pool> {
        let min = min.max(1);
        let pool = Arc::new(Pool {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                queued: AtomicUsize::new(0),
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
        for _ in 0..start.min(min) {
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
            .stack_size(shared.hooks.stack_size())
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
        let shared = &self.shared;
        let mut q = shared.queue.lock();
        if q.closed {
            return Err(job);
        }
        if q.spinning && q.jobs.is_empty() {
            // The spinning thread takes it.
            q.jobs.push_back(job);
            shared.queued.store(q.jobs.len(), Ordering::Release);
            return Ok(());
        }
        if let Some(thread) = q.idle.pop() {
            shared.idle.store(q.idle.len() as u32, Ordering::Release);
            drop(q);
            thread.give(Handoff::Job(job));
            return Ok(());
        }
        q.jobs.push_back(job);
        shared.queued.store(q.jobs.len(), Ordering::Release);
        drop(q);
        // No thread idle: grow (up to max).
        self.spawn();
        Ok(())
    }

    /// (live threads, idle threads, queued jobs)
    pub fn load(&self) -> (u32, u32, usize) {
        (
            self.shared.live.load(Ordering::Acquire),
            self.shared.idle.load(Ordering::Acquire),
            self.shared.queued.load(Ordering::Acquire),
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
        let free = idle - sh.queued.load(Ordering::Acquire) as i64 + (sh.max as i64 - live).max(0);
        free > crate::limits::worker_reserve(sh.max) as i64
    }

    /// A session with streams waiting for room: wake its c1 when a worker
    /// thread goes idle (it then tries `has_room` again).
    pub fn wait_for_room(&self, signal: &Arc<Signal>) {
        {
            let mut w = self.shared.room_waiters.lock();
            if !w.iter().any(|x| x.as_ptr() == Arc::as_ptr(signal)) {
                w.retain(|x| x.strong_count() > 0);
                w.push(Arc::downgrade(signal));
            }
        }
        // A thread that went idle after the caller's `has_room` and before
        // this registration took the list without us (it counted itself
        // idle before it took the list, so this look sees it).
        if self.has_room() {
            signal.wake();
        }
    }

    pub fn limits(&self) -> (u32, u32) {
        (self.shared.min, self.shared.max)
    }

    /// Stops accepting jobs, lets queued jobs finish, joins every thread.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        let idle = {
            let mut q = self.shared.queue.lock();
            q.closed = true;
            self.shared.idle.store(0, Ordering::Release);
            std::mem::take(&mut q.idle)
        };
        for thread in idle {
            thread.give(Handoff::Stop);
        }
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
    // Registered with httpd (an APR thread with its own pool) only once it
    // has a job: with static files run on c1's thread most pool threads
    // never run one, and each registration holds an 8 KiB node.
    let mut ctx: Option<WorkerCtx> = None;
    let me = Arc::new(IdleThread { handoff: Mutex::new(Handoff::Nothing), cv: Condvar::new() });
    while let Some(job) = next_job(&shared, &me) {
        let ctx = ctx.get_or_insert_with(|| WorkerCtx { slot, thread: shared.hooks.start() });
        crate::ffi::panic::guard("worker job", (), || job(ctx));
    }
    if let Some(ctx) = ctx {
        shared.hooks.stop(ctx.thread);
    }
}

fn wake_room_waiters(shared: &Shared) {
    let waiters = std::mem::take(&mut *shared.room_waiters.lock());
    for w in waiters {
        if let Some(s) = w.upgrade() {
            s.wake();
        }
    }
}

/// The next job for a worker thread: a queued one, or one handed to it
/// while idle. `None` when the thread is to exit (it then no longer counts
/// as live): the pool shut down, or it idled `idle_timeout` above `min`.
fn next_job(shared: &Shared, me: &Arc<IdleThread>) -> Option<Job> {
    loop {
        let mut q = shared.queue.lock();
        if let Some(answer) = from_queue(shared, &mut q).answer() {
            return answer;
        }
        if !q.spinning {
            q.spinning = true;
            drop(q);
            spin_for_job(shared);
            q = shared.queue.lock();
            q.spinning = false;
            if let Some(answer) = from_queue(shared, &mut q).answer() {
                return answer;
            }
        }
        q.idle.push(me.clone());
        shared.idle.store(q.idle.len() as u32, Ordering::Release);
        drop(q);
        // A thread is free: sessions waiting for room may go on. Only now
        // that `has_room` counts it: woken as its job ended (while it
        // still looked for the next), a session found no room, waited
        // again, and was not woken again when the thread went idle.
        wake_room_waiters(shared);
        let above_min = shared.live.load(Ordering::Acquire) > shared.min;
        let deadline = above_min.then(|| std::time::Instant::now() + shared.idle_timeout);
        let handoff = match me.wait(deadline) {
            Some(h) => h,
            None => {
                // Timed out. Still on the idle list: leave it (and the pool,
                // unless others left first). Off the list: a submit or the
                // shutdown took this thread and its handoff is on the way.
                // Leaving is decided under the queue's lock, `live` counted
                // down before it is released: a submit that finds no idle
                // thread then either queued its job before (taken here) or
                // sees the place this thread frees (`spawn`). Counted down
                // after, a submit in between queued a job that no thread
                // took while the pool was at its maximum.
                let mut q = shared.queue.lock();
                if let Some(i) = q.idle.iter().position(|t| Arc::ptr_eq(t, me)) {
                    q.idle.remove(i);
                    shared.idle.store(q.idle.len() as u32, Ordering::Release);
                    let live = shared.live.load(Ordering::Acquire);
                    if q.jobs.is_empty()
                        && live > shared.min
                        && shared.live.compare_exchange(live, live - 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
                    {
                        return None;
                    }
                    continue;
                }
                drop(q);
                me.wait(None).unwrap_or(Handoff::Nothing)
            }
        };
        match handoff {
            Handoff::Job(job) => return Some(job),
            Handoff::Stop => {
                shared.live.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            Handoff::Nothing => continue,
        }
    }
}

enum FromQueue {
    Run(Job),
    /// The pool is closed and the queue empty: the thread leaves (and no
    /// longer counts as live).
    Exit,
    Nothing,
}

impl FromQueue {
    /// As `next_job`'s result, when the queue decided it.
    fn answer(self) -> Option<Option<Job>> {
        match self {
            FromQueue::Run(job) => Some(Some(job)),
            FromQueue::Exit => Some(None),
            FromQueue::Nothing => None,
        }
    }
}

fn from_queue(shared: &Shared, q: &mut Queue) -> FromQueue {
    if let Some(job) = q.jobs.pop_front() {
        shared.queued.store(q.jobs.len(), Ordering::Release);
        return FromQueue::Run(job);
    }
    if q.closed {
        shared.live.fetch_sub(1, Ordering::AcqRel);
        return FromQueue::Exit;
    }
    FromQueue::Nothing
}

/// Rounds a thread spins (with a yield each) for the next job before it
/// sleeps: a few microseconds, about a request's gap in a burst.
const SPIN_ROUNDS: u32 = 16;

/// Waits briefly for a queued job without sleeping; returns when one is
/// queued, the pool closes, or the rounds are over.
fn spin_for_job(shared: &Shared) {
    for round in 0..SPIN_ROUNDS {
        if shared.queued.load(Ordering::Acquire) > 0 || shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if round < SPIN_ROUNDS / 2 {
            for _ in 0..(1u32 << round.min(6)) {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
    }
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
        let pool = Pool::new(1, 4, 1, Duration::from_millis(50), Box::new(PlainThreads));
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
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
    fn a_lazy_pool_starts_threads_for_jobs_and_keeps_its_minimum() {
        let pool = Pool::new(4, 8, 0, Duration::from_millis(50), Box::new(PlainThreads));
        assert_eq!(pool.load().0, 0);
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        for _ in 0..2 {
            let tx = tx.clone();
            pool.submit(Box::new(move |ctx| tx.send(ctx.slot).unwrap())).ok().unwrap();
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        let live = pool.load().0;
        assert!((1..=2).contains(&live), "{live} threads for two jobs in turn");
        // Below the minimum, idle threads stay.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(pool.load().0, live);
        pool.shutdown();
        assert_eq!(pool.load().0, 0);
    }

    #[test]
    fn dedicated_jobs_do_not_wait_for_pool_threads() {
        let pool = Pool::new(1, 1, 1, Duration::from_secs(1), Box::new(PlainThreads));
        // The only pool thread is busy until released.
        let (release_tx, release_rx) = std::sync::mpsc::sync_channel::<()>(1);
        pool.submit(Box::new(move |_| {
            let _ = release_rx.recv();
        }))
        .ok()
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
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
    fn the_thread_idle_last_gets_the_next_job() {
        let pool = Pool::new(3, 3, 3, Duration::from_secs(10), Box::new(PlainThreads));
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let mut slots = Vec::new();
        for _ in 0..5 {
            // Every thread back on the idle list (none spinning), the last
            // one on top.
            while pool.load().1 < 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let tx = tx.clone();
            pool.submit(Box::new(move |ctx| tx.send(ctx.slot).unwrap())).ok().unwrap();
            slots.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        assert!(slots.windows(2).all(|w| w[0] == w[1]), "jobs spread over threads: {slots:?}");
        pool.shutdown();
        assert_eq!(pool.load().0, 0);
    }

    #[test]
    fn a_burst_is_spread_over_threads_and_all_of_it_runs() {
        let pool = Pool::new(2, 8, 2, Duration::from_secs(10), Box::new(PlainThreads));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..200 {
            let d = done.clone();
            pool.submit(Box::new(move |_| {
                std::thread::sleep(Duration::from_micros(200));
                d.fetch_add(1, Ordering::SeqCst);
            }))
            .ok()
            .unwrap();
        }
        let t0 = std::time::Instant::now();
        while done.load(Ordering::SeqCst) < 200 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(done.load(Ordering::SeqCst), 200);
        assert!(pool.load().0 > 2, "the pool did not grow while jobs waited");
        pool.shutdown();
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_worker() {
        let pool = Pool::new(1, 1, 1, Duration::from_secs(1), Box::new(PlainThreads));
        pool.submit(Box::new(|_| panic!("job panic (expected in this test)"))).ok().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        pool.submit(Box::new(move |_| tx.send(1).unwrap())).ok().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        pool.shutdown();
    }
}
