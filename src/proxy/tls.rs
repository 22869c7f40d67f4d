//! TLS for `h2://` backends: OpenSSL (the libssl httpd's mod_ssl uses too)
//! on the engine's nonblocking sockets, ALPN "h2", SNI.
//!
//! The backend's certificate is checked as mod_ssl checks a proxy
//! backend's, by the server's `SSLProxy*` settings (`backend_tls.rs`): the
//! chain (`SSLProxyVerify`, against `SSLProxyCACertificateFile`/`Path`,
//! up to `SSLProxyVerifyDepth`), its dates and its names, and
//! `SSLProxyMachineCertificateFile` as the client certificate, with its
//! issuers from `SSLProxyMachineCertificateChainFile`.
//!
//! All `unsafe` for OpenSSL lives in this file. An `Ssl` is used by one
//! engine thread only. libssl is loaded with dlopen when the first TLS
//! backend connection is made, not linked (see `openssl_api!`).

use std::ffi::{c_char, c_int, c_long, c_uchar, c_uint, c_ulong, c_void, CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::rc::Rc;

use super::backend_tls::{common_name_matches, NameCheck, PemFiles, TlsPolicy, Verify};

// OpenSSL's opaque types, by their C names.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
type SSL_CTX = c_void;
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
type SSL = c_void;
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
type SSL_METHOD = c_void;
#[allow(clippy::upper_case_acronyms)]
type X509 = c_void;
#[allow(clippy::upper_case_acronyms)]
type BIO = c_void;
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
type EVP_PKEY = c_void;
/// OpenSSL's `SSL_verify_cb`.
type VerifyCallback = unsafe extern "C" fn(c_int, *mut c_void) -> c_int;
/// OpenSSL's `pem_password_cb`.
type PasswordCallback = Option<unsafe extern "C" fn(*mut c_char, c_int, c_int, *mut c_void) -> c_int>;

/// The head of OpenSSL's public `X509_INFO` (x509.h): what one PEM block
/// of a file of certificates and CRLs held.
#[repr(C)]
struct X509InfoHead {
    x509: *mut X509,
    crl: *mut c_void,
}

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
    SSL_get_verify_result: fn(*const SSL) -> c_long;
    SSL_get0_verified_chain: fn(*const SSL) -> *mut c_void;
    OPENSSL_sk_num: fn(*const c_void) -> c_int;
    SSL_get1_peer_certificate: fn(*const SSL) -> *mut X509;
    SSL_CTX_set_verify_depth: fn(*mut SSL_CTX, c_int);
    SSL_CTX_set_verify: fn(*mut SSL_CTX, c_int, Option<VerifyCallback>);
    X509_STORE_CTX_get_error: fn(*const c_void) -> c_int;
    X509_STORE_CTX_set_error: fn(*mut c_void, c_int);
    SSL_CTX_load_verify_locations: fn(*mut SSL_CTX, *const c_char, *const c_char) -> c_int;
    SSL_CTX_set_cipher_list: fn(*mut SSL_CTX, *const c_char) -> c_int;
    SSL_CTX_set_ciphersuites: fn(*mut SSL_CTX, *const c_char) -> c_int;
    SSL_CTX_get_cert_store: fn(*const SSL_CTX) -> *mut c_void;
    X509_STORE_load_locations: fn(*mut c_void, *const c_char, *const c_char) -> c_int;
    X509_STORE_add_cert: fn(*mut c_void, *mut X509) -> c_int;
    X509_STORE_add_crl: fn(*mut c_void, *mut c_void) -> c_int;
    BIO_new_mem_buf: fn(*const c_void, c_int) -> *mut BIO;
    BIO_free: fn(*mut BIO) -> c_int;
    PEM_X509_INFO_read_bio: fn(*mut BIO, *mut c_void, PasswordCallback, *mut c_void) -> *mut c_void;
    PEM_read_bio_X509: fn(*mut BIO, *mut c_void, PasswordCallback, *mut c_void) -> *mut X509;
    PEM_read_bio_PrivateKey: fn(*mut BIO, *mut c_void, PasswordCallback, *mut c_void) -> *mut EVP_PKEY;
    EVP_PKEY_free: fn(*mut EVP_PKEY);
    OPENSSL_sk_value: fn(*const c_void, c_int) -> *mut c_void;
    OPENSSL_sk_pop_free: fn(*mut c_void, unsafe extern "C" fn(*mut c_void));
    X509_INFO_free: fn(*mut c_void);
    X509_STORE_set_flags: fn(*mut c_void, c_ulong) -> c_int;
    X509_verify_cert_error_string: fn(c_long) -> *const c_char;
    X509_get0_notBefore: fn(*const X509) -> *const c_void;
    X509_get0_notAfter: fn(*const X509) -> *const c_void;
    X509_cmp_current_time: fn(*const c_void) -> c_int;
    X509_check_host: fn(*mut X509, *const c_char, usize, c_uint, *mut *mut c_char) -> c_int;
    X509_check_ip_asc: fn(*mut X509, *const c_char, c_uint) -> c_int;
    X509_free: fn(*mut X509);
    X509_check_issued: fn(*mut X509, *mut X509) -> c_int;
    X509_check_private_key: fn(*const X509, *const EVP_PKEY) -> c_int;
    X509_up_ref: fn(*mut X509) -> c_int;
    X509_get_issuer_name: fn(*const X509) -> *mut c_void;
    X509_NAME_cmp: fn(*const c_void, *const c_void) -> c_int;
    OPENSSL_sk_new_null: fn() -> *mut c_void;
    OPENSSL_sk_push: fn(*mut c_void, *const c_void) -> c_int;
    SSL_CTX_set_cert_cb: fn(*mut SSL_CTX, Option<unsafe extern "C" fn(*mut SSL, *mut c_void) -> c_int>, *mut c_void);
    SSL_get_client_CA_list: fn(*const SSL) -> *mut c_void;
    SSL_use_cert_and_key: fn(*mut SSL, *mut X509, *mut EVP_PKEY, *mut c_void, c_int) -> c_int;
    X509_get_subject_name: fn(*const X509) -> *mut c_void;
    X509_NAME_get_text_by_NID: fn(*mut c_void, c_int, *mut c_char, c_int) -> c_int;
    ERR_clear_error: fn();
    ERR_get_error: fn() -> c_ulong;
    ERR_error_string_n: fn(c_ulong, *mut c_char, usize);
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
const SSL_ERROR_SYSCALL: c_int = 5;
const SSL_ERROR_ZERO_RETURN: c_int = 6;
const NID_COMMON_NAME: c_int = 13;
const X509_V_OK: c_long = 0;
const X509_V_ERR_UNABLE_TO_GET_CRL: c_long = 3;
const X509_V_FLAG_CRL_CHECK: c_ulong = 0x4;
const X509_V_FLAG_CRL_CHECK_ALL: c_ulong = 0x8;
const SSL_CTRL_SET_MIN_PROTO_VERSION: c_int = 123;
const SSL_CTRL_SET_MAX_PROTO_VERSION: c_int = 124;
/// Chain errors `SSLProxyVerify optional_no_ca` accepts (mod_ssl's
/// `ssl_verify_error_is_optional`): self-signed, unknown issuer, untrusted.
const X509_V_ERRORS_NO_CA: [c_long; 5] = [18, 19, 20, 21, 27];
/// X509_check_host: the subject's CN counts even where subjectAltName
/// names exist (mod_ssl matches both), wildcards only as a whole label.
const X509_CHECK_FLAG_ALWAYS_CHECK_SUBJECT: c_uint = 0x1;
const X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS: c_uint = 0x4;
const SSL_VERIFY_NONE: c_int = 0;

/// A client context for one set of `SSLProxy*` settings: ALPN "h2",
/// partial writes (the engine's output buffer moves between attempts), the
/// CA certificates, the chain depth and the client certificate.
pub struct Context {
    ctx: NonNull<SSL_CTX>,
    api: &'static Api,
    /// Several client certificates, chosen per handshake
    /// (`choose_client_certificate`); each connection keeps them alive.
    client_certs: Option<Rc<ClientCerts>>,
}

impl Context {
    pub fn new(policy: &TlsPolicy, files: &PemFiles) -> Result<Context, String> {
        let api = api()?;
        // SAFETY: plain OpenSSL calls; the context is checked for NULL and
        // owned by `context`, which frees it on every early return. The
        // ALPN list and the file names are copied or read at once.
        unsafe {
            let ctx = NonNull::new((api.SSL_CTX_new)((api.TLS_client_method)())).ok_or("SSL_CTX_new failed")?;
            let mut context = Context { ctx, api, client_certs: None };
            (api.SSL_CTX_ctrl)(
                ctx.as_ptr(),
                SSL_CTRL_MODE,
                SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER,
                std::ptr::null_mut(),
            );
            let alpn = b"\x02h2";
            if (api.SSL_CTX_set_alpn_protos)(ctx.as_ptr(), alpn.as_ptr(), alpn.len() as c_uint) != 0 {
                return Err("cannot set ALPN".into());
            }
            // The handshake never stops on a bad chain (the mode stays
            // SSL_VERIFY_NONE); `Ssl::check_peer` reads OpenSSL's verdict
            // after it, as mod_ssl's own checks come after its handshake.
            // The errors the policy tolerates are cleared on the way, so
            // the rest of the chain is still checked (`tolerate_errors`).
            // mod_ssl counts the trust anchor as a level of the chain,
            // OpenSSL does not.
            (api.SSL_CTX_set_verify_depth)(
                ctx.as_ptr(),
                policy.verify_depth().saturating_sub(1).min(c_int::MAX as u32) as c_int,
            );
            let no_ca_ok = policy.verify() == Verify::OptionalNoCa;
            let no_crl_ok = policy.crl_check.is_some_and(|c| c.missing_ok);
            let tolerate: Option<VerifyCallback> = match (no_ca_ok, no_crl_ok) {
                (false, false) => None,
                (true, false) => Some(tolerate_errors::<true, false>),
                (false, true) => Some(tolerate_errors::<false, true>),
                (true, true) => Some(tolerate_errors::<true, true>),
            };
            (api.SSL_CTX_set_verify)(ctx.as_ptr(), SSL_VERIFY_NONE, tolerate);
            let store = (api.SSL_CTX_get_cert_store)(ctx.as_ptr());
            if let Some(ca) = policy.ca_file.as_deref() {
                let pem = files.get("SSLProxyCACertificateFile", ca)?;
                if load_pem_into_store(api, store, pem)? == 0 {
                    return Err(format!("SSLProxyCACertificateFile {ca} holds no certificate (in PEM)"));
                }
            }
            if !load_dir(api.SSL_CTX_load_verify_locations, ctx.as_ptr(), policy.ca_path.as_deref())? {
                return Err(format!(
                    "cannot use SSLProxyCACertificatePath {}",
                    policy.ca_path.as_deref().unwrap_or("")
                ));
            }
            if let Some((lowest, highest)) = policy.protocol_range()? {
                (api.SSL_CTX_ctrl)(ctx.as_ptr(), SSL_CTRL_SET_MIN_PROTO_VERSION, lowest.into(), std::ptr::null_mut());
                (api.SSL_CTX_ctrl)(ctx.as_ptr(), SSL_CTRL_SET_MAX_PROTO_VERSION, highest.into(), std::ptr::null_mut());
            }
            if let Some(list) = policy.ciphers.as_deref() {
                // As mod_ssl: never a cipher without authentication or
                // encryption, whatever the list (`HIGH:@SECLEVEL=0` let an
                // anonymous suite through, and no certificate to check).
                let guarded = format!("{list}:!aNULL:!eNULL:!EXP");
                if (api.SSL_CTX_set_cipher_list)(ctx.as_ptr(), c_string(&guarded)?.as_ptr()) != 1 {
                    return Err(format!("SSLProxyCipherSuite {list}: no cipher OpenSSL knows"));
                }
            }
            if let Some(list) = policy.ciphersuites.as_deref() {
                if (api.SSL_CTX_set_ciphersuites)(ctx.as_ptr(), c_string(list)?.as_ptr()) != 1 {
                    return Err(format!("SSLProxyCipherSuite TLSv1.3 {list}: no cipher suite OpenSSL knows"));
                }
            }
            if let Some(check) = policy.crl_check {
                if let Some(crl) = policy.crl_file.as_deref() {
                    let pem = files.get("SSLProxyCARevocationFile", crl)?;
                    if load_pem_into_store(api, store, pem)? == 0 {
                        return Err(format!("SSLProxyCARevocationFile {crl} holds no CRL (in PEM)"));
                    }
                }
                if !load_dir(api.X509_STORE_load_locations, store, policy.crl_path.as_deref())? {
                    return Err(format!(
                        "cannot use SSLProxyCARevocationPath {}",
                        policy.crl_path.as_deref().unwrap_or("")
                    ));
                }
                let flags = X509_V_FLAG_CRL_CHECK | if check.chain { X509_V_FLAG_CRL_CHECK_ALL } else { 0 };
                (api.X509_STORE_set_flags)(store, flags);
            }
            if policy.client_cert.is_some() || policy.client_cert_path.is_some() {
                // Chosen per handshake even when there is one pair, as
                // mod_ssl does: a backend whose CA names fit none gets no
                // certificate, which it may accept (optional client
                // verification), where one it cannot verify ends the
                // handshake.
                let certs = Rc::new(ClientCerts::load(api, policy, files)?);
                (api.SSL_CTX_set_cert_cb)(
                    ctx.as_ptr(),
                    Some(choose_client_certificate),
                    Rc::as_ptr(&certs) as *mut c_void,
                );
                context.client_certs = Some(certs);
            }
            Ok(context)
        }
    }
}

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{text:?} holds a NUL byte"))
}

