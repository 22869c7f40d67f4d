//! Sessions parked in the MPM.
//!
//! An idle session (no open stream) returns its connection to the event MPM
//! in CONN_STATE_ASYNC_WAITIO, so no thread waits for an idle client. Two
//! things can still need the session while it is parked, on a thread that
//! is not running the connection:
//! - its idle timeout (`KeepAliveTimeout`, or before the client's first
//!   request about `Timeout`, as HTTP/1.1 and the stock module wait for a
//!   first request): the child's clock (`clock.rs`) sends
//!   GOAWAY(NO_ERROR, last stream) once the session has been idle that
//!   long (the client then closes; the MPM's own `Timeout` is the
//!   backstop);
//! - a graceful stop or restart: from `child_stopping`, the shutdown
//!   notice (GOAWAY with the highest stream id, and a PING); the client's
//!   answer brings the session back to a thread, which sends the final
//!   GOAWAY; a client that stays silent gets it from the clock after
//!   `STOP_NOTICE_GRACE`;
//! - after `TRIM_AFTER` of idleness, releasing what only a busy session
//!   needs (cached secondary connections, buffers), so an idle connection
//!   costs little memory without paying for that on every short pause.
//!
//! `Parking` makes those exclusive with the thread that runs the
//! connection: a session is ACTIVE (a thread runs it), PARKED (idle in the
//! MPM), CLOSING (a callback is sending GOAWAY) or DEAD (torn down). Only
//! the holder of ACTIVE or CLOSING touches the session; `activate` waits
//! out a short CLOSING. One timer chain per session: `Timer::due` is when
//! the current timer rings. A timer that finds the session re-parked more
//! recently re-arms itself for the rest of the timeout, one that finds it
//! busy or dead just ends. A park whose timeout ends before the pending
//! timer rings (the first request came, and `KeepAliveTimeout` replaces
//! the longer wait for it) arms an earlier one, which becomes the
//! current; the later one then rings into a `due` it does not match and
//! ends.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACTIVE: u8 = 0;
const PARKED: u8 = 1;
const CLOSING: u8 = 2;
const DEAD: u8 = 3;

/// What a parked session does when its owner is elsewhere.
pub trait Parked {
    /// Send GOAWAY(NO_ERROR) with this debug text, flush it and shut the
    /// connection for writing; false when it was not sent (the client is
    /// gone, or had its GOAWAY).
    fn goaway_now(&mut self, debug: &[u8]) -> bool;
    /// `LINGER_AFTER_GOAWAY` after `goaway_now`, the client silent: shut
    /// the connection for reading too, so the MPM hands it back to close.
    fn stop_reading(&mut self);
    /// Send the shutdown notice (GOAWAY with the highest stream id, and a
    /// PING) and flush it; false when it cannot be sent.
    fn shutdown_notice_now(&mut self) -> bool;
    /// Release memory kept for the next streams (the session stays).
    fn trim(&mut self);
}

/// Idle time after which a parked session releases its caches. Clients
/// that pause between requests for less (a browser's page load, h2load -m1)
/// keep them: releasing at every park made such requests 60% dearer.
pub const TRIM_AFTER: Duration = Duration::from_secs(2);

/// How long a parked session that sent its GOAWAY and FIN waits for the
/// client's FIN before it stops reading (as httpd's lingering close,
/// `SECONDS_TO_LINGER`).
const LINGER_AFTER_GOAWAY: Duration = Duration::from_secs(2);

/// How long an idle session waits for its client's next request before it
/// goes back to the MPM, when it waits at all (`Linger`).
pub const IDLE_LINGER: Duration = Duration::from_millis(1);

/// Graceful stop: how long the final GOAWAY waits for the client to answer
/// the PING behind the shutdown notice (a round trip, usually far less).
pub const STOP_NOTICE_GRACE: Duration = Duration::from_secs(1);

/// A client that came back within this time of its session's park asks
/// quickly enough that waiting `IDLE_LINGER` for it pays.
pub const QUICK_RETURN: Duration = Duration::from_millis(5);

