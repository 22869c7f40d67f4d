//! The wake-up channel from workers to a client connection (c1).
//!
//! A worker that changes a stream's state (response ready, body bytes queued,
//! body consumed, processing done) calls [`Signal::notify`] with the stream.
//! c1 waits in one poll over its socket and this signal's eventfd, so it
//! wakes for the client and for its workers alike, without spinning.
//!
//! Wake-ups are batched: the eventfd is written only when no wake-up is
//! pending yet, and a stream is listed at most once until c1 takes the list.
//! While c1 is awake (it said so with `set_awake`), a wake-up only sets the
//! pending flag: c1 takes it before it sleeps (`before_sleep`), so the
//! eventfd write and c1's read of it are saved (two syscalls per stream c1
//! runs itself).

use parking_lot::Mutex;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Implemented by what a signal lists: lets the signal de-duplicate entries.
pub trait Listed {
    /// The id c1 uses to find the entry again.
    fn list_id(&self) -> i32;
    /// The "already listed" flag of the entry.
    fn listed_flag(&self) -> &AtomicBool;
}

/// A nonblocking eventfd: readable from `post` until `drain`.
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> std::io::Result<EventFd> {
        // SAFETY: eventfd with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(EventFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the descriptor readable.
    pub fn post(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd. A full
        // counter (EAGAIN) still leaves the fd readable, which is all we
        // need.
        unsafe {
            libc::write(self.fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8);
        }
    }

    /// Makes the descriptor unreadable again (until the next `post`).
    pub fn drain(&self) {
        let mut counter: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64 from our nonblocking
        // eventfd; EAGAIN (nothing posted) is fine.
        unsafe {
            libc::read(self.fd.as_raw_fd(), &mut counter as *mut u64 as *mut libc::c_void, 8);
        }
    }
}

impl crate::stream::Wake for EventFd {
    fn wake(&self) {
        self.post();
    }
}

/// A connected pair of nonblocking local sockets whose reading end is
/// readable from `post` until `drain`: an [`EventFd`] that pollers may take
/// for a socket.
///
/// mod_proxy's tunnel (httpd 2.4) moves bytes that already wait in the
/// backend connection's filters (read together with its 101) only when the
/// client side first polls *writable*, and it polls a client for writability
/// only when that client is a socket. An eventfd given as a file would leave
/// such bytes stuck until the backend sent more.
pub struct SocketSignal {
    read_end: OwnedFd,
    write_end: OwnedFd,
}

impl SocketSignal {
    pub fn new() -> std::io::Result<SocketSignal> {
        let mut fds = [-1 as RawFd; 2];
        // SAFETY: socketpair writes two descriptors into a valid 2-array;
        // the result is checked.
        let rv = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rv != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors we own.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(SocketSignal { read_end, write_end })
    }

    /// The end a poller watches.
    pub fn fd(&self) -> RawFd {
        self.read_end.as_raw_fd()
    }

    /// Makes the watched end readable.
    pub fn post(&self) {
        let one = 1u8;
        // SAFETY: sending one byte from a valid u8 on our nonblocking socket.
        // A full buffer (EAGAIN) still leaves the other end readable; a
        // poller that shut its end down does not want more (EPIPE, and
        // MSG_NOSIGNAL keeps that from raising SIGPIPE).
        unsafe {
            libc::send(self.write_end.as_raw_fd(), &one as *const u8 as *const libc::c_void, 1, libc::MSG_NOSIGNAL);
        }
    }

    /// Makes the watched end unreadable again (until the next `post`).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: receiving into a valid buffer of its stated length from
            // our nonblocking socket.
            let n =
                unsafe { libc::recv(self.read_end.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < buf.len() as isize {
                break; // drained (short read, EAGAIN or an error)
            }
        }
    }
}

impl crate::stream::Wake for SocketSignal {
    fn wake(&self) {
        self.post();
    }
}

pub struct Signal {
    fd: EventFd,
    pending: AtomicBool,
    /// c1 runs and checks `pending` before it sleeps: no post needed.
    awake: AtomicBool,
    /// A wake-up posted to the eventfd (it is to be drained).
    posted: AtomicBool,
    ready: Mutex<Vec<i32>>,
}

impl Signal {
    pub fn new() -> std::io::Result<Signal> {
        Ok(Signal {
            fd: EventFd::new()?,
            pending: AtomicBool::new(false),
            awake: AtomicBool::new(false),
            posted: AtomicBool::new(false),
            ready: Mutex::new(Vec::new()),
        })
    }

    /// The descriptor c1 polls for readability.
    pub fn fd(&self) -> RawFd {
        self.fd.fd()
    }

    /// Lists `entry` for c1 (once) and wakes c1.
    pub fn notify<T: Listed + ?Sized>(&self, entry: &T) {
        if !entry.listed_flag().swap(true, Ordering::SeqCst) {
            self.ready.lock().push(entry.list_id());
        }
        self.wake();
    }