/// A key file that asks for a passphrase is refused rather than prompting
/// on a terminal (mod_ssl, too, wants the proxy's client key unencrypted).
unsafe extern "C" fn no_passphrase(_: *mut c_char, _: c_int, _: c_int, _: *mut c_void) -> c_int {
    0
}

/// An OpenSSL memory BIO over bytes it reads in place.
struct MemBio<'a> {
    bio: NonNull<BIO>,
    api: &'static Api,
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> MemBio<'a> {
    fn new(api: &'static Api, bytes: &'a [u8]) -> Result<MemBio<'a>, String> {
        let len = c_int::try_from(bytes.len()).map_err(|_| "a PEM file over 2 GiB")?;
        // SAFETY: a read-only BIO over `bytes`, which outlive it (`'a`).
        let bio = unsafe { (api.BIO_new_mem_buf)(bytes.as_ptr() as *const c_void, len) };
        Ok(MemBio { bio: NonNull::new(bio).ok_or("BIO_new_mem_buf failed")?, api, _bytes: Default::default() })
    }
}

impl Drop for MemBio<'_> {
    fn drop(&mut self) {
        // SAFETY: our BIO, freed once.
        unsafe { (self.api.BIO_free)(self.bio.as_ptr()) };
    }
}

/// Adds the certificates and CRLs of a PEM file's contents to `store`, as
/// OpenSSL's `X509_load_cert_crl_file` does from the file; returns how many.
///
/// # Safety
/// `store` is a live `X509_STORE`.
unsafe fn load_pem_into_store(api: &'static Api, store: *mut c_void, pem: &[u8]) -> Result<usize, String> {
    let bio = MemBio::new(api, pem)?;
    // SAFETY: a live BIO; the stack returned (or NULL) is ours and freed
    // with its entries below. Each entry starts with X509_INFO's public
    // head; the store takes its own references to what it adds.
    unsafe {
        let infos = (api.PEM_X509_INFO_read_bio)(
            bio.bio.as_ptr(),
            std::ptr::null_mut(),
            Some(no_passphrase),
            std::ptr::null_mut(),
        );
        if infos.is_null() {
            (api.ERR_clear_error)();
            return Ok(0);
        }
        let mut added = 0;
        for i in 0..(api.OPENSSL_sk_num)(infos) {
            let info = &*((api.OPENSSL_sk_value)(infos, i) as *const X509InfoHead);
            if !info.x509.is_null() && (api.X509_STORE_add_cert)(store, info.x509) == 1 {
                added += 1;
            }
            if !info.crl.is_null() && (api.X509_STORE_add_crl)(store, info.crl) == 1 {
                added += 1;
            }
        }
        (api.OPENSSL_sk_pop_free)(infos, api.X509_INFO_free);
        (api.ERR_clear_error)();
        Ok(added)
    }
}

