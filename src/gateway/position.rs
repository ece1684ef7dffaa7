//! Subscriber positions and the position token.
//!
//! A [`Position`] holds, for every partition of a topic, the offset of the
//! next record to read: every record below it has been delivered to the
//! subscriber or passed over on purpose (it did not match the subscriber's
//! keys or filter). It advances to `offset + 1` of the last record read —
//! never by counting records, because a `read_committed` reader never sees
//! transaction markers or aborted records, which still take offsets.
//!
//! The token is the position written as `partition:offset` pairs separated
//! by commas, in partition order: `0:1520,1:1498,2:1611`. It is the same
//! syntax as an explicit start position, so resuming is "start at the last
//! token you received". Tokens are pure functions of the position: no
//! server state is needed to resume, on this gateway instance or another.

use std::fmt;

/// Where a subscription or a page read starts, as the client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The oldest record still in the topic.
    Earliest,
    /// Only records written from now on.
    Latest,
    /// The first record whose timestamp is at or after this time (ms since
    /// the epoch), per partition.
    Timestamp(i64),
    /// Explicit next offsets per partition (a position token). Partitions
    /// not listed start at the earliest record.
    Offsets(Vec<(i32, i64)>),
}

/// Longest start text accepted: a token for a few thousand partitions.
const MAX_START_LEN: usize = 64 * 1024;

impl Start {
    /// Parses `earliest`, `latest`, milliseconds since the epoch, an RFC 3339
    /// time, or a position token (`0:15,1:20`).
    pub fn parse(text: &str) -> Result<Start, String> {
        let text = text.trim();
        if text.len() > MAX_START_LEN {
            return Err(format!(
                "the start position is {} bytes long; the limit is {MAX_START_LEN}",
                text.len()
            ));
        }
        match text {
            "earliest" => return Ok(Start::Earliest),
            "latest" => return Ok(Start::Latest),
            "" => return Err("the start position is empty".into()),
            _ => {}
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse::<i64>()
                .map(Start::Timestamp)
                .map_err(|_| format!("`{text}` is too large for a timestamp"));
        }
        if text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b':' || b == b',')
        {
            return parse_offsets(text).map(Start::Offsets);
        }
        let time = humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!(
                "`{text}` is not `earliest`, `latest`, a time (RFC 3339 or epoch ms) \
                 or a position (`partition:offset,...`)"
            )
        })?;
        let ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("`{text}` is before 1970"))?
            .as_millis();
        i64::try_from(ms)
            .map(Start::Timestamp)
            .map_err(|_| format!("`{text}` is too far in the future"))
    }
}

