//! TLS for `h2://` backends: OpenSSL (the libssl httpd's mod_ssl uses too)
//! on the engine's nonblocking sockets, ALPN "h2", SNI.
//!
//! As with mod_ssl's default `SSLProxyVerify none`, the backend's
//! certificate is not verified; mod_ssl's `SSLProxy*` directives do not
//! apply to these connections.
//!
//! All `unsafe` for OpenSSL lives in this file. An `Ssl` is used by one
//! engine thread only. libssl is loaded with dlopen when the first TLS
//! backend connection is made, not linked (see `openssl_api!`).

use std::ffi::{c_char, c_int, c_long, c_uchar, c_uint, c_void, CString};
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

// OpenSSL's opaque types, by their C names.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
type SSL_CTX = c_void;
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
type SSL = c_void;
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
type SSL_METHOD = c_void;

/// Declares `Api`, OpenSSL's functions as pointers looked up in libssl
/// (and, through its dependencies, libcrypto) when the first `h2://`
/// backend is used. Linking them would load both libraries into every
/// httpd process, about 2.5 MiB of RSS over parent, children and cgid,
/// for servers that never proxy to TLS backends.
macro_rules! openssl_api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        #[allow(non_snake_case)]
        struct Api {
            $($name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Api {
            /// # Safety
            /// `lib` must be a live handle from dlopen of libssl.
            unsafe fn resolve(lib: *mut c_void) -> Result<Api, String> {
                Ok(Api {
                    $($name: {
                        let name = concat!(stringify!($name), "\0");
                        // SAFETY: looking up a symbol by a NUL-terminated name.
                        let f = unsafe { libc::dlsym(lib, name.as_ptr() as *const c_char) };
                        if f.is_null() {
                            return Err(format!("libssl has no {}", stringify!($name)));
                        }
                        // SAFETY: the symbol is OpenSSL's function of this
                        // signature (OpenSSL 1.1/3 ABI).
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(f) }
                    },)*
                })
            }
        }
    };
}

openssl_api! {
    TLS_client_method: fn() -> *const SSL_METHOD;
    SSL_CTX_new: fn(*const SSL_METHOD) -> *mut SSL_CTX;
    SSL_CTX_free: fn(*mut SSL_CTX);
    SSL_CTX_ctrl: fn(*mut SSL_CTX, c_int, c_long, *mut c_void) -> c_long;
    SSL_CTX_set_alpn_protos: fn(*mut SSL_CTX, *const c_uchar, c_uint) -> c_int;
    SSL_new: fn(*mut SSL_CTX) -> *mut SSL;
    SSL_free: fn(*mut SSL);
    SSL_set_fd: fn(*mut SSL, c_int) -> c_int;
    SSL_ctrl: fn(*mut SSL, c_int, c_long, *mut c_void) -> c_long;
    SSL_set_connect_state: fn(*mut SSL);
    SSL_do_handshake: fn(*mut SSL) -> c_int;
    SSL_read: fn(*mut SSL, *mut c_void, c_int) -> c_int;
    SSL_write: fn(*mut SSL, *const c_void, c_int) -> c_int;
    SSL_get_error: fn(*const SSL, c_int) -> c_int;
    SSL_get0_alpn_selected: fn(*const SSL, *mut *const c_uchar, *mut c_uint);
    ERR_clear_error: fn();
}

/// OpenSSL, loaded once per process on first use.
fn api() -> Result<&'static Api, String> {
    static API: std::sync::OnceLock<Result<Api, String>> = std::sync::OnceLock::new();
    API.get_or_init(|| {
        // The library httpd's mod_ssl uses; already loaded if mod_ssl is.
        for name in [c"libssl.so.3", c"libssl.so"] {
            // SAFETY: dlopen with a NUL-terminated name; a handle is never
            // closed, so the functions stay valid for the process's life.
            let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if !lib.is_null() {
                // SAFETY: a live libssl handle.
                return unsafe { Api::resolve(lib) };
            }
        }
        Err("cannot load libssl (libssl.so.3) for h2:// backends".into())
    })
    .as_ref()
    .map_err(|e| e.clone())
}

const SSL_CTRL_MODE: c_int = 33;
const SSL_CTRL_SET_TLSEXT_HOSTNAME: c_int = 55;
const TLSEXT_NAMETYPE_HOST_NAME: c_long = 0;
const SSL_MODE_ENABLE_PARTIAL_WRITE: c_long = 0x1;
const SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER: c_long = 0x2;
const SSL_ERROR_WANT_READ: c_int = 2;
const SSL_ERROR_WANT_WRITE: c_int = 3;
const SSL_ERROR_ZERO_RETURN: c_int = 6;

/// A client context: ALPN "h2", partial writes (the engine's output buffer
/// moves between attempts).
pub struct Context {
    ctx: NonNull<SSL_CTX>,
    api: &'static Api,
}