/// OpenSSL's reader of one kind of PEM block (`PEM_read_bio_X509`,
/// `PEM_read_bio_PrivateKey`).
type PemReader = unsafe extern "C" fn(*mut BIO, *mut c_void, PasswordCallback, *mut c_void) -> *mut c_void;

/// Certificates or private keys read from PEM bytes: ours until taken
/// out, the rest freed with the list.
struct PemObjects {
    api: &'static Api,
    items: Vec<NonNull<c_void>>,
    free: unsafe extern "C" fn(*mut c_void),
}

impl PemObjects {
    fn no_certificates(api: &'static Api) -> PemObjects {
        PemObjects { api, items: Vec::new(), free: api.X509_free }
    }

    /// Every certificate in `pem`, in order.
    fn certificates(api: &'static Api, pem: &[u8]) -> Result<PemObjects, String> {
        PemObjects::no_certificates(api).read(pem, api.PEM_read_bio_X509)
    }

    /// Every private key in `pem`, in order (an encrypted one is skipped:
    /// it would ask for a passphrase).
    fn keys(api: &'static Api, pem: &[u8]) -> Result<PemObjects, String> {
        PemObjects { api, items: Vec::new(), free: api.EVP_PKEY_free }.read(pem, api.PEM_read_bio_PrivateKey)
    }

