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

/// Joins `parts` into `buf`, cut at its end; returns the bytes written.
pub fn join_into<'a>(buf: &'a mut [u8], parts: &[&[u8]]) -> &'a [u8] {
    let mut len = 0;
    for part in parts {
        let n = part.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writes_every_number_as_display_does() {
        for n in [0u64, 1, 9, 10, 99, 100, 2_147_483_647, 1 << 40, u64::MAX] {
            assert_eq!(decimal(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn join_into_concatenates_and_cuts_at_the_end() {
        let mut buf = [0u8; 8];
        assert_eq!(join_into(&mut buf, &[b"ab", b"", b"cd"]), b"abcd");
        assert_eq!(join_into(&mut buf, &[b"abcdef", b"ghij"]), b"abcdefgh");
        assert_eq!(join_into(&mut buf, &[]), b"");
    }
}
