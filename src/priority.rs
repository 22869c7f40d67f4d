//! RFC 9218's priority parameters, from a request's `priority` field or a
//! PRIORITY_UPDATE frame's value: an RFC 8941 dictionary whose `u` is the
//! urgency (an integer 0-7) and whose `i` says incremental (a boolean).
//!
//! Ours rather than nghttp2's parser (`nghttp2_extpri_parse_priority`):
//! that one drops the whole value when one parameter is out of range or of
//! another type (`u=9, i` loses the `i`), where RFC 9218 section 4 says
//! such a parameter is ignored and the others apply. A value that is not a
//! dictionary at all is ignored whole (the defaults), as RFC 8941 says.

/// The urgency of a request that asks for none (RFC 9218 4.1).
pub const DEFAULT_URGENCY: u8 = 3;
/// The least urgent of the eight levels.
const LOWEST_URGENCY: i64 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority {
    pub urgency: u8,
    pub incremental: bool,
}

impl Default for Priority {
    fn default() -> Self {
        Priority { urgency: DEFAULT_URGENCY, incremental: false }
    }
}

/// The member values the priority parameters can take; anything else is
/// `Other` (and ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    Integer(i64),
    Boolean(bool),
    Other,
}

/// Parses a `priority` value (RFC 9218 4, 5). A member that repeats counts
/// with its last value (RFC 8941 4.2.2); parameters on members, unknown
/// members and values out of range or of another type are ignored.
pub fn parse(field: &[u8]) -> Priority {
    let mut urgency = None;
    let mut incremental = None;
    let parsed = Parser { s: field, at: 0 }.dictionary(|key, value| match key {
        b"u" => urgency = Some(value),
        b"i" => incremental = Some(value),
        _ => {}
    });
    let mut pri = Priority::default();
    if parsed.is_err() {
        return pri;
    }
    if let Some(Value::Integer(u)) = urgency {
        if (0..=LOWEST_URGENCY).contains(&u) {
            pri.urgency = u as u8;
        }
    }
    if let Some(Value::Boolean(i)) = incremental {
        pri.incremental = i;
    }
    pri
}

/// Not an RFC 8941 dictionary.
#[derive(Debug)]
struct Malformed;

type Parsed<T> = Result<T, Malformed>;

