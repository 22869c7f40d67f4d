//! Every entry point httpd calls (registered by the C shim). Each one runs
//! its body behind the panic boundary and returns a safe fallback if the
//! body panics: a hook declines, a filter fails its stream, a directive
//! reports an error.
//!
//! Every `extern "C"` function here has the same safety contract, stated
//! once rather than on each: httpd (through the C shim, which registers
//! them) calls it with the arguments its hook, filter or directive passes,
//! live for the call, on the thread that owns them.
#![allow(clippy::missing_safety_doc)]

use crate::apr::{self, PoolRef};
use crate::c1;
use crate::c2;
use crate::config::{self, DirConfig, ServerConfig, Target};
use crate::conftree::{self, VhostKey};
use crate::ffi::{self, panic::guard, HOOK_DECLINED, HOOK_OK};
use crate::log::Level;
use crate::proxy::backend_tls::{PemFiles, TlsPolicy};
use crate::slog;
use crate::workers;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;

/// False on MPMs that cannot multiplex (prefork): h2 is not offered.
static MPM_SUPPORTED: AtomicBool = AtomicBool::new(true);
/// The child process pool (for per-thread APR registration).
static PCHILD: AtomicPtr<ffi::apr_pool_t> = AtomicPtr::new(ptr::null_mut());

// ---- configuration -----------------------------------------------------------

/// A config object of type `T` in pool `p` (dropped with the pool).
fn create_config<T: Default + 'static>(p: *mut ffi::apr_pool_t) -> *mut c_void {
    // SAFETY: httpd passes a live config pool.
    match unsafe { PoolRef::from_raw(p) } {
        Some(pool) => pool.attach(T::default()) as *mut c_void,
        None => ptr::null_mut(),
    }
}

