//! How `h2://` backends are checked: mod_ssl's `SSLProxy*` directives,
//! read from the configuration tree (`hooks::set_backend_tls`), merged as
//! mod_ssl merges them, and the checks mod_ssl makes after its proxy
//! handshake.
//!
//! Why here: proxy_http2_module runs its backend connections on its own
//! engine thread with its own OpenSSL session (`tls.rs`), not through
//! mod_ssl's connection filters, and mod_ssl keeps its settings private.
//! Without this, `SSLProxyVerify require` and `SSLProxyCACertificateFile`
//! had no effect on `h2://` backends, where the stock module (which goes
//! through mod_ssl) verifies them, and mod_ssl's default checks (the
//! certificate's dates and its names against the backend's host) were not
//! made either.
//!
//! Pure: parsing, merging and the section matching are unit-tested; the
//! OpenSSL side is `tls.rs`.

use std::collections::HashMap;
use std::sync::Arc;

/// `SSLProxyVerify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verify {
    None,
    /// mod_ssl verifies a server's certificate alike for `optional` and
    /// `require` (a server always presents one).
    Require,
    /// Verified, but an unknown or self-signed issuer is accepted.
    OptionalNoCa,
}

/// The `SSLProxy*` settings of one context (server, virtual host or
/// `<Proxy>` section). `None`: not set here, inherited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsPolicy {
    pub verify: Option<Verify>,
    pub verify_depth: Option<u32>,
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub check_expire: Option<bool>,
    pub check_name: Option<bool>,
    pub check_cn: Option<bool>,
    /// `SSLProxyMachineCertificateFile`: the client certificate and its
    /// key, in one PEM file.
    pub client_cert: Option<String>,
    /// `SSLProxyMachineCertificateChainFile`: CA certificates, of which
    /// those that issued the client certificate (up to the root) are sent
    /// with it.
    pub client_chain: Option<String>,
    /// `SSLProxyMachineCertificatePath`: a directory of files of client
    /// certificates and their keys.
    pub client_cert_path: Option<String>,
    /// `SSLProxyProtocol`: the protocol versions allowed (`PROTOCOLS` bits).
    pub protocols: Option<u8>,
    /// `SSLProxyCipherSuite`: the list for TLS 1.2 and below, and for 1.3.
    pub ciphers: Option<String>,
    pub ciphersuites: Option<String>,
    /// `SSLProxyCARevocationFile`/`-Path`, `SSLProxyCARevocationCheck`.
    pub crl_file: Option<String>,
    pub crl_path: Option<String>,
    pub crl_check: Option<CrlCheck>,
}

/// `SSLProxyCARevocationCheck`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrlCheck {
    /// The whole chain (`chain`), or the backend's certificate (`leaf`).
    pub chain: bool,
    /// `no_crl_for_cert_ok`: a certificate whose issuer has no CRL passes.
    pub missing_ok: bool,
}

/// SSLProxyProtocol's names, as protocol versions (OpenSSL's numbers), in
/// order; bit i of `TlsPolicy::protocols` is entry i.
pub const PROTOCOLS: [(&str, u16); 5] =
    [("SSLv3", 0x0300), ("TLSv1", 0x0301), ("TLSv1.1", 0x0302), ("TLSv1.2", 0x0303), ("TLSv1.3", 0x0304)];
const ALL_PROTOCOLS: u8 = 0b1_1111;

/// mod_ssl's reading of `SSLProxyProtocol [+-]name ...`: `+`/`-` add or
/// remove from what the words before it left, a bare name replaces it.
fn parse_protocols(args: &str) -> Option<u8> {
    let mut set = 0u8;
    for word in args.split_ascii_whitespace() {
        let (action, name) = match word.as_bytes().first() {
            Some(b'+') | Some(b'-') => (word.as_bytes()[0], &word[1..]),
            _ => (b'=', word),
        };
        let bits = if name.eq_ignore_ascii_case("all") {
            ALL_PROTOCOLS
        } else {
            1 << PROTOCOLS.iter().position(|(n, _)| n.eq_ignore_ascii_case(name))?
        };
        match action {
            b'+' => set |= bits,
            b'-' => set &= !bits,
            _ => set = bits,
        }
    }
    Some(set)
}