/// Whether an idle session waits `IDLE_LINGER` for its client's next
/// request before it goes back to the MPM. A busy client's next request is
/// usually on its way, and the round trip through the MPM (poller
/// registration, wake-up of a listener and a worker) costs more than the
/// request. But the wait holds an MPM thread and costs a timed poll, and
/// for a client that does not come back soon (a browser between clicks, a
/// client pacing its requests) it is spent for nothing: 200 clients at 20
/// requests a second each cost 85 us of CPU per request with the wait
/// after every response, 72.5 without. (A busy thread is also one the
/// event MPM counts against new connections, `AsyncRequestWorkerFactor`.)
/// So a session waits only for a client that has shown it asks quickly
/// (it came back within `QUICK_RETURN` of the last park), and for a new
/// connection's first request, which clients send right behind their
/// preface.
#[derive(Debug, Default)]
pub struct Linger {
    parked_at: Option<Instant>,
    quick_client: bool,
}

impl Linger {
    /// Wait for the next request before parking? `first_request`: the
    /// connection has not had one yet.
    pub fn waits(&self, first_request: bool) -> bool {
        first_request || self.quick_client
    }

    /// The session went back to the MPM, idle.
    pub fn parked(&mut self, now: Instant) {
        self.parked_at = Some(now);
    }

    /// The MPM handed the connection back (the client sent something).
    pub fn resumed(&mut self, now: Instant) {
        self.quick_client = self.parked_at.take().is_some_and(|at| now.saturating_duration_since(at) <= QUICK_RETURN);
    }
}

pub struct Parking {
    state: AtomicU8,
    timer: Mutex<Timer>,
    /// The caches were released since the session was last parked.
    trimmed: AtomicBool,
    /// A stop (notice or final GOAWAY) reached the parked session: another
    /// `stop` for the same shutdown does nothing. A lock, not a flag: the
    /// check and the act are one step for two callers at once.
    stopped: Mutex<bool>,
    idle_timeout: Duration,
    /// The idle timeout until the client's first request.
    first_request_timeout: Duration,
    /// The session has had a request (`park` says).
    served: AtomicBool,
    /// The session; valid while the state is not DEAD.
    session: Mutex<Option<SessionPtr>>,
}

struct Timer {
    /// When the session was last parked.
    parked_at: Instant,
    /// When the current timer rings; None when none is pending.
    due: Option<Instant>,
}

struct SessionPtr(*mut dyn Parked);
// SAFETY: the pointer is only dereferenced by the thread that moved the
// state to CLOSING, i.e. with exclusive access to the session.
unsafe impl Send for SessionPtr {}

/// Puts a session `with_parked` held (CLOSING) back to PARKED when dropped.
struct Reopen<'a>(&'a AtomicU8);

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        self.0.store(PARKED, Ordering::Release);
    }
}

impl Parking {
    pub fn new(idle_timeout: Duration, first_request_timeout: Duration) -> Arc<Parking> {
        Arc::new(Parking {
            state: AtomicU8::new(ACTIVE),
            timer: Mutex::new(Timer { parked_at: Instant::now(), due: None }),
            trimmed: AtomicBool::new(false),
            stopped: Mutex::new(false),
            idle_timeout,
            first_request_timeout,
            served: AtomicBool::new(false),
            session: Mutex::new(None),
        })
    }

    /// How long the session may stay idle now.
    fn limit(&self) -> Duration {
        if self.served.load(Ordering::Acquire) {
            self.idle_timeout
        } else {
            self.first_request_timeout
        }
    }

    /// Registers the session (its address must stay stable until `kill`).
    pub fn set_session(&self, session: *mut dyn Parked) {
        *self.session.lock() = Some(SessionPtr(session));
    }

    /// The thread that runs the connection takes the session back.
    pub fn activate(&self) {
        loop {
            match self.state.compare_exchange(PARKED, ACTIVE, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(ACTIVE) | Err(DEAD) => return,
                Err(_) => std::thread::yield_now(), // CLOSING: a GOAWAY is being written
            }
        }
    }

