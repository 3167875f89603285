//! The one binary encoding used for cohort's own records and messages (bincode 2 over serde),
//! with a size limit on every decode so that hostile bytes cannot make us allocate without bound.

use serde::{de::DeserializeOwned, Serialize};

/// Bytes that do not decode into the expected type. Never a panic: bytes from disks and
/// sockets are untrusted.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

/// Largest value `decode` accepts; far above any legal record (see `limits`).
pub const DECODE_SIZE_BYTES_MAX: usize = 256 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding().with_limit::<DECODE_SIZE_BYTES_MAX>()
}

/// Encodes `value`. Encoding our own in-memory types cannot fail; a failure is a bug.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("encoding an in-memory value cannot fail")
}

/// Appends the encoding of `value` to `out`, in place: no buffer of its own to grow and copy.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, out, config()).expect("encoding an in-memory value cannot fail");
}

/// Encodes `value` into a buffer with room for `capacity_bytes` from the start. `encode`'s
/// buffer grows from nothing by doubling, copying what it holds each time, and a large one is
/// fresh memory the kernel zeroes: for a batch of entries, an estimate of its size saves both.
pub fn encode_with_capacity<T: Serialize>(value: &T, capacity_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity_bytes);
    encode_into(value, &mut out);
    out
}

/// The size of `value`'s encoding, counted without building it.
pub fn encoded_size_bytes<T: Serialize>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config()).expect("encoding an in-memory value cannot fail");
    size.bytes_written
}

/// Streams the encoding of `value` into `out` without building it in memory.
pub fn encode_into_writer<T: Serialize>(value: &T, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    match bincode::serde::encode_into_std_write(value, &mut &mut *out, config()) {
        Ok(_) => Ok(()),
        Err(bincode::error::EncodeError::Io { inner, .. }) => Err(inner),
        Err(other) => panic!("encoding an in-memory value cannot fail: {other}"),
    }
}

/// Largest value `decode_from_reader` accepts: a whole partition's snapshot. Decoding from a
/// reader never allocates ahead of the bytes actually read (serde caps preallocation), so a
/// hostile length prefix costs a read error, not memory.
pub const STREAM_DECODE_SIZE_BYTES_MAX: usize = 1 << 40;

fn stream_config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding().with_limit::<STREAM_DECODE_SIZE_BYTES_MAX>()
}

/// Decodes one `T` from `reader`, reading no further than its end.
pub fn decode_from_reader<T: DeserializeOwned>(
    what: &'static str,
    reader: &mut dyn std::io::Read,
) -> Result<T, DecodeError> {
    bincode::serde::decode_from_std_read(&mut &mut *reader, stream_config())
        .map_err(|e| DecodeError { what, reason: e.to_string() })
}

/// Decodes exactly one `T` from `bytes`; trailing bytes are an error.
/// Decodes `bytes` whole. bincode allocates a byte buffer's announced length before reading
/// it, and checks the announcement only against the decode's limit; so the limit follows the
/// input: the smallest of a ladder of limits (4 KiB, then ×4 up to `DECODE_SIZE_BYTES_MAX`) at
/// least 4 times the input's size. A length that lies costs at most that, never more.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    fn with<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<(T, usize), bincode::error::DecodeError> {
        let config = bincode::config::standard().with_fixed_int_encoding().with_limit::<LIMIT>();
        bincode::serde::decode_from_slice(bytes, config)
    }
    // The first rung that fits wins: the arms overlap on purpose.
    #[allow(clippy::match_overlapping_arm)]
    let decoded = match bytes.len().saturating_mul(4) {
        ..=0x1000 => with::<T, 0x1000>(bytes),
        ..=0x4000 => with::<T, 0x4000>(bytes),
        ..=0x1_0000 => with::<T, 0x1_0000>(bytes),
        ..=0x4_0000 => with::<T, 0x4_0000>(bytes),
        ..=0x10_0000 => with::<T, 0x10_0000>(bytes),
        ..=0x40_0000 => with::<T, 0x40_0000>(bytes),
        ..=0x100_0000 => with::<T, 0x100_0000>(bytes),
        ..=0x400_0000 => with::<T, 0x400_0000>(bytes),
        _ => with::<T, DECODE_SIZE_BYTES_MAX>(bytes),
    };
    let (value, used) = decoded.map_err(|e| DecodeError { what, reason: e.to_string() })?;
    if used != bytes.len() {
        return Err(DecodeError { what, reason: format!("{} trailing bytes after the value", bytes.len() - used) });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes() {
        let v: (u64, String) = (7, "x".into());
        let mut bytes = encode(&v);
        assert_eq!(decode::<(u64, String)>("pair", &bytes).unwrap(), v);
        bytes.push(0);
        assert!(decode::<(u64, String)>("pair", &bytes).is_err());
    }

    #[test]
    fn encoding_in_place_appends_what_encode_returns() {
        let v: (u64, String, Vec<u8>) = (7, "x".into(), vec![1; 300]);
        let mut out = vec![9, 9];
        encode_into(&v, &mut out);
        assert_eq!(out[..2], [9, 9]);
        assert_eq!(out[2..], encode(&v));
        for capacity_bytes in [0, 3, 10_000] {
            assert_eq!(encode_with_capacity(&v, capacity_bytes), encode(&v));
        }
        assert_eq!(encoded_size_bytes(&v), encode(&v).len());
        assert_eq!(encoded_size_bytes(&()), 0);
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // A Vec<u8> whose length prefix claims 2^63 bytes.
        let bytes = u64::MAX.to_le_bytes();
        assert!(decode::<Vec<u8>>("vec", &bytes).is_err());
    }

    /// A byte field whose length prefix claims far more than the input holds is refused
    /// without allocating what it claims (the limit follows the input's size).
    #[test]
    fn a_lying_byte_length_is_refused_within_the_input_s_bound() {
        let mut bytes = encode(&AsBytes(vec![7; 100]));
        // The prefix now claims 64 MiB, which a 4 KiB limit refuses before allocating.
        bytes[..8].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let error = decode::<AsBytes>("bytes", &bytes).unwrap_err();
        assert!(error.reason.contains("LimitExceeded"), "{error}");
        // What fits the input still decodes, at every rung of the ladder.
        for len in [0, 1000, 5000, 300_000, 5_000_000] {
            let value = AsBytes(vec![1; len]);
            assert_eq!(decode::<AsBytes>("bytes", &encode(&value)).unwrap(), value);
        }
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct AsBytes(#[serde(with = "serde_bytes")] Vec<u8>);

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct AsSequence(Vec<u8>);

    /// `serde_bytes` fields are written in one run; their encoding must stay the one a byte
    /// sequence has, so the log, snapshots and digests keep their meaning.
    #[test]
    fn bytes_encode_as_a_byte_sequence_does() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let bytes = encode(&AsBytes(data.clone()));
        assert_eq!(bytes, encode(&AsSequence(data.clone())));
        assert_eq!(decode::<AsBytes>("bytes", &bytes).unwrap(), AsBytes(data.clone()));
        let mut reader: &[u8] = &bytes;
        assert_eq!(decode_from_reader::<AsSequence>("bytes", &mut reader).unwrap(), AsSequence(data));
    }
}