/// How the backend's certificate names are checked against its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameCheck {
    Off,
    /// The subjectAltName entries and the subject's CN (mod_ssl's
    /// `SSLProxyCheckPeerName`).
    Names,
    /// The subject's CN only (`SSLProxyCheckPeerName off`,
    /// `SSLProxyCheckPeerCN on`).
    CommonName,
}

fn flag(arg: &str) -> Option<bool> {
    match arg.to_ascii_lowercase().as_str() {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

impl TlsPolicy {
    /// Records one directive if it is one of ours; `path` makes a file
    /// name absolute (relative to ServerRoot, as mod_ssl does). mod_ssl
    /// itself refuses malformed values at start, so a value that does not
    /// parse here changes nothing. Returns whether the directive is one of
    /// these.
    pub fn apply(&mut self, directive: &str, args: &str, path: impl Fn(&str) -> String) -> bool {
        let arg = args.split_ascii_whitespace().next().unwrap_or("");
        let arg = arg.trim_matches('"');
        match directive.to_ascii_lowercase().as_str() {
            "sslproxyverify" => {
                let v = match arg.to_ascii_lowercase().as_str() {
                    "none" => Some(Verify::None),
                    "optional" | "require" => Some(Verify::Require),
                    "optional_no_ca" => Some(Verify::OptionalNoCa),
                    _ => None,
                };
                self.verify = v.or(self.verify);
            }
            "sslproxyverifydepth" => self.verify_depth = arg.parse().ok().or(self.verify_depth),
            "sslproxycacertificatefile" => self.ca_file = Some(path(arg)),
            "sslproxycacertificatepath" => self.ca_path = Some(path(arg)),
            "sslproxycheckpeerexpire" => self.check_expire = flag(arg).or(self.check_expire),
            "sslproxycheckpeername" => self.check_name = flag(arg).or(self.check_name),
            "sslproxycheckpeercn" => self.check_cn = flag(arg).or(self.check_cn),
            "sslproxymachinecertificatefile" => self.client_cert = Some(path(arg)),
            "sslproxymachinecertificatechainfile" => self.client_chain = Some(path(arg)),
            "sslproxymachinecertificatepath" => self.client_cert_path = Some(path(arg)),
            "sslproxyprotocol" => self.protocols = parse_protocols(args).or(self.protocols),
            "sslproxyciphersuite" => {
                let words: Vec<&str> = args.split_ascii_whitespace().map(|w| w.trim_matches('"')).collect();
                match words.as_slice() {
                    [list] | [_, list] if words.len() == 1 || words[0].eq_ignore_ascii_case("SSL") => {
                        self.ciphers = Some(list.to_string())
                    }
                    [protocol, list] if protocol.eq_ignore_ascii_case("TLSv1.3") => {
                        self.ciphersuites = Some(list.to_string())
                    }
                    _ => {}
                }
            }
            "sslproxycarevocationfile" => self.crl_file = Some(path(arg)),
            "sslproxycarevocationpath" => self.crl_path = Some(path(arg)),
            "sslproxycarevocationcheck" => {
                let mode = arg.to_ascii_lowercase();
                let missing_ok =
                    args.split_ascii_whitespace().skip(1).any(|f| f.eq_ignore_ascii_case("no_crl_for_cert_ok"));
                self.crl_check = match mode.as_str() {
                    "none" => None,
                    "chain" | "leaf" => Some(CrlCheck { chain: mode == "chain", missing_ok }),
                    _ => self.crl_check,
                };
            }
            _ => return false,
        }
        true
    }

    /// mod_ssl's merge: the inner context's settings where it has them.
    pub fn merge(base: &TlsPolicy, over: &TlsPolicy) -> TlsPolicy {
        TlsPolicy {
            verify: over.verify.or(base.verify),
            verify_depth: over.verify_depth.or(base.verify_depth),
            ca_file: over.ca_file.clone().or_else(|| base.ca_file.clone()),
            ca_path: over.ca_path.clone().or_else(|| base.ca_path.clone()),
            check_expire: over.check_expire.or(base.check_expire),
            check_name: over.check_name.or(base.check_name),
            check_cn: over.check_cn.or(base.check_cn),
            client_cert: over.client_cert.clone().or_else(|| base.client_cert.clone()),
            client_chain: over.client_chain.clone().or_else(|| base.client_chain.clone()),
            client_cert_path: over.client_cert_path.clone().or_else(|| base.client_cert_path.clone()),
            protocols: over.protocols.or(base.protocols),
            ciphers: over.ciphers.clone().or_else(|| base.ciphers.clone()),
            ciphersuites: over.ciphersuites.clone().or_else(|| base.ciphersuites.clone()),
            crl_file: over.crl_file.clone().or_else(|| base.crl_file.clone()),
            crl_path: over.crl_path.clone().or_else(|| base.crl_path.clone()),
            crl_check: over.crl_check.or(base.crl_check),
        }
    }

    pub fn verify(&self) -> Verify {
        self.verify.unwrap_or(Verify::None)
    }

    /// The longest chain accepted, as mod_ssl counts it (0: the backend's
    /// own certificate, 1: its issuer, ...). mod_ssl's default is 1.
    pub fn verify_depth(&self) -> u32 {
        self.verify_depth.unwrap_or(1)
    }

    /// The lowest and highest protocol version `SSLProxyProtocol` allows
    /// (OpenSSL cannot leave a gap between them; nor does mod_ssl), None
    /// where it is not set; Err where it allows none.
    pub fn protocol_range(&self) -> Result<Option<(u16, u16)>, String> {
        let Some(set) = self.protocols else { return Ok(None) };
        let enabled: Vec<u16> =
            PROTOCOLS.iter().enumerate().filter(|(i, _)| set & (1 << i) != 0).map(|(_, p)| p.1).collect();
        match (enabled.first(), enabled.last()) {
            (Some(&lo), Some(&hi)) => Ok(Some((lo, hi))),
            _ => Err("SSLProxyProtocol allows no protocol".into()),
        }
    }

    /// mod_ssl checks the dates unless told not to, whatever
    /// `SSLProxyVerify` says.
    pub fn check_expire(&self) -> bool {
        self.check_expire != Some(false)
    }

    /// As mod_ssl decides it: the names, unless `SSLProxyCheckPeerName off`,
    /// or `SSLProxyCheckPeerCN off` without an explicit
    /// `SSLProxyCheckPeerName on`; failing that the CN alone where
    /// `SSLProxyCheckPeerCN on`.
    pub fn name_check(&self) -> NameCheck {
        if self.check_name != Some(false) && (self.check_cn != Some(false) || self.check_name == Some(true)) {
            NameCheck::Names
        } else if self.check_cn == Some(true) {
            NameCheck::CommonName
        } else {
            NameCheck::Off
        }
    }

    /// The files these settings name that are read whole at start
    /// (`PemFiles`), by directive, `SSLProxyMachineCertificatePath`'s
    /// directory too (its files). The CA and CRL `-Path` directories are
    /// not: OpenSSL looks certificates up in them when it verifies a
    /// chain, in the child processes, as it does for mod_ssl.
    pub fn files(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("SSLProxyCACertificateFile", self.ca_file.as_deref()),
            ("SSLProxyCARevocationFile", self.crl_file.as_deref()),
            ("SSLProxyMachineCertificateFile", self.client_cert.as_deref()),
            ("SSLProxyMachineCertificateChainFile", self.client_chain.as_deref()),
            (CLIENT_CERT_DIR, self.client_cert_path.as_deref()),
        ]
    }
}

/// The directive that names a directory of client certificate files, read
/// whole at start as the files are (its files in name order).
const CLIENT_CERT_DIR: &str = "SSLProxyMachineCertificatePath";

/// The contents of the files the `SSLProxy*` directives name, read in the
/// parent process at start (and at each restart), as mod_ssl reads its
/// own: as root, so a key only root may read serves the children, which
/// run as httpd's `User`. A file that cannot be read is kept as the reason.
#[derive(Debug, Default, PartialEq)]
pub struct PemFiles(HashMap<String, Result<Arc<[u8]>, String>>);

impl PemFiles {
    pub fn read<'a>(policies: impl IntoIterator<Item = &'a TlsPolicy>) -> PemFiles {
        let mut files = HashMap::new();
        for policy in policies {
            for (directive, path) in policy.files() {
                let Some(path) = path else { continue };
                files.entry(path.to_string()).or_insert_with(|| {
                    let bytes = if directive == CLIENT_CERT_DIR { read_dir_files(path) } else { std::fs::read(path) };
                    bytes.map(Arc::from).map_err(|e| e.to_string())
                });
            }
        }
        PemFiles(files)
    }

    /// The contents of the file `directive` names, or why there are none.
    pub fn get(&self, directive: &str, path: &str) -> Result<&[u8], String> {
        match self.0.get(path) {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(e)) => Err(format!("cannot read {directive} {path}: {e} (read at start)")),
            None => Err(format!("{directive} {path} was not read at start")),
        }
    }
}

