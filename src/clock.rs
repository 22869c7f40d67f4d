//! The child's clock: one thread that calls objects back at their
//! deadlines. Parked sessions use it for their idle timeout and the
//! graceful stop's grace (`park.rs`); streams for output a handler left
//! unflushed (`Stream::arm_late_flush`); the kept file mappings for their
//! sweep (`filemap::MapCache`).
//!
//! httpd's own timed callbacks are not used: the event MPM of 2.4.6x only
//! runs a timer when its listener wakes up for another reason, seconds late
//! on a quiet server. One thread for every kind of deadline: each thread of
//! a child costs stack pages.

use parking_lot::{Condvar, Mutex};
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// An object the clock calls back.
pub trait Alarm: Send + Sync {
    /// Called on the clock's thread once `after` has passed, with the
    /// `kind` it was scheduled with, if the object still lives then.
    fn ring(self: Arc<Self>, kind: u8);
}

struct Clock {
    queue: Mutex<Queue>,
    wake: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Queue {
    entries: BinaryHeap<Due>,
    stop: bool,
    /// At this many entries, those whose object is gone are dropped (see
    /// `schedule`).
    purge_at: usize,
}

/// The least `Queue::purge_at`.
const PURGE_AT_LEAST: usize = 1024;

/// A deadline: when, whose, and which of its alarms.
struct Due(Instant, Weak<dyn Alarm>, u8);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    // Earliest first in the (max-)heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.cmp(&self.0)
    }
}

static CLOCK: Clock = Clock::new();

/// Starts the clock's thread (child_init).
pub fn start() {
    CLOCK.start()
}

/// Stops and joins the clock's thread (child exit). Pending alarms do not
/// ring.
pub fn stop() {
    CLOCK.stop()
}

/// Rings `target` with `kind` after `after`. False when no clock runs.
pub fn schedule<A: Alarm + 'static>(target: &Arc<A>, after: Duration, kind: u8) -> bool {
    CLOCK.schedule(target, after, kind)
}

impl Clock {
    const fn new() -> Clock {
        Clock {
            queue: Mutex::new(Queue { entries: BinaryHeap::new(), stop: false, purge_at: PURGE_AT_LEAST }),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        }
    }

    fn start(&'static self) {
        let mut t = self.thread.lock();
        if t.is_some() {
            return;
        }
        self.queue.lock().stop = false;
        *t = std::thread::Builder::new().name("h2rs-clock".into()).spawn(|| self.run()).ok();
    }

    fn stop(&self) {
        self.queue.lock().stop = true;
        self.wake.notify_all();
        // Not joined under the lock: an alarm ringing meanwhile may
        // schedule again (the file mappings' sweep does), and `schedule`
        // takes it. Held through the join, it deadlocked the child's exit.
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        self.queue.lock().entries.clear();
    }

    fn schedule<A: Alarm + 'static>(&self, target: &Arc<A>, after: Duration, kind: u8) -> bool {
        if self.thread.lock().is_none() {
            return false;
        }
        let weak: Weak<dyn Alarm> = Arc::downgrade(target) as Weak<dyn Alarm>;
        let mut q = self.queue.lock();
        let due = Instant::now() + after;
        if q.entries.len() >= q.purge_at {
            // An entry holds its object's allocation (a `Weak`) until its
            // deadline, though the object finished long before: a proxied
            // upload's body deadline (Timeout, minutes) for each one that
            // took more than one read. Dropped in bulk, the heap stays
            // within twice what is live.
            q.entries.retain(|d| d.1.strong_count() > 0);
            let live = q.entries.len();
            q.entries.shrink_to(live * 2);
            q.purge_at = (live * 2).max(PURGE_AT_LEAST);
        }
        let earliest = q.entries.peek().map(|d| d.0 > due).unwrap_or(true);
        q.entries.push(Due(due, weak, kind));
        drop(q);
        if earliest {
            self.wake.notify_all();
        }
        true
    }

    fn run(&self) {
        let mut q = self.queue.lock();
        loop {
            if q.stop {
                return;
            }
            let now = Instant::now();
            match q.entries.peek().map(|d| d.0) {
                Some(due) if due <= now => {
                    let Some(Due(_, weak, kind)) = q.entries.pop() else { continue };
                    drop(q);
                    if let Some(target) = weak.upgrade() {
                        crate::ffi::panic::guard("clock", (), || target.ring(kind));
                    }
                    q = self.queue.lock();
                }
                Some(due) => {
                    self.wake.wait_for(&mut q, due - now);
                }
                None => {
                    self.wake.wait(&mut q);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Recorder(Mutex<mpsc::Sender<(u32, u8)>>, u32);
    impl Alarm for Recorder {
        fn ring(self: Arc<Self>, kind: u8) {
            let _ = self.0.lock().send((self.1, kind));
        }
    }

    #[test]
    fn alarms_ring_in_deadline_order_and_dropped_targets_stay_silent() {
        start();
        let (tx, rx) = mpsc::channel();
        let late = Arc::new(Recorder(Mutex::new(tx.clone()), 1));
        let early = Arc::new(Recorder(Mutex::new(tx.clone()), 2));
        let dropped = Arc::new(Recorder(Mutex::new(tx), 3));
        assert!(schedule(&late, Duration::from_millis(120), 7));
        assert!(schedule(&dropped, Duration::from_millis(10), 0));
        assert!(schedule(&early, Duration::from_millis(40), 9));
        drop(dropped);
        let got: Vec<(u32, u8)> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        assert_eq!(got, [(2, 9), (1, 7)]);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "a dropped target rang");
    }

    struct Silent;
    impl Alarm for Silent {
        fn ring(self: Arc<Self>, _kind: u8) {}
    }

    #[test]
    fn entries_of_objects_gone_do_not_pile_up_until_their_deadlines() {
        let clock: &'static Clock = Box::leak(Box::new(Clock::new()));
        clock.start();
        let kept = Arc::new(Silent);
        for _ in 0..100_000 {
            let finished = Arc::new(Silent);
            assert!(clock.schedule(&finished, Duration::from_secs(300), 0));
        }
        assert!(clock.schedule(&kept, Duration::from_secs(300), 0));
        let q = clock.queue.lock();
        assert!(q.entries.len() <= PURGE_AT_LEAST, "{} entries", q.entries.len());
        assert!(q.entries.iter().any(|d| d.1.strong_count() > 0), "the live entry was dropped");
        drop(q);
        clock.stop();
    }

    /// An alarm that schedules itself again when it rings, slowly (as the
    /// file mappings' sweep does).
    struct Again(&'static Clock, mpsc::Sender<bool>);
    impl Alarm for Again {
        fn ring(self: Arc<Self>, _kind: u8) {
            let _ = self.1.send(true);
            std::thread::sleep(Duration::from_millis(200));
            let again = self.0.schedule(&self, Duration::from_millis(10), 0);
            let _ = self.1.send(again);
        }
    }

    #[test]
    fn a_stop_while_an_alarm_schedules_again_ends() {
        let clock: &'static Clock = Box::leak(Box::new(Clock::new()));
        clock.start();
        let (tx, rx) = mpsc::channel();
        let again = Arc::new(Again(clock, tx));
        assert!(clock.schedule(&again, Duration::ZERO, 0));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true), "the alarm rang");
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            clock.stop();
            let _ = done_tx.send(());
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(false), "no clock after the stop");
        assert!(done_rx.recv_timeout(Duration::from_secs(10)).is_ok(), "the stop never ended");
    }
}
