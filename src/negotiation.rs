//! Protocol negotiation rules, without httpd: what TLS is good enough for
//! HTTP/2 (H2ModernTLSOnly), the `HTTP2-Settings` header of an h2c Upgrade,
//! and the HTTP/1.1 request that becomes stream 1 after an Upgrade.

use crate::request::{is_connection_specific, HeaderError, Limits, RequestBuilder, RequestHead};

/// Whether a TLS connection may carry HTTP/2 under H2ModernTLSOnly, from
/// mod_ssl's SSL_PROTOCOL and SSL_CIPHER (either may be unknown yet while
/// ALPN is negotiated; `require_all`: an unknown one refuses). TLS 1.2 or
/// later (RFC 9113 9.2); the cipher is checked on TLS 1.2 only, as the
/// stock module does: every TLS 1.3 suite is an AEAD with ephemeral keys,
/// whatever the TLS library calls it (LibreSSL: "AEAD-AES256-GCM-SHA384").
/// TLS 1.2 must not compress either (RFC 9113 9.2.1: CRIME): mod_ssl's
/// SSL_COMPRESS_METHOD is "NULL" without compression (TLS 1.3 has none).
pub fn tls_acceptable(
    protocol: Option<&str>,
    cipher: Option<&str>,
    compression: Option<&str>,
    require_all: bool,
) -> bool {
    match protocol {
        Some("TLSv1.3") => return true,
        Some(p) if !tls_version_acceptable(p) => return false,
        None if require_all => return false,
        _ => {}
    }
    if compression.is_some_and(|m| m != "NULL") {
        return false;
    }
    match cipher {
        Some(cipher) => cipher_acceptable(cipher),
        None => !require_all,
    }
}

/// TLS protocol names (as mod_ssl's SSL_PROTOCOL gives them) that HTTP/2
/// accepts: TLS 1.2 or later (RFC 9113 9.2).
fn tls_version_acceptable(protocol: &str) -> bool {
    matches!(protocol, "TLSv1.2" | "TLSv1.3")
}

/// Whether a cipher (OpenSSL name, as mod_ssl's SSL_CIPHER gives it) may
/// carry HTTP/2 over TLS 1.2: RFC 7540 Appendix A lists every suite that is
/// not an ephemeral key exchange with an AEAD cipher. TLS 1.3 suites
/// ("TLS_...", LibreSSL's "AEAD-...") are all acceptable, for when the
/// protocol is not known yet.
fn cipher_acceptable(cipher: &str) -> bool {
    if cipher.starts_with("TLS_") || cipher.starts_with("AEAD-") {
        return true;
    }
    let ephemeral = ["ECDHE-", "DHE-", "EDH-"].iter().any(|p| cipher.starts_with(p));
    let aead = cipher.contains("GCM") || cipher.contains("CHACHA20-POLY1305") || cipher.contains("CCM");
    ephemeral && aead
}