/// The files of a directory (symbolic links followed, each file once), in
/// name order, one after another.
fn read_dir_files(dir: &str) -> std::io::Result<Vec<u8>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut seen = std::collections::HashSet::new();
    let mut all = Vec::new();
    for path in paths {
        if seen.insert(std::fs::canonicalize(&path)?) {
            all.extend(std::fs::read(&path)?);
            all.push(b'\n');
        }
    }
    Ok(all)
}

/// How one request's backend connection is made over TLS (`h2://`).
#[derive(Clone, Debug)]
pub struct TlsTarget {
    /// The name the certificate must carry, as mod_proxy picks it: the
    /// URL's host or, with ProxyPreserveHost, the request's.
    pub host: String,
    pub policy: TlsPolicy,
    /// The files `policy` names, as read at start.
    pub files: Arc<PemFiles>,
}

impl TlsTarget {
    /// The server name to send (SNI): the host, unless an IP literal.
    pub fn sni(&self) -> Option<&str> {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        (!bare.is_empty() && bare.parse::<std::net::IpAddr>().is_err()).then_some(bare)
    }

    /// Connections are shared by requests with the same target only: a
    /// connection checked against one name or by one set of settings
    /// never carries a request that asks for another.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.host, &self.policy).hash(&mut h);
        h.finish()
    }
}