/// httpd's merge of two config objects made by `create_config::<T>`.
fn merge_config<T: Default + 'static>(
    p: *mut ffi::apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
    merge: fn(&T, &T) -> T,
) -> *mut c_void {
    let default = T::default();
    // SAFETY: base/add were made by create_config::<T> (or merge_config)
    // for this configuration generation, or are NULL; the pool is live.
    unsafe {
        let b = (base as *const T).as_ref().unwrap_or(&default);
        let a = (add as *const T).as_ref().unwrap_or(&default);
        match PoolRef::from_raw(p) {
            Some(pool) => pool.attach(merge(b, a)) as *mut c_void,
            None => ptr::null_mut(),
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_create_server_config(p: *mut ffi::apr_pool_t, _s: *mut ffi::server_rec) -> *mut c_void {
    guard("create_server_config", ptr::null_mut(), || create_config::<ServerConfig>(p))
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_merge_server_config(
    p: *mut ffi::apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
) -> *mut c_void {
    guard("merge_server_config", ptr::null_mut(), || merge_config(p, base, add, ServerConfig::merge))
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_create_dir_config(p: *mut ffi::apr_pool_t, _dir: *mut c_char) -> *mut c_void {
    guard("create_dir_config", ptr::null_mut(), || create_config::<DirConfig>(p))
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_merge_dir_config(
    p: *mut ffi::apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
) -> *mut c_void {
    guard("merge_dir_config", ptr::null_mut(), || merge_config(p, base, add, DirConfig::merge))
}

/// Every H2* directive. Returns NULL or an error message httpd reports with
/// the file and line.
#[no_mangle]
pub unsafe extern "C" fn h2rs_cmd(
    cmd: *mut ffi::cmd_parms,
    dir_config: *mut c_void,
    argc: c_int,
    argv: *const *mut c_char,
) -> *const c_char {
    let failed = c"mod_h2rs: internal error while parsing the directive".as_ptr();
    guard("directive", failed, || {
        // SAFETY: httpd passes a live cmd_parms with its directive record,
        // the server being configured, and argc NUL-terminated arguments.
        unsafe {
            let cmd = &*cmd;
            let name = CStr::from_ptr((*cmd.cmd).name).to_string_lossy().into_owned();
            let mut args = Vec::with_capacity(argc.max(0) as usize);
            for i in 0..argc.max(0) as usize {
                args.push(CStr::from_ptr(*argv.add(i)).to_string_lossy().into_owned());
            }
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            // H2ProxyRequests in a directory section sets its server's
            // value: requests are made absolute before any section is
            // walked (the stock module does the same).
            let server_wide = name.eq_ignore_ascii_case("H2ProxyRequests");
            let target = if cmd.path.is_null() || server_wide {
                match (ffi::h2rs_shim_server_conf(cmd.server) as *mut ServerConfig).as_mut() {
                    Some(s) => Target::Server(s),
                    None => return failed,
                }
            } else {
                match (dir_config as *mut DirConfig).as_mut() {
                    Some(d) => Target::Dir(d),
                    None => return failed,
                }
            };
            match config::apply(target, &name, &arg_refs) {
                Ok(()) => ptr::null(),
                Err(msg) => match PoolRef::from_raw(cmd.pool) {
                    Some(pool) => pool.strdup(msg.as_bytes()),
                    None => failed,
                },
            }
        }
    })
}

// ---- process life cycle --------------------------------------------------------

fn mpm_name() -> String {
    // SAFETY: the MPM's module record lives as long as the configuration.
    unsafe {
        let m = ffi::h2rs_shim_mpm_module();
        if m.is_null() || (*m).name.is_null() {
            "unknown".to_string()
        } else {
            CStr::from_ptr((*m).name).to_string_lossy().into_owned()
        }
    }
}

/// Whether httpd runs the configuration's first pass, the one it makes at
/// start only to check it: post_config then runs twice, and only the
/// second (real) run should speak or act.
pub(crate) fn is_config_dry_run() -> bool {
    // SAFETY: ap_state_query has no preconditions.
    let state = unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE as c_int) };
    state == ffi::AP_SQ_MS_CREATE_PRE_CONFIG as c_int
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_post_config(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    guard("post_config", HOOK_OK, || {
        ffi::panic::install_hook();
        let dry_run = is_config_dry_run();
        let mpm = mpm_name();
        let supported = mpm != "prefork.c";
        MPM_SUPPORTED.store(supported, Ordering::Release);
        if dry_run {
            return HOOK_OK;
        }
        if !supported {
            slog!(s, Level::Warn,
                "mod_h2rs: the prefork MPM cannot multiplex HTTP/2; h2 and h2c are not offered on this server (use the event or worker MPM)");
        }
        // SAFETY: walks the configured servers (a NULL-terminated list).
        unsafe {
            let mut srv = s;
            let mut warned_push = false;
            let mut warned_obsolete = false;
            // Virtual hosts inherit the main server's notes: each is told once.
            let mut clamped: Vec<String> = Vec::new();
            while !srv.is_null() {
                if let Some(cfg) = c1::server_config(srv) {
                    if !warned_push
                        && (cfg.push == Some(true) || !cfg.push_resources.is_empty() || !cfg.push_priorities.is_empty())
                    {
                        warned_push = true;
                        slog!(srv, Level::Warn,
                            "mod_h2rs: HTTP/2 server push is not provided (browsers removed it); H2Push and H2PushPriority have no effect, and H2PushResource only announces its resources in 103 Early Hints (with H2EarlyHints on)");
                    }
                    if !warned_obsolete && !cfg.obsolete_seen.is_empty() {
                        warned_obsolete = true;
                        slog!(srv, Level::Warn, "mod_h2rs: {} no longer has an effect", cfg.obsolete_seen.join(", "));
                    }
                    for note in &cfg.clamped {
                        if !clamped.contains(note) {
                            clamped.push(note.clone());
                        }
                    }
                    if let (Some(min), Some(max)) = (cfg.min_workers, cfg.max_workers) {
                        if min > max {
                            slog!(
                                srv,
                                Level::Warn,
                                "mod_h2rs: H2MinWorkers {min} is above H2MaxWorkers {max}; using {min} for both"
                            );
                        }
                    }
                }
                srv = (*srv).next;
            }
            if !clamped.is_empty() {
                slog!(s, Level::Warn, "mod_h2rs: lowered to this module's limit: {}", clamped.join(", "));
            }
        }
        // SAFETY: the configuration tree and the server list are complete
        // and not changing (post_config, in the parent).
        unsafe { set_request_body_limits(s) };
        slog!(s, Level::Info, "mod_h2rs {} loaded (MPM {mpm})", env!("CARGO_PKG_VERSION"));
        HOOK_OK
    })
}

/// Gives every server its RequestReadTimeout body stage (`reqtimeout`), read
/// from the configuration tree (`conftree`): mod_reqtimeout keeps its own
/// settings private. Its directive may stand in the main server and in
/// `<VirtualHost>` sections. Nothing is set where mod_reqtimeout is not
/// loaded.
///
/// # Safety
/// `s` is the main server; the configuration tree is complete.
unsafe fn set_request_body_limits(s: *mut ffi::server_rec) {
    use crate::reqtimeout::BodyStage;

    // SAFETY: looks a module up by its NUL-terminated source name.
    let loaded = unsafe { !ffi::ap_find_linked_module(c"mod_reqtimeout.c".as_ptr()).is_null() };
    let (mut main, mut vhosts) = (BodyStage::Unset, HashMap::<VhostKey, BodyStage>::new());
    // SAFETY: caller contract (see above).
    unsafe {
        if loaded {
            conftree::walk(&mut |d| {
                if d.name.eq_ignore_ascii_case(b"RequestReadTimeout") {
                    let stage = match d.vhost {
                        Some(key) => vhosts.entry(key.clone()).or_default(),
                        None => &mut main,
                    };
                    *stage = stage.apply(&d.args);
                }
            });
        }
    }
    let set = |srv: *mut ffi::server_rec, cfg: &ServerConfig| {
        // SAFETY: a live server_rec of the list.
        let own = match unsafe { conftree::vhost_of(srv) } {
            Some(key) => vhosts.get(&key).copied().unwrap_or_default(),
            None => main,
        };
        let limit = if loaded { BodyStage::effective(own, main) } else { None };
        let _ = cfg.request_body_limit.set(limit);
    };
    // SAFETY: caller contract.
    unsafe { for_each_server(s, set) };
}

/// Gives every server the `SSLProxy*` settings of mod_ssl for its `h2://`
/// backends (`proxy::backend_tls`), read from the configuration tree: the
/// main server's, a virtual host's merged over them, and the `<Proxy>`
/// sections that set any (the main server's, then the virtual host's, as
/// mod_proxy merges them). File names are made absolute against
/// ServerRoot and the files read, section patterns compiled in `pconf`.
///
/// # Safety
/// `s` is the main server; the configuration tree is complete; `pconf` is
/// the configuration pool.
pub(crate) unsafe fn set_backend_tls(s: *mut ffi::server_rec, pconf: *mut ffi::apr_pool_t) {
    use crate::apr::regex::{Regex, Wildcard};
    use crate::proxy::backend_tls::{BackendTls, ProxySection, SectionMatch, UrlPattern};
    use conftree::SectionPattern;

    // SAFETY: caller contract: the configuration pool.
    let Some(pool) = (unsafe { PoolRef::from_raw(pconf) }) else { return };
    let absolute = |path: &str| -> String {
        let Ok(c) = std::ffi::CString::new(path) else { return path.to_string() };
        // SAFETY: a live pool and a NUL-terminated name; the result is
        // NULL or a string in the pool, copied at once.
        let full = unsafe { ffi::ap_server_root_relative(pool.as_ptr(), c.as_ptr()) };
        if full.is_null() {
            path.to_string()
        } else {
            // SAFETY: as above.
            unsafe { CStr::from_ptr(full) }.to_string_lossy().into_owned()
        }
    };
    let mut main = TlsPolicy::default();
    let mut vhosts: HashMap<VhostKey, TlsPolicy> = HashMap::new();
    // (the section's virtual host, the section, its settings), in tree order.
    // Every section, with SSLProxy* directives or not: in mod_ssl the last
    // section that covers a URL decides, one without them for the server's
    // settings.
    let mut sections: Vec<(Option<VhostKey>, conftree::ProxySection, TlsPolicy)> = Vec::new();
    // SAFETY: caller contract.
    unsafe {
        conftree::walk(&mut |d| {
            let Ok(name) = std::str::from_utf8(d.name) else { return };
            if let Some(section) = d.section {
                let at = match sections.iter().position(|(_, s, _)| s.index == section.index) {
                    Some(at) => at,
                    None => {
                        sections.push((d.vhost.cloned(), section.clone(), TlsPolicy::default()));
                        sections.len() - 1
                    }
                };
                sections[at].2.apply(name, &d.args, absolute);
                return;
            }
            let policy = match d.vhost {
                Some(key) => vhosts.entry(key.clone()).or_default(),
                None => &mut main,
            };
            policy.apply(name, &d.args, absolute);
        });
    }
    let compile = |pattern: &SectionPattern| match pattern {
        SectionPattern::Prefix(p) => match Wildcard::new(p) {
            Some(w) => Some(SectionMatch::Pattern(Box::new(w))),
            None => Some(SectionMatch::Prefix(p.clone())),
        },
        // mod_proxy refused a pattern that does not compile at start.
        SectionPattern::Regex(re) => {
            Regex::compile(pool, re).map(|re| SectionMatch::Pattern(Box::new(re) as Box<dyn UrlPattern>))
        }
    };
    // Read here, in the parent, as root, as mod_ssl reads its own files.
    let files = Arc::new(PemFiles::read(
        std::iter::once(&main).chain(vhosts.values()).chain(sections.iter().map(|(_, _, policy)| policy)),
    ));
    // SAFETY: caller contract: the main server; a flag of this .so.
    unsafe {
        if ffi::h2rs_shim_proxy_http2_loaded() != 0 {
            warn_unusable_backend_tls(s, &main, &vhosts, &sections, &files);
        }
    }
    // Each section compiled once; a virtual host shares the main server's.
    let sections: Vec<(Option<VhostKey>, Arc<SectionMatch>, TlsPolicy)> =
        sections.into_iter().filter_map(|(v, s, own)| Some((v, Arc::new(compile(&s.pattern)?), own))).collect();
    let mut by_server = HashMap::new();
    let mut srv = s;
    while !srv.is_null() {
        // SAFETY: caller contract: a NULL-terminated list of live servers.
        let own = unsafe { conftree::vhost_of(srv) };
        let server = server_policy(&main, &vhosts, own.as_ref());
        // The main server's sections first, then the virtual host's, as
        // mod_proxy appends them, whatever their order in the files; each
        // with its settings merged over the server's (mod_ssl's
        // ssl_proxy_section_post_config).
        let main_sections = sections.iter().filter(|(v, ..)| v.is_none());
        let vhost_sections = sections.iter().filter(|(v, ..)| v.is_some() && *v == own);
        let sections = main_sections
            .chain(vhost_sections)
            .map(|(_, matches, section)| {
                Arc::new(ProxySection { matches: matches.clone(), policy: TlsPolicy::merge(&server, section) })
            })
            .collect();
        by_server.insert(srv as usize, Arc::new(BackendTls { server, sections, files: files.clone() }));
        // SAFETY: as above.
        srv = unsafe { (*srv).next };
    }
    crate::proxy::backend_tls::set_by_server(by_server, pool);
}

/// A server's own `SSLProxy*` settings: its virtual host's merged over the
/// main server's, as mod_ssl merges them.
fn server_policy(main: &TlsPolicy, vhosts: &HashMap<VhostKey, TlsPolicy>, vhost: Option<&VhostKey>) -> TlsPolicy {
    match vhost.and_then(|k| vhosts.get(k)) {
        Some(v) => TlsPolicy::merge(main, v),
        None => main.clone(),
    }
}

/// Says at start which `SSLProxy*` settings OpenSSL cannot use (a cipher
/// list it does not know, a file without a certificate or key...): mod_ssl
/// checks its proxy settings only where `SSLProxyEngine` is on, which
/// `h2://` backends do not need, and otherwise the first word of it would
/// be a request's 503. Each context is checked as its backends would see
/// it: a virtual host's over the main server's, a section's over its
/// server's. Settings left at mod_ssl's defaults need no check.
///
/// # Safety
/// `s` is the main server.
unsafe fn warn_unusable_backend_tls(
    s: *mut ffi::server_rec,
    main: &TlsPolicy,
    vhosts: &HashMap<VhostKey, TlsPolicy>,
    sections: &[(Option<VhostKey>, conftree::ProxySection, TlsPolicy)],
    files: &PemFiles,
) {
    let server_of = |vhost: Option<&VhostKey>| server_policy(main, vhosts, vhost);
    let place = |vhost: Option<&VhostKey>| match vhost {
        Some((file, line)) => format!("the <VirtualHost> at {}:{line}", String::from_utf8_lossy(file)),
        None => "the main server".to_string(),
    };
    let mut contexts = vec![(place(None), main.clone())];
    contexts.extend(vhosts.keys().map(|k| (place(Some(k)), server_of(Some(k)))));
    // A section without SSLProxy* settings has its server's, said above.
    let own_settings = sections.iter().filter(|(_, _, policy)| *policy != TlsPolicy::default());
    contexts.extend(own_settings.map(|(vhost, section, policy)| {
        let pattern = match &section.pattern {
            conftree::SectionPattern::Prefix(p) | conftree::SectionPattern::Regex(p) => p,
        };
        (
            format!("<Proxy {pattern}> in {}", place(vhost.as_ref())),
            TlsPolicy::merge(&server_of(vhost.as_ref()), policy),
        )
    }));
    for (place, policy) in contexts {
        if policy == TlsPolicy::default() {
            continue;
        }
        if let Err(e) = crate::proxy::tls::Context::new(&policy, files) {
            slog!(
                s,
                Level::Warn,
                "mod_h2rs: the SSLProxy* settings of {place} cannot serve h2:// backends: {e}; such backends will be answered 503"
            );
        }
    }
}

/// Calls `f` with every configured server and its configuration.
///
/// # Safety
/// `s` is the main server of a complete configuration.
unsafe fn for_each_server(s: *mut ffi::server_rec, mut f: impl FnMut(*mut ffi::server_rec, &ServerConfig)) {
    let mut srv = s;
    while !srv.is_null() {
        // SAFETY: caller contract: a NULL-terminated list of live servers.
        unsafe {
            if let Some(cfg) = c1::server_config(srv) {
                f(srv, cfg);
            }
            srv = (*srv).next;
        }
    }
}

/// Records the child process pool (for per-thread APR registration).
pub(crate) fn set_child_pool(pchild: *mut ffi::apr_pool_t) {
    PCHILD.store(pchild, Ordering::Release);
}

/// Registers the calling (Rust-made) thread with APR: httpd code run on it
/// needs `ap_thread_current`. Returns the handle for `unregister_thread`.
pub(crate) fn register_thread() -> *mut ffi::apr_thread_t {
    let mut thread: *mut ffi::apr_thread_t = ptr::null_mut();
    // SAFETY: registers the calling (new) thread; the pool is only used
    // for its abort function.
    unsafe { ffi::ap_thread_current_create(&mut thread, ptr::null_mut(), PCHILD.load(Ordering::Acquire)) };
    thread
}

/// Frees what `register_thread` made, as the thread exits.
pub(crate) fn unregister_thread(thread: *mut ffi::apr_thread_t) {
    if !thread.is_null() {
        // SAFETY: the thread's own unmanaged pool, created by
        // ap_thread_current_create for this thread, freed as it exits.
        unsafe { ffi::apr_pool_destroy(ffi::apr_thread_pool_get(thread)) };
    }
}

/// The calling thread's APR handle (NULL if it has none).
pub(crate) fn current_thread() -> *mut ffi::apr_thread_t {
    // SAFETY: reads the calling thread's registration.
    unsafe { ffi::ap_thread_current() }
}

/// Registers worker threads with APR (httpd code needs `ap_thread_current`).
struct HttpdThreads;

impl workers::ThreadHooks for HttpdThreads {
    fn start(&self) -> *mut ffi::apr_thread_t {
        register_thread()
    }

    fn stop(&self, thread: *mut ffi::apr_thread_t) {
        unregister_thread(thread)
    }

    /// `ThreadStackSize` when set, as the MPM's threads (and the stock
    /// module's workers) get it: a handler that needs a deep stack (PCRE,
    /// PHP recursion) runs on these threads as on the MPM's.
    fn stack_size(&self) -> usize {
        // SAFETY: a plain variable httpd sets while it reads the
        // configuration, before any child starts threads.
        match unsafe { ffi::ap_thread_stacksize } {
            0 => workers::DEFAULT_STACK_SIZE,
            set => set,
        }
    }
}

unsafe extern "C" fn child_pre_cleanup(_data: *mut c_void) -> ffi::apr_status_t {
    guard("child cleanup", 0, || {
        c1::child_stopping(false);
        workers::shutdown();
        crate::clock::stop();
        crate::filemap::clear_cache();
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_child_init(pchild: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) {
    guard("child_init", (), || {
        ffi::panic::install_hook();
        if !MPM_SUPPORTED.load(Ordering::Acquire) {
            return;
        }
        if !crate::alloc::enable_in_child() {
            slog!(s, Level::Warn, "mod_h2rs: could not reserve address space for its allocator; using malloc");
        }
        PCHILD.store(pchild, Ordering::Release);
        c1::child_init();
        crate::filemap::child_init();
        if let Err(rv) = apr::pool::init_shared_allocator() {
            slog!(
                s,
                Level::Warn,
                "mod_h2rs: could not create the shared APR allocator (status {rv}); retried per connection"
            );
        }
        if std::env::var_os("H2RS_FAULT_INJECTION").is_some_and(|v| v == "1") {
            c1::FAULT_INJECTION.store(true, Ordering::Relaxed);
            slog!(s, Level::Warn, "mod_h2rs: fault injection enabled (H2RS_FAULT_INJECTION=1): for tests only");
        }
        // SAFETY: pchild and s are live for the child's life.
        unsafe {
            c2::child_init(pchild);
            let (min, max) = worker_limits(s);
            let default = ServerConfig::default();
            let cfg = c1::server_config(s).unwrap_or(&default);
            let (idle, start) = (cfg.max_worker_idle(), cfg.workers_at_start());
            workers::install(workers::Pool::new(min, max, start, idle, Box::new(HttpdThreads)));
            crate::clock::start();
            if let Some(pool) = PoolRef::from_raw(pchild) {
                pool.pre_cleanup(ptr::null(), child_pre_cleanup);
            }
            slog!(s, Level::Debug, "mod_h2rs: {min} to {max} workers (idle limit {:?})", idle);
        }
    })
}

/// (H2MinWorkers, H2MaxWorkers) of a server, with the defaults derived from
/// the MPM's ThreadsPerChild.
///
/// # Safety
/// `s` must be a live server_rec.
unsafe fn worker_limits(s: *mut ffi::server_rec) -> (u32, u32) {
    let mut threads: c_int = 0;
    let default = ServerConfig::default();
    // SAFETY: caller contract; ap_mpm_query writes one int.
    unsafe {
        ffi::ap_mpm_query(ffi::AP_MPMQ_MAX_THREADS as c_int, &mut threads);
        c1::server_config(s).unwrap_or(&default).workers(threads.max(1) as u32)
    }
}

/// The optional function `http2_get_num_workers`: mod_proxy sizes its
/// backend connection pools with it (each thread may hold a backend
/// connection). Where WebSockets are on, tunnels run on threads of their
/// own beyond H2MaxWorkers, each holding its backend connection for the
/// tunnel's life: the pool must have room for them too, or tunnels beyond
/// the pool size wait for a connection until others close.
#[no_mangle]
pub unsafe extern "C" fn h2rs_get_num_workers(s: *mut ffi::server_rec, min: *mut c_int, max: *mut c_int) {
    guard("http2_get_num_workers", (), || {
        if s.is_null() || min.is_null() || max.is_null() {
            return;
        }
        // SAFETY: httpd passes a live server and two writable ints.
        unsafe {
            let (lo, hi) = worker_limits(s);
            let tunnels = match c1::server_config(s) {
                Some(cfg) if cfg.websockets() => workers::MAX_DEDICATED,
                _ => 0,
            };
            *min = lo as c_int;
            *max = hi.saturating_add(tunnels).min(c_int::MAX as u32) as c_int;
        }
    })
}

/// `get_pollfd_from_conn` (and the optional function
/// `http2_get_pollfd_from_conn`): for stream connections, a descriptor to
/// poll the stream's input with (mod_proxy's tunnels use it).
#[no_mangle]
pub unsafe extern "C" fn h2rs_get_pollfd_from_conn(
    c: *mut ffi::conn_rec,
    pfd: *mut ffi::apr_pollfd_t,
    timeout: *mut ffi::apr_interval_time_t,
) -> ffi::apr_status_t {
    guard("get_pollfd_from_conn", crate::apr::status::ENOTIMPL, || {
        // SAFETY: httpd passes a live connection on this thread and a
        // writable pollfd; other connections than ours are declined.
        unsafe {
            if c.is_null() || pfd.is_null() || (*c).master.is_null() {
                return crate::apr::status::ENOTIMPL;
            }
            c2::pollfd(c, pfd, timeout)
        }
    })
}

/// `mpm_register_timed_callback`, before the MPM's: refused (APR_EGENERAL)
/// for the request of a stream (see `c2::refuse_mpm_timer`); declined
/// (APR_ENOTIMPL, the MPM registers it) everywhere else.
#[no_mangle]
pub unsafe extern "C" fn h2rs_mpm_register_timed_callback(
    _t: ffi::apr_time_t,
    _cbfn: *mut ffi::ap_mpm_callback_fn_t,
    _baton: *mut c_void,
) -> ffi::apr_status_t {
    guard("mpm_register_timed_callback", crate::apr::status::ENOTIMPL, || {
        if c2::refuse_mpm_timer() {
            crate::apr::status::EGENERAL
        } else {
            crate::apr::status::ENOTIMPL
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_child_stopping(_pchild: *mut ffi::apr_pool_t, graceful: c_int) {
    guard("child_stopping", (), || c1::child_stopping(graceful != 0))
}

// ---- connections ------------------------------------------------------------

/// process_connection, first of all modules: see `c1::take_back_parked`.
/// Always declines.
#[no_mangle]
pub unsafe extern "C" fn h2rs_process_connection_first(c: *mut ffi::conn_rec) -> c_int {
    guard("process_connection", HOOK_DECLINED, || {
        // SAFETY: httpd passes the live connection it runs on this thread.
        unsafe { c1::take_back_parked(c) };
        HOOK_DECLINED
    })
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_process_connection(c: *mut ffi::conn_rec) -> c_int {
    crate::ffi::panic::guard_or(
        "process_connection",
        || {
            // SAFETY: httpd passes the live connection it runs on this thread.
            unsafe {
                if c.is_null() || !(*c).master.is_null() || !MPM_SUPPORTED.load(Ordering::Acquire) {
                    return HOOK_DECLINED;
                }
                // Chosen already (ALPN during the TLS handshake, or an earlier
                // call of this hook): run the session.
                if let Some(ctx) = c1::ctx_of(c) {
                    return ctx.run(c, None);
                }
                if (*c).keepalives > 0 {
                    return HOOK_DECLINED;
                }
                let current = ffi::ap_get_protocol(c);
                if current.is_null() || CStr::from_ptr(current) != c"http/1.1" {
                    return HOOK_DECLINED;
                }
                let is_tls = ffi::ap_ssl_conn_is_ssl(c) != 0;
                if !c1::direct_allowed(c, is_tls) || !c1::peek_preface(c, is_tls) {
                    return HOOK_DECLINED;
                }
                let protocol = if is_tls { c"h2" } else { c"h2c" };
                match c1::C1Ctx::attach(c, protocol, ptr::null_mut()) {
                    Some(ctx) => ctx.run(c, None),
                    None => HOOK_DECLINED,
                }
            }
        },
        // Declined, httpd would read the HTTP/2 connection as HTTP/1.1.
        // SAFETY: as above.
        |_| if unsafe { c1::close_after_panic(c) } { ffi::HOOK_DONE } else { HOOK_DECLINED },
    )
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_c2_process_connection(c: *mut ffi::conn_rec) -> c_int {
    // Done even after a panic: the c2's request must not be read as
    // HTTP/1.1 from its body (`c2::request_panicked` keeps the panic for
    // `C2::run`). One catch here, not a second one inside: the frames on
    // this path sit under every request on c1's thread (see "Thread
    // stacks" in docs/INTERNALS.md).
    crate::ffi::panic::guard_or(
        "c2 process_connection",
        || {
            // SAFETY: httpd passes the live connection run by this thread.
            unsafe {
                if c2::ctx_of(c).is_none() {
                    return HOOK_DECLINED;
                }
                c2::process_request(c);
                ffi::HOOK_DONE
            }
        },
        // SAFETY: as above.
        |msg| unsafe { c2::request_panicked(c, msg) },
    )
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_pre_close_connection(c: *mut ffi::conn_rec) -> c_int {
    guard("pre_close_connection", HOOK_DECLINED, || {
        // SAFETY: httpd passes the live connection it is closing. The MPM
        // may close a parked connection (its `Timeout` ran out) while the
        // clock thread writes its idle GOAWAY: the session is taken back
        // first, through the raw pointer, so that this thread is its only
        // user once `ctx_of` makes a reference.
        unsafe { c1::take_back_parked(c) };
        // SAFETY: as above.
        if let Some(session) = unsafe { c1::ctx_of(c) }.and_then(|ctx| ctx.session.as_mut()) {
            session.pre_close();
        }
        HOOK_DECLINED
    })
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_post_read_request(r: *mut ffi::request_rec) -> c_int {
    guard("post_read_request", HOOK_DECLINED, || {
        // SAFETY: httpd passes the live request on this thread.
        unsafe {
            if r.is_null() || !(*r).main.is_null() || !(*r).prev.is_null() {
                return HOOK_DECLINED;
            }
            if let Some(ctx) = c2::ctx_of((*r).connection) {
                c2::request_read(r, ctx);
            }
        }
        HOOK_DECLINED
    })
}

/// The HTTP2 and H2_* variables of a stream request, at the stock module's
/// place among the fixups (`APR_HOOK_MIDDLE`): fixups that come later and
/// answer the request themselves (mod_dir's and mod_speling's redirects,
/// both `APR_HOOK_LAST`) leave them in its log line and response fields.
#[no_mangle]
pub unsafe extern "C" fn h2rs_fixups_env(r: *mut ffi::request_rec) -> c_int {
    guard("fixups", HOOK_DECLINED, || {
        // SAFETY: httpd passes the live request on this thread.
        unsafe {
            if let Some(ctx) = c2::ctx_of((*r).connection) {
                c2::set_env(r, ctx);
            }
        }
        HOOK_DECLINED
    })
}

/// The filters a request's handler starts with (see
/// `c2::note_filters_at_handler`).
#[no_mangle]
pub unsafe extern "C" fn h2rs_insert_filter(r: *mut ffi::request_rec) {
    // SAFETY: httpd passes the live request on this thread.
    guard("insert_filter", (), || unsafe { c2::note_filters_at_handler(r) })
}

/// 103 Early Hints, after the other fixups (the fields they set count).
#[no_mangle]
pub unsafe extern "C" fn h2rs_fixups_early_hints(r: *mut ffi::request_rec) -> c_int {
    guard("fixups", HOOK_DECLINED, || {
        // SAFETY: httpd passes the live request on this thread.
        unsafe {
            if (*r).main.is_null() && (*r).prev.is_null() && c2::ctx_of((*r).connection).is_some() {
                c2::send_early_hints(r);
            }
        }
        HOOK_DECLINED
    })
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_status_handler(r: *mut ffi::request_rec) -> c_int {
    // SAFETY: httpd passes the live request on this thread.
    guard("handler", HOOK_DECLINED, || unsafe { c2::status_handler(r) })
}

// ---- protocol negotiation ----------------------------------------------------

/// The protocol we offer on a connection: "h2" over TLS, "h2c" in clear.
fn our_protocol(is_tls: bool) -> &'static CStr {
    if is_tls {
        c"h2"
    } else {
        c"h2c"
    }
}

/// The server whose configuration applies to a negotiation.
///
/// # Safety
/// Pointers from httpd's protocol hooks (any may be NULL but `c`).
unsafe fn negotiation_server(
    c: *mut ffi::conn_rec,
    r: *mut ffi::request_rec,
    s: *mut ffi::server_rec,
) -> *mut ffi::server_rec {
    // SAFETY: caller contract.
    unsafe {
        if !s.is_null() {
            s
        } else if !r.is_null() {
            (*r).server
        } else {
            (*c).base_server
        }
    }
}

/// Whether an HTTP/1.1 request may be upgraded to h2c (RFC 7540 3.2):
/// first request of a cleartext connection, H2Upgrade on, a valid
/// HTTP2-Settings header named in Connection, and no request body.
/// Returns the decoded settings.
///
/// # Safety
/// `r` must be a live request on `c`.
unsafe fn upgrade_settings(
    c: *mut ffi::conn_rec,
    r: *mut ffi::request_rec,
    s: *mut ffi::server_rec,
) -> Option<Vec<u8>> {
    // SAFETY: caller contract; tables belong to the request.
    unsafe {
        if (*c).keepalives > 0 || ffi::ap_ssl_conn_is_ssl(c) != 0 {
            return None;
        }
        let default = ServerConfig::default();
        let cfg = c1::server_config(s).unwrap_or(&default);
        let dir = (ffi::h2rs_shim_dir_conf(r) as *const DirConfig).as_ref();
        if !dir.and_then(|d| d.upgrade).unwrap_or(cfg.upgrade(false)) {
            return None;
        }
        let headers = crate::apr::TableRef::from_raw((*r).headers_in)?;
        let settings = headers.get(c"HTTP2-Settings")?;
        let connection = headers.get(c"Connection").unwrap_or(b"");
        let named = connection.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"http2-settings"));
        if !named {
            return None;
        }
        let has_body = match headers.get(c"Content-Length") {
            Some(cl) => cl.trim_ascii() != b"0",
            None => headers.get(c"Transfer-Encoding").is_some(),
        };
        if has_body {
            return None;
        }
        crate::negotiation::decode_http2_settings(settings)
    }
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_protocol_propose(
    c: *mut ffi::conn_rec,
    r: *mut ffi::request_rec,
    s: *mut ffi::server_rec,
    offers: *const ffi::apr_array_header_t,
    proposals: *mut ffi::apr_array_header_t,
) -> c_int {
    guard("protocol_propose", HOOK_DECLINED, || {
        // SAFETY: httpd's protocol_propose contract: live c (and r, s,
        // arrays when non-NULL); proposals takes `const char *` entries.
        unsafe {
            if c.is_null() || proposals.is_null() || !MPM_SUPPORTED.load(Ordering::Acquire) {
                return HOOK_DECLINED;
            }
            let current = ffi::ap_get_protocol(c);
            if current.is_null() || CStr::from_ptr(current) != c"http/1.1" {
                return HOOK_DECLINED;
            }
            let is_tls = ffi::ap_ssl_conn_is_ssl(c) != 0;
            if is_tls && !r.is_null() {
                // An Upgrade over TLS is never proposed (`upgrade_settings`
                // refuses it), and the TLS check below would cost c1's
                // pool mod_ssl's copies of its variables on each request
                // of the connection that names an Upgrade.
                return HOOK_DECLINED;
            }
            let server = negotiation_server(c, r, s);
            if is_tls && !c1::tls_acceptable(c, server, false) {
                return HOOK_DECLINED;
            }
            // An Upgrade is proposed only if stream 1 can carry the request:
            // once httpd has sent the 101 there is no way back to HTTP/1.1.
            // (Under `HttpProtocolOptions Unsafe` a head HTTP/2 refuses, such
            // as a control byte in a value, is then answered over HTTP/1.1.)
            if !r.is_null() && (!upgradable(r) || upgrade_settings(c, r, server).is_none() || upgrade_head(r).is_none())
            {
                return HOOK_DECLINED;
            }
            let proto = our_protocol(is_tls);
            if !offers.is_null() {
                let n = (*offers).nelts.max(0) as usize;
                let elts = (*offers).elts as *const *const c_char;
                let offered = (0..n).any(|i| {
                    let o = *elts.add(i);
                    !o.is_null() && CStr::from_ptr(o) == proto
                });
                if !offered {
                    return HOOK_DECLINED;
                }
            }
            let slot = ffi::apr_array_push(proposals) as *mut *const c_char;
            *slot = proto.as_ptr();
            HOOK_OK
        }
    })
}

/// Whether `r` may upgrade its connection: the client's own request, not
/// an internal redirect (an ErrorDocument: its 401 or 403 went out as a
/// fresh 200 over HTTP/2) nor a subrequest (HTTP/2 frames in the middle of
/// the main response), and HTTP/1.1 (RFC 9110 7.8: an HTTP/1.0 request's
/// Upgrade is ignored; httpd sends it no 101, and the session's frames
/// came unannounced).
///
/// # Safety
/// `r` is a live request.
unsafe fn upgradable(r: *const ffi::request_rec) -> bool {
    // SAFETY: caller contract.
    unsafe { (*r).prev.is_null() && (*r).main.is_null() && (*r).proto_num >= 1001 }
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_protocol_switch(
    c: *mut ffi::conn_rec,
    r: *mut ffi::request_rec,
    s: *mut ffi::server_rec,
    protocol: *const c_char,
) -> c_int {
    crate::ffi::panic::guard_or(
        "protocol_switch",
        || {
            // SAFETY: httpd's protocol_switch contract: live c (and r, s when
            // non-NULL), a NUL-terminated protocol name.
            unsafe {
                if c.is_null() || protocol.is_null() || !(*c).master.is_null() || !MPM_SUPPORTED.load(Ordering::Acquire)
                {
                    return HOOK_DECLINED;
                }
                let is_tls = ffi::ap_ssl_conn_is_ssl(c) != 0;
                let proto = our_protocol(is_tls);
                if CStr::from_ptr(protocol) != proto {
                    return HOOK_DECLINED;
                }
                let server = negotiation_server(c, r, s);
                if r.is_null() {
                    // ALPN: the session starts in process_connection.
                    return match c1::C1Ctx::attach(c, proto, server) {
                        Some(_) => HOOK_OK,
                        None => HOOK_DECLINED,
                    };
                }
                // h2c Upgrade: httpd has sent the 101; the upgrading request
                // becomes stream 1 and the session runs here until it ends
                // or first goes idle.
                if !upgradable(r) {
                    return HOOK_DECLINED;
                }
                let Some(settings_payload) = upgrade_settings(c, r, server) else { return HOOK_DECLINED };
                let Some(head) = upgrade_head(r) else { return HOOK_DECLINED };
                ffi::ap_remove_input_filter_byhandle((*r).input_filters, c"http_in".as_ptr());
                apr::remove_output_filter_rec((*r).output_filters, ffi::ap_http_header_filter_handle);
                match c1::C1Ctx::attach(c, proto, server) {
                    Some(ctx) => {
                        ctx.run_upgraded(c, r, Box::new(c1::Upgrade { settings_payload, head }));
                        HOOK_OK
                    }
                    None => HOOK_DECLINED,
                }
            }
        },
        // Switched already if a session is attached: it is over.
        // SAFETY: as above.
        |_| if unsafe { c1::close_after_panic(c) } { HOOK_OK } else { HOOK_DECLINED },
    )
}

/// The request head of stream 1 from the HTTP/1.1 request that upgrades.
///
/// # Safety
/// `r` must be a live request.
unsafe fn upgrade_head(r: *mut ffi::request_rec) -> Option<Box<crate::request::RequestHead>> {
    // SAFETY: caller contract; strings and tables belong to the request.
    unsafe {
        let cstr = |p: *const c_char| if p.is_null() { &b""[..] } else { CStr::from_ptr(p).to_bytes() };
        let headers = crate::apr::TableRef::from_raw((*r).headers_in)?;
        let mut target = cstr((*r).unparsed_uri);
        let mut authority = headers.get(c"Host").unwrap_or_else(|| cstr((*r).hostname));
        if !(target.starts_with(b"/") || target == b"*") {
            // An absolute-form request line (RFC 9112 3.2.2) upgrades as
            // its origin form, as with the stock module: :path never holds
            // a scheme and host (RFC 9113 8.3.1), and the URI's host and
            // port are the authority, whatever Host says (not its userinfo,
            // RFC 9113 8.3.1).
            let uri = &(*r).parsed_uri;
            target = cstr(ffi::apr_uri_unparse((*r).pool, uri, ffi::APR_URI_UNP_OMITSITEPART));
            let hostinfo = cstr(uri.hostinfo);
            if !hostinfo.is_empty() {
                authority = hostinfo.rsplit(|&b| b == b'@').next().unwrap_or(hostinfo);
            }
        }
        // The upgrading request is a plain HTTP/1.1 request: no :protocol.
        let limits = crate::c1::request_limits(&*(*r).server, false);
        let fields = headers.entries();
        crate::negotiation::upgraded_request(cstr((*r).method), target, authority, fields.into_iter(), limits).ok()
    }
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_protocol_get(c: *const ffi::conn_rec) -> *const c_char {
    guard("protocol_get", ptr::null(), || {
        // SAFETY: httpd passes a live connection; our slot holds a C1Ctx for
        // a client connection and a C2Ctx for a secondary one.
        unsafe {
            if c.is_null() {
                return ptr::null();
            }
            if (*c).master.is_null() {
                match c1::ctx_of(c) {
                    Some(ctx) => ctx.protocol.as_ptr(),
                    None => ptr::null(),
                }
            } else {
                match c2::ctx_of(c) {
                    Some(ctx) => ctx.protocol.as_ptr(),
                    None => ptr::null(),
                }
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_is_h2(c: *mut ffi::conn_rec) -> c_int {
    guard("http2_is_h2", 0, || {
        // SAFETY: only checks whether our config slot is set, on a live
        // connection (or its master).
        unsafe {
            if c.is_null() {
                return 0;
            }
            let client = if (*c).master.is_null() { c } else { (*c).master };
            (!ffi::h2rs_shim_conn_ctx(client).is_null()) as c_int
        }
    })
}

/// The optional function `http2_var_lookup` (mod_http2.h).
#[no_mangle]
pub unsafe extern "C" fn h2rs_var_lookup(
    p: *mut ffi::apr_pool_t,
    _s: *mut ffi::server_rec,
    c: *mut ffi::conn_rec,
    r: *mut ffi::request_rec,
    name: *const c_char,
) -> *mut c_char {
    // SAFETY: httpd's or a module's live objects, any of them NULL but
    // the name; the value is static or in `p`.
    guard("http2_var_lookup", c"".as_ptr() as *mut c_char, || unsafe { c2::var_lookup(p, c, r, name) })
}

// ---- filters ------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn h2rs_c2_net_in(
    f: *mut ffi::ap_filter_t,
    bb: *mut ffi::apr_bucket_brigade,
    mode: ffi::ap_input_mode_t,
    block: ffi::apr_read_type_e,
    readbytes: ffi::apr_off_t,
) -> ffi::apr_status_t {
    // SAFETY: httpd's filter call contract.
    guard("c2 input filter", crate::apr::status::EGENERAL, || unsafe { c2::net_in(f, bb, mode, block, readbytes) })
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_c2_net_out(
    f: *mut ffi::ap_filter_t,
    bb: *mut ffi::apr_bucket_brigade,
) -> ffi::apr_status_t {
    // SAFETY: httpd's filter call contract.
    guard("c2 output filter", crate::apr::status::EGENERAL, || unsafe { c2::net_out(f, bb) })
}

#[no_mangle]
pub unsafe extern "C" fn h2rs_c2_response_out(
    f: *mut ffi::ap_filter_t,
    bb: *mut ffi::apr_bucket_brigade,
) -> ffi::apr_status_t {
    // SAFETY: httpd's filter call contract.
    guard("c2 response filter", crate::apr::status::EGENERAL, || unsafe { c2::response_out(f, bb) })
}