    /// The session goes back to the MPM, idle; `served`: it has had a
    /// request. Returns when a timer must be armed (`arm_timer`): none is
    /// pending, or the pending one rings later than this park's first
    /// look is due.
    pub fn park(&self, served: bool) -> Option<Duration> {
        // Under the timer's lock, so that a timer deciding the chain ends
        // (the session was busy) and this park are ordered.
        let mut timer = self.timer.lock();
        let now = Instant::now();
        timer.parked_at = now;
        self.served.store(served, Ordering::Release);
        self.trimmed.store(false, Ordering::Release);
        self.state.store(PARKED, Ordering::Release);
        let first = self.first_timer();
        match timer.due {
            Some(due) if due <= now + first => None,
            _ => {
                timer.due = Some(now + first);
                Some(first)
            }
        }
    }

    /// The session is being torn down: no callback may touch it afterwards.
    pub fn kill(&self) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s == DEAD {
                return;
            }
            if s != CLOSING && self.state.compare_exchange(s, DEAD, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                break;
            }
            std::thread::yield_now();
        }
        *self.session.lock() = None;
    }

    /// Runs `f` on the session if it is parked (from another thread).
    fn with_parked(&self, f: impl FnOnce(&mut dyn Parked)) -> bool {
        if self.state.compare_exchange(PARKED, CLOSING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        // Back to PARKED also when `f` panics (the clock thread's guard
        // catches it): left CLOSING, every thread that takes the session
        // (`activate`, `kill`) would wait for it for ever, at full CPU.
        let _reopen = Reopen(&self.state);
        if let Some(ptr) = self.session.lock().as_ref() {
            // SAFETY: CLOSING gives this thread exclusive access; the session
            // outlives the non-DEAD states (kill waits for CLOSING to end).
            f(unsafe { &mut *ptr.0 });
        }
        true
    }

    /// The first timer after parking: when to call `on_timer`.
    fn first_timer(&self) -> Duration {
        TRIM_AFTER.min(self.limit())
    }

    /// Timer decision: Some(delay) to re-arm, None when done. The lock is
    /// held throughout, also while a GOAWAY or trim is written: the
    /// session cannot be re-parked meanwhile (the owner's `activate` waits
    /// out CLOSING, and its `park` takes the lock).
    fn on_timer(self: &Arc<Self>) -> Option<Duration> {
        let mut timer = self.timer.lock();
        let now = Instant::now();
        if timer.due.is_none_or(|due| due > now) {
            // An earlier timer replaced this one (it is current, or its
            // chain ended).
            return None;
        }
        timer.due = None;
        if self.state.load(Ordering::Acquire) != PARKED {
            return None;
        }
        let idle = now.saturating_duration_since(timer.parked_at);
        let limit = self.limit();
        if idle >= limit {
            self.goaway_and_linger(b"idle timeout");
            return None;
        }
        let trimmed = self.trimmed.load(Ordering::Acquire);
        if idle >= TRIM_AFTER && !trimmed {
            self.with_parked(|s| {
                s.trim();
                self.trimmed.store(true, Ordering::Release);
            });
        }
        let rest = if idle < TRIM_AFTER && !trimmed { (TRIM_AFTER - idle).min(limit - idle) } else { limit - idle };
        timer.due = Some(now + rest);
        Some(rest)
    }

    /// The child stops. Graceful: a parked session sends its shutdown
    /// notice; the final GOAWAY follows when the client answers (the
    /// session runs again) or, from the child's clock, after
    /// `STOP_NOTICE_GRACE` (a final GOAWAY at once would refuse requests
    /// already on the wire). Hard: the final GOAWAY at once.
    ///
    /// Called by `child_stopping` and by a session that parked just as the
    /// stop began (it may have found the session still ACTIVE): the first
    /// that reaches the parked session acts, the other does nothing.
    pub fn stop(self: &Arc<Self>, graceful: bool) {
        let mut stopped = self.stopped.lock();
        if *stopped {
            return;
        }
        let mut noticed = false;
        let reached = graceful && self.with_parked(|s| noticed = s.shutdown_notice_now());
        if noticed && arm_stop_deadline(self, STOP_NOTICE_GRACE) {
            *stopped = true;
            return;
        }
        if self.stop_deadline() || reached {
            *stopped = true;
        }
    }

    /// The shutdown notice's grace has passed: a session still parked
    /// (its client did not answer) gets the final GOAWAY.
    fn stop_deadline(self: &Arc<Self>) -> bool {
        self.goaway_and_linger(b"server shutting down")
    }

    /// `goaway_now`, and `stop_reading` after `LINGER_AFTER_GOAWAY` if the
    /// session is still parked then (without a clock, at once). False when
    /// the session was not parked.
    fn goaway_and_linger(self: &Arc<Self>, debug: &[u8]) -> bool {
        let mut sent = false;
        let parked = self.with_parked(|s| sent = s.goaway_now(debug));
        if sent && !crate::clock::schedule(self, LINGER_AFTER_GOAWAY, STOP_READING) {
            self.with_parked(|s| s.stop_reading());
        }
        parked
    }
}