/// `SSLProxyCheckPeerCN`'s comparison: the CN equals the host (ASCII case
/// ignored), or is `*.` and a domain that the host is one label under.
pub fn common_name_matches(cn: &str, host: &str) -> bool {
    if cn.eq_ignore_ascii_case(host) {
        return true;
    }
    match (cn.strip_prefix("*."), host.split_once('.')) {
        (Some(domain), Some((label, rest))) => !label.is_empty() && domain.eq_ignore_ascii_case(rest),
        _ => false,
    }
}

/// A section pattern matched by code outside this module (httpd's regular
/// expressions, shell wildcards: `apr::regex`).
pub trait UrlPattern: std::fmt::Debug + Send + Sync {
    fn is_match(&self, url: &str) -> bool;
    /// The pattern as written.
    fn source(&self) -> &str;
}

/// Which backend URLs a `<Proxy>` section covers.
#[derive(Debug)]
pub enum SectionMatch {
    /// `<Proxy url>`: the URL starts with it.
    Prefix(String),
    /// `<ProxyMatch re>`, `<Proxy ~ re>`, `<Proxy>` with wildcards.
    Pattern(Box<dyn UrlPattern>),
}

impl PartialEq for SectionMatch {
    fn eq(&self, other: &SectionMatch) -> bool {
        match (self, other) {
            (SectionMatch::Prefix(a), SectionMatch::Prefix(b)) => a == b,
            (SectionMatch::Pattern(a), SectionMatch::Pattern(b)) => a.source() == b.source(),
            _ => false,
        }
    }
}

