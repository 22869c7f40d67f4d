//! Numbers and short strings for the per-request paths, on the stack:
//! `format!` there cost a heap allocation and ~600-800 instructions a call
//! (callgrind).

/// `n` in decimal, written at the end of `buf`.
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = n;
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

/// A decimal number of digits only (a Content-Length), None for anything
/// else or a number beyond u64.
pub fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|&d| d < 10)?;
        n.checked_mul(10)?.checked_add(digit as u64)
    })
}

/// `n` in decimal, written at the end of `buf`.
pub fn signed_decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let len = decimal(n.unsigned_abs(), buf).len();
    let mut start = buf.len() - len;
    if n < 0 {
        // At most 19 digits: room for the sign.
        start -= 1;
        buf[start] = b'-';
    }
    &buf[start..]
}

/// Joins `parts` into `buf` as a C string: cut to leave room for the NUL
/// written after them (nothing at all in an empty `buf`). Returns the
/// bytes before the NUL. For fixed C fields, such as the scoreboard's.
pub fn join_c_string<'a>(buf: &'a mut [u8], parts: &[&[u8]]) -> &'a [u8] {
    let Some(room) = buf.len().checked_sub(1) else { return &buf[..0] };
    let mut len = 0;
    for part in parts {
        let n = part.len().min(room - len);
        buf[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    buf[len] = 0;
    &buf[..len]
}

/// Bytes kept inline when short, on the heap otherwise: the pseudo-header
/// values of a request ("GET", "https", "example.org", "/index.html") are
/// short, and four heap allocations a request for them were a fifth of the
/// request's mallocs (callgrind). Inline, a paced request costs ~660
/// instructions less, and RSS after 2 million requests is 3-4 MiB lower
/// (docs/INTERNALS.md, "Heap: growth with uptime").
#[derive(Clone)]
pub enum ShortBytes {
    Inline { len: u8, buf: [u8; SHORT_INLINE] },
    Heap(Vec<u8>),
}

/// Inline capacity: the enum takes 48 bytes, twice a Vec's header.
pub const SHORT_INLINE: usize = 46;

impl ShortBytes {
    pub fn new(bytes: &[u8]) -> ShortBytes {
        if bytes.len() <= SHORT_INLINE {
            let mut buf = [0u8; SHORT_INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            ShortBytes::Inline { len: bytes.len() as u8, buf }
        } else {
            ShortBytes::Heap(bytes.to_vec())
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            ShortBytes::Inline { len, buf } => &buf[..*len as usize],
            ShortBytes::Heap(v) => v,
        }
    }
}

impl Default for ShortBytes {
    fn default() -> ShortBytes {
        ShortBytes::new(b"")
    }
}

impl std::ops::Deref for ShortBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<&[u8]> for ShortBytes {
    fn from(bytes: &[u8]) -> ShortBytes {
        ShortBytes::new(bytes)
    }
}

impl<const N: usize> From<&[u8; N]> for ShortBytes {
    fn from(bytes: &[u8; N]) -> ShortBytes {
        ShortBytes::new(bytes)
    }
}

impl From<Vec<u8>> for ShortBytes {
    fn from(bytes: Vec<u8>) -> ShortBytes {
        if bytes.len() <= SHORT_INLINE {
            ShortBytes::new(&bytes)
        } else {
            ShortBytes::Heap(bytes)
        }
    }
}

impl PartialEq for ShortBytes {
    fn eq(&self, other: &ShortBytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for ShortBytes {}

impl PartialEq<[u8]> for ShortBytes {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for ShortBytes {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.as_slice() == other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for ShortBytes {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.as_slice() == *other
    }
}

impl std::hash::Hash for ShortBytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl std::fmt::Debug for ShortBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_as_content_lengths() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"100000"), Some(100_000));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b"18446744073709551616", b"-1", b"1 ", b"1,1", b"0x10"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn short_bytes_stay_inline_and_long_ones_go_to_the_heap() {
        assert_eq!(std::mem::size_of::<ShortBytes>(), 48);
        let short = ShortBytes::new(b"/index.html");
        assert!(matches!(short, ShortBytes::Inline { .. }));
        assert_eq!(short, b"/index.html");
        let edge = ShortBytes::new(&[b'a'; SHORT_INLINE]);
        assert!(matches!(edge, ShortBytes::Inline { .. }));
        assert_eq!(edge.len(), SHORT_INLINE);
        let long = ShortBytes::from(vec![b'x'; SHORT_INLINE + 1]);
        assert!(matches!(long, ShortBytes::Heap(_)));
        assert_eq!(long.len(), SHORT_INLINE + 1);
        assert_eq!(ShortBytes::default(), *b"");
        assert_eq!(ShortBytes::from(b"GET".to_vec()), ShortBytes::new(b"GET"));
    }

    #[test]
    fn short_bytes_hash_as_their_bytes() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let long = vec![b'p'; 100];
        assert_eq!(build.hash_one(ShortBytes::new(b"/a")), build.hash_one(&b"/a"[..]));
        assert_eq!(build.hash_one(ShortBytes::from(long.clone())), build.hash_one(&long[..]));
    }

    #[test]
    fn decimal_writes_every_number_as_display_does() {
        for n in [0u64, 1, 9, 10, 99, 100, 2_147_483_647, 1 << 40, u64::MAX] {
            assert_eq!(decimal(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn signed_decimal_writes_every_number_as_display_does() {
        for n in [0i64, 5, -1, -10, i32::MIN.into(), i64::MAX, i64::MIN] {
            assert_eq!(signed_decimal(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn join_c_string_concatenates_cuts_and_ends_with_nul() {
        let mut buf = [0xffu8; 9];
        assert_eq!(join_c_string(&mut buf, &[b"ab", b"", b"cd"]), b"abcd");
        assert_eq!(buf[4], 0);
        assert_eq!(join_c_string(&mut buf, &[b"abcdef", b"ghij"]), b"abcdefgh");
        assert_eq!(buf[8], 0);
        assert_eq!(join_c_string(&mut buf, &[]), b"");
        assert_eq!(buf[0], 0);
        assert_eq!(join_c_string(&mut [], &[b"a"]), b"");
    }
}
