//! proxy_http2_module: mod_proxy's scheme handler for `h2c://` backends,
//! multiplexing proxied requests over shared backend connections.
//!
//! - `engine`: event-loop threads owning the backend connections (nghttp2
//!   client sessions); no httpd code runs there.
//! - `task`: one proxied request as the front and the engine share it.
//! - this file: the httpd side. The scheme handler (on the thread running
//!   the request) builds the backend request (header rules, Host or
//!   ProxyPreserveHost, Via, X-Forwarded-*), hands it to the engine, and
//!   then:
//!   * on one of our HTTP/2 stream connections (c2): moves the request body
//!     and the response in turns (`C2Front::turn`, full duplex) and returns
//!     SUSPENDED when neither has news. The worker is free; the c2 and its
//!     request stay alive, parked (`c2::Parked`). When the engine has news
//!     (head, data, end, failure, room for body) or the client's stream
//!     does (body, room for the response), a short job on a worker resumes
//!     the request, runs a turn, and parks it again; the last one finishes
//!     the request (`ap_finalize_request_protocol`,
//!     `ap_process_request_after_handler`) and hands the stream back to c1.
//!     httpd's filters thus only ever run on the one thread that owns the
//!     request at that moment.
//!   * elsewhere (HTTP/1.1 front connections): the handler's thread streams
//!     the whole body, then waits for the engine and writes the response
//!     itself (it is held for the request's life, as with mod_proxy_http;
//!     the backend connection is still shared).

pub mod backend_tls;
pub mod engine;
pub mod links;
pub mod messaging;
pub mod resolve;
pub mod task;
pub mod tls;

use crate::apr::{status, BrigadeRef, PoolRef, TableRef};
use crate::c2::{self, Parked, Resume};
use crate::ffi::{self, panic::guard, HOOK_DECLINED, HOOK_OK};
use crate::log::Level;
use crate::stream::{Headers, ResponseHead, Stream, Wake};
use crate::workers::{self, WorkerCtx};
use backend_tls::TlsTarget;
use engine::Engine;
use parking_lot::Mutex;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use task::{Failure, Front, PoolParams, RequestSpec, Task};

/// Event-loop threads per child.
const LOOP_THREADS: usize = 2;
/// Response bytes one resume passes on at most (then it parks again, so
/// one busy response does not keep a worker).
const PUMP_MAX: usize = 256 * 1024;
/// How long a handler on a stream connection waits for the backend before
/// it suspends the request and frees its worker.
const INLINE_WAIT: Duration = Duration::from_millis(2);

static ENGINE: Mutex<Option<Arc<Engine>>> = Mutex::new(None);

fn engine() -> Option<Arc<Engine>> {
    ENGINE.lock().clone()
}

// ---- hooks -----------------------------------------------------------------

/// post_config of proxy_http2_module: every server's `SSLProxy*` settings
/// for `h2://` backends (`backend_tls`).
///
/// # Safety
/// Called by httpd with the configuration pool and main server.
#[no_mangle]
pub unsafe extern "C" fn h2rs_proxy_post_config(pconf: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) -> c_int {
    guard("proxy post_config", HOOK_OK, || {
        ffi::panic::install_hook();
        if !crate::hooks::is_config_dry_run() {
            // SAFETY: httpd passes the main server and the configuration
            // pool; the configuration tree is complete.
            unsafe { crate::hooks::set_backend_tls(s, pconf) };
        }
        HOOK_OK
    })
}

/// child_init of proxy_http2_module: starts the engine's threads.
///
/// # Safety
/// Called by httpd with the child pool and main server.
#[no_mangle]
pub unsafe extern "C" fn h2rs_proxy_child_init(pchild: *mut ffi::apr_pool_t, _s: *mut ffi::server_rec) {
    guard("proxy child_init", (), || {
        ffi::panic::install_hook();
        crate::hooks::set_child_pool(pchild);
        let start: engine::ThreadStart = Arc::new(|| {
            let thread = crate::hooks::register_thread();
            Box::new(move || crate::hooks::unregister_thread(thread))
        });
        match Engine::start(LOOP_THREADS, Some(start)) {
            Ok(e) => *ENGINE.lock() = Some(e),
            Err(e) => {
                crate::log::proxy(Level::Crit, &format!("mod_h2rs: cannot start the proxy engine: {e}"));
                return;
            }
        }
        // SAFETY: pchild lives for the child's life; the cleanup runs before
        // its sub-pools go (and, registered after mod_h2rs's own, before the
        // worker pool stops: parked requests still get their last resume).
        // SAFETY: as above; the cleanup takes no data.
        unsafe {
            if let Some(pool) = PoolRef::from_raw(pchild) {
                pool.pre_cleanup(ptr::null(), child_pre_cleanup);
            }
        }
    })
}

unsafe extern "C" fn child_pre_cleanup(_data: *mut c_void) -> ffi::apr_status_t {
    guard("proxy child cleanup", 0, || {
        let e = ENGINE.lock().take();
        if let Some(e) = e {
            e.stop();
        }
        0
    })
}

/// The note that keeps the URL mod_proxy matched its `<Proxy>` sections
/// against (`tls_target`).
const SECTION_URL_NOTE: &CStr = c"h2rs-proxy-section-url";

/// Keeps a proxied request's `proxy:` file name as mod_proxy matches its
/// `<Proxy>` sections against it (`proxy_walk`, right after this hook):
/// a balancer replaces it with its member's URL before the scheme handler
/// runs, and the `SSLProxy*` settings of a `<Proxy balancer://...>`
/// section must still apply to the member's connection, as mod_ssl
/// applies them. Not later: mod_proxy's canonicalization (fixups) writes
/// the host in lower case and drops a default port, and a section
/// `<Proxy "h2://Pay.Internal:443/">` that mod_proxy applied then covered
/// nothing here. A request proxied by a per-directory RewriteRule gets
/// its file name after this (in fixups): mod_proxy walks no sections for
/// it, and mod_ssl applies the server's settings; so does this module.
///
/// # Safety
/// Called by httpd with a live request.
#[no_mangle]
pub unsafe extern "C" fn h2rs_proxy_map_to_storage(r: *mut ffi::request_rec) -> c_int {
    guard("proxy map_to_storage", HOOK_DECLINED, || {
        // SAFETY: httpd passes a live request; the file name is
        // NUL-terminated and copied into the notes.
        unsafe {
            if r.is_null() || (*r).proxyreq == 0 || (*r).filename.is_null() {
                return HOOK_DECLINED;
            }
            let filename = CStr::from_ptr((*r).filename);
            if filename.to_bytes().starts_with(b"proxy:") {
                if let Some(notes) = TableRef::from_raw((*r).notes) {
                    notes.set(SECTION_URL_NOTE, filename);
                }
            }
            HOOK_DECLINED
        }
    })
}

/// The canon handler: `proxy:h2c://host[:port]/path?args` in r->filename.
///
/// # Safety
/// Called by mod_proxy with a live request and its URL.
#[no_mangle]
pub unsafe extern "C" fn h2rs_proxy_canon(r: *mut ffi::request_rec, url: *mut c_char) -> c_int {
    guard("proxy canon", ffi::HTTP_INTERNAL_SERVER_ERROR as c_int, || {
        // SAFETY: httpd passes a live request and its URL string.
        unsafe { canon(r, url) }
    })
}