/// A `<Proxy>` section, with or without `SSLProxy*` directives.
#[derive(Debug, PartialEq)]
pub struct ProxySection {
    /// Compiled once, shared by the servers the section applies in.
    pub matches: Arc<SectionMatch>,
    /// The section's settings merged over the server's (for a virtual
    /// host, a main server's section over the virtual host's), as mod_ssl
    /// merges each section at start.
    pub policy: TlsPolicy,
}

impl ProxySection {
    fn covers(&self, url: &str) -> bool {
        match &*self.matches {
            SectionMatch::Prefix(p) => url.starts_with(p.as_str()),
            SectionMatch::Pattern(p) => p.is_match(url),
        }
    }
}

/// Every server's `BackendTls`, by its server_rec's address: made at
/// post_config by proxy_http2_module (in the parent; the children inherit
/// it), with http2_module loaded or not. (Kept in http2_module's server
/// config before, it was never made without that module, and every
/// `h2://` backend went unchecked whatever `SSLProxyVerify` said.)
static BY_SERVER: parking_lot::RwLock<Option<Arc<ByServer>>> = parking_lot::const_rwlock(None);

/// `BackendTls` by server_rec address.
type ByServer = HashMap<usize, Arc<BackendTls>>;

/// Replaces every server's settings (a new configuration generation,
/// whose configuration pool is `pconf`). They go when that pool is cleared:
/// a restart unloads the module, and this static with it, but not what it
/// held (CA files' contents, compiled patterns), which leaked in the
/// parent at every restart.
pub fn set_by_server(all: ByServer, pconf: crate::apr::pool::PoolRef) {
    struct ForgetOnClear;
    impl Drop for ForgetOnClear {
        fn drop(&mut self) {
            BY_SERVER.write().take();
        }
    }
    *BY_SERVER.write() = Some(Arc::new(all));
    pconf.attach(ForgetOnClear);
}

/// The settings of the server whose server_rec is at `server`.
pub fn of_server(server: usize) -> Option<Arc<BackendTls>> {
    BY_SERVER.read().as_ref().and_then(|all| all.get(&server).cloned())
}

/// One server's settings for its `h2://` backends.
#[derive(Debug, Default, PartialEq)]
pub struct BackendTls {
    /// The server's own, merged over the main server's.
    pub server: TlsPolicy,
    /// The main server's `<Proxy>` sections, then the virtual host's,
    /// each in file order: the order mod_proxy walks them.
    pub sections: Vec<Arc<ProxySection>>,
    /// The files of every server's settings (shared by all servers).
    pub files: Arc<PemFiles>,
}

impl BackendTls {
    /// The settings for the backend URL `url` (`h2://host/path`, mod_proxy's
    /// `proxy:` filename without its prefix): the last section that covers
    /// it, else the server's. mod_ssl's per-directory merge takes a
    /// section's settings whole (`ssl_config_perdir_merge`), so a later
    /// section is not weakened by an earlier one it overlaps: merged in
    /// turn, `<Proxy h2://app/>` with `SSLProxyVerify optional_no_ca`
    /// gave its laxness to `<Proxy h2://app/admin/>`, where mod_ssl
    /// verifies with the server's `require`.
    pub fn for_url(&self, url: &str) -> TlsPolicy {
        match self.sections.iter().rev().find(|s| s.covers(url)) {
            Some(section) => section.policy.clone(),
            None => self.server.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooted(p: &str) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("/srv/{p}")
        }
    }

    fn policy(lines: &[(&str, &str)]) -> TlsPolicy {
        let mut p = TlsPolicy::default();
        for (d, a) in lines {
            assert!(p.apply(d, a, rooted), "{d}");
        }
        p
    }

