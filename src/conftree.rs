//! Other modules' directives, read from httpd's parsed configuration tree
//! (`ap_conftree`) once the configuration is complete (post_config).
//!
//! Why: where HTTP/2 has to apply what another module configures (mod_reqtimeout's
//! body stage, mod_ssl's `SSLProxy*` settings) and that module keeps its
//! settings private. Reading the tree does not depend on the order the
//! modules were loaded in, unlike registering the same directive names.
//! Each directive is reported with the `<VirtualHost>` and the `<Proxy>`
//! section it stands in; `<IfModule>`, `<IfDefine>` and `Include` are
//! already resolved in the tree.

use std::borrow::Cow;
use std::ffi::CStr;

use crate::ffi;

/// A `<VirtualHost>` section, by the file and line that define it (what
/// its server_rec records as `defn_name` and `defn_line_number`).
pub type VhostKey = (Vec<u8>, u32);

/// The backend URLs a `<Proxy>`/`<ProxyMatch>` section covers, as mod_proxy
/// reads its argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectionPattern {
    /// `<Proxy url>`: a prefix (or a wildcard pattern, if it has `*?[`).
    Prefix(String),
    /// `<ProxyMatch re>` or `<Proxy ~ re>`.
    Regex(String),
}

/// The `<Proxy>` section a directive stands in: its place in the tree
/// (sections are numbered in the order mod_proxy walks them) and pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySection {
    pub index: usize,
    pub pattern: SectionPattern,
}

/// One directive of the tree. A `<Proxy>` section is also reported on its
/// own, before its directives (with its section and empty arguments), so
/// that a section without directives is seen.
pub struct Directive<'a> {
    pub name: &'a [u8],
    pub args: Cow<'a, str>,
    pub vhost: Option<&'a VhostKey>,
    pub section: Option<&'a ProxySection>,
}

/// mod_proxy's reading of a section's argument (`"url">`, `~ re>`): its
/// first word, as `ap_getword_conf` takes it. The rest are worker
/// parameters (`<Proxy balancer://pay lbmethod=byrequests>`); taken as
/// part of the URL, they made a section that covered nothing, and its
/// `SSLProxyVerify require` went unapplied.
pub fn section_pattern(directive: &[u8], args: &str) -> Option<SectionPattern> {
    let args = args.trim().trim_end_matches('>').trim();
    if directive.eq_ignore_ascii_case(b"<ProxyMatch") {
        return Some(SectionPattern::Regex(conf_word(args).0));
    }
    if !directive.eq_ignore_ascii_case(b"<Proxy") {
        return None;
    }
    let (first, rest) = conf_word(args);
    if first == "~" {
        return Some(SectionPattern::Regex(conf_word(rest).0));
    }
    let url = first;
    let url = match url.get(..6) {
        Some(p) if p.eq_ignore_ascii_case("proxy:") => url[6..].to_string(),
        _ => url,
    };
    Some(SectionPattern::Prefix(url))
}

/// The first word of `s` and the rest, as httpd's `ap_getword_conf` reads
/// them: a word in double or single quotes (a backslash escapes the quote)
/// or up to the next white space.
fn conf_word(s: &str) -> (String, &str) {
    let s = s.trim_start();
    let Some(quote) = s.chars().next().filter(|&c| c == '"' || c == '\'') else {
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        return (s[..end].to_string(), &s[end..]);
    };
    let mut word = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, q)) if q == quote => word.push(q),
                Some((_, other)) => {
                    word.push('\\');
                    word.push(other);
                }
                None => word.push('\\'),
            },
            c if c == quote => return (word, &s[1 + i + 1..]),
            c => word.push(c),
        }
    }
    (word, "")
}

