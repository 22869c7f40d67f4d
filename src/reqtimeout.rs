//! mod_reqtimeout's limit on reading a request body (`RequestReadTimeout
//! body=...`), applied to HTTP/2 request bodies.
//!
//! Why: mod_reqtimeout works on a connection's input filters with socket
//! timeouts; it installs itself from the `process_connection` hook, which
//! a stream's secondary connection never runs (ours runs it, and has no
//! socket). Without this, a client that trickles a request body (one byte
//! a second, R.U.D.Y.) holds a worker for as long as it likes over HTTP/2,
//! where HTTP/1.1 gets 408 once the body falls below the configured rate
//! (Debian enables mod_reqtimeout by default; the stock mod_http2 has the
//! same gap). The directive's own module keeps parsing and enforcing it for
//! HTTP/1.1; this reads the same directives from the configuration tree at
//! start (`hooks::h2rs_post_config`) and applies the body stage to each
//! stream's blocking body reads (`c2::net_in`), as mod_reqtimeout does: a
//! first timeout, extended by one second for every `MinRate` bytes
//! received, up to the range's maximum.
//!
//! Nothing here touches httpd: parsing and the clock are unit-tested.

use std::time::{Duration, Instant};

/// The body stage of RequestReadTimeout for one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimit {
    /// Time allowed before any byte extends it.
    pub timeout: Duration,
    /// Extension stops here (from the start), if a range was given.
    pub max: Option<Duration>,
    /// Bytes per second that earn one more second; 0: no extension.
    pub min_rate: u32,
}

/// mod_reqtimeout's default body stage (`body=20,MinRate=500`), in effect
/// where the module is loaded and no directive sets the stage.
pub const DEFAULT: BodyLimit = BodyLimit { timeout: Duration::from_secs(20), max: None, min_rate: 500 };

/// What one server's RequestReadTimeout directives say about the body
/// stage: not mentioned (inherit), off (`body=0`), or a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BodyStage {
    #[default]
    Unset,
    Off,
    Limit(BodyLimit),
}

impl BodyStage {
    /// Reads one directive's arguments (`header=20-40,MinRate=500
    /// body=20,MinRate=500`), keeping what an earlier directive of the same
    /// server set when this one does not name the body stage. mod_reqtimeout
    /// itself refuses a malformed directive at start, so one that does not
    /// parse here changes nothing.
    pub fn apply(self, args: &str) -> BodyStage {
        let mut stage = self;
        for arg in args.split_ascii_whitespace() {
            let Some((key, value)) = arg.split_once('=') else { continue };
            if !key.eq_ignore_ascii_case("body") {
                continue;
            }
            if let Some(parsed) = parse_stage(value) {
                stage = parsed;
            }
        }
        stage
    }

    /// A virtual host's stage: its own where it set one, else the main
    /// server's, else the default.
    pub fn effective(own: BodyStage, main: BodyStage) -> Option<BodyLimit> {
        match (own, main) {
            (BodyStage::Limit(l), _) | (BodyStage::Unset, BodyStage::Limit(l)) => Some(l),
            (BodyStage::Off, _) | (BodyStage::Unset, BodyStage::Off) => None,
            (BodyStage::Unset, BodyStage::Unset) => Some(DEFAULT),
        }
    }
}

/// `20`, `20-40`, `20,MinRate=500`, `20-40,minrate=500`.
fn parse_stage(value: &str) -> Option<BodyStage> {
    let (times, rate) = match value.split_once(',') {
        Some((t, r)) => (t, Some(r)),
        None => (value, None),
    };
    let (first, max) = match times.split_once('-') {
        Some((a, b)) => (a.parse::<u32>().ok()?, Some(b.parse::<u32>().ok()?)),
        None => (times.parse::<u32>().ok()?, None),
    };
    let min_rate = match rate {
        Some(r) => {
            let (k, v) = r.split_once('=')?;
            if !k.eq_ignore_ascii_case("minrate") {
                return None;
            }
            v.parse::<u32>().ok().filter(|&v| v > 0)?
        }
        None => 0,
    };
    if first == 0 {
        return Some(BodyStage::Off);
    }
    let max = max.filter(|&m| m > first).map(|m| Duration::from_secs(m.into()));
    Some(BodyStage::Limit(BodyLimit { timeout: Duration::from_secs(first.into()), max, min_rate }))
}

