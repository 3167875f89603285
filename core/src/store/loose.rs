//! Objects as Git stores them loose: zlib of `"<type> <size>\0"` followed by the content. The
//! store keeps exactly these bytes, so exporting a repository writes them to
//! `objects/xx/yyyy…` unchanged, and `git` reads them.
//!
//! Decoding is for bytes from the store or a snapshot, so it checks everything and never
//! allocates more than the header's size, itself bounded.

use crate::state_machine::{ObjectKind, Oid, OBJECT_SIZE_BYTES_MAX};
use flate2::write::ZlibEncoder;
use flate2::{Compression, Decompress, FlushDecompress, Status};
use miniz_oxide::deflate::{self, core::CompressorOxide};
use miniz_oxide::{DataFormat, MZFlush, MZStatus};
use std::io::Write;

/// Longest header `"<type> <size>\0"`: "commit " and 20 digits and NUL, with room to spare.
const HEADER_BYTES_MAX: usize = 32;

thread_local! {
    /// One encoder per thread, reset for each object: a new one allocates and zeroes its
    /// compressor's tables (hundreds of KiB), which was a tenth of the applier's work for 1 KiB
    /// objects (`perf`, 3-node cluster under load: its allocation, zeroing and freeing).
    static ENCODER: std::cell::RefCell<ZlibEncoder<Vec<u8>>> =
        std::cell::RefCell::new(ZlibEncoder::new(Vec::new(), Compression::fast()));
}

/// Git's loose encoding of a new object, as the node that first encodes a command carrying it
/// compresses it (flate2 over zlib-rs). Git itself writes loose objects at zlib's fastest level
/// (`core.looseCompression` defaults to 1): they are rewritten into packs later. The bytes
/// travel in the command and every replica stores them as they came, so no other replica
/// needs to reproduce them: this compressor may change between builds.
pub fn encode(kind: ObjectKind, data: &[u8]) -> Vec<u8> {
    let header = format!("{} {}\0", kind.as_str(), data.len());
    ENCODER.with(|encoder| {
        let mut encoder = encoder.borrow_mut();
        encoder.reset(Vec::with_capacity(data.len() / 2 + 64)).expect("writing to memory cannot fail");
        encoder.write_all(header.as_bytes()).expect("writing to memory cannot fail");
        encoder.write_all(data).expect("writing to memory cannot fail");
        encoder.try_finish().expect("writing to memory cannot fail");
        // Taken without a reset: the next object's reset clears the compressor anyway.
        std::mem::take(encoder.get_mut())
    })
}

thread_local! {
    /// `encode_as_earlier_builds`'s compressor, reset for each object (see `ENCODER`). A reset
    /// compressor writes exactly the bytes a new one would, which every replica relies on.
    static EARLIER_COMPRESSOR: std::cell::RefCell<Box<CompressorOxide>> = std::cell::RefCell::new({
        let mut compressor = Box::<CompressorOxide>::default();
        compressor.set_format_and_level(DataFormat::Zlib, 1);
        compressor
    });
}

/// Output room per call of the compressor: flate2's writer gave it 32 KiB at a time.
const EARLIER_CHUNK_BYTES: usize = 32 * 1024;