    #[test]
    fn defaults_are_mod_ssl_s() {
        let p = TlsPolicy::default();
        assert_eq!(p.verify(), Verify::None);
        assert_eq!(p.verify_depth(), 1);
        assert!(p.check_expire());
        assert_eq!(p.name_check(), NameCheck::Names);
        assert_eq!(p.ca_file, None);
    }

    #[test]
    fn parses_every_directive() {
        let p = policy(&[
            ("SSLProxyVerify", "require"),
            ("sslproxyverifydepth", "3"),
            ("SSLProxyCACertificateFile", "ca.pem"),
            ("SSLProxyCACertificatePath", "\"/etc/ca\""),
            ("SSLProxyCheckPeerExpire", "off"),
            ("SSLProxyMachineCertificateFile", "/etc/client.pem"),
            ("SSLProxyMachineCertificateChainFile", "chain.pem"),
            ("SSLProxyMachineCertificatePath", "clients"),
        ]);
        assert_eq!(p.verify(), Verify::Require);
        assert_eq!(p.verify_depth(), 3);
        assert_eq!(p.ca_file.as_deref(), Some("/srv/ca.pem"));
        assert_eq!(p.ca_path.as_deref(), Some("/etc/ca"));
        assert!(!p.check_expire());
        assert_eq!(p.client_cert.as_deref(), Some("/etc/client.pem"));
        assert_eq!(p.client_chain.as_deref(), Some("/srv/chain.pem"));
        assert_eq!(p.client_cert_path.as_deref(), Some("/srv/clients"));
        assert!(p.files().contains(&("SSLProxyMachineCertificateChainFile", Some("/srv/chain.pem"))));
        assert_eq!(policy(&[("SSLProxyVerify", "optional")]).verify(), Verify::Require);
        assert_eq!(policy(&[("SSLProxyVerify", "OPTIONAL_NO_CA")]).verify(), Verify::OptionalNoCa);
        assert_eq!(policy(&[("SSLProxyVerify", "require"), ("SSLProxyVerify", "none")]).verify(), Verify::None);
    }

    #[test]
    fn protocols_as_mod_ssl_reads_them() {
        let range = |args: &str| policy(&[("SSLProxyProtocol", args)]).protocol_range();
        assert_eq!(TlsPolicy::default().protocol_range(), Ok(None));
        assert_eq!(range("all -SSLv3"), Ok(Some((0x0301, 0x0304))));
        assert_eq!(range("-all +TLSv1.2"), Ok(Some((0x0303, 0x0303))));
        assert_eq!(range("TLSv1.2 +TLSv1.3"), Ok(Some((0x0303, 0x0304))));
        assert_eq!(range("+tlsv1.3"), Ok(Some((0x0304, 0x0304))));
        assert!(range("-all").is_err());
        // A name mod_ssl does not know: mod_ssl refuses it; nothing changes.
        assert_eq!(range("TLSv9"), Ok(None));
    }

    #[test]
    fn cipher_suites_by_protocol_and_revocation_checks() {
        let p = policy(&[
            ("SSLProxyCipherSuite", "HIGH:!aNULL"),
            ("SSLProxyCipherSuite", "TLSv1.3 TLS_CHACHA20_POLY1305_SHA256"),
            ("SSLProxyCARevocationFile", "crl.pem"),
            ("SSLProxyCARevocationCheck", "leaf no_crl_for_cert_ok"),
        ]);
        assert_eq!(p.ciphers.as_deref(), Some("HIGH:!aNULL"));
        assert_eq!(p.ciphersuites.as_deref(), Some("TLS_CHACHA20_POLY1305_SHA256"));
        assert_eq!(p.crl_file.as_deref(), Some("/srv/crl.pem"));
        assert_eq!(p.crl_check, Some(CrlCheck { chain: false, missing_ok: true }));
        assert_eq!(
            policy(&[("SSLProxyCipherSuite", "SSL ECDHE-ECDSA-AES128-GCM-SHA256")]).ciphers.as_deref(),
            Some("ECDHE-ECDSA-AES128-GCM-SHA256")
        );
        assert_eq!(
            policy(&[("SSLProxyCARevocationCheck", "chain")]).crl_check,
            Some(CrlCheck { chain: true, missing_ok: false })
        );
        assert_eq!(
            policy(&[("SSLProxyCARevocationCheck", "chain"), ("SSLProxyCARevocationCheck", "none")]).crl_check,
            None
        );
    }