    /// Wakes c1 without listing anything (shutdown, timers).
    pub fn wake(&self) {
        // With `before_sleep` this is Dekker's pattern: pending is set
        // before awake is read here, and awake cleared before pending is
        // read there (all SeqCst), so either this sees c1 asleep and posts,
        // or c1 sees the wake-up pending and does not sleep.
        if !self.pending.swap(true, Ordering::SeqCst) && !self.awake.load(Ordering::SeqCst) {
            self.posted.store(true, Ordering::SeqCst);
            self.fd.post();
        }
    }

    /// c1: it runs, and takes wake-ups (`take_into`) before it sleeps or
    /// leaves (`awake` true); or it is about to leave without polling the
    /// eventfd (false: parked in the MPM, torn down).
    pub fn set_awake(&self, awake: bool) {
        self.awake.store(awake, Ordering::SeqCst);
    }

    /// c1: it is about to sleep in a poll over the eventfd. From now on
    /// wake-ups post; false (and c1 stays awake) if one is pending already:
    /// take it instead of sleeping. After the poll c1 calls
    /// `set_awake(true)`.
    pub fn before_sleep(&self) -> bool {
        self.awake.store(false, Ordering::SeqCst);
        if self.pending.load(Ordering::SeqCst) {
            self.awake.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// `take_into` a new list (tests).
    #[cfg(test)]
    pub fn take(&self) -> Vec<i32> {
        let mut ids = Vec::new();
        self.take_into(&mut ids);
        ids
    }

    /// c1: consumes the wake-up and puts the listed ids in `ids` (replacing
    /// its contents; the two lists swap, so their buffers are reused instead
    /// of allocated per wake-up). Callers must clear each entry's flag (see
    /// [`Signal::unlist`]) before reading its state, so that later changes
    /// list it again.
    pub fn take_into(&self, ids: &mut Vec<i32>) {
        // Drain first, then clear `pending`: the other order loses a
        // wake-up. A worker could post between the two; the drain would eat
        // its post while `pending` stayed true, and every later `wake` would
        // skip posting: c1 would sleep in poll with streams ready.
        // Nothing was posted unless `pending` is set (a post follows only a
        // false -> true swap): skip the read then.
        if self.pending.load(Ordering::SeqCst) {
            // Only a posted wake-up made the eventfd readable (one posted
            // after this check is drained as stale, `poll_found_readable`).
            if self.posted.swap(false, Ordering::SeqCst) {
                self.fd.drain();
            }
            self.pending.store(false, Ordering::SeqCst);
        }
        ids.clear();
        std::mem::swap(&mut *self.ready.lock(), ids);
    }

    /// c1: its poll found the descriptor readable. A waker sets `pending`
    /// before it posts, so c1 can take the wake-up and clear `pending` in
    /// between; the post then lands after the drain, and `take_into`, which
    /// reads only while `pending` is set, leaves it there. Every later poll
    /// would return at once until the next wake-up: c1 would spin, and a
    /// connection waiting for a slow worker would burn a core. This drains
    /// such a stale post. A post whose wake-up is still pending is
    /// `take_into`'s (draining it here too would only cost a read; c1 takes
    /// its wake-ups after every poll, so none is lost either way).
    pub fn poll_found_readable(&self) {
        if !self.pending.load(Ordering::SeqCst) {
            self.fd.drain();
        }
    }

    /// c1: marks `entry` as taken from the list.
    pub fn unlist<T: Listed + ?Sized>(entry: &T) {
        entry.listed_flag().store(false, Ordering::SeqCst);
    }

    /// Whether a wake-up is pending (c1 checks before it sleeps).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct E(i32, AtomicBool);
    impl Listed for E {
        fn list_id(&self) -> i32 {
            self.0
        }
        fn listed_flag(&self) -> &AtomicBool {
            &self.1
        }
    }

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn notify_dedups_and_wakes_once() {
        let s = Signal::new().unwrap();
        let a = E(1, AtomicBool::new(false));
        let b = E(3, AtomicBool::new(false));
        assert!(!readable(s.fd()));
        s.notify(&a);
        s.notify(&a);
        s.notify(&b);
        assert!(readable(s.fd()));
        assert_eq!(s.take(), vec![1, 3]);
        assert!(!readable(s.fd()));
        // Until unlisted, a is not listed again (but c1 is still woken).
        s.notify(&a);
        assert!(s.take().is_empty());
        Signal::unlist(&a);
        s.notify(&a);
        assert_eq!(s.take(), vec![1]);
    }

    /// A worker notifying while c1 takes must never leave c1 asleep with
    /// a notification pending (the race `take` orders its steps against).
    #[test]
    fn no_wake_up_is_lost_while_c1_takes() {
        race_notify_against_take(false);
    }

    /// The same with c1 saying when it is awake (no posts then) and
    /// checking before it sleeps, as c1 does.
    #[test]
    fn no_wake_up_is_lost_while_c1_is_awake() {
        race_notify_against_take(true);
    }

    fn race_notify_against_take(awake_protocol: bool) {
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;
        let signal = Arc::new(Signal::new().unwrap());
        let entry = Arc::new(E(7, AtomicBool::new(false)));
        let sent = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let producer = {
            let (signal, entry, sent, done) = (signal.clone(), entry.clone(), sent.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 1..=2_000_000u64 {
                    sent.store(i, Ordering::SeqCst);
                    signal.notify(&*entry);
                    if i % 4096 == 0 {
                        std::thread::yield_now();
                    }
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let mut seen = 0;
        signal.set_awake(awake_protocol);
        loop {
            let finished = done.load(Ordering::SeqCst);
            if awake_protocol && !signal.before_sleep() {
                // Pending: take it without sleeping.
                take_and_unlist(&signal, &entry);
                seen = sent.load(Ordering::SeqCst);
                continue;
            }
            let mut p = libc::pollfd { fd: signal.fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut p, 1, 500) };
            signal.set_awake(awake_protocol);
            if ready == 0 {
                // Asleep: only fine if nothing was sent since the last look.
                assert_eq!(sent.load(Ordering::SeqCst), seen, "lost wake-up");
                if finished {
                    break;
                }
                continue;
            }
            signal.poll_found_readable();
            take_and_unlist(&signal, &entry);
            // What c1 reads after unlisting is at least what was sent
            // before the notify it was woken for.
            seen = sent.load(Ordering::SeqCst);
            if finished && seen == 2_000_000 && !readable(signal.fd()) && !signal.is_pending() {
                break;
            }
        }
        producer.join().unwrap();
    }

    fn take_and_unlist(signal: &Signal, entry: &E) {
        if !signal.take().is_empty() {
            Signal::unlist(entry);
        }
    }

    #[test]
    fn an_awake_c1_is_not_posted_to_but_sees_the_wake_up_before_it_sleeps() {
        let s = Signal::new().unwrap();
        let a = E(9, AtomicBool::new(false));
        s.set_awake(true);
        s.notify(&a);
        assert!(!readable(s.fd()), "posted to an awake c1");
        assert!(!s.before_sleep(), "slept with a wake-up pending");
        assert_eq!(s.take(), vec![9]);
        Signal::unlist(&a);
        assert!(s.before_sleep());
        // Asleep now: wake-ups post.
        s.notify(&a);
        assert!(readable(s.fd()));
        s.set_awake(true);
        assert_eq!(s.take(), vec![9]);
        assert!(!readable(s.fd()));
    }

    /// The post of a wake-up c1 already took (the waker was between
    /// setting `pending` and posting) leaves the descriptor readable with
    /// nothing pending; `poll_found_readable` drains it, and later wake-ups
    /// still post.
    #[test]
    fn a_post_after_its_wake_up_was_taken_is_drained() {
        let s = Signal::new().unwrap();
        let a = E(5, AtomicBool::new(false));
        // The waker's first half: listed, pending set, not posted yet.
        s.ready.lock().push(a.list_id());
        a.listed_flag().store(true, Ordering::SeqCst);
        s.pending.store(true, Ordering::SeqCst);
        // c1 takes it meanwhile.
        assert_eq!(s.take(), vec![5]);
        Signal::unlist(&a);
        // The waker's second half.
        s.fd.post();
        assert!(readable(s.fd()), "the stale post");
        assert!(s.take().is_empty());
        assert!(readable(s.fd()), "take_into leaves a post it was not pending for");
        s.poll_found_readable();
        assert!(!readable(s.fd()));
        s.notify(&a);
        assert!(readable(s.fd()));
        // While a wake-up is pending its post stays for take_into.
        s.poll_found_readable();
        assert!(readable(s.fd()));
        assert_eq!(s.take(), vec![5]);
        assert!(!readable(s.fd()));
    }

    #[test]
    fn eventfd_post_and_drain() {
        let e = EventFd::new().unwrap();
        assert!(!readable(e.fd()));
        e.post();
        e.post();
        assert!(readable(e.fd()));
        e.drain();
        assert!(!readable(e.fd()));
    }

    #[test]
    fn socket_signal_post_and_drain() {
        let s = SocketSignal::new().unwrap();
        assert!(!readable(s.fd()));
        // More posts than one drain read takes.
        for _ in 0..200 {
            s.post();
        }
        assert!(readable(s.fd()));
        s.drain();
        assert!(!readable(s.fd()));
        s.post();
        assert!(readable(s.fd()));
    }
}
