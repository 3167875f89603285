//! Objects as Git stores them loose: zlib of `"<type> <size>\0"` followed by the content. The
//! store keeps exactly these bytes, so exporting a repository writes them to
//! `objects/xx/yyyy…` unchanged, and `git` reads them.
//!
//! Decoding is for bytes from the store or a snapshot, so it checks everything and never
//! allocates more than the header's size, itself bounded.

use crate::state_machine::{ObjectKind, Oid, OBJECT_SIZE_BYTES_MAX};
use flate2::write::ZlibEncoder;
use flate2::{Compression, Decompress, FlushDecompress, Status};
use std::io::Write;

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
        // Taken without a reset: each reset clears the compressor's tables, and the next
        // object's reset does that anyway.
        std::mem::take(encoder.get_mut())
    })
}

thread_local! {
    /// One decompressor per thread, reset for each object: a new one allocates and clears its
    /// state (tens of KiB), which with the header read apart was most of a replica's cost of
    /// taking in a 1 KiB object (`perf`, `cargo bench --bench vs_etcd`).
    static DECOMPRESS: std::cell::RefCell<Decompress> = std::cell::RefCell::new(Decompress::new(true));
}

/// Decodes a loose object and checks that it is `oid`.
pub fn decode(oid: &Oid, bytes: &[u8]) -> Result<(ObjectKind, Vec<u8>), String> {
    decode_within(oid, bytes, OBJECT_SIZE_BYTES_MAX)
}

/// Like [`decode`], refusing an object whose header announces more than `size_bytes_max`
/// before inflating its content: what a caller bounding several objects together passes.
pub fn decode_within(oid: &Oid, bytes: &[u8], size_bytes_max: usize) -> Result<(ObjectKind, Vec<u8>), String> {
    let (kind, data) = inflate_within(oid, bytes, size_bytes_max)?;
    let actual = Oid::hash_object(kind, &data);
    if actual != *oid {
        return Err(format!("object {oid}: content hashes to {actual}"));
    }
    Ok((kind, data))
}

/// Like [`decode_within`], without checking that the content is `oid` (`oid` only names the
/// object in errors): for a caller that checks it anyway.
pub fn inflate_within(oid: &Oid, bytes: &[u8], size_bytes_max: usize) -> Result<(ObjectKind, Vec<u8>), String> {
    let size_bytes_max = size_bytes_max.min(OBJECT_SIZE_BYTES_MAX);
    DECOMPRESS.with(|decompress| {
        let mut decompress = decompress.borrow_mut();
        decompress.reset(true);
        let mut inflater = Inflater { decompress: &mut decompress, input: bytes, oid, ended: false };
        // The header, and whatever of the content came out with it.
        let mut head = Vec::with_capacity(HEADER_BYTES_MAX + 1);
        let end = loop {
            if let Some(end) = head.iter().position(|&byte| byte == 0) {
                break end;
            }
            if head.len() > HEADER_BYTES_MAX {
                return Err(format!("object {oid}: header longer than {HEADER_BYTES_MAX} bytes"));
            }
            if !inflater.fill(&mut head)? {
                return Err(format!("object {oid}: the stream ends in its header"));
            }
        };
        let (kind, size) = parse_header(oid, &head[..end])?;
        if size > size_bytes_max {
            return Err(format!("object {oid}: header says {size} bytes, more than {size_bytes_max}"));
        }
        let content = &head[end + 1..];
        if content.len() > size {
            return Err(format!("object {oid}: header says {size} bytes, content has more"));
        }
        // One byte more than announced, to notice a stream that goes on.
        let mut data = Vec::with_capacity(size + 1);
        data.extend_from_slice(content);
        while data.len() < size + 1 && inflater.fill(&mut data)? {}
        if data.len() != size || !inflater.ended {
            return Err(format!("object {oid}: header says {size} bytes, content has {} or more", data.len()));
        }
        if !inflater.input.is_empty() {
            // Stored as they came, so nothing but the stream: every replica keeps these bytes.
            return Err(format!("object {oid}: {} bytes after its zlib stream", inflater.input.len()));
        }
        Ok((kind, data))
    })
}

/// A zlib stream inflated into the spare room of the buffers it is handed.
struct Inflater<'a> {
    decompress: &'a mut Decompress,
    input: &'a [u8],
    oid: &'a Oid,
    ended: bool,
}

impl Inflater<'_> {
    /// Inflates into `out`'s spare capacity; whether it made progress (false once the stream
    /// has ended, or when the input ran out before it did, which is an error).
    fn fill(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        if self.ended || out.len() == out.capacity() {
            return Ok(false);
        }
        let (in_before, out_before) = (self.decompress.total_in(), out.len());
        let status = self
            .decompress
            .decompress_vec(self.input, out, FlushDecompress::None)
            .map_err(|e| format!("object {}: bad zlib stream: {e}", self.oid))?;
        let consumed = (self.decompress.total_in() - in_before) as usize;
        self.input = &self.input[consumed..];
        if status == Status::StreamEnd {
            self.ended = true;
        }
        let progress = out.len() > out_before || consumed > 0;
        if !progress && !self.ended {
            return Err(format!("object {}: the zlib stream ends early", self.oid));
        }
        Ok(progress)
    }
}