    #[test]
    fn other_directives_and_bad_values_change_nothing() {
        let mut p = policy(&[("SSLProxyVerify", "require"), ("SSLProxyVerifyDepth", "2")]);
        assert!(!p.apply("SSLProxyEngine", "on", rooted));
        assert!(!p.apply("SSLVerifyClient", "none", rooted));
        assert!(p.apply("SSLProxyVerify", "sometimes", rooted));
        assert!(p.apply("SSLProxyVerifyDepth", "-1", rooted));
        assert!(p.apply("SSLProxyCheckPeerName", "maybe", rooted));
        assert_eq!(p, policy(&[("SSLProxyVerify", "require"), ("SSLProxyVerifyDepth", "2")]));
    }

    #[test]
    fn name_check_follows_mod_ssl() {
        let check = |name: Option<&str>, cn: Option<&str>| {
            let mut lines = Vec::new();
            if let Some(v) = name {
                lines.push(("SSLProxyCheckPeerName", v));
            }
            if let Some(v) = cn {
                lines.push(("SSLProxyCheckPeerCN", v));
            }
            policy(&lines).name_check()
        };
        assert_eq!(check(None, None), NameCheck::Names);
        assert_eq!(check(Some("on"), None), NameCheck::Names);
        assert_eq!(check(Some("on"), Some("off")), NameCheck::Names);
        assert_eq!(check(None, Some("off")), NameCheck::Off);
        assert_eq!(check(Some("off"), None), NameCheck::Off);
        assert_eq!(check(Some("off"), Some("on")), NameCheck::CommonName);
        assert_eq!(check(Some("off"), Some("off")), NameCheck::Off);
    }

    #[test]
    fn server_name_is_the_host_unless_an_address() {
        let t = |h: &str| TlsTarget { host: h.into(), policy: TlsPolicy::default(), files: Arc::default() };
        assert_eq!(t("b.test").sni(), Some("b.test"));
        assert_eq!(t("127.0.0.1").sni(), None);
        assert_eq!(t("[::1]").sni(), None);
        assert_eq!(t("").sni(), None);
        assert_ne!(t("a.test").fingerprint(), t("b.test").fingerprint());
        let strict = TlsTarget {
            host: "a.test".into(),
            policy: policy(&[("SSLProxyVerify", "require")]),
            files: Arc::default(),
        };
        assert_ne!(t("a.test").fingerprint(), strict.fingerprint());
    }