unsafe fn canon(r: *mut ffi::request_rec, url: *mut c_char) -> c_int {
    // SAFETY: caller contract; strings come from and go to the request pool.
    unsafe {
        if r.is_null() || url.is_null() {
            return HOOK_DECLINED;
        }
        let u = CStr::from_ptr(url).to_bytes();
        let (scheme, skip, def_port): (&str, usize, u16) = if u.len() >= 4 && u[..4].eq_ignore_ascii_case(b"h2c:") {
            ("h2c", 4, 80)
        } else if u.len() >= 3 && u[..3].eq_ignore_ascii_case(b"h2:") {
            ("h2", 3, 443)
        } else {
            return HOOK_DECLINED;
        };
        let Some(pool) = PoolRef::from_raw((*r).pool) else { return HOOK_DECLINED };
        let mut rest = url.add(skip);
        let mut host: *mut c_char = ptr::null_mut();
        let mut port: ffi::apr_port_t = def_port;
        let err = ffi::h2rs_shim_proxy_canon_netloc(pool.as_ptr(), &mut rest, &mut host, &mut port);
        if !err.is_null() || host.is_null() {
            let why = if err.is_null() { "no host".into() } else { CStr::from_ptr(err).to_string_lossy() };
            crate::log::proxy_request(
                r,
                Level::Error,
                &format!("h2rs proxy: cannot parse the URL {}: {why}", CStr::from_ptr(url).to_string_lossy()),
            );
            return ffi::HTTP_BAD_REQUEST as c_int;
        }
        let mut search: Option<&[u8]> = None;
        let path: *const c_char = if (*r).proxyreq == ffi::PROXYREQ_REVERSE as c_int {
            let notes = TableRef::from_raw((*r).notes);
            let note = |name: &CStr| notes.and_then(|n| n.get(name)).is_some();
            if note(c"proxy-nocanon") {
                rest
            } else {
                if !(*r).args.is_null() {
                    search = Some(CStr::from_ptr((*r).args).to_bytes());
                }
                if note(c"proxy-noencode") {
                    // Encoded already (ProxyPass mapping=encoded).
                    rest
                } else {
                    ffi::h2rs_shim_proxy_canonenc_path(r, rest)
                }
            }
        } else {
            rest
        };
        if path.is_null() {
            return ffi::HTTP_BAD_REQUEST as c_int;
        }
        // As mod_proxy_http: a path taken as it came (nocanon, noencode,
        // a forward proxy's) or a query with a control byte or a space was
        // not encoded where it should have been.
        let raw = |text: &[u8]| text.iter().any(|&b| b <= b' ' || b == 0x7f);
        if (path == rest.cast_const() && raw(CStr::from_ptr(path).to_bytes())) || search.is_some_and(raw) {
            crate::log::proxy_request(
                r,
                Level::Error,
                "h2rs proxy: the path or query to forward holds control characters or spaces",
            );
            return ffi::HTTP_FORBIDDEN as c_int;
        }
        let host = CStr::from_ptr(host).to_bytes();
        let mut f = b"proxy:".to_vec();
        f.extend_from_slice(scheme.as_bytes());
        f.extend_from_slice(b"://");
        if host.contains(&b':') {
            f.push(b'[');
            f.extend_from_slice(host);
            f.push(b']');
        } else {
            f.extend_from_slice(host);
        }
        if port != def_port {
            f.extend_from_slice(format!(":{port}").as_bytes());
        }
        f.push(b'/');
        f.extend_from_slice(CStr::from_ptr(path).to_bytes());
        if let Some(s) = search {
            f.push(b'?');
            f.extend_from_slice(s);
        }
        (*r).filename = pool.strdup(&f);
        HOOK_OK
    }
}

/// The scheme handler.
///
/// # Safety
/// Called by mod_proxy on the request's thread with live arguments.
#[no_mangle]
pub unsafe extern "C" fn h2rs_proxy_handler(
    r: *mut ffi::request_rec,
    worker: *mut c_void,
    conf: *mut c_void,
    url: *mut c_char,
    proxyname: *const c_char,
    _proxyport: ffi::apr_port_t,
) -> c_int {
    guard("proxy handler", ffi::HTTP_INTERNAL_SERVER_ERROR as c_int, || {
        if !proxyname.is_null() {
            // A `ProxyRemote` covers the URL: the request must go through
            // that proxy, which this module cannot do (a CONNECT tunnel for
            // h2://). Not straight to the backend, past the proxy the admin
            // requires; and not 502, on which mod_proxy tries it direct.
            let via = cstr_lossy(proxyname);
            crate::log::proxy_request(
                r,
                Level::Error,
                &format!("h2rs proxy: ProxyRemote {via} covers this h2/h2c backend URL; requests through a remote proxy are not supported, answering 500"),
            );
            return ffi::HTTP_INTERNAL_SERVER_ERROR as c_int;
        }
        // SAFETY: httpd passes the live request on this thread, mod_proxy's
        // worker and server config, and the backend URL.
        unsafe { handle(r, worker, conf, url) }
    })
}

/// A backend URL: `h2c://authority/path?query`.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// As written in the URL (host[:port]), for :authority.
    pub authority: String,
    /// host:port, to connect to.
    pub key: String,
    pub path: String,
}

impl Target {
    /// The host, without the port.
    pub fn host(&self) -> &str {
        match self.key.rfind(':') {
            Some(i) => &self.key[..i],
            None => &self.key,
        }
    }
}

pub fn parse_target(url: &str) -> Option<Target> {
    // Compared as bytes: the prefixes are ASCII, so the slices after them
    // fall on character boundaries.
    let b = url.as_bytes();
    let (tls, rest) = if b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"h2c://") {
        (false, &url[6..])
    } else if b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"h2://") {
        (true, &url[5..])
    } else {
        return None;
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let default_port = if tls { 443 } else { 80 };
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let key = if has_port { authority.to_string() } else { format!("{authority}:{default_port}") };
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    Some(Target { tls, authority: authority.to_string(), key, path })
}

/// Request fields never forwarded (connection-specific, or handled here).
const HOP_BY_HOP: &[&[u8]] = &[
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
    b"http2-settings",
    b"expect",
    b"te",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-server",
    b"via",
];

/// Request trailer fields never forwarded, beyond `HOP_BY_HOP`: fields
/// that must be known before the body (RFC 9110 6.5.1: framing,
/// authentication, content format). A `content-length` trailer ended an
/// nghttp2 backend's whole connection (PROTOCOL_ERROR), every client's
/// request on it.
const NOT_IN_TRAILERS: &[&[u8]] = &[
    b"content-length",
    b"content-type",
    b"content-encoding",
    b"content-range",
    b"trailer",
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"range",
];

/// What the request's head becomes on the backend stream (pure, tested).
pub struct HeadRules<'a> {
    pub method: &'a [u8],
    pub tls: bool,
    pub authority: &'a [u8],
    pub path: &'a [u8],
    pub fields: Vec<(&'a [u8], &'a [u8])>,
    pub client_ip: Option<&'a [u8]>,
    pub server_name: &'a [u8],
    /// X-Forwarded-* (ProxyAddHeaders, reverse proxy only).
    pub forwarded: bool,
    /// The Via entry to append, or None; `via_block` drops existing ones.
    pub via: Option<String>,
    pub via_block: bool,
    /// Proxy-Authorization goes on: httpd did not use it (no user), or
    /// `Proxy-Chain-Auth` is set (as mod_proxy_http decides).
    pub chain_auth: bool,
    /// Input filters beyond the protocol's may change the body's length
    /// (`SetInputFilter DEFLATE`): the client's Content-Length is not
    /// sent (END_STREAM ends the body), as mod_proxy_http trusts it only
    /// without them.
    pub body_filtered: bool,
    /// A subrequest: the main request's conditional fields, which it
    /// inherits, are not sent (mod_proxy_http drops them too; an SSI
    /// include would get 304 for a page being revalidated).
    pub subrequest: bool,
}

/// Conditional request fields a subrequest does not send.
const CONDITIONAL: &[&[u8]] =
    &[b"if-match", b"if-modified-since", b"if-range", b"if-unmodified-since", b"if-none-match"];

pub fn backend_fields(h: &HeadRules<'_>) -> Headers {
    let mut out = Headers::with_capacity(h.fields.len() + 8, 512);
    out.push(b":method", h.method);
    out.push(b":scheme", if h.tls { b"https" } else { b"http" });
    out.push(b":authority", h.authority);
    out.push(b":path", h.path);
    // Fields the Connection field names are connection-specific too.
    let mut listed: Vec<Vec<u8>> = Vec::new();
    for (n, v) in &h.fields {
        if n.eq_ignore_ascii_case(b"connection") {
            for t in v.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if !t.is_empty() {
                    listed.push(t.to_ascii_lowercase());
                }
            }
        }
    }
    // The client's X-Forwarded-* and Via, then ours; not the client's where
    // its Connection field names them (httpd clears those first).
    let join = |name: &[u8], add: Option<&[u8]>| -> Option<Vec<u8>> {
        let mut v: Vec<u8> = Vec::new();
        let client_values = !listed.iter().any(|l| l == name);
        for (n, val) in &h.fields {
            if client_values && n.eq_ignore_ascii_case(name) {
                if !v.is_empty() {
                    v.extend_from_slice(b", ");
                }
                v.extend_from_slice(val);
            }
        }
        if let Some(a) = add {
            if !v.is_empty() {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(a);
        }
        (!v.is_empty()).then_some(v)
    };
    for (n, v) in &h.fields {
        let lower = n.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_slice()) || listed.contains(&lower) {
            // `TE: trailers, deflate` still says trailers are welcome.
            if lower == b"te" && v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers")) {
                out.push(b"te", b"trailers");
            }
            continue;
        }
        if (lower == b"proxy-authorization" && !h.chain_auth)
            || (lower == b"content-length" && h.body_filtered)
            || (h.subrequest && CONDITIONAL.contains(&lower.as_slice()))
        {
            continue;
        }
        out.push(&lower, v);
    }
    let host = h.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(b"host")).map(|(_, v)| *v);
    if h.forwarded {
        if let Some(v) = join(b"x-forwarded-for", h.client_ip) {
            out.push(b"x-forwarded-for", &v);
        }
        if let Some(v) = join(b"x-forwarded-host", host) {
            out.push(b"x-forwarded-host", &v);
        }
        if let Some(v) = join(b"x-forwarded-server", Some(h.server_name)) {
            out.push(b"x-forwarded-server", &v);
        }
    } else {
        for name in [&b"x-forwarded-for"[..], b"x-forwarded-host", b"x-forwarded-server"] {
            if let Some(v) = join(name, None) {
                out.push(name, &v);
            }
        }
    }
    if !h.via_block {
        if let Some(v) = join(b"via", h.via.as_deref().map(str::as_bytes)) {
            out.push(b"via", &v);
        }
    }
    out
}