    fn read(mut self, pem: &[u8], reader: PemReader) -> Result<PemObjects, String> {
        let bio = MemBio::new(self.api, pem)?;
        let none = std::ptr::null_mut();
        // SAFETY: a live BIO; each object returned is ours (the list frees
        // it). The end of the blocks, or one skipped, leaves errors queued,
        // which are cleared.
        unsafe {
            while let Some(item) = NonNull::new(reader(bio.bio.as_ptr(), none, Some(no_passphrase), none)) {
                self.items.push(item);
            }
            (self.api.ERR_clear_error)();
        }
        Ok(self)
    }

    /// Takes out the key of `cert`, if this list of keys has it.
    fn take_key_of(&mut self, cert: NonNull<X509>) -> Option<NonNull<EVP_PKEY>> {
        // SAFETY: a live certificate and live keys, compared only.
        let i = self
            .items
            .iter()
            .position(|key| unsafe { (self.api.X509_check_private_key)(cert.as_ptr(), key.as_ptr()) } == 1)?;
        Some(self.items.swap_remove(i))
    }
}

impl Drop for PemObjects {
    fn drop(&mut self) {
        for item in self.items.drain(..) {
            // SAFETY: ours, freed once (taken ones left the vector).
            unsafe { (self.free)(item.as_ptr()) };
        }
    }
}