/// Calls `visit` for every directive of the configuration tree, in order.
///
/// # Safety
/// The configuration tree is complete and not changing (post_config, in
/// the parent process).
pub unsafe fn walk(visit: &mut dyn FnMut(&Directive)) {
    struct Walk<'v> {
        visit: &'v mut dyn FnMut(&Directive),
        sections: usize,
    }

    impl Walk<'_> {
        /// # Safety
        /// `node` is NULL or a node of the live configuration tree.
        unsafe fn nodes(
            &mut self,
            mut node: *const ffi::ap_directive_t,
            vhost: Option<&VhostKey>,
            section: Option<&ProxySection>,
        ) {
            // SAFETY: caller contract; the tree's strings are NUL-terminated
            // and live in the configuration pool.
            unsafe {
                while !node.is_null() {
                    let n = &*node;
                    let name = if n.directive.is_null() { &b""[..] } else { CStr::from_ptr(n.directive).to_bytes() };
                    let args =
                        if n.args.is_null() { Cow::Borrowed("") } else { CStr::from_ptr(n.args).to_string_lossy() };
                    if name.eq_ignore_ascii_case(b"<VirtualHost") && !n.filename.is_null() {
                        let key = (CStr::from_ptr(n.filename).to_bytes().to_vec(), n.line_num.max(0) as u32);
                        self.nodes(n.first_child, Some(&key), section);
                    } else if let Some(pattern) = section_pattern(name, &args) {
                        let own = ProxySection { index: self.sections, pattern };
                        self.sections += 1;
                        (self.visit)(&Directive { name, args: Cow::Borrowed(""), vhost, section: Some(&own) });
                        self.nodes(n.first_child, vhost, Some(&own));
                    } else if !n.first_child.is_null() {
                        self.nodes(n.first_child, vhost, section);
                    } else {
                        (self.visit)(&Directive { name, args, vhost, section });
                    }
                    node = n.next;
                }
            }
        }
    }

    // SAFETY: caller contract.
    unsafe { Walk { visit, sections: 0 }.nodes(ffi::ap_conftree, None, None) }
}

/// The `<VirtualHost>` that defined `s`, or None for the main server.
///
/// # Safety
/// `s` is a live server_rec.
pub unsafe fn vhost_of(s: *const ffi::server_rec) -> Option<VhostKey> {
    // SAFETY: caller contract; defn_name is NUL-terminated when set.
    unsafe {
        ((*s).is_virtual != 0 && !(*s).defn_name.is_null())
            .then(|| (CStr::from_ptr((*s).defn_name).to_bytes().to_vec(), (*s).defn_line_number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_section_arguments_as_mod_proxy_does() {
        let prefix = |s: &str| Some(SectionPattern::Prefix(s.into()));
        let regex = |s: &str| Some(SectionPattern::Regex(s.into()));
        assert_eq!(section_pattern(b"<Proxy", "\"h2://b.test/\">"), prefix("h2://b.test/"));
        assert_eq!(section_pattern(b"<proxy", "h2://b.test>"), prefix("h2://b.test"));
        assert_eq!(section_pattern(b"<Proxy", "proxy:h2://b.test/x>"), prefix("h2://b.test/x"));
        assert_eq!(section_pattern(b"<Proxy", "~ \"^h2://.*\\.test/\">"), regex("^h2://.*\\.test/"));
        assert_eq!(section_pattern(b"<ProxyMatch", "^h2://[ab]\\.test>"), regex("^h2://[ab]\\.test"));
        assert_eq!(section_pattern(b"<Proxy", "balancer://pay lbmethod=byrequests>"), prefix("balancer://pay"));
        assert_eq!(section_pattern(b"<Proxy", "\"h2://b.test/a b\" x=1>"), prefix("h2://b.test/a b"));
        assert_eq!(section_pattern(b"<Proxy", "'h2://b.test/'>"), prefix("h2://b.test/"));
        assert_eq!(section_pattern(b"<ProxyMatch", "\"^h2://x\\.test/\" y=2>"), regex("^h2://x\\.test/"));
        assert_eq!(section_pattern(b"<Location", "/x>"), None);
        assert_eq!(section_pattern(b"<ProxyPass", "/x>"), None);
    }
}
