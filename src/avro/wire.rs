//! The Confluent wire format: a record value is the magic byte `0`, the
//! writer schema's registry id as a big-endian 4-byte integer, then the Avro
//! binary body (no container header, no sync markers). Every Kafka client
//! with a schema-registry serializer writes and expects this framing.
//!
//! Pure functions over bytes, no I/O.

/// The first byte of every framed value.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Why bytes are not a framed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first byte is not [`MAGIC`]: the producer did not write through a
    /// schema-registry serializer (plain JSON, raw Avro, another framing).
    #[error(
        "wrong magic byte 0x{found:02x}: Confluent-framed Avro starts with 0x00 \
         (was the record written by a schema-registry serializer?)"
    )]
    WrongMagic { found: u8 },
    /// Fewer than [`HEADER_LEN`] bytes: the schema id is cut off.
    #[error("truncated header: {len} bytes, but the magic byte and schema id take {HEADER_LEN}")]
    TruncatedHeader { len: usize },
}

/// A framed value split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Registry id of the schema the body was written with.
    pub schema_id: u32,
    /// The Avro binary body.
    pub body: &'a [u8],
}

/// Splits a framed value. The body is not looked at.
pub fn unframe(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    // The magic byte is checked first: a one-byte `{` is a JSON producer,
    // not a truncated Avro record, and the reason should say so.
    match bytes.first() {
        None => return Err(FrameError::TruncatedHeader { len: 0 }),
        Some(&found) if found != MAGIC => return Err(FrameError::WrongMagic { found }),
        Some(_) => {}
    }
    let (header, body) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(FrameError::TruncatedHeader { len: bytes.len() })?;
    let [_, id @ ..] = *header;
    Ok(Frame {
        schema_id: u32::from_be_bytes(id),
        body,
    })
}

/// Starts a framed value: the header for `schema_id`, with room for a body
/// of about `body_hint` bytes. The caller appends the body.
pub fn header(schema_id: u32, body_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_hint);
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_body_round_trip() {
        let mut framed = header(0x0102_0304, 3);
        framed.extend_from_slice(b"abc");
        assert_eq!(framed[..5], [0, 1, 2, 3, 4]);
        let frame = unframe(&framed).unwrap();
        assert_eq!(frame.schema_id, 0x0102_0304);
        assert_eq!(frame.body, b"abc");
    }

    #[test]
    fn an_empty_body_is_a_valid_frame() {
        // A record whose schema is `null`, or an empty record, has no body.
        let frame = unframe(&[0, 0, 0, 0, 7]).unwrap();
        assert_eq!((frame.schema_id, frame.body), (7, &[][..]));
    }

    #[test]
    fn wrong_magic_is_named_before_length() {
        assert_eq!(
            unframe(b"{\"hr\": 72}"),
            Err(FrameError::WrongMagic { found: b'{' })
        );
        assert_eq!(unframe(&[1]), Err(FrameError::WrongMagic { found: 1 }));
        let shown = FrameError::WrongMagic { found: 0x7b }.to_string();
        assert!(shown.contains("0x7b"), "{shown}");
    }

    #[test]
    fn short_headers_are_truncated() {
        for len in 0..HEADER_LEN {
            let bytes = vec![0u8; len];
            assert_eq!(unframe(&bytes), Err(FrameError::TruncatedHeader { len }));
        }
    }

    #[test]
    fn ids_are_big_endian_and_unsigned() {
        let frame = unframe(&[0, 0xff, 0xff, 0xff, 0xfe]).unwrap();
        assert_eq!(frame.schema_id, 0xffff_fffe);
        assert_eq!(header(256, 0), [0, 0, 0, 1, 0]);
    }
}