/// Git's loose encoding of an object, byte for byte as builds before objects travelled loose
/// wrote it: flate2 over miniz_oxide at the fastest level, fed the header and then the content.
/// Replicas compress each object of such a build's command when they apply it, so one that
/// applies it after an upgrade must store the bytes its peers stored before
/// (`state_machine::new_object`). Slower than `encode`: only those old entries use it.
pub fn encode_as_earlier_builds(kind: ObjectKind, data: &[u8]) -> Vec<u8> {
    let header = format!("{} {}\0", kind.as_str(), data.len());
    EARLIER_COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut chunk = vec![0; EARLIER_CHUNK_BYTES];
        for (input, flush) in [(header.as_bytes(), MZFlush::None), (data, MZFlush::None), (&[][..], MZFlush::Finish)] {
            let mut input = input;
            // flate2's writer never handed the compressor an empty write.
            while flush == MZFlush::Finish || !input.is_empty() {
                let result = deflate::stream::deflate(&mut compressor, input, &mut chunk, flush);
                out.extend_from_slice(&chunk[..result.bytes_written]);
                input = &input[result.bytes_consumed..];
                let status = result.status.expect("compressing into memory with room cannot fail");
                if flush == MZFlush::Finish && status == MZStatus::StreamEnd {
                    break;
                }
            }
        }
        out
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
    fn objects_of_earlier_commands_compress_as_earlier_builds_did() {
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
        let hex: String =
            encode_as_earlier_builds(ObjectKind::Blob, &data).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        // Digests of what 044190d's build (flate2 over miniz_oxide) wrote for these objects:
        // random, repetitive and zero bytes of sizes up to 300,000, around its 32 KiB steps.
        let written: [&str; 27] = [
            "c2baae88d6364d878fd67e778c6a5d8306ad4ab0",
            "c2baae88d6364d878fd67e778c6a5d8306ad4ab0",
            "c2baae88d6364d878fd67e778c6a5d8306ad4ab0",
            "c422dd138d01aa1760b9a6f079ca99e9b9242e5b",
            "46da07d2b9f499f0c8007297e1bea7836e17c830",
            "ea8d8ceee2a00236c57a78123289c68926e8b37c",
            "c88e2dd64ef7a706e4f207388b23856919c9c7cc",
            "c9b77c052a73062675fd342ca6014f5ecfe3df9c",
            "41476496aadfd4cc60e4824da74d18ea5fef4c7e",
            "d59f15291a1ca490b832b647e343b2fe62f2af0f",
            "0eb2a730ed72d1d772f30fcf670e0829532ae549",
            "7b530c26980567eef02ffc2f7c6f22d635a0e648",
            "e1256b81931d7f0e3cc110e5c1975babc289e74a",
            "1471feee9c8c451103f25815971af19aedd1a545",
            "6f84dfd69e059c76dbb50a2eba4e3145eeaf4454",
            "f9cace39db54fdc16554071d1d2c573927d1fef2",
            "8a672221df6bb14d3399e4651a7ba605e500353f",
            "efbbf43bb86d55b9f534c9f803cddcc2374b3afe",
            "5b128edd6bb9afdb24cdb0b97f539a6e0e3800eb",
            "df6f1125926902981675b5f50232ba65626feba9",
            "4192fe269febe718e3b9031fc7d11eada852aa21",
            "69b58c66a999f4cb5528d10f0d5412bd3e321dcf",
            "9a75479de4812d5b526e0bfd5c524d914d7ad52d",
            "0c24f513e1169a4a3ce4ab4005764a0947b0fccc",
            "498eced3213b9fc1af29ef948b5dc602d8614364",
            "b59b843eb063f668b90f786fae5bbd029f135d60",
            "a01dee1fd2dcaed60f25110e475b1ae0cdcdb17a",
        ];
        let mut seed = 11u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        };
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for len in [0usize, 1, 7, 100, 1024, 4096, 40_000, 70_000, 300_000] {
            inputs.push((0..len).map(|_| next()).collect());
            inputs.push(
                (0..len).map(|i| b"the quick brown fox jumps over the lazy dog\n"[i % 44] ^ (i / 4096) as u8).collect(),
            );
            inputs.push(vec![0u8; len]);
        }
        for (i, (data, digest)) in inputs.iter().zip(written).enumerate() {
            use sha1::Digest as _;
            let once = encode_as_earlier_builds(ObjectKind::Blob, data);
            let hex: String = sha1::Sha1::digest(&once).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, digest, "object {i}: {} bytes", data.len());
            // Again, from the same thread's compressor: a reset one writes the same bytes.
            assert_eq!(encode_as_earlier_builds(ObjectKind::Blob, data), once, "object {i} again");
        }
    }
}