fn idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE")
}

/// The Via entry for this request: "2.0 host[:port]", with Full
/// " (Apache/2.4.x)" after it, as mod_proxy_http and the stock module write
/// it (the port when it is not the scheme's default; the vhost's own name
/// when the server name is only the client's Host).
unsafe fn via_entry(r: *mut ffi::request_rec, via: c_int) -> Option<String> {
    if via != 1 && via != 3 {
        return None;
    }
    // SAFETY: caller contract (live request); server strings are static or
    // live in the request's pool.
    unsafe {
        let proto = (*r).proto_num;
        let mut name = ffi::ap_get_server_name(r);
        // Pointer equality, as httpd tests it: UseCanonicalName Off gives
        // the client's Host, which names the origin, not this proxy.
        if name == (*r).hostname {
            name = (*(*r).server).server_hostname;
        }
        let mut v = format!("{}.{} {}", proto / 1000, proto % 1000, cstr_lossy(name));
        let port = ffi::ap_get_server_port(r);
        if port != ffi::ap_run_default_port(r) {
            v.push_str(&format!(":{port}"));
        }
        if via == 3 {
            v.push_str(&format!(" ({})", cstr_lossy(ffi::h2rs_shim_server_baseversion())));
        }
        Some(v)
    }
}

/// Notes `value` as `name` in the request's notes, as mod_proxy_http notes
/// `proxy-status` and `proxy-source-port`.
///
/// # Safety
/// `r` is the live request, on this thread.
unsafe fn note_number(r: *mut ffi::request_rec, name: &'static CStr, value: u64) {
    // SAFETY: caller contract.
    let (notes, pool) = unsafe { (TableRef::from_raw((*r).notes), PoolRef::from_raw((*r).pool)) };
    if let (Some(notes), Some(pool)) = (notes, pool) {
        let mut digits = [0u8; 20];
        let value = pool.strdup(crate::text::decimal(value, &mut digits));
        // SAFETY: the name is static and the value in the request's pool,
        // which the notes live in: neither needs a copy.
        unsafe { notes.setn(name.as_ptr(), value) };
    }
}

fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string from httpd.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

unsafe fn handle(r: *mut ffi::request_rec, worker: *mut c_void, conf: *mut c_void, url: *mut c_char) -> c_int {
    // SAFETY: caller contract: `r` is the live request on this thread.
    unsafe {
        if r.is_null() || url.is_null() {
            return HOOK_DECLINED;
        }
        // Bytes beyond ASCII in a path taken as it came (nocanon,
        // noencode) go on percent-encoded: the same URI, where a lossy
        // conversion would send another path.
        let url_s = match CStr::from_ptr(url).to_str() {
            Ok(s) => s.to_owned(),
            Err(_) => CStr::from_ptr(url)
                .to_bytes()
                .iter()
                .map(|&b| if b.is_ascii() { char::from(b).to_string() } else { format!("%{b:02X}") })
                .collect(),
        };
        let Some(target) = parse_target(&url_s) else { return HOOK_DECLINED };
        let Some(engine) = engine() else {
            crate::log::proxy_request(r, Level::Error, "h2rs proxy: the proxy engine is not running");
            return ffi::HTTP_SERVICE_UNAVAILABLE as c_int;
        };
        // A worker an admin disabled or stopped (`status=`, the balancer
        // manager), or in error state until its `retry` passed: 503
        // without a connect, as mod_proxy's connection pool answers
        // (AH00940). (A connect that fails puts no worker in error state
        // here: mod_proxy does for a balancer's member when the handler
        // answers 503, and other workers ignore errors.)
        if !worker.is_null() && ffi::h2rs_shim_proxy_worker_usable(worker, r) == 0 {
            return ffi::HTTP_SERVICE_UNAVAILABLE as c_int;
        }
        let mut params = ffi::h2rs_proxy_params {
            preserve_host: 0,
            add_forwarded: 1,
            via: 0,
            timeout: -1,
            connect_timeout: -1,
            ping: -1,
            ttl: 0,
            keepalive: 0,
            disablereuse: 0,
            hmax: 0,
            acquire: -1,
            uds_path: ptr::null(),
        };
        ffi::h2rs_shim_proxy_params(r, worker, conf, &mut params);
        // `unix:/path|h2c://host/`: mod_proxy took the socket's path off the
        // URL; what is left names the request's authority, not where to
        // connect.
        let uds = (!params.uds_path.is_null()).then(|| {
            let path = std::ffi::OsStr::from_bytes(CStr::from_ptr(params.uds_path).to_bytes());
            resolve::Peer::Unix(Arc::from(std::path::Path::new(path)))
        });
        let timeout_us = if params.timeout >= 0 { params.timeout } else { (*(*r).server).timeout };
        let timeout = Duration::from_micros(timeout_us.max(1_000_000) as u64);
        // The worker's pool parameters (mod_proxy parses their units).
        let set = |t: ffi::apr_interval_time_t| (t > 0).then(|| Duration::from_micros(t as u64));
        let pool = PoolParams {
            connect_timeout: set(params.connect_timeout).map(|t| t.min(timeout)),
            ping: set(params.ping).map(|t| t.min(timeout)),
            idle_ttl: set(params.ttl),
            keepalive: params.keepalive != 0,
            single_use: params.disablereuse != 0,
            max_conns: usize::try_from(params.hmax).ok().filter(|&n| n > 0),
            acquire: set(params.acquire),
        };

        let (Some(hin), Some(env)) = (TableRef::from_raw((*r).headers_in), TableRef::from_raw((*r).subprocess_env))
        else {
            return ffi::HTTP_INTERNAL_SERVER_ERROR as c_int;
        };
        let fields = hin.entries();
        let method = CStr::from_ptr((*r).method).to_bytes();
        let host_in = hin.get(c"Host");
        let server_name = cstr_lossy((*(*r).server).server_hostname);
        let authority: &[u8] = match (params.preserve_host != 0, host_in) {
            (true, Some(h)) => h,
            // An HTTP/1.0 request without Host: the server's name, as
            // mod_proxy_http sends it (AH01092), not the backend's.
            (true, None) => server_name.as_bytes(),
            _ => target.authority.as_bytes(),
        };
        let client_ip = (!(*r).useragent_ip.is_null()).then(|| CStr::from_ptr((*r).useragent_ip).to_bytes());
        let via = via_entry(r, params.via);
        let rules = HeadRules {
            method,
            tls: target.tls,
            authority,
            path: target.path.as_bytes(),
            fields,
            client_ip,
            server_name: server_name.as_bytes(),
            forwarded: params.add_forwarded != 0 && (*r).proxyreq == ffi::PROXYREQ_REVERSE as c_int,
            via: via.clone(),
            via_block: params.via == 2,
            chain_auth: (*r).user.is_null() || env.get(c"Proxy-Chain-Auth").is_some(),
            body_filtered: (*r).input_filters != (*r).proto_input_filters,
            subrequest: !(*r).main.is_null(),
        };
        let has_body = hin.get(c"Transfer-Encoding").is_some()
            || hin.get(c"Content-Length").is_some_and(|v| v.trim_ascii() != b"0");
        let mut backend = format!("{}://{}", if target.tls { "h2" } else { "h2c" }, target.key);
        let found = match uds {
            Some(peer) => {
                backend = format!("{peer}|{backend}");
                Ok(Arc::from([peer]))
            }
            None => resolve::resolve(&target.key),
        };
        let addrs = match found {
            Ok(addrs) => addrs,
            Err(e) => {
                crate::log::proxy_request(
                    r,
                    Level::Error,
                    &format!("h2rs proxy: backend {backend}: {e}, answering 503"),
                );
                return ffi::HTTP_SERVICE_UNAVAILABLE as c_int;
            }
        };
        let tls = target.tls.then(|| Arc::new(tls_target(r, &target, params.preserve_host != 0)));
        let spec = RequestSpec {
            key: match &tls {
                Some(t) => format!("{backend}#{:016x}", t.fingerprint()),
                None => backend.clone(),
            },
            backend,
            addrs,
            tls,
            fields: backend_fields(&rules),
            has_body,
            idempotent: idempotent(method),
            timeout,
            pool,
            // The response's Via names the backend's protocol, HTTP/2.
            via: via.map(|v| format!("2.0{}", &v[v.find(' ').unwrap_or(0)..])),
            link_origin: ((*r).proxyreq == ffi::PROXYREQ_REVERSE as c_int && params.preserve_host == 0)
                .then(|| format!("{}://{}", if target.tls { "h2" } else { "h2c" }, target.authority)),
            fault_panic: crate::c1::FAULT_INJECTION.load(std::sync::atomic::Ordering::Relaxed)
                && hin.get(c"h2rs-test-panic") == Some(&b"proxy-loop"[..]),
        };
        let task = Task::new(spec);
        if !worker.is_null() {
            if let Some(pool) = PoolRef::from_raw((*r).pool) {
                pool.attach(WorkerAccounting { worker, r, task: task.clone() });
            }
        }
        let status = run_request(r, &task, &engine, has_body);
        if status != ffi::SUSPENDED {
            // The front and the task hold each other: the cycle ends with
            // the request (a resume job ends it for a suspended one).
            task.drop_front();
        }
        status
    }
}