fn parse_header(oid: &Oid, header: &[u8]) -> Result<(ObjectKind, usize), String> {
    let header = std::str::from_utf8(header).map_err(|_| format!("object {oid}: header is not text"))?;
    let (kind, size) = header.split_once(' ').ok_or_else(|| format!("object {oid}: header {header:?} has no size"))?;
    let kind: ObjectKind = kind.parse().map_err(|e| format!("object {oid}: {e}"))?;
    // Git's own form only (no sign, no leading zero): the bytes are kept and exported as they
    // came, and `git` refuses any other.
    let canonical =
        !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) && (size == "0" || !size.starts_with('0'));
    if !canonical {
        return Err(format!("object {oid}: header size {size:?} is not a number as Git writes it"));
    }
    let size: usize = size.parse().map_err(|_| format!("object {oid}: header size {size:?} is out of range"))?;
    Ok((kind, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::ZlibDecoder;
    use std::io::Read;

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
    fn decoding_round_trips_every_size_and_refuses_every_truncation() {
        for size_bytes in [0, 1, 20, 25, 26, 27, 40, 1024, 70_000, 300_000] {
            for data in [vec![0u8; size_bytes], (0..size_bytes).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>()] {
                let oid = Oid::hash_object(ObjectKind::Tree, &data);
                let bytes = encode(ObjectKind::Tree, &data);
                assert_eq!(decode(&oid, &bytes).unwrap(), (ObjectKind::Tree, data.clone()), "{size_bytes} bytes");
                for end in [0, 1, bytes.len() / 2, bytes.len() - 4, bytes.len() - 1] {
                    assert!(decode(&oid, &bytes[..end]).is_err(), "{size_bytes} bytes cut at {end}");
                }
                if size_bytes > 0 {
                    assert!(decode_within(&oid, &bytes, size_bytes - 1).is_err(), "{size_bytes} bytes, bound below");
                    assert!(decode_within(&oid, &bytes, size_bytes).is_ok(), "{size_bytes} bytes, bound at");
                }
            }
        }
    }

    #[test]
    fn bad_bytes_are_errors() {
        let oid = Oid::hash_object(ObjectKind::Blob, b"x");
        let good = encode(ObjectKind::Blob, b"x");
        assert!(decode(&oid, b"not zlib").is_err());
        assert!(decode(&oid, &good[..good.len() - 3]).is_err(), "cut short");
        assert!(decode(&oid, &[&good[..], b"x"].concat()).is_err(), "bytes after the stream");
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
        assert!(decode(&oid, &zlib(b"blob 01\0x")).is_err(), "a leading zero");
        assert!(decode(&oid, &zlib(b"blob +1\0x")).is_err(), "a sign");
        assert!(decode(&oid, &zlib(b"blob \0")).is_err(), "no digits");
        assert_eq!(decode(&oid, &zlib(b"blob 1\0x")).unwrap(), (ObjectKind::Blob, b"x".to_vec()), "Git's form");
    }

    /// Replicas compress an object of an earlier build's command when they apply it (see
    /// `state_machine::new_object`): one that applies it after an upgrade must write the bytes
    /// its peers wrote before. These are the bytes builds have written (flate2 over
    /// miniz_oxide, fastest level); a compressor that writes others breaks that.
    #[test]
    fn the_compressor_writes_what_earlier_builds_wrote() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| b"the quick brown fox jumps over the lazy dog\n"[(i % 44) as usize] ^ (i / 44) as u8)
            .collect();
        let expected = [
            "780115c9474e03310000408e1409bee0ade7487cc8ebde7b49b249f83af27990f108fc5e2e6f455010abc41a",
            "a0e4bb03cc5f81aa3664e01b4d60b039ee37403cffac924ca108a4269c5df31377b7491713d3e43ac9d3600b",
            "cfeb441dfb6a8acfb9eb43ce30d86a6662efb3e83ec5d9161ee6c10e5fcf9959fade355b5253502c4734c52e",
            "d49c8b6c2e87c5541697c11eddee0b37e4239863add172bfb2a6b35a917eac2ecad2579d8eb60e16f4f55ca1",
            "c6dfd1c2ad04c3dcc6bb4a7ac3eab9f9206adb54867d1b2cc9df633b14fa490eef3d7b6a775264143b94afdd",
            "64ddea2e032efb60f50f67577032",
        ]
        .concat();
        let hex: String = encode(ObjectKind::Blob, &data).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }
}
