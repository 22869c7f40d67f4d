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
}

#[derive(Default)]
struct Queue {
    entries: BinaryHeap<Due>,
    stop: bool,
}

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

static CLOCK: once_cell::sync::Lazy<Clock> =
    once_cell::sync::Lazy::new(|| Clock { queue: Mutex::new(Queue::default()), wake: Condvar::new() });
static THREAD: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

/// Starts the clock's thread (child_init).
pub fn start() {
    let mut t = THREAD.lock();
    if t.is_some() {
        return;
    }
    CLOCK.queue.lock().stop = false;
    *t = std::thread::Builder::new().name("h2rs-clock".into()).spawn(main).ok();
}

/// Stops and joins the clock's thread (child exit). Pending alarms do not
/// ring.
pub fn stop() {
    CLOCK.queue.lock().stop = true;
    CLOCK.wake.notify_all();
    if let Some(t) = THREAD.lock().take() {
        let _ = t.join();
    }
    CLOCK.queue.lock().entries.clear();
}

/// Rings `target` with `kind` after `after`. False when no clock runs.
pub fn schedule<A: Alarm + 'static>(target: &Arc<A>, after: Duration, kind: u8) -> bool {
    if THREAD.lock().is_none() {
        return false;
    }
    let weak: Weak<dyn Alarm> = Arc::downgrade(target) as Weak<dyn Alarm>;
    let mut q = CLOCK.queue.lock();
    let due = Instant::now() + after;
    let earliest = q.entries.peek().map(|d| d.0 > due).unwrap_or(true);
    q.entries.push(Due(due, weak, kind));
    drop(q);
    if earliest {
        CLOCK.wake.notify_all();
    }
    true
}

fn main() {
    let mut q = CLOCK.queue.lock();
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
                q = CLOCK.queue.lock();
            }
            Some(due) => {
                CLOCK.wake.wait_for(&mut q, due - now);
            }
            None => {
                CLOCK.wake.wait(&mut q);
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
}