/// What a request's mod_proxy worker learns when the request ends (its pool
/// is destroyed, after the last resume of a suspended one):
/// - its body bytes, both ways, in the worker's traffic counts (without
///   them `lbmethod=bytraffic` saw every member at 0 and sent every
///   request to the first one);
/// - for a suspended request, mod_proxy_balancer's `failonstatus` and
///   `failontimeout` checks with the final status: mod_proxy ran them
///   when the handler returned SUSPENDED, before there was a response.
struct WorkerAccounting {
    worker: *mut c_void,
    r: *mut ffi::request_rec,
    task: Arc<Task>,
}

impl Drop for WorkerAccounting {
    fn drop(&mut self) {
        let (sent, received) = self.task.traffic();
        let count = |n: u64| ffi::apr_off_t::try_from(n).unwrap_or(ffi::apr_off_t::MAX);
        // SAFETY: the worker mod_proxy gave the handler; workers live as
        // long as the configuration, which outlives every request. The
        // request is allocated in the pool whose cleanup this is, and its
        // memory is released only after the cleanups ran.
        unsafe {
            ffi::h2rs_shim_proxy_count_traffic(self.worker, count(sent), count(received));
            if self.task.was_suspended() {
                ffi::h2rs_shim_proxy_balancer_checks(self.worker, self.r);
            }
        }
    }
}

/// How the request's `h2://` backend is checked: mod_proxy's name for it
/// (the URL's host, or the request's with ProxyPreserveHost) and the
/// `SSLProxy*` settings of the request's server and of the `<Proxy>`
/// sections that cover its URL.
///
/// # Safety
/// `r` is the live request on this thread.
unsafe fn tls_target(r: *mut ffi::request_rec, target: &Target, preserve_host: bool) -> TlsTarget {
    // SAFETY: caller contract; the strings are NUL-terminated or NULL.
    unsafe {
        let host = if preserve_host && !(*r).hostname.is_null() {
            cstr_lossy((*r).hostname)
        } else {
            target.host().to_string()
        };
        // mod_proxy matches its sections against the `proxy:` file name
        // as the map_to_storage hook kept it; without it (a per-directory
        // RewriteRule) it matches none, and the server's settings apply.
        let kept = TableRef::from_raw((*r).notes).and_then(|n| n.get(SECTION_URL_NOTE));
        let Some(tls) = backend_tls::of_server((*r).server as usize) else {
            return TlsTarget { host, policy: Default::default(), files: Default::default() };
        };
        let policy = match kept {
            Some(f) => {
                let filename = String::from_utf8_lossy(f);
                tls.for_url(filename.strip_prefix("proxy:").unwrap_or(&filename))
            }
            None => tls.server.clone(),
        };
        TlsTarget { host, policy, files: tls.files.clone() }
    }
}

/// Runs a proxied request once its task is built: hands it to the engine,
/// sends the body, passes the response on or suspends the request.
unsafe fn run_request(r: *mut ffi::request_rec, task: &Arc<Task>, engine: &Arc<Engine>, has_body: bool) -> c_int {
    // SAFETY: caller contract: `r` is the live request on this thread.
    unsafe {
        let c = (*r).connection;
        // Only the stream's own request can be suspended and resumed (see
        // `c2::suspend`): a subrequest (an SSI include of a proxied URL) or
        // an internal redirect (an ErrorDocument under ProxyPass) is run
        // to its end here, as over HTTP/1.1.
        let stream = if ffi::h2rs_shim_http2_loaded() != 0 && workers::current().is_some() {
            c2::ctx_of(c).filter(|ctx| c2::request_of(ctx) == r).and_then(|ctx| ctx.stream.clone())
        } else {
            None
        };
        // SAFETY: on this thread, in the request's pool.
        let front = stream.map(|s| C2Front::new(task.clone(), s, r));
        if let Some(f) = &front {
            task.set_front(f.clone());
        }
        engine.submit(task.clone());

        if has_body {
            // Connection failures come back here, as they do for
            // mod_proxy_http: 503 lets mod_proxy fail over to another
            // balancer member, before the body is read. (Without a body, the
            // inline phase below waits for the dispatch just the same.)
            if let Some(Failure::Status(s)) = task.wait_dispatched(task.spec.timeout) {
                log_failure(r, task, s);
                return s as c_int;
            }
            if front.is_none() {
                if let Err(status) = send_body(r, task, engine) {
                    // The backend's stream, if still open, is reset.
                    engine.cancel(task);
                    return status;
                }
            }
        }
        if let Some(front) = front {
            // Full duplex: body and response move in turns, here until
            // neither side has anything, then parked like the response.
            if has_body {
                if let Some(status) = front.start_body(r, engine) {
                    return status;
                }
            }
            // A fast backend answers within moments: finish here rather
            // than pay for parking and resuming; a slow one frees the worker.
            if !front.body_pending() {
                if let Some(status) = run_until(r, task, engine, true, Some(&front.stream), front.response_brigade()) {
                    return status;
                }
            }
            if c2::suspend(r, front.clone()) {
                task.mark_suspended();
                return ffi::SUSPENDED;
            }
            if front.body_pending() {
                // Not reached: a front exists only on a stream connection.
                crate::log::proxy_request(r, Level::Error, "h2rs proxy: cannot suspend the request, giving up");
                engine.cancel(task);
                return ffi::HTTP_INTERNAL_SERVER_ERROR as c_int;
            }
        }
        let bb = BrigadeRef::create((*r).pool, (*c).bucket_alloc);
        run_until(r, task, engine, false, None, bb).unwrap_or(ffi::HTTP_INTERNAL_SERVER_ERROR as c_int)
    }
}

/// Streams the request body from the client to the engine (an HTTP/1.1
/// front: the response follows the whole body, as with mod_proxy_http).
unsafe fn send_body(r: *mut ffi::request_rec, task: &Arc<Task>, engine: &Engine) -> Result<(), c_int> {
    // SAFETY: caller contract; the brigade lives in the request pool.
    unsafe {
        let c = (*r).connection;
        let bb = BrigadeRef::create((*r).pool, (*c).bucket_alloc);
        while read_and_forward(r, bb, task, engine, ffi::APR_BLOCK_READ, Some(task.spec.timeout))? != BodyRead::Ended {}
        Ok(())
    }
}

/// What one read of the request body brought.
#[derive(PartialEq, Eq)]
enum BodyRead {
    Nothing,
    Some,
    /// The end of the body (maybe with some before it).
    Ended,
}

