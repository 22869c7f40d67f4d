//! The URIs in a `Link` response field (RFC 8288), which ProxyPassReverse
//! maps as the stock mod_proxy_http2 does (`h2_proxy_link_reverse_map`):
//! each link's `<URI-Reference>` in turn, its parameters skipped. Parsing
//! stops at the first thing that is not a link; what follows goes on
//! unchanged.

use std::ops::Range;

/// The byte ranges of the (non-empty) URIs of the links in `value`, in
/// order.
pub fn link_uris(value: &[u8]) -> Vec<Range<usize>> {
    let mut p = Parser { s: value, i: 0 };
    let mut uris = Vec::new();
    while let Some(uri) = p.read_link() {
        while p.skip_param() {}
        if !uri.is_empty() {
            uris.push(uri);
        }
        if !p.read(b',') {
            break;
        }
    }
    uris
}

/// `value` with each link URI replaced by what `map` gives for it (None:
/// kept as it is).
pub fn map_link_uris(value: &[u8], mut map: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut copied = 0;
    for uri in link_uris(value) {
        if let Some(mapped) = map(&value[uri.clone()]) {
            out.extend_from_slice(&value[copied..uri.start]);
            out.extend_from_slice(&mapped);
            copied = uri.end;
        }
    }
    out.extend_from_slice(&value[copied..]);
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

/// RFC 5987's attr-char: a parameter's name.
fn attr_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&c)
}

/// RFC 5988's ptokenchar: an unquoted parameter value.
fn ptoken_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'()*+-./:<=>?@[]^_`{|}~".contains(&c)
}

impl Parser<'_> {
    /// Skips spaces and tabs; whether anything is left.
    fn skip_ws(&mut self) -> bool {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t') {
            self.i += 1;
        }
        self.i < self.s.len()
    }

    /// Reads `c` after optional whitespace.
    fn read(&mut self, c: u8) -> bool {
        if self.skip_ws() && self.s[self.i] == c {
            self.i += 1;
            return true;
        }
        false
    }

    fn find(&self, c: u8) -> Option<usize> {
        self.s[self.i..].iter().position(|&b| b == c).map(|p| self.i + p)
    }

    /// `<URI-Reference>`: the URI's range.
    fn read_link(&mut self) -> Option<Range<usize>> {
        if !self.read(b'<') {
            return None;
        }
        let end = self.find(b'>')?;
        let uri = self.i..end;
        self.i = end + 1;
        Some(uri)
    }

    /// `; name[=value]`.
    fn skip_param(&mut self) -> bool {
        if !self.read(b';') || !self.skip_run(attr_char) {
            return false;
        }
        if self.read(b'=') && !self.skip_quoted() {
            self.skip_run(ptoken_char);
        }
        true
    }

    fn skip_quoted(&mut self) -> bool {
        if !self.read(b'"') {
            return false;
        }
        match self.find(b'"') {
            Some(end) => {
                self.i = end + 1;
                true
            }
            None => false,
        }
    }

    /// Skips a non-empty run of bytes `ok` accepts, after whitespace.
    fn skip_run(&mut self, ok: fn(u8) -> bool) -> bool {
        if !self.skip_ws() {
            return false;
        }
        let start = self.i;
        while self.i < self.s.len() && ok(self.s[self.i]) {
            self.i += 1;
        }
        self.i > start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris(v: &str) -> Vec<&str> {
        link_uris(v.as_bytes()).into_iter().map(|r| &v[r]).collect()
    }

    #[test]
    fn finds_each_links_uri_and_skips_parameters() {
        assert_eq!(uris("</a.css>; rel=preload; as=style"), ["/a.css"]);
        assert_eq!(
            uris(r#"<http://be/x>; rel="next prev"; title="a, <b>", </y>;rel=z , <https://o/>"#),
            ["http://be/x", "/y", "https://o/"]
        );
        assert_eq!(uris("<>; rel=x, </z>"), ["/z"]);
        // Not a link: parsing stops there.
        assert_eq!(uris("</a>, junk, </b>"), ["/a"]);
        assert_eq!(uris("</unterminated"), Vec::<&str>::new());
        assert_eq!(uris(r#"</a>; title="open"#), ["/a"]);
    }

    #[test]
    fn maps_only_what_the_mapping_changes() {
        let v = b"</app/a.css>; rel=preload, <http://other/x>; rel=next";
        let out = map_link_uris(v, |u| u.strip_prefix(b"/app").map(|rest| [b"/shop", rest].concat()));
        assert_eq!(out, b"</shop/a.css>; rel=preload, <http://other/x>; rel=next");
        assert_eq!(map_link_uris(b"garbage", |_| Some(b"x".to_vec())), b"garbage");
    }
}