    #[test]
    fn files_are_read_once_and_unreadable_ones_say_why() {
        let dir = std::env::temp_dir().join(format!("h2rs-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----").unwrap();
        let ca = ca.to_str().unwrap();
        let missing = dir.join("missing.pem");
        let missing = missing.to_str().unwrap();
        let main = policy(&[("SSLProxyCACertificateFile", ca), ("SSLProxyCACertificatePath", "/etc/ca")]);
        let section = policy(&[("SSLProxyCACertificateFile", ca), ("SSLProxyMachineCertificateFile", missing)]);
        let files = PemFiles::read([&main, &section]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(files.0.len(), 2, "{files:?}");
        assert_eq!(files.get("SSLProxyCACertificateFile", ca), Ok(&b"-----BEGIN CERTIFICATE-----"[..]));
        let e = files.get("SSLProxyMachineCertificateFile", missing).unwrap_err();
        assert!(e.starts_with(&format!("cannot read SSLProxyMachineCertificateFile {missing}: No such file")), "{e}");
        assert!(files.get("SSLProxyCARevocationFile", "/elsewhere.pem").is_err());
    }

    /// `SSLProxyMachineCertificatePath`: its files in name order, each
    /// once (a symbolic link to one of them is not read again), without
    /// its subdirectories.
    #[test]
    fn a_client_certificate_directory_is_read_whole() {
        let dir = std::env::temp_dir().join(format!("h2rs-pem-dir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.pem"), b"B").unwrap();
        std::fs::write(dir.join("a.pem"), b"A").unwrap();
        std::fs::write(dir.join("sub").join("c.pem"), b"C").unwrap();
        std::os::unix::fs::symlink("a.pem", dir.join("0123abcd.0")).unwrap();
        let path = dir.to_str().unwrap();
        let files = PemFiles::read([&policy(&[("SSLProxyMachineCertificatePath", path)])]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(files.get("SSLProxyMachineCertificatePath", path), Ok(&b"A\nB\n"[..]));
    }

    #[test]
    fn common_names_match_whole_labels() {
        assert!(common_name_matches("b.test", "B.Test"));
        assert!(common_name_matches("*.b.test", "x.b.test"));
        assert!(!common_name_matches("*.b.test", "b.test"));
        assert!(!common_name_matches("*.b.test", "y.x.b.test"));
        assert!(!common_name_matches("b.test", "c.test"));
        assert!(!common_name_matches("", "c.test"));
    }

    #[test]
    fn inner_contexts_override_what_they_set() {
        let main = policy(&[("SSLProxyVerify", "require"), ("SSLProxyCACertificateFile", "/ca/main.pem")]);
        let vhost = policy(&[("SSLProxyCACertificateFile", "/ca/vhost.pem")]);
        let merged = TlsPolicy::merge(&main, &vhost);
        assert_eq!(merged.verify(), Verify::Require);
        assert_eq!(merged.ca_file.as_deref(), Some("/ca/vhost.pem"));
        assert_eq!(TlsPolicy::merge(&vhost, &TlsPolicy::default()), vhost);
    }

    #[test]
    fn the_last_section_that_covers_a_url_applies_whole() {
        let server = policy(&[("SSLProxyVerify", "require")]);
        let section = |matches, lines: &[(&str, &str)]| {
            Arc::new(ProxySection { matches: Arc::new(matches), policy: TlsPolicy::merge(&server, &policy(lines)) })
        };
        let tls = BackendTls {
            server: server.clone(),
            sections: vec![
                section(
                    SectionMatch::Prefix("h2://a.test".into()),
                    &[("SSLProxyVerify", "none"), ("SSLProxyCheckPeerExpire", "off")],
                ),
                section(SectionMatch::Prefix("h2://a.test/strict".into()), &[("SSLProxyVerifyDepth", "3")]),
                section(SectionMatch::Pattern(Box::new(Suffix(".test/lax"))), &[("SSLProxyCheckPeerName", "off")]),
            ],
            files: Arc::default(),
        };
        assert_eq!(tls.for_url("h2://b.test/").verify(), Verify::Require);
        let a = tls.for_url("h2://a.test/x");
        assert_eq!((a.verify(), a.check_expire()), (Verify::None, false));
        // Not the first section's settings under the second's: the
        // second's, over the server's.
        let strict = tls.for_url("h2://a.test/strict/1");
        assert_eq!((strict.verify(), strict.check_expire(), strict.verify_depth()), (Verify::Require, true, 3));
        assert_eq!(tls.for_url("h2://b.test/lax").name_check(), NameCheck::Off);
        assert_eq!(tls.for_url("h2://b.test/lax/").name_check(), NameCheck::Names);
    }

    #[derive(Debug)]
    struct Suffix(&'static str);

    impl UrlPattern for Suffix {
        fn is_match(&self, url: &str) -> bool {
            url.ends_with(self.0)
        }
        fn source(&self) -> &str {
            self.0
        }
    }
}
