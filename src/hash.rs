//! A cheap, unkeyed hasher for the per-request maps and keys.
//!
//! std's default hasher (SipHash-1-3) resists hash flooding, and costs for
//! it: about 110 instructions per stream-id lookup, about 1,000 per URL key
//! (callgrind, 1 KiB GETs; a request made ~18 lookups and one key). Where
//! this hasher is used the tables are bounded (a session's streams, the
//! fast-URL table's capacity), so crafted keys can lengthen a probe
//! sequence only up to that bound, and a colliding URL key only mispredicts
//! whether a request is fast.

use std::hash::{BuildHasher, Hasher};

/// Builds `WordHasher`s (for `HashMap::with_hasher` / `default`).
#[derive(Clone, Copy, Debug, Default)]
pub struct WordHash;

impl BuildHasher for WordHash {
    type Hasher = WordHasher;
    fn build_hasher(&self) -> WordHasher {
        WordHasher(0)
    }
}

/// Mixes each word in with a rotate, an XOR and a multiply by an odd
/// constant (the step of rustc's FxHasher), eight bytes at a time.
#[derive(Clone, Copy, Debug, Default)]
pub struct WordHasher(u64);

/// 2^64 / the golden ratio, odd: multiplying by it is a bijection.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(GOLDEN);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for chunk in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(n as u64);
    }
    fn write_u32(&mut self, n: u32) {
        self.add(n as u64);
    }
    fn write_i32(&mut self, n: i32) {
        self.add(n as u32 as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    /// Folds the well-mixed high bits into the low ones, which pick a
    /// table's bucket: after a multiply, low bits depend only on the low
    /// bits of the input (client stream ids are all odd, and would fill
    /// only half of the buckets).
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn client_stream_ids_spread_over_buckets() {
        let hashes: Vec<u64> = (0..1024i32).map(|k| WordHash.hash_one(2 * k + 1)).collect();
        let distinct: HashSet<u64> = hashes.iter().copied().collect();
        assert_eq!(distinct.len(), hashes.len());
        let mut buckets = [0usize; 64];
        for h in &hashes {
            buckets[(h & 63) as usize] += 1;
        }
        // 16 a bucket on average; without the fold in `finish` the 32 even
        // buckets would stay empty.
        assert!(buckets.iter().all(|&n| (4..=40).contains(&n)), "{buckets:?}");
        let mut map: HashMap<i32, i32, WordHash> = HashMap::default();
        for id in (1..2000).step_by(2) {
            map.insert(id, id * 3);
        }
        assert!((1..2000).step_by(2).all(|id| map.get(&id) == Some(&(id * 3))));
        assert_eq!(map.get(&2), None);
    }

    #[test]
    fn byte_strings_that_differ_hash_apart() {
        let inputs: [&[u8]; 8] =
            [b"", b"a", b"a\0", b"\0", b"/index.html", b"/index.htm", b"/index.htmlx", b"12345678"];
        let hashes: HashSet<u64> = inputs
            .iter()
            .map(|b| {
                let mut h = WordHasher::default();
                h.write(b);
                h.finish()
            })
            .collect();
        assert_eq!(hashes.len(), inputs.len());
        // Paths that differ in one byte anywhere.
        let base = b"/static/images/photo-0000.jpg".to_vec();
        let mut seen = HashSet::new();
        for pos in 0..base.len() {
            let mut p = base.clone();
            p[pos] ^= 1;
            assert!(seen.insert(WordHash.hash_one(&p)), "position {pos}");
        }
    }
}