/// A client certificate with its key and the certificates that issued it.
struct ClientPair {
    cert: NonNull<X509>,
    key: NonNull<EVP_PKEY>,
    /// Its issuers, nearest first, as an OpenSSL stack that holds its own
    /// references (what `SSL_use_cert_and_key` takes).
    chain: NonNull<c_void>,
}

/// The client certificates of one set of `SSLProxy*` settings:
/// `SSLProxyMachineCertificateFile`'s, then those of the files in
/// `SSLProxyMachineCertificatePath` (in name order).
struct ClientCerts {
    api: &'static Api,
    pairs: Vec<ClientPair>,
}

impl ClientCerts {
    /// Each certificate that has its key in the same file is a client
    /// certificate (a pair may come in either order, as mod_ssl allows);
    /// the other certificates, and those of
    /// `SSLProxyMachineCertificateChainFile`, are candidates for their
    /// chains: a certificate's issuer, then the issuer's issuer, while
    /// there is one, up to the root (`issuers`). mod_ssl builds the same
    /// chains but uses them only to choose a certificate, and sends what
    /// OpenSSL's automatic chain building finds in the CA file; sending
    /// them lets a backend that trusts only the root accept a certificate
    /// an intermediate issued.
    fn load(api: &'static Api, policy: &TlsPolicy, files: &PemFiles) -> Result<ClientCerts, String> {
        let mut me = ClientCerts { api, pairs: Vec::new() };
        let mut candidates = PemObjects::no_certificates(api);
        let sources = [
            ("SSLProxyMachineCertificateFile", policy.client_cert.as_deref()),
            ("SSLProxyMachineCertificatePath", policy.client_cert_path.as_deref()),
        ];
        for (directive, path) in sources {
            let Some(path) = path else { continue };
            let pem = files.get(directive, path)?;
            let mut keys = PemObjects::keys(api, pem)?;
            let mut certs = PemObjects::certificates(api, pem)?;
            let before = me.pairs.len();
            // A certificate leaves `certs` only into a pair, so the list
            // frees the rest on every early return.
            let mut i = 0;
            while i < certs.items.len() {
                let Some(key) = keys.take_key_of(certs.items[i]) else {
                    i += 1;
                    continue;
                };
                // SAFETY: a new, empty stack, which the pair owns; else the
                // key taken is ours to free.
                let Some(chain) = NonNull::new(unsafe { (api.OPENSSL_sk_new_null)() }) else {
                    // SAFETY: see above.
                    unsafe { (api.EVP_PKEY_free)(key.as_ptr()) };
                    return Err("OPENSSL_sk_new_null failed".into());
                };
                me.pairs.push(ClientPair { cert: certs.items.remove(i), key, chain });
            }
            candidates.items.append(&mut certs.items);
            if me.pairs.len() == before {
                return Err(format!("cannot use {directive} {path} (it needs the certificate and its key, in PEM)"));
            }
        }
        if let Some(chain) = policy.client_chain.as_deref() {
            let mut list = PemObjects::certificates(api, files.get("SSLProxyMachineCertificateChainFile", chain)?)?;
            if list.items.is_empty() {
                return Err(format!("SSLProxyMachineCertificateChainFile {chain} holds no certificate (in PEM)"));
            }
            candidates.items.append(&mut list.items);
        }
        for pair in &me.pairs {
            for issuer in issuers(api, pair.cert, &candidates.items) {
                // SAFETY: the stack takes a reference of its own to a live
                // certificate (given back if the push fails).
                unsafe {
                    (api.X509_up_ref)(issuer.as_ptr());
                    if (api.OPENSSL_sk_push)(pair.chain.as_ptr(), issuer.as_ptr()) == 0 {
                        (api.X509_free)(issuer.as_ptr());
                        return Err("OPENSSL_sk_push failed".into());
                    }
                }
            }
        }
        Ok(me)
    }