/// One read of the request body, passed to the engine.
unsafe fn read_and_forward(
    r: *mut ffi::request_rec,
    bb: BrigadeRef,
    task: &Arc<Task>,
    engine: &Engine,
    block: ffi::apr_read_type_e,
    limit_wait: Option<Duration>,
) -> Result<BodyRead, c_int> {
    // SAFETY: caller contract: `r` is live and ours, `bb` in its pool.
    let rv = unsafe { ffi::ap_get_brigade((*r).input_filters, bb.as_ptr(), ffi::AP_MODE_READBYTES, block, BODY_READ) };
    if rv != 0 && !(rv == status::EAGAIN && block == ffi::APR_NONBLOCK_READ) {
        // SAFETY: as above.
        return Err(unsafe { body_read_failed(r, bb, rv) });
    }
    if bb.is_empty() {
        return Ok(BodyRead::Nothing);
    }
    // SAFETY: as above.
    Ok(if unsafe { forward_body(r, bb, task, engine, limit_wait) }? { BodyRead::Ended } else { BodyRead::Some })
}

/// How much request body one read takes.
const BODY_READ: ffi::apr_off_t = 64 * 1024;

/// A read of the request body failed: the status to answer (408 for a
/// timeout, 413 past LimitRequestBody, else 400), as mod_proxy_http maps it.
unsafe fn body_read_failed(r: *mut ffi::request_rec, bb: BrigadeRef, rv: ffi::apr_status_t) -> c_int {
    bb.cleanup();
    crate::log::proxy_request(r, Level::Info, "h2rs proxy: reading the request body failed");
    // SAFETY: a plain mapping of a status code.
    unsafe { ffi::ap_map_http_request_error(rv, ffi::HTTP_BAD_REQUEST as c_int) }
}

/// Passes a brigade of request body to the engine, emptying it. Returns
/// whether it held the end of the body (then with the request's trailers).
unsafe fn forward_body(
    r: *mut ffi::request_rec,
    bb: BrigadeRef,
    task: &Arc<Task>,
    engine: &Engine,
    limit_wait: Option<Duration>,
) -> Result<bool, c_int> {
    let mut eos = false;
    let mut cur = bb.first();
    while let Some(b) = cur {
        cur = bb.next(&b);
        if b.kind().is_eos() {
            eos = true;
            break;
        }
        if b.kind().is_metadata() {
            continue;
        }
        let Ok(data) = b.read(true) else {
            bb.cleanup();
            return Err(ffi::HTTP_BAD_REQUEST as c_int);
        };
        let (ok, post) = task.push_body(data, limit_wait);
        if post {
            engine.post(task);
        }
        if !ok {
            bb.cleanup();
            return Err(ffi::HTTP_BAD_GATEWAY as c_int);
        }
    }
    bb.cleanup();
    if eos {
        // Request trailers (HTTP_IN or our stream input put them in
        // r->trailers_in) follow the body to the backend.
        let mut trailers = Headers::new();
        // SAFETY: caller contract: `r` is live.
        if let Some(t) = unsafe { TableRef::from_raw((*r).trailers_in) } {
            t.for_each(|n, v| {
                let lower = n.to_ascii_lowercase();
                let name = lower.as_slice();
                if !HOP_BY_HOP.contains(&name) && !NOT_IN_TRAILERS.contains(&name) && !name.is_empty() {
                    trailers.push(name, v);
                }
            });
        }
        if task.end_body(Some(trailers)) {
            engine.post(task);
        }
    }
    Ok(eos)
}

/// Runs the response on this thread: until it is done (HTTP/1.1 fronts
/// and any request not on our stream connections), or with `inline`, until
/// `INLINE_WAIT` after the request went out to the backend (then None: the
/// caller suspends the request; a failure to reach the backend still comes
/// back here, for mod_proxy's failover). With `stream`, only what the
/// client stream has room for is passed on. `bb`: the request's response
/// brigade.
unsafe fn run_until(
    r: *mut ffi::request_rec,
    task: &Arc<Task>,
    engine: &Engine,
    inline: bool,
    stream: Option<&Arc<Stream>>,
    bb: BrigadeRef,
) -> Option<c_int> {
    let mut deadline: Option<Instant> = None;
    loop {
        if inline && deadline.is_none() && task.is_dispatched() {
            deadline = Some(Instant::now() + INLINE_WAIT);
        }
        let wait = match deadline {
            Some(d) => d.checked_duration_since(Instant::now())?,
            None => Duration::from_millis(500),
        };
        task.wait_news(wait);
        let max = match stream {
            Some(s) => s.out_limit.saturating_sub(s.output_queued()).min(PUMP_MAX),
            None => PUMP_MAX,
        };
        // SAFETY: the request is live and ours (we are its handler).
        match unsafe { pump(r, task, engine, max, bb) } {
            Pumped::More if max == 0 && inline => return None,
            Pumped::More => {}
            // SAFETY: as above.
            Pumped::Done(end) => return Some(unsafe { handler_status(r, end) }),
        }
    }
}

/// What the handler returns for a response that ended this way.
unsafe fn handler_status(r: *mut ffi::request_rec, end: End) -> c_int {
    match end {
        End::Complete => HOOK_OK,
        End::Status(s) => s,
        End::Abort => {
            // SAFETY: caller contract: the request is live and ours.
            unsafe { (*(*r).connection).aborted = 1 };
            ffi::HOOK_DONE
        }
    }
}

// ---- the response on the front ---------------------------------------------

enum End {
    /// The response is complete; trailers are in r->trailers_out.
    Complete,
    /// No response: answer with this status (or AP_FILTER_ERROR: an
    /// input filter answered already).
    Status(c_int),
    /// The response is broken off (backend reset or client gone).
    Abort,
}

enum Pumped {
    More,
    Done(End),
}

/// Response fields not passed on: the connection-specific ones, and the
/// backend's Alt-Svc (it names the backend's services, which a client
/// would look for on this server; the stock module drops it too).
const RESPONSE_NOT_PASSED: &[&[u8]] =
    &[b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"alt-svc"];

/// Says why the engine failed the request, in the request's error log (its
/// virtual host's, with the client), as mod_proxy logs a backend's failure
/// with the request; the engine's loop logs it in the main server's.
#[cold]
fn log_failure(r: *mut ffi::request_rec, task: &Task, status: u16) {
    if let Some(why) = task.failure_reason() {
        crate::log::proxy_request(r, Level::Error, &format!("h2rs proxy: {why}, answering {status}"));
    }
}

/// Passes what the engine has for the request (at most `max_data` body
/// bytes) through its output filters, in `bb` (the request's response
/// brigade, made once: a brigade per pass would grow the request's pool for
/// as long as the response lasts).
unsafe fn pump(r: *mut ffi::request_rec, task: &Arc<Task>, engine: &Engine, max_data: usize, bb: BrigadeRef) -> Pumped {
    let (t, post) = task.take(max_data);
    if post {
        engine.post(task);
    }
    // SAFETY: caller contract: `r` is live and owned by this thread.
    unsafe {
        if let (Some(Failure::Status(s)), None) = (t.failure, &t.head) {
            log_failure(r, task, s);
            if let Some(port) = task.source_port() {
                // A request that reached the backend and failed there.
                note_number(r, c"proxy-source-port", port.into());
            }
            if s == 504 {
                // The backend did not answer in time (the engine's only
                // 504): mod_proxy_balancer's failontimeout reads this
                // note, which mod_proxy_http sets on a read timeout.
                if let Some(notes) = TableRef::from_raw((*r).notes) {
                    notes.set(c"proxy_timedout", c"1");
                }
            }
            return Pumped::Done(End::Status(c_int::from(s)));
        }
        for head in t.interims {
            send_interim(r, &head, task.spec.link_origin.as_deref());
        }
        if let Some(head) = &t.head {
            // The backend's status, for logs (`%{proxy-status}n`), as
            // mod_proxy_http and the stock module note it.
            note_number(r, c"proxy-status", head.status.into());
            if let Some(port) = task.source_port() {
                note_number(r, c"proxy-source-port", port.into());
            }
            if ffi::h2rs_shim_proxy_should_override(r, head.status as c_int) != 0 {
                // ProxyErrorOverride: a local error page instead of the
                // backend's body. The note tells mod_proxy the status is
                // the backend's answer, not a failure to reach it: without
                // it a balancer member answering 500 was put in error, and
                // on 503 the request went to the next member again, body
                // and all (as mod_proxy_http, a 401's challenge goes with
                // the local page).
                engine.cancel(task);
                if let Some(notes) = TableRef::from_raw((*r).notes) {
                    notes.set(c"proxy-error-override", c"1");
                }
                // An ErrorDocument's request carries the error's status:
                // ap_die would take the override's as a recursive error
                // and skip the local page (mod_proxy_http clears it too).
                (*r).status = ffi::HTTP_OK as c_int;
                if head.status == 401 {
                    if let (Some(challenge), Some(err)) =
                        (head.headers.get(b"www-authenticate"), TableRef::from_raw((*r).err_headers_out))
                    {
                        if let Ok(challenge) = std::ffi::CString::new(challenge) {
                            err.set(c"WWW-Authenticate", &challenge);
                        }
                    }
                }
                return Pumped::Done(End::Status(c_int::from(head.status)));
            }
            apply_head(r, head, &task.spec);
            if !t.end && has_no_content(r, head.status) {
                // The client's response is complete with its head. Ending
                // it now sends the head: HTTP/1.1's header filter drops
                // the flush below with a bodiless response's body, so the
                // head waited for the backend's END_STREAM, and a backend
                // that never sent it left the client an empty reply at the
                // timeout.
                task.detach_front();
                return Pumped::Done(End::Complete);
            }
        }
        // A head without body yet (a stream of events, a long poll) goes
        // out at once: a flush makes the response filters send it.
        if !t.data.is_empty() || t.end || t.head.is_some() {
            let c = (*r).connection;
            bb.push_copy(&t.data);
            if t.end {
                if let (Some(tr), Some(pool), Some(out)) =
                    (&t.trailers, PoolRef::from_raw((*r).pool), TableRef::from_raw((*r).trailers_out))
                {
                    for (n, v) in tr.iter() {
                        ffi::apr_table_addn(out.as_ptr(), c2::field_name(pool, n), pool.strdup(v));
                    }
                }
            } else {
                bb.push_flush();
            }
            let rv = ffi::ap_pass_brigade((*r).output_filters, bb.as_ptr());
            bb.cleanup();
            if rv != 0 || (*c).aborted != 0 {
                engine.cancel(task);
                return Pumped::Done(End::Abort);
            }
        }
        if t.end {
            return Pumped::Done(End::Complete);
        }
        if t.failure.is_some() {
            return Pumped::Done(End::Abort);
        }
        Pumped::More
    }
}

