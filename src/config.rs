//! The H2* directives: parsing (pure, unit-tested), per-server and
//! per-directory configuration with httpd's merge semantics, and the
//! effective values with the stock module's defaults.
//!
//! Every directive of the stock mod_http2 is accepted with the same syntax
//! and context. Server push is deliberately not provided (browsers removed
//! it): its directives are parsed and validated, and post_config warns once.

use std::time::Duration;

/// The stock module's defaults.
pub mod defaults {
    use crate::limits::directive;
    pub const MAX_SESSION_STREAMS: u32 = directive::MAX_SESSION_STREAMS.1;
    pub const WINDOW_SIZE: u32 = directive::WINDOW_SIZE.1;
    pub const MAX_WORKER_IDLE_SECS: u32 = 600;
    /// Workers a child starts when H2MinWorkers is not set; the rest start
    /// as the load needs them.
    pub const WORKERS_AT_START: u32 = 1;
    pub const STREAM_MAX_MEM_SIZE: usize = directive::STREAM_MAX_MEM_SIZE.1;
    pub const TLS_WARMUP_SIZE: u64 = 1024 * 1024;
    pub const PUSH_DIARY_SIZE: u32 = 256;
    pub const MAX_STREAM_ERRORS: u32 = directive::MAX_STREAM_ERRORS.1;
}

/// An on/off/None tri-state, where None means "not set here, inherit".
pub type Flag = Option<bool>;

/// Per-server (virtual host) configuration. `None` = not configured here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerConfig {
    pub max_session_streams: Option<u32>,
    pub window_size: Option<u32>,
    pub min_workers: Option<u32>,
    pub max_workers: Option<u32>,
    pub max_worker_idle_secs: Option<u32>,
    pub stream_max_mem_size: Option<usize>,
    pub modern_tls_only: Flag,
    pub upgrade: Flag,
    pub direct: Flag,
    pub tls_warmup_size: Option<u64>,
    pub tls_cooldown_secs: Option<u32>,
    pub push: Flag,
    pub push_priorities: Vec<PushPriority>,
    pub push_diary_size: Option<u32>,
    pub early_hints: Flag,
    pub padding_bits: Option<u32>,
    pub output_buffering: Flag,
    pub stream_timeout: Option<Duration>,
    pub max_data_frame_len: Option<u32>,
    pub max_header_block_len: Option<u32>,
    pub max_stream_errors: Option<u32>,
    pub websockets: Flag,
    pub copy_files: Flag,
    pub proxy_requests: Flag,
    pub push_resources: Vec<PushResource>,
    pub early_hint_headers: Vec<(String, String)>,
    /// Deprecated directives seen (for one warning at startup).
    pub obsolete_seen: Vec<&'static str>,
    /// Numbers above what this module supports, lowered to its limit
    /// ("H2MaxWorkers 10000 (using 4096)"), for one warning at startup:
    /// the stock module takes any number there, so a configuration that
    /// starts with it starts with this one.
    pub clamped: Vec<String>,
    /// mod_reqtimeout's body stage for this server (None: off, or the
    /// module is not loaded), read from the configuration tree once the
    /// configuration is complete (post_config; `reqtimeout`).
    pub request_body_limit: std::sync::OnceLock<Option<crate::reqtimeout::BodyLimit>>,
}