    /// As mod_ssl chooses: with no CA names from the backend, the first
    /// pair; else, for each name in the backend's order, the first pair
    /// whose certificate or one of whose issuers that CA issued; else none
    /// (the backend then decides whether a missing certificate is fatal).
    ///
    /// # Safety
    /// `ssl` is a live `SSL` in its handshake.
    unsafe fn choose(&self, ssl: *mut SSL) -> Option<&ClientPair> {
        let api = self.api;
        // SAFETY: the list and its names are borrowed from the live SSL;
        // the certificates are ours.
        unsafe {
            let names = (api.SSL_get_client_CA_list)(ssl);
            let count = if names.is_null() { 0 } else { (api.OPENSSL_sk_num)(names) };
            if count <= 0 {
                return self.pairs.first();
            }
            (0..count).find_map(|i| {
                let name = (api.OPENSSL_sk_value)(names, i);
                let issued_by_name =
                    |cert: *mut c_void| (api.X509_NAME_cmp)((api.X509_get_issuer_name)(cert), name) == 0;
                self.pairs.iter().find(|pair| {
                    issued_by_name(pair.cert.as_ptr())
                        || (0..(api.OPENSSL_sk_num)(pair.chain.as_ptr()))
                            .any(|j| issued_by_name((api.OPENSSL_sk_value)(pair.chain.as_ptr(), j)))
                })
            })
        }
    }
}

impl Drop for ClientCerts {
    fn drop(&mut self) {
        for pair in self.pairs.drain(..) {
            // SAFETY: the pair's own references and stack, freed once.
            unsafe {
                (self.api.X509_free)(pair.cert.as_ptr());
                (self.api.EVP_PKEY_free)(pair.key.as_ptr());
                (self.api.OPENSSL_sk_pop_free)(pair.chain.as_ptr(), self.api.X509_free);
            }
        }
    }
}

/// OpenSSL's verify callback where the `SSLProxy*` settings tolerate
/// errors, as mod_ssl's own callback does: an unknown issuer under
/// `SSLProxyVerify optional_no_ca` (`NO_CA`), a CA without a CRL under
/// `SSLProxyCARevocationCheck ... no_crl_for_cert_ok` (`NO_CRL`). The
/// error is cleared and the verification goes on. OpenSSL's default
/// callback stops at the first error, and it checks revocation before
/// signatures and dates: accepting its `UNABLE_TO_GET_CRL` verdict (as
/// this module did until 2026-12-06) accepted a chain whose signatures
/// were never checked, a forged certificate naming a trusted CA as its
/// issuer.
unsafe extern "C" fn tolerate_errors<const NO_CA: bool, const NO_CRL: bool>(ok: c_int, store: *mut c_void) -> c_int {
    crate::ffi::panic::guard("proxy certificate verification", 0, || {
        if ok != 0 {
            return ok;
        }
        // Loaded: this runs inside one of its handshakes.
        let Ok(api) = api() else { return 0 };
        // SAFETY: the store context of the verification in progress,
        // which OpenSSL hands its callback.
        let error = c_long::from(unsafe { (api.X509_STORE_CTX_get_error)(store) });
        let tolerated =
            (NO_CA && X509_V_ERRORS_NO_CA.contains(&error)) || (NO_CRL && error == X509_V_ERR_UNABLE_TO_GET_CRL);
        if !tolerated {
            return 0;
        }
        // SAFETY: as above.
        unsafe { (api.X509_STORE_CTX_set_error)(store, X509_V_OK as c_int) };
        1
    })
}

/// OpenSSL's certificate callback where there are client certificates:
/// gives the handshake the one `ClientCerts::choose` picks, or none.
/// Returns 1 (go on), or 0 (fail the handshake, with OpenSSL's reason in
/// the engine's log) when OpenSSL refuses the chosen pair, or after a
/// panic.
unsafe extern "C" fn choose_client_certificate(ssl: *mut SSL, arg: *mut c_void) -> c_int {
    crate::ffi::panic::guard("proxy client certificate", 0, || {
        // SAFETY: `arg` is the context's `ClientCerts`, which every `Ssl`
        // made from the context keeps alive (`Ssl::_client_certs`); this
        // runs during the handshake of one of them.
        let certs = unsafe { &*(arg as *const ClientCerts) };
        // SAFETY: the live SSL OpenSSL handed us.
        let Some(pair) = (unsafe { certs.choose(ssl) }) else { return 1 };
        // SAFETY: as above; OpenSSL takes references of its own (1:
        // replace what the context set).
        let used = unsafe {
            (certs.api.SSL_use_cert_and_key)(ssl, pair.cert.as_ptr(), pair.key.as_ptr(), pair.chain.as_ptr(), 1)
        };
        c_int::from(used == 1)
    })
}