/// `Parking`'s alarms on the child's clock (`clock.rs`).
const IDLE_TIMER: u8 = 0;
const STOP_DEADLINE: u8 = 1;
const GRACEFUL_STOP: u8 = 2;
const STOP_READING: u8 = 3;

/// A graceful stop of the child, for a parked session: its shutdown
/// notice is written from the clock's thread (`Parking::stop`), not from
/// the MPM's thread that signals the stop (the event MPM's listener for
/// MaxConnectionsPerChild), which every session's blocking write, up to
/// `Timeout` for a client that reads nothing, held from its other
/// connections. False when no clock runs.
pub fn stop_gracefully_later(parking: &Arc<Parking>) -> bool {
    crate::clock::schedule(parking, Duration::ZERO, GRACEFUL_STOP)
}

impl crate::clock::Alarm for Parking {
    fn ring(self: Arc<Self>, kind: u8) {
        if kind == STOP_DEADLINE {
            self.stop_deadline();
        } else if kind == GRACEFUL_STOP {
            self.stop(true);
        } else if kind == STOP_READING {
            self.with_parked(|s| s.stop_reading());
        } else if let Some(rest) = self.on_timer() {
            arm_timer(&self, rest);
        }
    }
}

/// Calls `parking` back (`Parking::on_timer`) after `after`. False when no
/// clock runs.
pub fn arm_timer(parking: &Arc<Parking>, after: Duration) -> bool {
    if !crate::clock::schedule(parking, after, IDLE_TIMER) {
        parking.timer.lock().due = None;
        return false;
    }
    true
}