/// Per-directory configuration: the directives allowed in <Directory>,
/// <Location> and .htaccess.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirConfig {
    pub upgrade: Flag,
    pub push: Flag,
    pub copy_files: Flag,
    pub push_resources: Vec<PushResource>,
    pub early_hint_headers: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PushPriority {
    pub content_type: String,
    pub dependency: String,
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PushResource {
    pub uri: String,
    pub critical: bool,
}

fn pick<T: Clone>(add: &Option<T>, base: &Option<T>) -> Option<T> {
    add.clone().or_else(|| base.clone())
}

fn pick_list<T: Clone>(add: &[T], base: &[T]) -> Vec<T> {
    if add.is_empty() {
        base.to_vec()
    } else {
        add.to_vec()
    }
}

/// The lists a section adds to its parent's, as the stock module merges
/// them (H2PushResource: the parent's first; H2EarlyHint, an
/// `apr_table_overlay`: the section's own first).
fn joined<T: Clone>(first: &[T], then: &[T]) -> Vec<T> {
    first.iter().chain(then).cloned().collect()
}

impl ServerConfig {
    /// httpd's merge: a virtual host inherits what it does not set itself.
    pub fn merge(base: &ServerConfig, add: &ServerConfig) -> ServerConfig {
        ServerConfig {
            max_session_streams: pick(&add.max_session_streams, &base.max_session_streams),
            window_size: pick(&add.window_size, &base.window_size),
            min_workers: pick(&add.min_workers, &base.min_workers),
            max_workers: pick(&add.max_workers, &base.max_workers),
            max_worker_idle_secs: pick(&add.max_worker_idle_secs, &base.max_worker_idle_secs),
            stream_max_mem_size: pick(&add.stream_max_mem_size, &base.stream_max_mem_size),
            modern_tls_only: pick(&add.modern_tls_only, &base.modern_tls_only),
            upgrade: pick(&add.upgrade, &base.upgrade),
            direct: pick(&add.direct, &base.direct),
            tls_warmup_size: pick(&add.tls_warmup_size, &base.tls_warmup_size),
            tls_cooldown_secs: pick(&add.tls_cooldown_secs, &base.tls_cooldown_secs),
            push: pick(&add.push, &base.push),
            push_priorities: pick_list(&add.push_priorities, &base.push_priorities),
            push_diary_size: pick(&add.push_diary_size, &base.push_diary_size),
            early_hints: pick(&add.early_hints, &base.early_hints),
            padding_bits: pick(&add.padding_bits, &base.padding_bits),
            output_buffering: pick(&add.output_buffering, &base.output_buffering),
            stream_timeout: pick(&add.stream_timeout, &base.stream_timeout),
            max_data_frame_len: pick(&add.max_data_frame_len, &base.max_data_frame_len),
            max_header_block_len: pick(&add.max_header_block_len, &base.max_header_block_len),
            max_stream_errors: pick(&add.max_stream_errors, &base.max_stream_errors),
            websockets: pick(&add.websockets, &base.websockets),
            copy_files: pick(&add.copy_files, &base.copy_files),
            proxy_requests: pick(&add.proxy_requests, &base.proxy_requests),
            push_resources: joined(&base.push_resources, &add.push_resources),
            early_hint_headers: joined(&add.early_hint_headers, &base.early_hint_headers),
            obsolete_seen: pick_list(&add.obsolete_seen, &base.obsolete_seen),
            clamped: pick_list(&add.clamped, &base.clamped),
            request_body_limit: std::sync::OnceLock::new(),
        }
    }

    pub fn max_session_streams(&self) -> u32 {
        self.max_session_streams.unwrap_or(defaults::MAX_SESSION_STREAMS)
    }
    pub fn window_size(&self) -> u32 {
        self.window_size.unwrap_or(defaults::WINDOW_SIZE)
    }
    pub fn stream_max_mem_size(&self) -> usize {
        self.stream_max_mem_size.unwrap_or(defaults::STREAM_MAX_MEM_SIZE)
    }
    pub fn modern_tls_only(&self) -> bool {
        self.modern_tls_only.unwrap_or(true)
    }
    /// H2Direct: default on for cleartext, off for TLS.
    pub fn direct(&self, is_tls: bool) -> bool {
        self.direct.unwrap_or(!is_tls)
    }
    /// H2Upgrade: default on for cleartext, off for TLS.
    pub fn upgrade(&self, is_tls: bool) -> bool {
        self.upgrade.unwrap_or(!is_tls)
    }
    /// H2StreamTimeout, or the server's `Timeout` when unset or 0.
    pub fn stream_timeout(&self, server_timeout: Duration) -> Duration {
        self.stream_timeout.filter(|t| !t.is_zero()).unwrap_or(server_timeout)
    }
    pub fn output_buffering(&self) -> bool {
        self.output_buffering.unwrap_or(true)
    }
    pub fn early_hints(&self) -> bool {
        self.early_hints.unwrap_or(false)
    }
    pub fn websockets(&self) -> bool {
        self.websockets.unwrap_or(false)
    }
    pub fn max_data_frame_len(&self) -> u32 {
        self.max_data_frame_len.unwrap_or(0)
    }
    pub fn max_header_block_len(&self) -> u32 {
        self.max_header_block_len.unwrap_or(0)
    }
    pub fn max_stream_errors(&self) -> u32 {
        self.max_stream_errors.unwrap_or(defaults::MAX_STREAM_ERRORS)
    }
    pub fn padding_bits(&self) -> u32 {
        self.padding_bits.unwrap_or(0)
    }
    pub fn tls_warmup_size(&self) -> u64 {
        self.tls_warmup_size.unwrap_or(defaults::TLS_WARMUP_SIZE)
    }
    pub fn proxy_requests(&self) -> bool {
        self.proxy_requests.unwrap_or(false)
    }
    pub fn max_worker_idle(&self) -> Duration {
        Duration::from_secs(self.max_worker_idle_secs.unwrap_or(defaults::MAX_WORKER_IDLE_SECS) as u64)
    }

    /// (min, max) workers, with the stock defaults: min = ThreadsPerChild,
    /// max = max(4, 1.5 * min).
    pub fn workers(&self, threads_per_child: u32) -> (u32, u32) {
        // H2MaxWorkers alone below ThreadsPerChild caps the default
        // minimum too (it was raised to the minimum: the cap ignored).
        let default_min = threads_per_child.max(1).min(self.max_workers.unwrap_or(u32::MAX));
        let min = self.min_workers.unwrap_or(default_min);
        let max = self.max_workers.unwrap_or((3 * min / 2).max(4));
        (min, max.max(min))
    }

    /// Workers a child starts with. An admin who sets H2MinWorkers gets
    /// them ready, as with the stock module. By default only
    /// `WORKERS_AT_START`: most small requests run on the connection's own
    /// thread, each started worker holds pages of its stack, and the pool
    /// grows within microseconds once jobs wait (up to the same minimum it
    /// then keeps).
    pub fn workers_at_start(&self) -> u32 {
        self.min_workers.unwrap_or(defaults::WORKERS_AT_START)
    }
}

impl DirConfig {
    pub fn merge(base: &DirConfig, add: &DirConfig) -> DirConfig {
        DirConfig {
            upgrade: pick(&add.upgrade, &base.upgrade),
            push: pick(&add.push, &base.push),
            copy_files: pick(&add.copy_files, &base.copy_files),
            push_resources: joined(&base.push_resources, &add.push_resources),
            early_hint_headers: joined(&add.early_hint_headers, &base.early_hint_headers),
        }
    }
}

/// Where a directive appears: the server (or virtual host) level, or inside
/// a directory-type section / .htaccess.
pub enum Target<'a> {
    Server(&'a mut ServerConfig),
    Dir(&'a mut DirConfig),
}

fn parse_flag(directive: &str, arg: &str) -> Result<bool, String> {
    match arg.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{directive}: '{arg}' is not allowed, use 'on' or 'off'")),
    }
}

fn parse_num(directive: &str, arg: &str, min: u64, max: u64) -> Result<u64, String> {
    parse_num_allowing(directive, arg, min, max, || format!("{min} to {max}"))
}

/// A number from `min` to `max`; the errors name the directive and
/// `allowed()`.
fn parse_num_allowing(
    directive: &str,
    arg: &str,
    min: u64,
    max: u64,
    allowed: impl Fn() -> String,
) -> Result<u64, String> {
    let value: u64 =
        arg.trim().parse().map_err(|_| format!("{directive}: '{arg}' is not a number (allowed: {})", allowed()))?;
    if value < min || value > max {
        return Err(format!("{directive}: {value} is out of range (allowed: {})", allowed()));
    }
    Ok(value)
}

/// `parse_num` for a directive whose stock counterpart takes any number
/// above its minimum: a value above `max` is lowered to it and noted in
/// `clamped` (warned about at startup) rather than refused.
fn parse_num_clamped(directive: &str, arg: &str, min: u64, max: u64, clamped: &mut Vec<String>) -> Result<u64, String> {
    let value = parse_num_allowing(directive, arg, min, u64::MAX, || format!("{min} or more"))?;
    if value > max {
        clamped.push(format!("{directive} {value} (using {max})"));
        return Ok(max);
    }
    Ok(value)
}

fn expect_args(directive: &str, args: &[&str], min: usize, max: usize) -> Result<(), String> {
    if args.len() < min || args.len() > max {
        let want = if min == max {
            format!("{min} argument{}", if min == 1 { "" } else { "s" })
        } else {
            format!("{min} to {max} arguments")
        };
        return Err(format!("{directive} takes {want}, got {}", args.len()));
    }
    Ok(())
}

/// Applies one directive. Errors name the directive and the allowed values;
/// httpd prefixes them with the config file and line.
pub fn apply(target: Target<'_>, directive: &str, args: &[&str]) -> Result<(), String> {
    const U31: u64 = i32::MAX as u64;
    // Worker threads per child: more would be a configuration mistake
    // (each holds a stack), not a wish this module could grant.
    const MAX_WORKERS: u64 = 4096;
    let d = directive;
    // Directives that may appear per directory.
    let dir_capable = matches!(
        d.to_ascii_lowercase().as_str(),
        "h2upgrade" | "h2push" | "h2copyfiles" | "h2pushresource" | "h2earlyhint"
    );
    let (server, dir) = match target {
        Target::Server(s) => (Some(s), None),
        Target::Dir(dc) if dir_capable => (None, Some(dc)),
        Target::Dir(_) => {
            return Err(format!("{d} is not allowed in a directory context"));
        }
    };

    // Single-argument flags settable on both levels.
    macro_rules! flag_both {
        ($field:ident) => {{
            expect_args(d, args, 1, 1)?;
            let v = parse_flag(d, args[0])?;
            match (server, dir) {
                (Some(s), _) => s.$field = Some(v),
                (_, Some(dc)) => dc.$field = Some(v),
                _ => {}
            }
            return Ok(());
        }};
    }
    match d.to_ascii_lowercase().as_str() {
        "h2upgrade" => flag_both!(upgrade),
        "h2push" => flag_both!(push),
        "h2copyfiles" => flag_both!(copy_files),
        "h2pushresource" => {
            // The stock syntax: H2PushResource [add] path [critical].
            expect_args(d, args, 1, 3)?;
            let rest = match args {
                [first, rest @ ..] if first.eq_ignore_ascii_case("add") && !rest.is_empty() => rest,
                _ => args,
            };
            let critical = match &rest[1..] {
                [] => false,
                [option] if option.eq_ignore_ascii_case("critical") => true,
                [option] => return Err(format!("{d}: unknown option '{option}', use 'critical'")),
                _ => return Err(format!("{d}: use H2PushResource [add] path [critical]")),
            };
            let res = PushResource { uri: rest[0].to_string(), critical };
            match (server, dir) {
                (Some(s), _) => s.push_resources.push(res),
                (_, Some(dc)) => dc.push_resources.push(res),
                _ => {}
            }
            return Ok(());
        }
        "h2earlyhint" => {
            expect_args(d, args, 2, 2)?;
            let name = args[0];
            if !crate::request::is_token(name.as_bytes()) {
                return Err(format!("{d}: '{name}' is not a valid header name"));
            }
            if crate::request::has_forbidden_value_byte(args[1].as_bytes()) {
                return Err(format!("{d}: the header value must not contain line breaks"));
            }
            let pair = (name.to_string(), args[1].to_string());
            match (server, dir) {
                (Some(s), _) => s.early_hint_headers.push(pair),
                (_, Some(dc)) => dc.early_hint_headers.push(pair),
                _ => {}
            }
            return Ok(());
        }
        _ => {}
    }

    let Some(s) = server else {
        return Err(format!("{d} is not allowed in a directory context"));
    };
    match d.to_ascii_lowercase().as_str() {
        "h2maxsessionstreams" => {
            expect_args(d, args, 1, 1)?;
            s.max_session_streams = Some(parse_num(d, args[0], 1, U31)? as u32);
        }
        "h2windowsize" => {
            expect_args(d, args, 1, 1)?;
            s.window_size = Some(parse_num(d, args[0], 1024, U31)? as u32);
        }
        "h2minworkers" => {
            expect_args(d, args, 1, 1)?;
            s.min_workers = Some(parse_num_clamped(d, args[0], 1, MAX_WORKERS, &mut s.clamped)? as u32);
        }
        "h2maxworkers" => {
            expect_args(d, args, 1, 1)?;
            s.max_workers = Some(parse_num_clamped(d, args[0], 1, MAX_WORKERS, &mut s.clamped)? as u32);
        }
        "h2maxworkeridleseconds" => {
            // Seconds, or httpd's time syntax (as the stock module reads
            // it); 0 is the default.
            expect_args(d, args, 1, 1)?;
            let idle = parse_bounded_duration(d, args[0])?;
            s.max_worker_idle_secs = match idle.as_secs() {
                0 if idle.is_zero() => None,
                secs => Some(secs.max(1) as u32),
            };
        }
        "h2streammaxmemsize" => {
            expect_args(d, args, 1, 1)?;
            s.stream_max_mem_size = Some(parse_num(d, args[0], 1024, U31)? as usize);
        }
        "h2moderntlsonly" => {
            expect_args(d, args, 1, 1)?;
            s.modern_tls_only = Some(parse_flag(d, args[0])?);
        }
        "h2direct" => {
            expect_args(d, args, 1, 1)?;
            s.direct = Some(parse_flag(d, args[0])?);
        }
        "h2tlswarmupsize" => {
            expect_args(d, args, 1, 1)?;
            s.tls_warmup_size = Some(parse_num(d, args[0], 0, u64::MAX >> 1)?);
        }
        "h2tlscooldownsecs" => {
            expect_args(d, args, 1, 1)?;
            s.tls_cooldown_secs = Some(parse_num_clamped(d, args[0], 0, 86400, &mut s.clamped)? as u32);
        }
        "h2pushpriority" => {
            // H2PushPriority mime-type [After|Before|Interleaved] [weight]:
            // with two arguments, a number is a weight for After.
            expect_args(d, args, 2, 3)?;
            let (dependency, weight) = if args.len() == 2 && args[1].starts_with(|c: char| c.is_ascii_digit()) {
                ("after".to_string(), Some(args[1]))
            } else {
                (args[1].to_ascii_lowercase(), args.get(2).copied())
            };
            if !matches!(dependency.as_str(), "after" | "before" | "interleaved") {
                return Err(format!("{d}: dependency '{}' is not one of After, Before, Interleaved", args[1]));
            }
            if dependency == "before" && weight.is_some() {
                return Err(format!("{d}: dependency 'Before' does not allow a weight"));
            }
            // The stock module takes any weight and caps it when it pushes
            // (this module never pushes).
            let weight = match weight {
                Some(w) => Some(parse_num_clamped(d, w, 1, 256, &mut s.clamped)? as u32),
                None => None,
            };
            s.push_priorities.push(PushPriority { content_type: args[0].to_string(), dependency, weight });
        }
        "h2pushdiarysize" => {
            expect_args(d, args, 1, 1)?;
            s.push_diary_size = Some(parse_num(d, args[0], 0, 1 << 20)? as u32);
        }
        "h2earlyhints" => {
            expect_args(d, args, 1, 1)?;
            s.early_hints = Some(parse_flag(d, args[0])?);
        }
        "h2padding" => {
            expect_args(d, args, 1, 1)?;
            s.padding_bits = Some(parse_num(d, args[0], 0, 8)? as u32);
        }
        "h2outputbuffering" => {
            expect_args(d, args, 1, 1)?;
            s.output_buffering = Some(parse_flag(d, args[0])?);
        }
        "h2streamtimeout" => {
            // 0: Timeout applies, as with the stock module, which uses
            // only a value above 0; kept as set, so that a virtual host's
            // 0 overrides the main server's value (`stream_timeout()`).
            expect_args(d, args, 1, 1)?;
            s.stream_timeout = Some(parse_bounded_duration(d, args[0])?);
        }
        "h2maxdataframelen" => {
            expect_args(d, args, 1, 1)?;
            // Above the largest frame HTTP/2 allows it means no limit of
            // its own, as it does for the stock module.
            s.max_data_frame_len = Some(parse_num_clamped(d, args[0], 0, 16_777_215, &mut s.clamped)? as u32);
        }
        "h2maxheaderblocklen" => {
            expect_args(d, args, 1, 1)?;
            s.max_header_block_len = Some(parse_num(d, args[0], 0, U31)? as u32);
        }
        "h2maxstreamerrors" => {
            expect_args(d, args, 1, 1)?;
            s.max_stream_errors = Some(parse_num(d, args[0], 0, U31)? as u32);
        }
        "h2websockets" => {
            expect_args(d, args, 1, 1)?;
            s.websockets = Some(parse_flag(d, args[0])?);
        }
        "h2proxyrequests" => {
            expect_args(d, args, 1, 1)?;
            s.proxy_requests = Some(parse_flag(d, args[0])?);
        }
        "h2serializeheaders" => {
            // Any value, as the stock module takes it (it ignores it).
            expect_args(d, args, 1, 1)?;
            s.obsolete_seen.push("H2SerializeHeaders");
        }
        "h2sessionextrafiles" => {
            // Any value, as the stock module takes it (it ignores it).
            expect_args(d, args, 1, 1)?;
            s.obsolete_seen.push("H2SessionExtraFiles");
        }
        _ => return Err(format!("{d} is not a directive of this module")),
    }
    Ok(())
}

/// The longest time a directive takes: deadlines are computed from it.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `parse_duration`, cut to `MAX_DURATION`: httpd takes any value whose
/// microseconds fit an `apr_interval_time_t`, and a configuration that
/// means "never" with a large number must load as with the stock module.
fn parse_bounded_duration(directive: &str, arg: &str) -> Result<Duration, String> {
    let d = parse_duration(directive, arg)?;
    if d.as_micros() > i64::MAX as u128 {
        return Err(format!("{directive}: '{arg}' is out of range"));
    }
    Ok(d.min(MAX_DURATION))
}

/// httpd's time syntax for timeouts (ap_timeout_parameter_parse): seconds,
/// or a number with a unit that httpd knows by its first letters: `s...`
/// seconds, `ms...` milliseconds, `mi...` minutes, `h...` hours; so `5min`,
/// `30sec` and `2hours` are what httpd's own directives take.
pub fn parse_duration(directive: &str, arg: &str) -> Result<Duration, String> {
    let bad = || format!("{directive}: '{arg}' is not a duration (e.g. 30, 30s, 500ms, 5min, 1h)");
    // A leading `+`, as httpd's own time directives take it (apr_strtoi64).
    let arg_l = arg.trim().strip_prefix('+').unwrap_or(arg.trim()).to_ascii_lowercase();
    let split = arg_l.find(|c: char| !c.is_ascii_digit()).unwrap_or(arg_l.len());
    let (num, unit) = arg_l.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = if unit.is_empty() || unit.starts_with('s') {
        Duration::from_secs(n)
    } else if unit.starts_with("ms") {
        Duration::from_millis(n)
    } else if unit.starts_with("mi") {
        Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?)
    } else if unit.starts_with('h') {
        Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?)
    } else {
        return Err(bad());
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(directive: &str, args: &[&str]) -> Result<ServerConfig, String> {
        let mut s = ServerConfig::default();
        apply(Target::Server(&mut s), directive, args)?;
        Ok(s)
    }

    #[test]
    fn numbers_and_ranges() {
        assert_eq!(server("H2MaxSessionStreams", &["50"]).unwrap().max_session_streams(), 50);
        let e = server("H2WindowSize", &["abc"]).unwrap_err();
        assert!(e.contains("H2WindowSize") && e.contains("not a number") && e.contains("1024"), "{e}");
        let e = server("H2MaxWorkers", &["0"]).unwrap_err();
        assert!(e.contains("H2MaxWorkers") && e.contains("out of range"), "{e}");
        let e = server("H2WindowSize", &["4294967296"]).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(server("H2Padding", &["9"]).is_err());
        assert!(server("H2MaxDataFrameLen", &["0"]).is_ok());
    }

    #[test]
    fn numbers_above_our_limits_are_lowered_not_refused() {
        // The stock module takes any number here: a configuration that
        // starts with it must start with this one.
        let s = server("H2MaxWorkers", &["10000"]).unwrap();
        assert_eq!(s.max_workers, Some(4096));
        assert_eq!(s.clamped, vec!["H2MaxWorkers 10000 (using 4096)".to_string()]);
        assert_eq!(server("H2MinWorkers", &["5000"]).unwrap().min_workers, Some(4096));
        assert_eq!(server("H2TLSCoolDownSecs", &["100000"]).unwrap().tls_cooldown_secs, Some(86400));
        assert_eq!(server("H2MaxDataFrameLen", &["99999999"]).unwrap().max_data_frame_len, Some(16_777_215));
        // Within the limits nothing is noted; below the minimum and
        // non-numbers are still refused by name.
        assert!(server("H2MaxWorkers", &["64"]).unwrap().clamped.is_empty());
        let e = server("H2MaxWorkers", &["0"]).unwrap_err();
        assert!(e.contains("H2MaxWorkers") && e.contains("allowed: 1 or more"), "{e}");
        assert!(server("H2MinWorkers", &["many"]).unwrap_err().contains("not a number"));
    }

    #[test]
    fn flags_and_arity() {
        assert_eq!(server("H2Direct", &["On"]).unwrap().direct, Some(true));
        assert!(server("H2Direct", &["yes"]).unwrap_err().contains("'on' or 'off'"));
        assert!(server("H2Direct", &[]).unwrap_err().contains("takes 1 argument"));
        assert!(server("H2Direct", &["on", "off"]).is_err());
        // Obsolete: any one value, as the stock module takes them.
        assert!(server("H2SerializeHeaders", &["whatever"]).is_ok());
        assert!(server("H2SessionExtraFiles", &["many"]).is_ok());
        assert!(server("H2SerializeHeaders", &[]).is_err());
    }

    #[test]
    fn directory_context() {
        let mut dc = DirConfig::default();
        apply(Target::Dir(&mut dc), "H2Upgrade", &["off"]).unwrap();
        assert_eq!(dc.upgrade, Some(false));
        let e = apply(Target::Dir(&mut dc), "H2MaxWorkers", &["3"]).unwrap_err();
        assert!(e.contains("directory context"));
        apply(Target::Dir(&mut dc), "H2EarlyHint", &["Link", "</a.css>; rel=preload"]).unwrap();
        assert!(apply(Target::Dir(&mut dc), "H2EarlyHint", &["Bad Name", "x"]).is_err());
    }

    #[test]
    fn merge_prefers_vhost() {
        let base = server("H2MaxSessionStreams", &["10"]).unwrap();
        let mut add = ServerConfig::default();
        apply(Target::Server(&mut add), "H2WindowSize", &["100000"]).unwrap();
        let m = ServerConfig::merge(&base, &add);
        assert_eq!(m.max_session_streams(), 10);
        assert_eq!(m.window_size(), 100000);
        assert!(m.direct(false) && !m.direct(true));
    }

    /// The stock module's syntax and merges, so that its configurations
    /// load unchanged and mean the same.
    #[test]
    fn stock_syntax_of_the_list_and_time_directives() {
        let s = server("H2PushResource", &["add", "/a.css", "critical"]).unwrap();
        assert_eq!(s.push_resources, vec![PushResource { uri: "/a.css".into(), critical: true }]);
        let s = server("H2PushResource", &["/b.js"]).unwrap();
        assert_eq!(s.push_resources, vec![PushResource { uri: "/b.js".into(), critical: false }]);
        assert!(server("H2PushResource", &["/b.js", "soon"]).unwrap_err().contains("'soon'"));
        assert!(server("H2PushResource", &["/b.js", "critical", "critical"]).is_err());

        let p = &server("H2PushPriority", &["text/css", "32"]).unwrap().push_priorities[0];
        assert_eq!((p.dependency.as_str(), p.weight), ("after", Some(32)));
        assert!(server("H2PushPriority", &["text/css", "Before", "8"]).unwrap_err().contains("Before"));
        assert!(server("H2PushPriority", &["*", "Interleaved", "256"]).is_ok());
        let over = server("H2PushPriority", &["text/css", "After", "300"]).unwrap();
        assert_eq!((over.push_priorities[0].weight, over.clamped.len()), (Some(256), 1));

        let zero = server("H2StreamTimeout", &["0"]).unwrap();
        assert_eq!(zero.stream_timeout(Duration::from_secs(300)), Duration::from_secs(300));
        let main = server("H2StreamTimeout", &["30"]).unwrap();
        let vhost = ServerConfig::merge(&main, &zero);
        assert_eq!(vhost.stream_timeout(Duration::from_secs(300)), Duration::from_secs(300));
        assert_eq!(server("H2StreamTimeout", &["90s"]).unwrap().stream_timeout, Some(Duration::from_secs(90)));
        assert!(server("H2StreamTimeout", &["9999999999999999"]).unwrap_err().contains("out of range"));
        assert_eq!(server("H2StreamTimeout", &["99999999"]).unwrap().stream_timeout, Some(MAX_DURATION));
        assert_eq!(server("H2StreamTimeout", &["5min"]).unwrap().stream_timeout, Some(Duration::from_secs(300)));
        assert_eq!(server("H2MaxWorkerIdleSeconds", &["0"]).unwrap().max_worker_idle_secs, None);
        assert_eq!(server("H2MaxWorkerIdleSeconds", &["5mi"]).unwrap().max_worker_idle_secs, Some(300));
        assert_eq!(server("H2MaxWorkerIdleSeconds", &["100000"]).unwrap().max_worker_idle_secs, Some(100000));
        assert_eq!(server("H2MaxWorkerIdleSeconds", &["500ms"]).unwrap().max_worker_idle_secs, Some(1));

        // Lists add to the enclosing section's.
        let mut outer = DirConfig::default();
        apply(Target::Dir(&mut outer), "H2PushResource", &["/site.css"]).unwrap();
        apply(Target::Dir(&mut outer), "H2EarlyHint", &["X-Outer", "1"]).unwrap();
        let mut inner = DirConfig::default();
        apply(Target::Dir(&mut inner), "H2PushResource", &["/shop.js"]).unwrap();
        apply(Target::Dir(&mut inner), "H2EarlyHint", &["X-Inner", "1"]).unwrap();
        let m = DirConfig::merge(&outer, &inner);
        let uris: Vec<&str> = m.push_resources.iter().map(|r| r.uri.as_str()).collect();
        assert_eq!(uris, ["/site.css", "/shop.js"]);
        let names: Vec<&str> = m.early_hint_headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["X-Inner", "X-Outer"]);
        let base = server("H2EarlyHint", &["X-Main", "1"]).unwrap();
        let vhost = server("H2EarlyHint", &["X-Vhost", "1"]).unwrap();
        assert_eq!(ServerConfig::merge(&base, &vhost).early_hint_headers.len(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("X", "30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("X", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("X", "2mi").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("X", "1d").is_err());
        // httpd reads a unit by its first letters.
        assert_eq!(parse_duration("X", "5min").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("X", "30sec").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("X", "2hours").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("X", "+5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("X", "++5").is_err());
        assert_eq!(parse_duration("X", "100msec").unwrap(), Duration::from_millis(100));
        assert!(parse_duration("X", "5m").is_err());
        assert!(parse_duration("X", "-5").is_err());
        assert!(parse_duration("X", "").is_err());
    }

    #[test]
    fn workers_defaults() {
        let s = ServerConfig::default();
        assert_eq!(s.workers(25), (25, 37));
        assert_eq!(s.workers(1), (1, 4));
        assert_eq!(s.workers_at_start(), defaults::WORKERS_AT_START);
        let set = ServerConfig { min_workers: Some(8), ..ServerConfig::default() };
        assert_eq!(set.workers(25), (8, 12));
        assert_eq!(set.workers_at_start(), 8);
        // H2MaxWorkers alone, below ThreadsPerChild: the cap holds.
        let capped = ServerConfig { max_workers: Some(8), ..ServerConfig::default() };
        assert_eq!(capped.workers(25), (8, 8));
        assert_eq!(capped.workers(4), (4, 8));
    }
}
