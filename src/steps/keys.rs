//! Order-preserving byte encodings for state-store keys.
//!
//! Stores compare keys as bytes, so everything a range scan walks in order
//! is encoded so that byte order equals value order:
//!
//! - times (`i64` milliseconds) as 8 bytes big-endian with the sign bit
//!   flipped, so negative times sort before positive ones;
//! - byte strings (record keys, ids) as a 4-byte big-endian length followed
//!   by the bytes, so no encoded string is a prefix of another: all entries
//!   of one record key form one contiguous range, and the fields after it
//!   are found at a known place.
//!
//! Every stateful step starts its keys with a one-byte section tag (`m` for
//! its metadata, `w` for windows, `e` for its expiry index, ...), described
//! in the step's module docs.

/// Length of an encoded time.
pub const TIME_LEN: usize = 8;

/// Encodes a time so that byte order is numeric order.
pub fn time(t: i64) -> [u8; TIME_LEN] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// Decodes [`time`].
pub fn decode_time(bytes: [u8; TIME_LEN]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// Appends an encoded time.
pub fn push_time(buf: &mut Vec<u8>, t: i64) {
    buf.extend_from_slice(&time(t));
}

/// Appends a length-prefixed byte string.
pub fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Kafka keys and ids are far below 4 GiB; saturating keeps this total.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The smallest key greater than every key that starts with `prefix`, for
/// the exclusive end of a prefix scan. `None` if there is none (a prefix of
/// only `0xff` bytes), meaning "to the end of the store".
/// `tag` followed by length-prefixed `bytes`: a store key in the section
/// `tag`, ordered by `bytes`.
pub fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut k = vec![tag];
    push_bytes(&mut k, bytes);
    k
}

/// `tag`, the time `t`, then length-prefixed `bytes`: a store key in the
/// section `tag`, ordered by time first (expiry and close indexes).
pub fn tagged_at(tag: u8, t: i64, bytes: &[u8]) -> Vec<u8> {
    let mut k = vec![tag];
    push_time(&mut k, t);
    push_bytes(&mut k, bytes);
    k
}

pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Reads the fields of an encoded key or value in order. Every read returns
/// `None` when the input is too short, so a corrupt entry is reported, not
/// a panic.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// One byte.
    pub fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// An encoded time.
    pub fn time(&mut self) -> Option<i64> {
        let bytes: [u8; TIME_LEN] = self.take(TIME_LEN)?.try_into().ok()?;
        Some(decode_time(bytes))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        let bytes: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    }

    /// An `f64` stored as its big-endian bits.
    pub fn f64(&mut self) -> Option<f64> {
        self.u64().map(f64::from_bits)
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len: [u8; 4] = self.take(4)?.try_into().ok()?;
        self.take(u32::from_be_bytes(len) as usize)
    }

    /// Exactly `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(taken)
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sort_numerically_as_bytes() {
        let values = [i64::MIN, -1_000, -1, 0, 1, 999, 1_000, i64::MAX];
        for pair in values.windows(2) {
            assert!(time(pair[0]) < time(pair[1]), "{pair:?}");
        }
        for v in values {
            assert_eq!(decode_time(time(v)), v);
        }
    }

    #[test]
    fn length_prefixed_strings_are_prefix_free() {
        let key = |k: &[u8], t: i64| {
            let mut buf = vec![b'w'];
            push_bytes(&mut buf, k);
            push_time(&mut buf, t);
            buf
        };
        // "a" at any time stays inside the range of "a", and "ab" outside it.
        let mut prefix = vec![b'w'];
        push_bytes(&mut prefix, b"a");
        let end = prefix_end(&prefix).expect("has an end");
        for t in [i64::MIN, 0, i64::MAX] {
            let k = key(b"a", t);
            assert!(k >= prefix && k < end);
            let other = key(b"ab", t);
            assert!(!(other >= prefix && other < end));
        }
        let encoded = key(b"ab", -5);
        let mut r = Reader::new(&encoded);
        assert_eq!(r.byte(), Some(b'w'));
        assert_eq!(r.bytes(), Some(&b"ab"[..]));
        assert_eq!(r.time(), Some(-5));
        assert!(r.is_empty());
    }

    #[test]
    fn prefix_end_carries_and_reads_are_total() {
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        let mut r = Reader::new(b"\x00\x00\x00\x09abc");
        assert_eq!(r.bytes(), None);
        assert_eq!(Reader::new(b"1234567").time(), None);
    }
}