/// The response has no content by its status or the request's method
/// (RFC 9110 6.4.1): its head is all of it.
unsafe fn has_no_content(r: *mut ffi::request_rec, status: u16) -> bool {
    // SAFETY: caller contract: `r` is live.
    status == 204 || status == 304 || unsafe { (*r).header_only } != 0
}

/// Sets the request's response status and fields from the backend's head.
unsafe fn apply_head(r: *mut ffi::request_rec, head: &ResponseHead, spec: &RequestSpec) {
    // SAFETY: caller contract; strings are copied into the request pool.
    unsafe {
        let (Some(pool), Some(out)) = (PoolRef::from_raw((*r).pool), TableRef::from_raw((*r).headers_out)) else {
            return;
        };
        // An ErrorDocument's request (internal redirect) carries the error's
        // status: under ProxyErrorOverride it stays the response's, as
        // mod_proxy_http restores it, not the error page's 200.
        let original = ((*r).status, (*r).status_line);
        (*r).status = head.status as c_int;
        if ffi::h2rs_shim_proxy_should_override(r, original.0) != 0 {
            ((*r).status, (*r).status_line) = original;
        }
        for (n, v) in head.headers.iter() {
            if RESPONSE_NOT_PASSED.contains(&n) {
                continue;
            }
            let value = pool.strdup(v);
            if n == b"content-type" {
                ffi::ap_set_content_type(r, value);
                continue;
            }
            // ProxyPassReverse and its cookie rules, on the fields
            // mod_proxy_http maps.
            let value = match n {
                b"location" | b"content-location" | b"uri" | b"destination" => {
                    ffi::h2rs_shim_proxy_reverse_map(r, value)
                }
                b"set-cookie" => ffi::h2rs_shim_proxy_cookie_reverse_map(r, value),
                b"link" => match &spec.link_origin {
                    Some(origin) => pool.strdup(&reverse_map_links(r, v, origin)),
                    None => value,
                },
                _ => value,
            };
            ffi::apr_table_addn(out.as_ptr(), c2::field_name(pool, n), value);
        }
        if let Some(v) = spec.via.as_deref() {
            ffi::apr_table_mergen(out.as_ptr(), c"Via".as_ptr(), pool.strdup(v.as_bytes()));
        }
    }
}

/// A `Link` field's URIs under ProxyPassReverse, as the stock module maps
/// them (`h2_proxy_link_reverse_map`): a path gets the ProxyPass URL's
/// `origin` in front ("h2c://be") for the mapping and loses this server's
/// own URL again after it; a URI that names the backend as http(s)://
/// is mapped as its h2c:// (h2://) form.
///
/// # Safety
/// `r` is the live request on this thread.
unsafe fn reverse_map_links(r: *mut ffi::request_rec, value: &[u8], origin: &str) -> Vec<u8> {
    let real = origin.replacen("h2c://", "http://", 1).replacen("h2://", "https://", 1);
    let mut own_url: Option<Vec<u8>> = None;
    links::map_link_uris(value, |uri| {
        let relative = uri.first() == Some(&b'/');
        let candidate = if relative {
            [origin.as_bytes(), uri].concat()
        } else if let Some(rest) = uri.strip_prefix(real.as_bytes()) {
            [origin.as_bytes(), rest].concat()
        } else {
            uri.to_vec()
        };
        let candidate = std::ffi::CString::new(candidate).ok()?;
        // SAFETY: caller contract; the result is NUL-terminated, the
        // candidate's own pointer when nothing maps it.
        let mapped = unsafe { ffi::h2rs_shim_proxy_reverse_map(r, candidate.as_ptr()) };
        if mapped.is_null() || std::ptr::eq(mapped, candidate.as_ptr()) {
            return None;
        }
        // SAFETY: as above.
        let mapped = unsafe { CStr::from_ptr(mapped) }.to_bytes();
        if relative {
            // SAFETY: caller contract.
            let own = own_url.get_or_insert_with(|| unsafe {
                CStr::from_ptr(ffi::ap_construct_url((*r).pool, c"".as_ptr(), r)).to_bytes().to_vec()
            });
            return Some(mapped.strip_prefix(own.as_slice()).unwrap_or(mapped).to_vec());
        }
        Some(mapped.to_vec())
    })
}

/// Sends a 1xx interim response (103 Early Hints...) to the client.
/// Its `Link` fields are mapped as the final head's (`link_origin`).
unsafe fn send_interim(r: *mut ffi::request_rec, head: &ResponseHead, link_origin: Option<&str>) {
    // SAFETY: caller contract; the saved table is restored before return.
    unsafe {
        let (Some(pool), Some(out)) = (PoolRef::from_raw((*r).pool), TableRef::from_raw((*r).headers_out)) else {
            return;
        };
        let saved = ffi::apr_table_copy((*r).pool, out.as_ptr());
        out.clear();
        for (n, v) in head.headers.iter() {
            let value = match link_origin {
                Some(origin) if n == b"link" => pool.strdup(&reverse_map_links(r, v, origin)),
                _ => pool.strdup(v),
            };
            ffi::apr_table_addn(out.as_ptr(), c2::field_name(pool, n), value);
        }
        let (status, line) = ((*r).status, (*r).status_line);
        (*r).status = head.status as c_int;
        let text = match head.status {
            100 => "100 Continue".to_string(),
            102 => "102 Processing".to_string(),
            103 => "103 Early Hints".to_string(),
            s => format!("{s} Interim"),
        };
        (*r).status_line = pool.strdup(text.as_bytes());
        ffi::ap_send_interim_response(r, 1);
        (*r).status = status;
        (*r).status_line = line;
        (*r).headers_out = saved;
    }
}

/// Ends a resumed request the way httpd ends one whose handler returned.
unsafe fn finish_request(r: *mut ffi::request_rec, end: End) {
    // SAFETY: caller contract: the request is live and ours.
    unsafe {
        match end {
            End::Complete => ffi::ap_finalize_request_protocol(r),
            End::Status(s) => ffi::ap_die(s, r),
            End::Abort => (*(*r).connection).aborted = 1,
        }
        ffi::ap_process_request_after_handler(r);
    }
}

// ---- the c2 front: resumed on workers --------------------------------------

enum Slot {
    /// A thread runs the request; `dirty`: it had news meanwhile (from the
    /// engine, the client's stream, or the clock).
    Running {
        dirty: bool,
    },
    Parked(Parked),
    /// A resume job is queued.
    Scheduled,
    Done,
}