/// RFC 8941 section 4.2's parsing algorithms, as far as a dictionary needs
/// them. Values other than integers and booleans are checked, not kept.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn next_is(&mut self, b: u8) -> bool {
        let is = self.peek() == Some(b);
        self.at += is as usize;
        is
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
    }

    /// 4.2 and 4.2.2: the whole field is one dictionary, members separated
    /// by commas, with spaces around.
    fn dictionary(mut self, mut member: impl FnMut(&[u8], Value)) -> Parsed<()> {
        self.skip_while(|b| b == b' ');
        while self.at < self.s.len() {
            let key = self.key()?;
            let value = if self.next_is(b'=') {
                if self.peek() == Some(b'(') {
                    self.inner_list()?;
                    Value::Other
                } else {
                    let v = self.bare_item()?;
                    self.parameters()?;
                    v
                }
            } else {
                self.parameters()?;
                Value::Boolean(true)
            };
            member(key, value);
            self.skip_while(|b| b == b' ' || b == b'\t');
            if self.at == self.s.len() {
                return Ok(());
            }
            if !self.next_is(b',') {
                return Err(Malformed);
            }
            self.skip_while(|b| b == b' ' || b == b'\t');
            if self.at == self.s.len() {
                return Err(Malformed); // a trailing comma
            }
        }
        Ok(())
    }

    /// 4.2.3.3: lcalpha or `*`, then lcalpha, digits, `_-.*`.
    fn key(&mut self) -> Parsed<&'a [u8]> {
        let start = self.at;
        if !self.peek().is_some_and(|b| b.is_ascii_lowercase() || b == b'*') {
            return Err(Malformed);
        }
        self.skip_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
        let s: &'a [u8] = self.s;
        Ok(&s[start..self.at])
    }

    /// 4.2.1.2: `(` items separated by spaces `)`, then parameters.
    fn inner_list(&mut self) -> Parsed<()> {
        self.at += 1; // the `(`
        loop {
            self.skip_while(|b| b == b' ');
            if self.next_is(b')') {
                return self.parameters();
            }
            self.bare_item()?;
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(Malformed);
            }
        }
    }

    /// 4.2.3.2: `;key` or `;key=bare-item`, any number.
    fn parameters(&mut self) -> Parsed<()> {
        while self.next_is(b';') {
            self.skip_while(|b| b == b' ');
            self.key()?;
            if self.next_is(b'=') {
                self.bare_item()?;
            }
        }
        Ok(())
    }

    /// 4.2.3.1: an integer, decimal, string, token, byte sequence or
    /// boolean.
    fn bare_item(&mut self) -> Parsed<Value> {
        match self.peek().ok_or(Malformed)? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(|()| Value::Other),
            b':' => self.byte_sequence().map(|()| Value::Other),
            b'?' => self.boolean(),
            b if b.is_ascii_alphabetic() || b == b'*' => {
                self.skip_while(|b| is_tchar(b) || b == b':' || b == b'/');
                Ok(Value::Other)
            }
            _ => Err(Malformed),
        }
    }

    /// 4.2.4: at most 15 digits, or a decimal of at most 12 integer and 1
    /// to 3 fraction digits.
    fn number(&mut self) -> Parsed<Value> {
        let negative = self.next_is(b'-');
        let start = self.at;
        self.skip_while(|b| b.is_ascii_digit());
        let digits = &self.s[start..self.at];
        if digits.is_empty() {
            return Err(Malformed);
        }
        if self.next_is(b'.') {
            let fraction_start = self.at;
            self.skip_while(|b| b.is_ascii_digit());
            let fraction = self.at - fraction_start;
            return if digits.len() <= 12 && (1..=3).contains(&fraction) { Ok(Value::Other) } else { Err(Malformed) };
        }
        if digits.len() > 15 {
            return Err(Malformed);
        }
        let n = digits.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
        Ok(Value::Integer(if negative { -n } else { n }))
    }

    /// 4.2.5: printable ASCII between quotes; `\` escapes `"` and `\` only.
    fn string(&mut self) -> Parsed<()> {
        self.at += 1; // the opening quote
        loop {
            match self.peek().ok_or(Malformed)? {
                b'"' => {
                    self.at += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.at += 1;
                    if !matches!(self.peek(), Some(b'"' | b'\\')) {
                        return Err(Malformed);
                    }
                }
                0x20..=0x7e => {}
                _ => return Err(Malformed),
            }
            self.at += 1;
        }
    }

    /// 4.2.7: base64 between colons.
    fn byte_sequence(&mut self) -> Parsed<()> {
        self.at += 1; // the opening colon
        self.skip_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        if self.next_is(b':') {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// 4.2.8: `?0` or `?1`.
    fn boolean(&mut self) -> Parsed<Value> {
        self.at += 1; // the `?`
        let value = match self.peek() {
            Some(b'0') => false,
            Some(b'1') => true,
            _ => return Err(Malformed),
        };
        self.at += 1;
        Ok(Value::Boolean(value))
    }
}

/// RFC 9110 5.6.2's token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pri(urgency: u8, incremental: bool) -> Priority {
        Priority { urgency, incremental }
    }

    #[test]
    fn urgency_and_incremental_as_rfc_9218_writes_them() {
        assert_eq!(parse(b""), pri(3, false));
        assert_eq!(parse(b"u=0"), pri(0, false));
        assert_eq!(parse(b"u=7, i"), pri(7, true));
        assert_eq!(parse(b"i"), pri(3, true));
        assert_eq!(parse(b"i=?0"), pri(3, false));
        assert_eq!(parse(b"  u=5,i=?1  "), pri(5, true));
        assert_eq!(parse(b"u=2\t,\ti"), pri(2, true));
    }

    #[test]
    fn a_parameter_out_of_range_or_of_another_type_is_ignored_alone() {
        assert_eq!(parse(b"u=9, i"), pri(3, true));
        assert_eq!(parse(b"u=-1, i"), pri(3, true));
        assert_eq!(parse(b"u, i"), pri(3, true), "u as a boolean");
        assert_eq!(parse(b"u=1, i=2"), pri(1, false));
        assert_eq!(parse(b"u=1, i=\"yes\""), pri(1, false));
        assert_eq!(parse(b"u=1.5, i"), pri(3, true));
        assert_eq!(parse(b"u=(1 2), i"), pri(3, true));
        assert_eq!(parse(b"u=999999999999999, i"), pri(3, true));
    }

    #[test]
    fn unknown_members_and_parameters_are_ignored() {
        assert_eq!(parse(b"x=\"a, b\", u=1;p=:AQ==:, *k=tok/en:1, d=-1.25, i;q"), pri(1, true));
        assert_eq!(parse(b"l=(a \"b\" ?1);v=2, u=6"), pri(6, false));
        assert_eq!(parse(b"u=1; i"), pri(1, false), "i, a parameter of u here");
    }

    #[test]
    fn a_repeated_member_counts_with_its_last_value() {
        assert_eq!(parse(b"u=1, u=5"), pri(5, false));
        assert_eq!(parse(b"u=1, u=9"), pri(3, false), "the last one, out of range");
        assert_eq!(parse(b"i, i=?0"), pri(3, false));
    }

    #[test]
    fn a_value_that_is_no_dictionary_means_the_defaults() {
        for bad in [
            &b"u=1,"[..],
            b"u=1,,i",
            b"U=1, i",
            b"u=1 i",
            b"u=, i",
            b"u=1,i=?2",
            b"1",
            b"u=1, x=\"open",
            b"u=1, x=\"bad\\n\"",
            b"u=1, x=:AQ",
            b"u=1, x=(a b",
            b"u=1, x=(a\tb)",
            b"u=1, x=1.",
            b"u=1, x=1.2345",
            b"u=1, x=1234567890123.5",
            b"u=1, x=1234567890123456",
            b"u=1, x=-",
            b"u=1, x=\xc3\xa9",
            b"u=1, x=\"\xc3\xa9\"",
        ] {
            assert_eq!(parse(bad), pri(3, false), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