impl Context {
    pub fn new() -> Result<Context, String> {
        let api = api()?;
        // SAFETY: plain OpenSSL calls; the context is checked for NULL and
        // owned by the returned value. The ALPN list is copied by OpenSSL.
        unsafe {
            let ctx = NonNull::new((api.SSL_CTX_new)((api.TLS_client_method)())).ok_or("SSL_CTX_new failed")?;
            (api.SSL_CTX_ctrl)(
                ctx.as_ptr(),
                SSL_CTRL_MODE,
                SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER,
                std::ptr::null_mut(),
            );
            let alpn = b"\x02h2";
            if (api.SSL_CTX_set_alpn_protos)(ctx.as_ptr(), alpn.as_ptr(), alpn.len() as c_uint) != 0 {
                (api.SSL_CTX_free)(ctx.as_ptr());
                return Err("cannot set ALPN".into());
            }
            Ok(Context { ctx, api })
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: our context; connections made from it hold their own
        // reference (OpenSSL counts them).
        unsafe { (self.api.SSL_CTX_free)(self.ctx.as_ptr()) }
    }
}

/// What a handshake step needs next.
pub enum Handshake {
    Done,
    WantRead,
    WantWrite,
}

/// One TLS connection over a connected nonblocking socket.
pub struct Ssl {
    ssl: NonNull<SSL>,
    api: &'static Api,
    /// The last read or write wants the socket writable (renegotiation,
    /// key update): poll for POLLOUT.
    pub want_write: bool,
}

impl Ssl {
    /// `sni`: the server name to send (none for IP literals).
    pub fn new(ctx: &Context, fd: RawFd, sni: Option<&str>) -> Result<Ssl, String> {
        // SAFETY: the context is live; the new SSL is checked and owned by
        // the returned value; the fd outlives it (the engine's Conn drops the
        // Ssl before its socket); the name is copied by OpenSSL.
        unsafe {
            let api = ctx.api;
            let ssl = NonNull::new((api.SSL_new)(ctx.ctx.as_ptr())).ok_or("SSL_new failed")?;
            let me = Ssl { ssl, api, want_write: false };
            if (api.SSL_set_fd)(ssl.as_ptr(), fd) != 1 {
                return Err("SSL_set_fd failed".into());
            }
            if let Some(name) = sni {
                let name = CString::new(name).map_err(|_| "bad server name")?;
                (api.SSL_ctrl)(
                    ssl.as_ptr(),
                    SSL_CTRL_SET_TLSEXT_HOSTNAME,
                    TLSEXT_NAMETYPE_HOST_NAME,
                    name.as_ptr() as *mut c_char as *mut c_void,
                );
            }
            (api.SSL_set_connect_state)(ssl.as_ptr());
            Ok(me)
        }
    }

    fn error(&self, ret: c_int) -> c_int {
        // SAFETY: our live SSL and the return value of the call just made.
        unsafe { (self.api.SSL_get_error)(self.ssl.as_ptr(), ret) }
    }

    pub fn handshake(&mut self) -> Result<Handshake, String> {
        // SAFETY: our live SSL; the error queue is cleared first so that
        // SSL_get_error sees this call's result.
        let rv = unsafe {
            (self.api.ERR_clear_error)();
            (self.api.SSL_do_handshake)(self.ssl.as_ptr())
        };
        if rv == 1 {
            return Ok(Handshake::Done);
        }
        match self.error(rv) {
            SSL_ERROR_WANT_READ => Ok(Handshake::WantRead),
            SSL_ERROR_WANT_WRITE => Ok(Handshake::WantWrite),
            e => Err(format!("TLS handshake failed (SSL error {e})")),
        }
    }

    /// Whether the backend agreed on "h2" (ALPN).
    pub fn alpn_is_h2(&self) -> bool {
        let mut data: *const c_uchar = std::ptr::null();
        let mut len: c_uint = 0;
        // SAFETY: OpenSSL points `data` into the SSL's own memory (valid
        // while it lives), copied out at once.
        unsafe {
            (self.api.SSL_get0_alpn_selected)(self.ssl.as_ptr(), &mut data, &mut len);
            !data.is_null() && std::slice::from_raw_parts(data, len as usize) == b"h2"
        }
    }

    fn io_result(&mut self, rv: c_int) -> io::Result<usize> {
        if rv > 0 {
            return Ok(rv as usize);
        }
        match self.error(rv) {
            SSL_ERROR_WANT_READ => Err(io::ErrorKind::WouldBlock.into()),
            SSL_ERROR_WANT_WRITE => {
                self.want_write = true;
                Err(io::ErrorKind::WouldBlock.into())
            }
            SSL_ERROR_ZERO_RETURN => Ok(0),
            e => Err(io::Error::other(format!("TLS error (SSL error {e})"))),
        }
    }

    /// Runs one SSL_read/SSL_write on our SSL with a clean error queue.
    fn io(&mut self, op: impl FnOnce(&Api, *mut SSL) -> c_int) -> io::Result<usize> {
        self.want_write = false;
        // SAFETY: clears this thread's error queue so that SSL_get_error
        // sees this call's result; `op` gets our live SSL.
        unsafe { (self.api.ERR_clear_error)() };
        let rv = op(self.api, self.ssl.as_ptr());
        self.io_result(rv)
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(c_int::MAX as usize) as c_int;
        // SAFETY: reads at most n bytes into `buf`.
        self.io(|api, ssl| unsafe { (api.SSL_read)(ssl, buf.as_mut_ptr() as *mut c_void, n) })
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(c_int::MAX as usize) as c_int;
        // SAFETY: writes at most n bytes from `buf` (partial writes and a
        // moving buffer are allowed by the context's mode).
        self.io(|api, ssl| unsafe { (api.SSL_write)(ssl, buf.as_ptr() as *const c_void, n) })
    }
}

impl Drop for Ssl {
    fn drop(&mut self) {
        // SAFETY: our SSL, freed once; it does not close the descriptor.
        unsafe { (self.api.SSL_free)(self.ssl.as_ptr()) }
    }
}