/// What a proxied request on an HTTP/2 front keeps between its turns. Only
/// the thread that runs the request touches it.
struct Leg {
    /// The response's brigade, in the request's pool.
    response: BrigadeRef,
    /// The request body, while the client is still sending it.
    body: Option<BodyLeg>,
    /// When the clock will wake the request (at most one alarm pending
    /// that is not past).
    alarm: Option<Instant>,
    /// When the client last had room for the response: one that takes
    /// nothing (its window shut, the stream's queue full) is bounded by
    /// the stream timeout, as a local handler's blocked write is; the
    /// backend's timeout does not count while it waits on the client.
    output_clock: Instant,
}

struct BodyLeg {
    /// The body's brigade, in the request's pool.
    bb: BrigadeRef,
    /// When the client last sent body, or the wait was not on it (the queue
    /// to the backend was full): until the backend answers, the client's
    /// silence is bounded by the stream timeout, as a local handler's read
    /// is.
    client_clock: Instant,
}

// SAFETY: the brigades live in the request's pool and are used only by the
// thread that runs the request, one at a time: the handler, then resume
// jobs, handed over through the front's slot (a mutex).
unsafe impl Send for Leg {}

/// What one turn of a request did.
enum Turn {
    /// The request is finished this way (`finish_request`).
    Done(End),
    /// Something moved: another turn may move more.
    Again,
    /// Nothing to do until news, or until the clock at `until`; `had_room`:
    /// the client's stream had room for response bytes.
    Idle { until: Option<Instant>, had_room: bool },
}

struct C2Front {
    task: Arc<Task>,
    stream: Arc<Stream>,
    slot: Mutex<Slot>,
    leg: Mutex<Leg>,
    me: Weak<C2Front>,
}

impl C2Front {
    /// # Safety
    /// `r` is the live request on the calling thread.
    unsafe fn new(task: Arc<Task>, stream: Arc<Stream>, r: *mut ffi::request_rec) -> Arc<C2Front> {
        // SAFETY: caller contract.
        let response = unsafe { BrigadeRef::create((*r).pool, (*(*r).connection).bucket_alloc) };
        Arc::new_cyclic(|me| C2Front {
            task,
            stream,
            slot: Mutex::new(Slot::Running { dirty: false }),
            leg: Mutex::new(Leg { response, body: None, alarm: None, output_clock: Instant::now() }),
            me: me.clone(),
        })
    }

    fn response_brigade(&self) -> BrigadeRef {
        self.leg.lock().response
    }

    fn body_pending(&self) -> bool {
        self.leg.lock().body.is_some()
    }

    /// Starts sending the request body (the request was dispatched) and
    /// runs turns on the handler's thread while they move something.
    /// Some(status): the handler returns it; None: the request waits for
    /// news (the caller parks it).
    ///
    /// # Safety
    /// `r` is the live request on the calling thread.
    unsafe fn start_body(self: &Arc<Self>, r: *mut ffi::request_rec, engine: &Engine) -> Option<c_int> {
        let waker: Arc<dyn Wake> = self.clone();
        // SAFETY: caller contract.
        unsafe {
            if (*r).expecting_100 != 0 {
                // HTTP_IN sends the 100 only on a blocking read; a client
                // that waits for it would never send the body we wait for.
                send_interim(r, &ResponseHead { status: 100, headers: Headers::new() }, None);
            }
            let bb = BrigadeRef::create((*r).pool, (*(*r).connection).bucket_alloc);
            self.leg.lock().body = Some(BodyLeg { bb, client_clock: Instant::now() });
        }
        // Stays registered after the body: a wake then costs a turn that
        // finds nothing, and the stream drops it when it closes (which
        // also ends the cycle stream -> front -> stream).
        self.stream.watch_input(waker.clone());
        loop {
            let mut leg = self.leg.lock();
            // SAFETY: caller contract.
            match unsafe { self.turn(r, engine, &mut leg, &waker) } {
                // SAFETY: as above.
                Turn::Done(end) => return Some(unsafe { handler_status(r, end) }),
                Turn::Again => {}
                Turn::Idle { until, .. } => {
                    self.arm(&mut leg, until);
                    return None;
                }
            }
        }
    }

    /// One turn: forwards what the client sent of the body (without
    /// blocking), passes on what the response has (as far as the client's
    /// stream has room), and minds the client's deadlines while the body is
    /// coming and the backend has not answered (RequestReadTimeout's body
    /// stage, and H2StreamTimeout for a client that sends nothing; once the
    /// backend answered, the exchange is a conversation that the backend's
    /// timeout bounds). A response that ends before the body cancels the
    /// backend's stream (c1 resets the client's once the response is out).
    ///
    /// # Safety
    /// `r` is the live request on the calling thread.
    unsafe fn turn(&self, r: *mut ffi::request_rec, engine: &Engine, leg: &mut Leg, waker: &Arc<dyn Wake>) -> Turn {
        let task = &self.task;
        let give_up = |status: c_int| {
            engine.cancel(task);
            if task.head_taken() {
                // The backend's head went on to httpd: an error page now
                // would be appended to its body, and ended as complete.
                Turn::Done(End::Abort)
            } else {
                Turn::Done(End::Status(status))
            }
        };
        let mut moved = false;
        if let Some(body) = &mut leg.body {
            if !task.body_room() {
                body.client_clock = Instant::now();
            } else {
                // SAFETY: caller contract; the brigade is in the request pool.
                match unsafe { read_and_forward(r, body.bb, task, engine, ffi::APR_NONBLOCK_READ, None) } {
                    Err(status) => return give_up(status),
                    Ok(BodyRead::Ended) => {
                        leg.body = None;
                        moved = true;
                    }
                    Ok(BodyRead::Some) => {
                        body.client_clock = Instant::now();
                        moved = true;
                    }
                    Ok(BodyRead::Nothing) => {}
                }
            }
        }
        let room = self.stream.output_room(waker).min(PUMP_MAX);
        let now = Instant::now();
        if room > 0 {
            leg.output_clock = now;
        }
        let output_deadline = (room == 0).then(|| leg.output_clock + self.stream.timeout());
        if output_deadline.is_some_and(|d| now >= d) {
            self.log_client_timeout(r, "the client took none of the response");
            self.stream.note_output_starved();
            engine.cancel(task);
            return Turn::Done(End::Abort);
        }
        if room > 0 {
            // SAFETY: caller contract.
            if let Pumped::Done(end) = unsafe { pump(r, task, engine, room, leg.response) } {
                if leg.body.is_some() {
                    engine.cancel(task);
                }
                return Turn::Done(end);
            }
        }
        if moved {
            return Turn::Again;
        }
        let idle = |until: Option<Instant>| Turn::Idle {
            until: [until, output_deadline].into_iter().flatten().min(),
            had_room: room > 0,
        };
        let Some(body) = &mut leg.body else { return idle(None) };
        // The body's last bytes may wait for the client's END_STREAM (and
        // trailers) for a moment; when that runs out, no wake-up comes.
        // SAFETY: caller contract.
        let held_until = unsafe { c2::input_hold_until((*r).connection) };
        if task.response_started() {
            return idle(held_until);
        }
        // SAFETY: caller contract.
        let body_deadline = unsafe { c2::body_deadline((*r).connection) };
        let client_deadline = task.body_room().then(|| body.client_clock + self.stream.timeout());
        if client_deadline.is_some_and(|d| now >= d) {
            self.log_client_timeout(r, "no request body from the client");
            return give_up(ffi::HTTP_REQUEST_TIME_OUT as c_int);
        }
        if body_deadline.is_some_and(|d| now >= d) {
            // Too slow: a blocking read past the deadline returns what came
            // meanwhile, or TIMEUP with mod_reqtimeout's log line.
            // SAFETY: as above.
            return match unsafe { read_and_forward(r, body.bb, task, engine, ffi::APR_BLOCK_READ, None) } {
                Err(status) => give_up(status),
                Ok(BodyRead::Nothing) => give_up(ffi::HTTP_REQUEST_TIME_OUT as c_int),
                Ok(BodyRead::Ended) => {
                    leg.body = None;
                    Turn::Again
                }
                Ok(BodyRead::Some) => Turn::Again,
            };
        }
        idle([body_deadline, client_deadline, held_until].into_iter().flatten().min())
    }

    /// The client let the stream timeout pass: `what` it did not do.
    fn log_client_timeout(&self, r: *mut ffi::request_rec, what: &str) {
        let timeout = self.stream.timeout();
        crate::log::proxy_request(r, Level::Info, &format!("h2rs proxy: {what} within {timeout:?} (H2StreamTimeout)"));
    }