fn parse_offsets(text: &str) -> Result<Vec<(i32, i64)>, String> {
    let mut pairs: Vec<(i32, i64)> = Vec::new();
    for part in text.split(',') {
        let (p, o) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` in the position is not `partition:offset`"))?;
        let partition: i32 = p
            .parse()
            .map_err(|_| format!("`{p}` in the position is not a partition number"))?;
        let offset: i64 = o
            .parse()
            .map_err(|_| format!("`{o}` in the position is not an offset"))?;
        pairs.push((partition, offset));
    }
    // Sorted, a repeated partition sits next to itself. Tokens come from
    // clients and may name thousands of partitions: comparing neighbours
    // keeps this O(n log n), where a search per pair was quadratic.
    pairs.sort_unstable();
    if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "partition {} appears twice in the position",
            w[0].0
        ));
    }
    Ok(pairs)
}

/// Next offset to read, per partition `0..n` of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    next: Vec<i64>,
}

impl Position {
    /// A position from next offsets indexed by partition.
    pub fn new(next: Vec<i64>) -> Position {
        Position { next }
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.next.len()
    }

    /// The next offset of a partition (`None` for a partition the topic does
    /// not have).
    pub fn get(&self, partition: i32) -> Option<i64> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.next.get(p).copied())
    }

    /// Offsets by partition index.
    pub fn offsets(&self) -> &[i64] {
        &self.next
    }

    /// Records that `offset` of `partition` has been read: the position moves
    /// to `offset + 1` unless it is already past it. Returns false (and does
    /// nothing) when the record lies below the position, i.e. it was read
    /// before.
    pub fn advance(&mut self, partition: i32, offset: i64) -> bool {
        match usize::try_from(partition)
            .ok()
            .and_then(|p| self.next.get_mut(p))
        {
            Some(next) if offset >= *next => {
                *next = offset + 1;
                true
            }
            _ => false,
        }
    }

    /// Raises a partition's next offset to at least `at` (used when a reader
    /// knows that nothing readable lies below `at`, e.g. only transaction
    /// markers).
    pub fn raise(&mut self, partition: i32, at: i64) {
        if let Some(next) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.next.get_mut(p))
        {
            *next = (*next).max(at);
        }
    }

    /// Whether this position has reached `other` on every partition.
    pub fn reached(&self, other: &Position) -> bool {
        self.next
            .iter()
            .zip(&other.next)
            .all(|(mine, theirs)| mine >= theirs)
    }

    /// The token: `0:15,1:20,...`.
    pub fn token(&self) -> String {
        let mut out = String::with_capacity(self.next.len() * 10);
        for (p, o) in self.next.iter().enumerate() {
            if p > 0 {
                out.push(',');
            }
            // Writing to a String cannot fail.
            let _ = fmt::Write::write_fmt(&mut out, format_args!("{p}:{o}"));
        }
        out
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_start() {
        let p = Position::new(vec![15, 0, 1_234_567_890_123]);
        assert_eq!(p.token(), "0:15,1:0,2:1234567890123");
        assert_eq!(
            Start::parse(&p.token()),
            Ok(Start::Offsets(vec![
                (0, 15),
                (1, 0),
                (2, 1_234_567_890_123)
            ]))
        );
    }

    #[test]
    fn start_forms_are_told_apart() {
        assert_eq!(Start::parse("earliest"), Ok(Start::Earliest));
        assert_eq!(Start::parse(" latest "), Ok(Start::Latest));
        assert_eq!(
            Start::parse("1700000000000"),
            Ok(Start::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            Start::parse("2026-11-01T00:00:00Z"),
            Ok(Start::Timestamp(1_793_491_200_000))
        );
        assert_eq!(Start::parse("0:7"), Ok(Start::Offsets(vec![(0, 7)])));
        assert_eq!(
            Start::parse("3:1,1:9"),
            Ok(Start::Offsets(vec![(1, 9), (3, 1)]))
        );
    }

    #[test]
    fn bad_starts_are_explained() {
        for bad in [
            "",
            "yesterday",
            "0:",
            ":5",
            "0:1,0:2",
            "0:x",
            "1:2:3",
            "-1:5",
        ] {
            assert!(Start::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(
            Start::parse("0:1,0:2")
                .unwrap_err()
                .contains("partition 0 appears twice")
        );
        assert!(Start::parse(&"1".repeat(MAX_START_LEN + 1)).is_err());
    }

    /// A token for many partitions parses in linear-logarithmic time: a
    /// pairwise duplicate check was quadratic, and tokens come from clients.
    #[test]
    fn many_partitions_parse_fast_and_duplicates_are_still_refused() {
        let distinct: Vec<String> = (0..10_000).map(|p| format!("{p}:7")).collect();
        let token = distinct.join(",");
        let started = std::time::Instant::now();
        let pairs = parse_offsets(&token).unwrap();
        assert_eq!(pairs.len(), 10_000);
        assert_eq!(pairs[9_999], (9_999, 7));
        assert!(
            started.elapsed() < std::time::Duration::from_millis(100),
            "10k partitions took {:?}",
            started.elapsed()
        );

        // The worst case for a pairwise check: the duplicate comes last.
        let duplicated = format!("{token},9999:8");
        let started = std::time::Instant::now();
        let err = parse_offsets(&duplicated).unwrap_err();
        assert!(err.contains("partition 9999 appears twice"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(100),
            "10k partitions with a duplicate took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn advance_moves_past_the_record_and_refuses_rereads() {
        let mut p = Position::new(vec![10, 10]);
        assert!(p.advance(0, 10));
        assert_eq!(p.get(0), Some(11));
        // Offsets 11..20 were transaction markers or aborted: the next
        // readable record decides the position, not a count.
        assert!(p.advance(0, 20));
        assert_eq!(p.get(0), Some(21));
        assert!(
            !p.advance(0, 15),
            "a record below the position is a re-read"
        );
        assert!(!p.advance(7, 1), "unknown partition");
        assert_eq!(p.token(), "0:21,1:10");
    }

    #[test]
    fn reached_compares_every_partition() {
        let a = Position::new(vec![5, 9]);
        assert!(a.reached(&Position::new(vec![5, 9])));
        assert!(a.reached(&Position::new(vec![1, 2])));
        assert!(!a.reached(&Position::new(vec![6, 2])));
        let mut b = a.clone();
        b.raise(0, 6);
        b.raise(1, 3);
        assert_eq!(b.offsets(), &[6, 9]);
    }
}