/// The certificates of `candidates` that issued `cert`, nearest first: its
/// issuer, the issuer's issuer, ... up to a self-signed root or the first
/// certificate without an issuer among them (at most as many steps as
/// there are candidates, so cross-signed pairs cannot loop).
fn issuers(api: &'static Api, cert: NonNull<X509>, candidates: &[NonNull<X509>]) -> Vec<NonNull<X509>> {
    let issued = |issuer: NonNull<X509>, subject: NonNull<X509>| {
        // SAFETY: live certificates, compared only.
        let verdict = unsafe { (api.X509_check_issued)(issuer.as_ptr(), subject.as_ptr()) };
        c_long::from(verdict) == X509_V_OK
    };
    let mut chain = Vec::new();
    let mut subject = cert;
    while chain.len() < candidates.len() {
        let Some(&issuer) = candidates.iter().find(|&&c| issued(c, subject)) else { break };
        chain.push(issuer);
        if issued(issuer, issuer) {
            break; // the root
        }
        subject = issuer;
    }
    chain
}

/// The signature OpenSSL's `*_load_locations` share (an `SSL_CTX` or an
/// `X509_STORE`, a file, a directory).
type LoadLocations = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;

/// Points `target` at a hashed directory of certificates or CRLs (read by
/// OpenSSL when it verifies a chain) with `load`; true when there is none.
///
/// # Safety
/// `target` is the live object `load` expects.
unsafe fn load_dir(load: LoadLocations, target: *mut c_void, dir: Option<&str>) -> Result<bool, String> {
    let Some(dir) = dir else { return Ok(true) };
    let dir = c_string(dir)?;
    // SAFETY: caller contract; the name is NUL-terminated.
    Ok(unsafe { load(target, std::ptr::null(), dir.as_ptr()) } == 1)
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
    /// The context's client certificates, which its certificate callback
    /// reads during this connection's handshake: kept until the SSL is
    /// freed (fields drop after `Drop::drop`).
    _client_certs: Option<Rc<ClientCerts>>,
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
            let me = Ssl { ssl, api, _client_certs: ctx.client_certs.clone(), want_write: false };
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

    /// An SSL_get_error code, with OpenSSL's reason for this thread's
    /// last error if it has one (a backend's alert, say "certificate
    /// required").
    fn describe(&self, code: c_int) -> String {
        // Taken first: SSL_ERROR_SYSCALL's cause, when there is one.
        let os_error = io::Error::last_os_error();
        // SAFETY: reads and clears this thread's error queue; the buffer is
        // ours and OpenSSL NUL-terminates within its length.
        let reason = unsafe {
            let e = (self.api.ERR_get_error)();
            if e == 0 {
                String::new()
            } else {
                let mut buf = [0 as c_char; 256];
                (self.api.ERR_error_string_n)(e, buf.as_mut_ptr(), buf.len());
                CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            }
        };
        if reason.is_empty() && code == SSL_ERROR_SYSCALL {
            // No TLS alert: the socket failed or the backend just closed
            // it (as some do after refusing a client certificate).
            match os_error.raw_os_error() {
                Some(errno) if errno != 0 => format!("SSL error {code}: {os_error}"),
                _ => format!("SSL error {code}: the backend closed the connection"),
            }
        } else if reason.is_empty() {
            format!("SSL error {code}")
        } else {
            format!("SSL error {code}: {reason}")
        }
    }

    /// Clears this thread's OpenSSL error queue and errno, so that
    /// SSL_get_error and `describe` see only the next call's result.
    fn clear_errors(&self) {
        // SAFETY: OpenSSL's per-thread queue and this thread's errno.
        unsafe {
            (self.api.ERR_clear_error)();
            *libc::__errno_location() = 0;
        }
    }

    fn error(&self, ret: c_int) -> c_int {
        // SAFETY: our live SSL and the return value of the call just made.
        unsafe { (self.api.SSL_get_error)(self.ssl.as_ptr(), ret) }
    }

    pub fn handshake(&mut self) -> Result<Handshake, String> {
        self.clear_errors();
        // SAFETY: our live SSL.
        let rv = unsafe { (self.api.SSL_do_handshake)(self.ssl.as_ptr()) };
        if rv == 1 {
            return Ok(Handshake::Done);
        }
        match self.error(rv) {
            SSL_ERROR_WANT_READ => Ok(Handshake::WantRead),
            SSL_ERROR_WANT_WRITE => Ok(Handshake::WantWrite),
            e => Err(format!("TLS handshake failed ({})", self.describe(e))),
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

    /// mod_ssl's checks after a proxy handshake, by `policy`: OpenSSL's
    /// verdict on the chain (unless `SSLProxyVerify none`), the
    /// certificate's dates, its names against `host` (the backend's host,
    /// or the request's with ProxyPreserveHost, as mod_proxy gives it).
    pub fn check_peer(&self, policy: &TlsPolicy, host: &str) -> Result<(), String> {
        let api = self.api;
        let verify = policy.verify();
        // SAFETY: our live SSL; OpenSSL's error string is static.
        unsafe {
            if verify != Verify::None {
                // OpenSSL's result is X509_V_OK also when the backend sent
                // no certificate at all.
                let cert = (api.SSL_get1_peer_certificate)(self.ssl.as_ptr());
                if cert.is_null() {
                    return Err("the backend presented no certificate (SSLProxyVerify)".into());
                }
                (api.X509_free)(cert);
                // The errors the policy tolerates were cleared on the way
                // (`tolerate_errors`).
                let rv = (api.SSL_get_verify_result)(self.ssl.as_ptr());
                if rv != X509_V_OK {
                    let why = (api.X509_verify_cert_error_string)(rv);
                    let why = if why.is_null() { "".into() } else { CStr::from_ptr(why).to_string_lossy() };
                    return Err(format!("the backend's certificate is not trusted: {why} (SSLProxyVerify)"));
                }
                // OpenSSL cannot be told depth 0 (the certificate itself
                // trusted, no issuer); mod_ssl's count is checked here.
                let chain = (api.SSL_get0_verified_chain)(self.ssl.as_ptr());
                let levels = if chain.is_null() { 0 } else { (api.OPENSSL_sk_num)(chain).max(0) as u32 };
                if levels > policy.verify_depth().saturating_add(1) {
                    return Err(format!(
                        "the backend's certificate chain has {levels} certificates, more than SSLProxyVerifyDepth {} allows",
                        policy.verify_depth()
                    ));
                }
            }
        }
        let names = policy.name_check();
        if !policy.check_expire() && names == NameCheck::Off {
            return Ok(());
        }
        // SAFETY: our live SSL; the certificate it returns is ours to free,
        // once, after the checks.
        unsafe {
            let cert = (api.SSL_get1_peer_certificate)(self.ssl.as_ptr());
            if cert.is_null() {
                return Err("the backend presented no certificate".into());
            }
            let checked = self.check_cert(cert, policy.check_expire(), names, host);
            (api.X509_free)(cert);
            checked
        }
    }

    /// # Safety
    /// `cert` is a live certificate.
    unsafe fn check_cert(&self, cert: *mut X509, expire: bool, names: NameCheck, host: &str) -> Result<(), String> {
        let api = self.api;
        // SAFETY: caller contract; the time fields belong to `cert`, and
        // the names are NUL-terminated copies or buffers of ours.
        unsafe {
            if expire
                && ((api.X509_cmp_current_time)((api.X509_get0_notBefore)(cert)) >= 0
                    || (api.X509_cmp_current_time)((api.X509_get0_notAfter)(cert)) <= 0)
            {
                return Err(
                    "the backend's certificate has expired or is not valid yet (SSLProxyCheckPeerExpire)".into()
                );
            }
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let matched = match names {
                NameCheck::Off => true,
                // A name with a leading dot (httpd takes `Host: .b.test`,
                // which ProxyPreserveHost passes on) is to X509_check_host
                // any name below it; mod_ssl matches it as it is.
                NameCheck::Names if bare.starts_with('.') => false,
                NameCheck::Names => {
                    let c = c_string(bare)?;
                    if bare.parse::<std::net::IpAddr>().is_ok() {
                        (api.X509_check_ip_asc)(cert, c.as_ptr(), 0) == 1
                    } else {
                        let flags = X509_CHECK_FLAG_ALWAYS_CHECK_SUBJECT | X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS;
                        (api.X509_check_host)(cert, c.as_ptr(), bare.len(), flags, std::ptr::null_mut()) == 1
                    }
                }
                NameCheck::CommonName => {
                    let mut buf = [0 as c_char; 256];
                    let subject = (api.X509_get_subject_name)(cert);
                    let n = if subject.is_null() {
                        -1
                    } else {
                        (api.X509_NAME_get_text_by_NID)(subject, NID_COMMON_NAME, buf.as_mut_ptr(), buf.len() as c_int)
                    };
                    n >= 0 && common_name_matches(&CStr::from_ptr(buf.as_ptr()).to_string_lossy(), bare)
                }
            };
            if matched {
                Ok(())
            } else {
                let directive = if names == NameCheck::Names { "SSLProxyCheckPeerName" } else { "SSLProxyCheckPeerCN" };
                Err(format!("the backend's certificate does not name {bare} ({directive})"))
            }
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
            e => Err(io::Error::other(format!("TLS error ({})", self.describe(e)))),
        }
    }

    /// Runs one SSL_read/SSL_write on our SSL with a clean error queue.
    fn io(&mut self, op: impl FnOnce(&Api, *mut SSL) -> c_int) -> io::Result<usize> {
        self.want_write = false;
        self.clear_errors();
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