    /// Has the clock wake the request at `until`, unless an alarm that is
    /// not past rings before it (each later turn sets the next one).
    fn arm(self: &Arc<Self>, leg: &mut Leg, until: Option<Instant>) {
        let Some(at) = until else { return };
        let now = Instant::now();
        if leg.alarm.is_some_and(|a| a > now && a <= at) {
            return;
        }
        leg.alarm = Some(at);
        if !crate::clock::schedule(self, at.saturating_duration_since(now), 0) {
            crate::log::proxy(Level::Crit, "h2rs proxy: no clock to time a request body");
        }
    }

    /// The request is finished: the task, which the engine may still hold
    /// for a while, lets go of this front (they hold each other).
    fn finished(&self) {
        *self.slot.lock() = Slot::Done;
        self.task.drop_front();
    }

    /// Queues a resume job for the parked request.
    fn schedule(&self, parked: Parked) {
        let Some(me) = self.me.upgrade() else { return };
        let job: workers::Job = Box::new(move |w: &WorkerCtx| me.run(parked, w));
        let Some(pool) = workers::current() else {
            crate::log::proxy(Level::Crit, "h2rs proxy: no worker pool to resume a request on");
            return;
        };
        if let Err(job) = pool.submit(job) {
            // The pool is stopping: run it here (engine threads are
            // registered with APR, and this request has no other owner).
            let ctx = WorkerCtx { slot: 255, thread: crate::hooks::current_thread() };
            job(&ctx);
        }
    }

    fn run(self: &Arc<Self>, mut parked: Parked, w: &WorkerCtx) {
        let Some(engine) = engine() else {
            // Stopping: finish what can be finished.
            *self.slot.lock() = Slot::Running { dirty: false };
            let task = self.task.clone();
            task.fail(503);
            let _ = parked.resume(w, |r| {
                // SAFETY: the resumed request is ours on this thread.
                unsafe { finish_request(r, End::Abort) };
                true
            });
            self.finished();
            return;
        };
        let waker: Arc<dyn Wake> = self.clone();
        loop {
            *self.slot.lock() = Slot::Running { dirty: false };
            let mut again = false;
            let mut had_room = false;
            let more = parked.resume(w, |r| {
                let mut leg = self.leg.lock();
                // SAFETY: the resumed request is ours on this thread.
                match unsafe { self.turn(r, &engine, &mut leg, &waker) } {
                    Turn::Done(end) => {
                        // SAFETY: as above.
                        unsafe { finish_request(r, end) };
                        true
                    }
                    Turn::Again => {
                        again = true;
                        false
                    }
                    Turn::Idle { until, had_room: room } => {
                        had_room = room;
                        self.arm(&mut leg, until);
                        false
                    }
                }
            });
            let Some(p) = more else {
                self.finished();
                return;
            };
            let mut slot = self.slot.lock();
            // Without room, the stream's output watch resumes us (news from
            // the engine is data that must wait anyway, or sets `dirty`).
            let news = again || (had_room && self.task.has_news());
            if matches!(*slot, Slot::Running { dirty: true }) || news {
                drop(slot);
                parked = p;
                continue;
            }
            *slot = Slot::Parked(p);
            return;
        }
    }
}

impl crate::clock::Alarm for C2Front {
    /// A deadline of the request body is due (`arm`).
    fn ring(self: Arc<Self>, _kind: u8) {
        Front::wake(&*self);
    }
}

impl Front for C2Front {
    fn wake(&self) {
        let parked = {
            let mut slot = self.slot.lock();
            match &mut *slot {
                Slot::Running { dirty } => {
                    *dirty = true;
                    None
                }
                Slot::Parked(_) => match std::mem::replace(&mut *slot, Slot::Scheduled) {
                    Slot::Parked(p) => Some(p),
                    _ => None,
                },
                Slot::Scheduled | Slot::Done => None,
            }
        };
        if let Some(p) = parked {
            self.schedule(p);
        }
    }

    fn gone(&self) -> bool {
        self.stream.is_aborted()
    }
}

impl Wake for C2Front {
    fn wake(&self) {
        Front::wake(self);
    }
}

impl Resume for C2Front {
    fn park(&self, parked: Parked) {
        let now = {
            let mut slot = self.slot.lock();
            if matches!(*slot, Slot::Running { dirty: true }) || self.task.has_news() {
                *slot = Slot::Scheduled;
                Some(parked)
            } else {
                *slot = Slot::Parked(parked);
                None
            }
        };
        if let Some(p) = now {
            self.schedule(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = parse_target("h2c://127.0.0.1:8080/api/x?y=1").unwrap();
        assert_eq!(t.key, "127.0.0.1:8080");
        assert_eq!(t.path, "/api/x?y=1");
        assert!(!t.tls);
        let t = parse_target("h2c://backend").unwrap();
        assert_eq!((t.key.as_str(), t.path.as_str()), ("backend:80", "/"));
        let t = parse_target("h2://[::1]/x").unwrap();
        assert_eq!(t.key, "[::1]:443");
        assert_eq!(parse_target("h2://b.test:8443/").unwrap().host(), "b.test");
        assert_eq!(parse_target("h2://[::1]/").unwrap().host(), "[::1]");
        assert!(parse_target("http://x/").is_none());
        assert!(parse_target("h2cé://x/").is_none());
        assert!(parse_target("h2c://").is_none());
    }

    /// A GET to 127.0.0.1:9 from 127.0.0.1 through "front", X-Forwarded-*
    /// and Via on.
    fn rules(fields: Vec<(&'static [u8], &'static [u8])>) -> HeadRules<'static> {
        HeadRules {
            method: b"GET",
            tls: false,
            authority: b"127.0.0.1:9",
            path: b"/p",
            fields,
            client_ip: Some(b"127.0.0.1"),
            server_name: b"front",
            forwarded: true,
            via: Some("2.0 front".into()),
            via_block: false,
            chain_auth: false,
            body_filtered: false,
            subrequest: false,
        }
    }

    #[test]
    fn builds_backend_fields() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Host", b"front.example"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"1"),
            (b"Accept", b"*/*"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"TE", b"trailers"),
            (b"Proxy-Authorization", b"Basic x"),
            (b"Content-Length", b"10"),
            (b"If-None-Match", b"\"x\""),
        ];
        let mut h = rules(fields);
        let out = backend_fields(&h);
        let got: Vec<(String, String)> =
            out.iter().map(|(n, v)| (String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into())).collect();
        let get = |n: &str| got.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(got[0], (":method".into(), "GET".into()));
        assert_eq!(get(":authority"), Some("127.0.0.1:9"));
        assert_eq!(get("accept"), Some("*/*"));
        assert_eq!(get("x-secret"), None);
        assert_eq!(get("host"), None);
        assert_eq!(get("connection"), None);
        assert_eq!(get("proxy-authorization"), None);
        assert_eq!(get("te"), Some("trailers"));
        assert_eq!(get("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
        assert_eq!(get("x-forwarded-host"), Some("front.example"));
        assert_eq!(get("x-forwarded-server"), Some("front"));
        assert_eq!(get("via"), Some("2.0 front"));
        assert_eq!(get("content-length"), Some("10"));
        assert_eq!(get("if-none-match"), Some("\"x\""));
        (h.chain_auth, h.body_filtered, h.subrequest) = (true, true, true);
        let out = backend_fields(&h);
        assert_eq!(out.get(b"proxy-authorization"), Some(&b"Basic x"[..]));
        assert_eq!(out.get(b"content-length"), None);
        assert_eq!(out.get(b"if-none-match"), None);
    }

    #[test]
    fn forwarding_fields_the_connection_field_names_are_the_clients_no_more() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Connection", b"X-Forwarded-For, Via"),
            (b"X-Forwarded-For", b"10.6.6.6"),
            (b"Via", b"1.1 spoofed"),
            (b"X-Forwarded-Host", b"kept.example"),
            (b"TE", b"trailers, deflate;q=0.5"),
        ];
        let out = backend_fields(&rules(fields));
        assert_eq!(out.get(b"x-forwarded-for"), Some(&b"127.0.0.1"[..]));
        assert_eq!(out.get(b"via"), Some(&b"2.0 front"[..]));
        assert_eq!(out.get(b"x-forwarded-host"), Some(&b"kept.example"[..]));
        assert_eq!(out.get(b"te"), Some(&b"trailers"[..]));
    }
}
