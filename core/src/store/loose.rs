//! Objects as Git stores them loose: zlib of `"<type> <size>\0"` followed by the content. The
//! store keeps exactly these bytes, so exporting a repository writes them to
//! `objects/xx/yyyy…` unchanged, and `git` reads them.
//!
//! Decoding is for bytes from the store or a snapshot, so it checks everything and never
//! allocates more than the header's size, itself bounded.

use crate::state_machine::{ObjectKind, Oid, OBJECT_SIZE_BYTES_MAX};
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::io::{Read, Write};

/// Longest header `"<type> <size>\0"`: "commit " and 20 digits and NUL, with room to spare.
const HEADER_BYTES_MAX: usize = 32;

thread_local! {
    /// One encoder per thread, reset for each object: a new one allocates and zeroes its
    /// compressor's tables (hundreds of KiB), which was a tenth of the applier's work for 1 KiB
    /// objects (`perf`, 3-node cluster under load: its allocation, zeroing and freeing). A reset
    /// encoder writes exactly the bytes a new one would, which every replica relies on.
    static ENCODER: std::cell::RefCell<ZlibEncoder<Vec<u8>>> =
        std::cell::RefCell::new(ZlibEncoder::new(Vec::new(), Compression::fast()));
}

/// Git's loose encoding of an object. Git itself writes loose objects at zlib's fastest level
/// (`core.looseCompression` defaults to 1): they are rewritten into packs later.
pub fn encode(kind: ObjectKind, data: &[u8]) -> Vec<u8> {
    let header = format!("{} {}\0", kind.as_str(), data.len());
    ENCODER.with(|encoder| {
        let mut encoder = encoder.borrow_mut();
        encoder.reset(Vec::with_capacity(data.len() / 2 + 64)).expect("writing to memory cannot fail");
        encoder.write_all(header.as_bytes()).expect("writing to memory cannot fail");
        encoder.write_all(data).expect("writing to memory cannot fail");
        encoder.try_finish().expect("writing to memory cannot fail");
        encoder.reset(Vec::new()).expect("writing to memory cannot fail")
    })
}

/// Decodes a loose object and checks that it is `oid`.
pub fn decode(oid: &Oid, bytes: &[u8]) -> Result<(ObjectKind, Vec<u8>), String> {
    let mut decoder = ZlibDecoder::new(bytes);
    let mut header = Vec::with_capacity(HEADER_BYTES_MAX);
    let mut byte = [0u8; 1];
    loop {
        decoder.read_exact(&mut byte).map_err(|e| format!("object {oid}: bad zlib stream in its header: {e}"))?;
        if byte[0] == 0 {
            break;
        }
        if header.len() == HEADER_BYTES_MAX {
            return Err(format!("object {oid}: header longer than {HEADER_BYTES_MAX} bytes"));
        }
        header.push(byte[0]);
    }
    let header = std::str::from_utf8(&header).map_err(|_| format!("object {oid}: header is not text"))?;
    let (kind, size) = header.split_once(' ').ok_or_else(|| format!("object {oid}: header {header:?} has no size"))?;
    let kind: ObjectKind = kind.parse().map_err(|e| format!("object {oid}: {e}"))?;
    let size: usize = size.parse().map_err(|_| format!("object {oid}: header size {size:?} is not a number"))?;
    if size > OBJECT_SIZE_BYTES_MAX {
        return Err(format!("object {oid}: header says {size} bytes, more than {OBJECT_SIZE_BYTES_MAX}"));
    }
    let mut data = Vec::with_capacity(size);
    // One byte more than announced, to notice a stream that goes on.
    decoder.take(size as u64 + 1).read_to_end(&mut data).map_err(|e| format!("object {oid}: bad zlib stream: {e}"))?;
    if data.len() != size {
        return Err(format!("object {oid}: header says {size} bytes, content has {}", data.len()));
    }
    let actual = Oid::hash_object(kind, &data);
    if actual != *oid {
        return Err(format!("object {oid}: content hashes to {actual}"));
    }
    Ok((kind, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a fresh encoder writes: every replica must store the same bytes for an object,
    /// whatever its thread's compressor encoded before.
    fn fresh(kind: ObjectKind, data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
        e.write_all(format!("{} {}\0", kind.as_str(), data.len()).as_bytes()).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_reused_compressor_writes_the_bytes_a_fresh_one_does() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        for round in 0..60 {
            let len = [0, 1, 100, 1024, 5_000, 40_000, 100_000, 300_000][next() as usize % 8];
            // Random bytes, or text that compresses (repeats within and across objects).
            let data: Vec<u8> = if round % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                (0..len).map(|i| b"the quick brown fox "[(i + round) % 20]).collect()
            };
            assert_eq!(encode(ObjectKind::Blob, &data), fresh(ObjectKind::Blob, &data), "round {round}: {len} bytes");
        }
    }

    #[test]
    fn round_trips_and_is_what_git_writes() {
        let data = b"hello\n";
        let oid = Oid::hash_object(ObjectKind::Blob, data);
        // `echo hello | git hash-object --stdin`
        assert_eq!(oid.to_string(), "ce013625030ba8dba906f756967f9e9ca394464a");
        let bytes = encode(ObjectKind::Blob, data);
        let mut inflated = Vec::new();
        ZlibDecoder::new(&bytes[..]).read_to_end(&mut inflated).unwrap();
        assert_eq!(inflated, b"blob 6\0hello\n", "the loose format: header, NUL, content");
        assert_eq!(decode(&oid, &bytes).unwrap(), (ObjectKind::Blob, data.to_vec()));
    }

    #[test]
    fn bad_bytes_are_errors() {
        let oid = Oid::hash_object(ObjectKind::Blob, b"x");
        let good = encode(ObjectKind::Blob, b"x");
        assert!(decode(&oid, b"not zlib").is_err());
        assert!(decode(&oid, &good[..good.len() - 3]).is_err(), "cut short");
        assert!(decode(&Oid([1; 20]), &good).is_err(), "another object's id");
        let zlib = |raw: &[u8]| {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        };
        assert!(decode(&oid, &zlib(b"blob 2\0x")).is_err(), "shorter than its header says");
        assert!(decode(&oid, &zlib(b"blob 1\0xy")).is_err(), "longer than its header says");
        assert!(decode(&oid, &zlib(b"blub 1\0x")).is_err(), "unknown type");
        assert!(decode(&oid, &zlib(b"blob 99999999999\0x")).is_err(), "huge size");
        assert!(decode(&oid, &zlib(&[b'a'; 100])).is_err(), "no header end");
    }
}