/// Calls `parking.stop_deadline` after `after`. False when no clock runs.
fn arm_stop_deadline(parking: &Arc<Parking>, after: Duration) -> bool {
    crate::clock::schedule(parking, after, STOP_DEADLINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(u32, u32);
    impl Parked for Fake {
        fn goaway_now(&mut self, _debug: &[u8]) -> bool {
            self.0 += 1;
            true
        }
        fn stop_reading(&mut self) {}
        fn shutdown_notice_now(&mut self) -> bool {
            false
        }
        fn trim(&mut self) {
            self.1 += 1;
        }
    }

    struct Panicking;
    impl Parked for Panicking {
        fn goaway_now(&mut self, _debug: &[u8]) -> bool {
            panic!("injected")
        }
        fn stop_reading(&mut self) {}
        fn shutdown_notice_now(&mut self) -> bool {
            false
        }
        fn trim(&mut self) {}
    }

    #[test]
    fn a_panic_on_a_parked_session_leaves_it_parked() {
        let parking = Parking::new(Duration::from_secs(5), Duration::from_secs(5));
        let mut session = Panicking;
        parking.set_session(&mut session as *mut dyn Parked);
        parking.park(true);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parking.with_parked(|s| {
                s.goaway_now(b"x");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(parking.state.load(Ordering::Acquire), PARKED, "not left CLOSING");
        // The owner takes it back (before: waited for CLOSING to end, for ever).
        parking.activate();
        assert_eq!(parking.state.load(Ordering::Acquire), ACTIVE);
        parking.kill();
    }

    #[test]
    fn linger_only_for_a_client_that_came_back_quickly() {
        let t0 = Instant::now();
        let mut l = Linger::default();
        assert!(l.waits(true), "a new connection's first request follows its preface");
        assert!(!l.waits(false), "after that, a new connection has shown nothing yet");
        l.resumed(t0);
        assert!(!l.waits(false), "a first call is no return");
        l.parked(t0);
        l.resumed(t0 + QUICK_RETURN / 2);
        assert!(l.waits(false), "back within QUICK_RETURN");
        // Lingering failed (the client paused): parked again, came back late.
        l.parked(t0 + QUICK_RETURN);
        l.resumed(t0 + QUICK_RETURN * 3);
        assert!(!l.waits(false), "back after more than QUICK_RETURN");
        l.parked(t0 + QUICK_RETURN * 4);
        l.resumed(t0 + QUICK_RETURN * 5);
        assert!(l.waits(false), "exactly QUICK_RETURN counts as quick");
    }

    impl Parking {
        /// As if `by` had passed since the park and the timer was armed.
        fn age(&self, by: Duration) {
            let mut t = self.timer.lock();
            t.parked_at -= by;
            if let Some(due) = &mut t.due {
                *due -= by;
            }
        }
    }

    #[test]
    fn states_and_timer_decisions() {
        let mut fake = Box::new(Fake(0, 0));
        let p = Parking::new(Duration::from_millis(50), Duration::from_millis(50));
        p.set_session(&mut *fake as *mut dyn Parked);
        assert_eq!(p.park(true), Some(Duration::from_millis(50)));
        assert_eq!(p.park(true), None, "the pending timer rings in time");
        assert!(p.on_timer().is_none(), "a timer before its time is not the current one");
        assert_eq!(fake.0, 0);
        p.age(Duration::from_millis(50));
        assert!(p.on_timer().is_none());
        assert_eq!(fake.0, 1, "idle timeout: GOAWAY");
        // Busy sessions are left alone.
        p.activate();
        p.stop(true);
        assert_eq!(fake.0, 1);
        assert!(p.park(true).is_some());
        p.stop(true);
        assert_eq!(fake.0, 2);
        p.stop(true);
        assert_eq!(fake.0, 2, "one stop acts");
        p.kill();
        assert_eq!(fake.1, 0, "idle timeout below TRIM_AFTER: nothing to trim first");
    }

    /// A timer that finds the session busy ends the chain; the next park
    /// arms a new one (it is never left without).
    #[test]
    fn a_timer_that_finds_the_session_busy_leaves_the_next_park_its_own() {
        let mut fake = Box::new(Fake(0, 0));
        let p = Parking::new(Duration::from_millis(50), Duration::from_millis(50));
        p.set_session(&mut *fake as *mut dyn Parked);
        assert!(p.park(true).is_some());
        p.activate();
        p.age(Duration::from_millis(50));
        assert!(p.on_timer().is_none());
        assert_eq!(fake.0, 0);
        assert!(p.park(true).is_some(), "no timer pending any more");
        p.kill();
    }

    /// Graceful stop: a parked session sends the shutdown notice, and the
    /// clock sends the final GOAWAY once the grace has passed without
    /// the session running again (its client did not answer).
    #[test]
    fn a_parked_session_gets_the_notice_then_after_the_grace_the_final_goaway() {
        use std::sync::atomic::AtomicU32;
        struct Noticing {
            goaways: Arc<AtomicU32>,
            stopped_reading: Arc<AtomicU32>,
            notices: u32,
        }
        impl Parked for Noticing {
            fn goaway_now(&mut self, _debug: &[u8]) -> bool {
                self.goaways.fetch_add(1, Ordering::SeqCst);
                true
            }
            fn stop_reading(&mut self) {
                self.stopped_reading.fetch_add(1, Ordering::SeqCst);
            }
            fn shutdown_notice_now(&mut self) -> bool {
                self.notices += 1;
                true
            }
            fn trim(&mut self) {}
        }
        crate::clock::start();
        let goaways = Arc::new(AtomicU32::new(0));
        let stopped_reading = Arc::new(AtomicU32::new(0));
        let mut fake =
            Box::new(Noticing { goaways: goaways.clone(), stopped_reading: stopped_reading.clone(), notices: 0 });
        let p = Parking::new(Duration::from_secs(60), Duration::from_secs(60));
        p.set_session(&mut *fake as *mut dyn Parked);
        assert!(p.park(true).is_some());
        p.stop(true);
        assert_eq!(goaways.load(Ordering::SeqCst), 0, "the final GOAWAY waits for the client's answer");
        // The session that parked as the stop began asks too: nothing more.
        p.stop(true);
        assert_eq!((goaways.load(Ordering::SeqCst), fake.notices), (0, 1));
        let deadline = Instant::now() + STOP_NOTICE_GRACE + Duration::from_secs(5);
        while goaways.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no final GOAWAY from the clock");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The client stays silent after the GOAWAY and FIN: the session
        // stops reading after the linger, so the MPM hands it back.
        let goaway_at = Instant::now();
        assert_eq!(stopped_reading.load(Ordering::SeqCst), 0, "reading stops only after the linger");
        while stopped_reading.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < goaway_at + LINGER_AFTER_GOAWAY + Duration::from_secs(5), "reading never stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(goaway_at.elapsed() >= LINGER_AFTER_GOAWAY - Duration::from_millis(100));
        p.kill();
        assert_eq!((goaways.load(Ordering::SeqCst), fake.notices), (1, 1));
        // A hard stop: the final GOAWAY at once, no notice.
        let p = Parking::new(Duration::from_secs(60), Duration::from_secs(60));
        p.set_session(&mut *fake as *mut dyn Parked);
        assert!(p.park(true).is_some());
        p.stop(false);
        p.kill();
        assert_eq!((goaways.load(Ordering::SeqCst), fake.notices), (2, 1));
    }

    /// Before its first request a session waits `first_request_timeout`,
    /// after it the (shorter) idle timeout, also when the first request
    /// came while the long wait's timer was pending: that park arms an
    /// earlier timer, and the replaced one does nothing when it rings.
    #[test]
    fn the_first_request_is_waited_for_longer() {
        let mut fake = Box::new(Fake(0, 0));
        let p = Parking::new(Duration::from_millis(40), Duration::from_millis(400));
        p.set_session(&mut *fake as *mut dyn Parked);
        assert_eq!(p.park(false), Some(Duration::from_millis(400)));
        p.age(Duration::from_millis(100));
        // A request came; idle again: the idle timeout applies.
        p.activate();
        assert_eq!(p.park(true), Some(Duration::from_millis(40)), "an earlier timer than the pending one");
        p.age(Duration::from_millis(40));
        assert!(p.on_timer().is_none());
        assert_eq!(fake.0, 1, "GOAWAY after the idle timeout, not the first request's");
        // The replaced timer rings later: not the current one.
        p.age(Duration::from_millis(300));
        assert!(p.on_timer().is_none());
        assert_eq!(fake.0, 1);
        p.kill();
    }

    #[test]
    fn a_long_idle_session_is_trimmed_once_before_its_goaway() {
        let mut fake = Box::new(Fake(0, 0));
        let p = Parking::new(TRIM_AFTER + Duration::from_millis(100), TRIM_AFTER + Duration::from_millis(100));
        p.set_session(&mut *fake as *mut dyn Parked);
        assert_eq!(p.park(true), Some(TRIM_AFTER));
        // The first timer: trimmed, re-armed for the rest of the timeout.
        p.age(TRIM_AFTER);
        let rest = p.on_timer().expect("re-armed");
        assert!(rest <= Duration::from_millis(100), "{rest:?}");
        assert_eq!((fake.0, fake.1), (0, 1));
        p.age(Duration::from_millis(100));
        assert!(p.on_timer().is_none());
        assert_eq!((fake.0, fake.1), (1, 1));
        // Parked again after a request: trimmed again later.
        p.activate();
        assert_eq!(p.park(true), Some(TRIM_AFTER));
        p.age(TRIM_AFTER);
        assert!(p.on_timer().is_some());
        assert_eq!(fake.1, 2);
        p.kill();
    }
}