/// Decodes the `HTTP2-Settings` header (base64url, no padding, RFC 9113
/// 3.2.1 of RFC 7540): a SETTINGS payload, i.e. a multiple of 6 bytes.
pub fn decode_http2_settings(value: &[u8]) -> Option<Vec<u8>> {
    let value = value.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect::<Vec<u8>>();
    let value = value.strip_suffix(b"==").or_else(|| value.strip_suffix(b"=")).unwrap_or(&value);
    let mut out = Vec::with_capacity(value.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in value {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 || out.len() % 6 != 0 || out.len() > 6 * crate::limits::MAX_SETTINGS {
        return None;
    }
    if !out
        .chunks_exact(6)
        .all(|e| setting_valid(u16::from_be_bytes([e[0], e[1]]), u32::from_be_bytes([e[2], e[3], e[4], e[5]])))
    {
        return None;
    }
    Some(out)
}

/// RFC 9113 6.5.2 (and RFC 8441 3): values a SETTINGS frame must not carry.
/// An Upgrade whose HTTP2-Settings has one is not upgraded (nghttp2 would
/// refuse the settings after the 101, when the request can no longer be
/// answered over HTTP/1.1).
pub fn setting_valid(id: u16, value: u32) -> bool {
    match id {
        0x2 | 0x8 | 0x9 => value <= 1,
        0x4 => value <= i32::MAX as u32,
        0x5 => (16_384..=16_777_215).contains(&value),
        _ => true,
    }
}

/// Fields of an HTTP/1.1 Upgrade request that must not reach stream 1.
fn hop_by_hop(name: &[u8]) -> bool {
    is_connection_specific(name)
        || name.eq_ignore_ascii_case(b"http2-settings")
        || name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"te")
}

/// Builds the request head of stream 1 from the HTTP/1.1 request that
/// asked for the Upgrade (it has no body: requests with one are not
/// upgraded).
pub fn upgraded_request<'a>(
    method: &[u8],
    target: &[u8],
    authority: &[u8],
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    limits: Limits,
) -> Result<Box<RequestHead>, HeaderError> {
    let mut b = RequestBuilder::new(limits);
    b.add(b":method", method)?;
    b.add(b":scheme", b"http")?;
    b.add(b":authority", authority)?;
    b.add(b":path", target)?;
    for (name, value) in headers {
        if hop_by_hop(name) {
            continue;
        }
        let lower: Vec<u8> = name.iter().map(|c| c.to_ascii_lowercase()).collect();
        let value = value.trim_ascii();
        b.add(&lower, value)?;
    }
    let mut head = b.finish(true)?;
    // %I: the request's bytes are the HTTP/1.1 request's, counted on the
    // 101's log line; stream 1's line counted them again (as an HPACK
    // table would size them), where the stock module logs 0.
    head.raw_bytes = 0;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_rules() {
        assert!(tls_version_acceptable("TLSv1.2") && tls_version_acceptable("TLSv1.3"));
        assert!(!tls_version_acceptable("TLSv1.1") && !tls_version_acceptable("SSLv3"));
        for ok in [
            "TLS_AES_128_GCM_SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "DHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-AES128-CCM",
            "DHE-PSK-AES128-GCM-SHA256",
        ] {
            assert!(cipher_acceptable(ok), "{ok}");
        }
        for bad in [
            "AES128-SHA",
            "AES128-GCM-SHA256",
            "ECDHE-RSA-AES128-SHA",
            "ECDHE-RSA-AES128-SHA256",
            "DES-CBC3-SHA",
            "RC4-SHA",
            "PSK-AES128-GCM-SHA256",
            "RSA-PSK-AES128-GCM-SHA256",
            "EDH-RSA-DES-CBC3-SHA",
            "NULL-SHA",
        ] {
            assert!(!cipher_acceptable(bad), "{bad}");
        }
        // TLS 1.3: whatever the suite's name; TLS 1.2: the cipher decides.
        assert!(tls_acceptable(Some("TLSv1.3"), Some("AEAD-AES256-GCM-SHA384"), None, true));
        assert!(tls_acceptable(Some("TLSv1.3"), Some("SOME-FUTURE-NAME"), None, true));
        assert!(!tls_acceptable(Some("TLSv1.2"), Some("AES128-SHA"), None, true));
        assert!(tls_acceptable(Some("TLSv1.2"), Some("ECDHE-RSA-AES128-GCM-SHA256"), None, true));
        assert!(!tls_acceptable(Some("TLSv1.1"), Some("ECDHE-RSA-AES128-GCM-SHA256"), None, false));
        // Unknown yet (during ALPN): only `require_all` refuses.
        assert!(tls_acceptable(None, None, None, false) && !tls_acceptable(None, None, None, true));
        assert!(!tls_acceptable(Some("TLSv1.2"), None, None, true));
        // RFC 9113 9.2.1: TLS 1.2 with compression is refused.
        let good = Some("ECDHE-RSA-AES128-GCM-SHA256");
        assert!(tls_acceptable(Some("TLSv1.2"), good, Some("NULL"), true));
        assert!(!tls_acceptable(Some("TLSv1.2"), good, Some("ZLIB"), true));
        assert!(!tls_acceptable(None, good, Some("DEFLATE"), false));
    }

    #[test]
    fn http2_settings_header() {
        // SETTINGS_MAX_CONCURRENT_STREAMS=100, INITIAL_WINDOW_SIZE=65535
        let payload = [0u8, 3, 0, 0, 0, 100, 0, 4, 0, 0, 0xff, 0xff];
        assert_eq!(decode_http2_settings(b"AAMAAABkAAQAAP__").as_deref(), Some(&payload[..]));
        assert_eq!(decode_http2_settings(b"").as_deref(), Some(&[][..]));
        assert!(decode_http2_settings(b"AAMAAABkAAQAAP_").is_none(), "not a multiple of 6");
        assert!(decode_http2_settings(b"!!!!").is_none());
        assert!(decode_http2_settings(&[b'A'; 400]).is_none(), "too many settings");
        // INITIAL_WINDOW_SIZE 2^31, MAX_FRAME_SIZE 1, ENABLE_PUSH 2: refused.
        assert!(decode_http2_settings(b"AASAAAAA").is_none());
        assert!(decode_http2_settings(b"AAUAAAAB").is_none());
        assert!(decode_http2_settings(b"AAIAAAAC").is_none());
        assert!(decode_http2_settings(b"AAUAAEAA").is_some(), "MAX_FRAME_SIZE 16384");
    }

    #[test]
    fn upgrade_request_drops_hop_by_hop() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Host", b"example.org"),
            (b"Connection", b"Upgrade, HTTP2-Settings"),
            (b"Upgrade", b"h2c"),
            (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"),
            (b"Accept", b"*/*"),
            (b"Cookie", b"a=1"),
        ];
        let h = upgraded_request(b"GET", b"/x?y", b"example.org", fields.into_iter(), Limits::default()).unwrap();
        assert_eq!(h.method, b"GET");
        assert_eq!(h.authority.as_deref(), Some(&b"example.org"[..]));
        assert_eq!(h.header(b"accept"), Some(&b"*/*"[..]));
        assert_eq!(h.header(b"cookie"), Some(&b"a=1"[..]));
        assert!(h.header(b"upgrade").is_none() && h.header(b"connection").is_none());
        assert!(h.end_stream);
        assert_eq!(h.raw_bytes, 0, "counted on the 101's line");
    }
}