/// The deadline of one request body's reads.
#[derive(Clone, Copy, Debug)]
pub struct BodyClock {
    limit: BodyLimit,
    deadline: Instant,
    cap: Option<Instant>,
}

impl BodyClock {
    pub fn start(limit: BodyLimit, now: Instant) -> BodyClock {
        BodyClock { limit, deadline: now + limit.timeout, cap: limit.max.map(|m| now + m) }
    }

    /// `n` body bytes arrived: one second more per `min_rate` of them.
    pub fn received(&mut self, n: usize) {
        if self.limit.min_rate == 0 || n == 0 {
            return;
        }
        let extra = Duration::from_secs_f64(n as f64 / f64::from(self.limit.min_rate));
        self.deadline += extra;
        if let Some(cap) = self.cap {
            self.deadline = self.deadline.min(cap);
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn limit(&self) -> BodyLimit {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(t: u64, max: Option<u64>, rate: u32) -> BodyStage {
        BodyStage::Limit(BodyLimit {
            timeout: Duration::from_secs(t),
            max: max.map(Duration::from_secs),
            min_rate: rate,
        })
    }

    #[test]
    fn reads_the_body_stage_of_a_directive() {
        let s = BodyStage::Unset;
        assert_eq!(s.apply("header=20-40,MinRate=500 body=10,MinRate=500"), limit(10, None, 500));
        assert_eq!(s.apply("body=5-30,minrate=1000"), limit(5, Some(30), 1000));
        assert_eq!(s.apply("BODY=7"), limit(7, None, 0));
        assert_eq!(s.apply("body=0"), BodyStage::Off);
        assert_eq!(s.apply("header=10"), BodyStage::Unset, "another stage only");
        // A later directive for the same server keeps what it does not name.
        assert_eq!(limit(3, None, 1).apply("handshake=5"), limit(3, None, 1));
        // Malformed (mod_reqtimeout refuses these at start): no change.
        for bad in ["body=", "body=x", "body=5,Rate=100", "body=5,MinRate=0", "body=-3", "body=5-x,MinRate=1"] {
            assert_eq!(limit(3, None, 1).apply(bad), limit(3, None, 1), "{bad}");
        }
    }

    #[test]
    fn a_virtual_host_inherits_the_main_servers_stage() {
        let own = limit(5, None, 100);
        assert_eq!(
            BodyStage::effective(own, BodyStage::Off),
            Some(BodyLimit { timeout: Duration::from_secs(5), max: None, min_rate: 100 })
        );
        assert_eq!(BodyStage::effective(BodyStage::Unset, BodyStage::Off), None);
        assert_eq!(BodyStage::effective(BodyStage::Off, own), None);
        assert_eq!(BodyStage::effective(BodyStage::Unset, BodyStage::Unset), Some(DEFAULT));
    }

    #[test]
    fn bytes_extend_the_deadline_up_to_the_range() {
        let t0 = Instant::now();
        let BodyStage::Limit(l) = limit(10, Some(15), 500) else { unreachable!() };
        let mut c = BodyClock::start(l, t0);
        assert_eq!(c.deadline(), t0 + Duration::from_secs(10));
        c.received(1000);
        assert_eq!(c.deadline(), t0 + Duration::from_secs(12));
        c.received(1_000_000);
        assert_eq!(c.deadline(), t0 + Duration::from_secs(15), "capped by the range");
        let BodyStage::Limit(l) = limit(10, None, 0) else { unreachable!() };
        let mut c = BodyClock::start(l, t0);
        c.received(1_000_000);
        assert_eq!(c.deadline(), t0 + Duration::from_secs(10), "no MinRate: no extension");
    }
}
