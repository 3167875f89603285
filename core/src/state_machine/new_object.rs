//! An object a transaction writes, and how a command carries it: in Git's loose encoding, the
//! form the store keeps. It is compressed once, when the command is first encoded (by the
//! leader, or by a follower that forwards the proposal); every replica inflates the bytes (to
//! check them against the object's id, in `check_op`, as for every object a command carries)
//! and stores them as they came. An object of a command from an earlier build, which carried
//! it whole, is compressed by each replica when it applies it, as earlier builds did: with the
//! same compressor (`loose::encode_as_earlier_builds`), so that a replica that applies such an
//! entry after an upgrade stores the bytes its peers stored before it. New objects may use
//! another (`loose::encode`): only their first encoder compresses them.
//! Compressing on each replica instead was a twentieth of a follower's CPU under load, and
//! the uncompressed bytes went through every log and link (`perf`, `cargo bench --bench
//! vs_etcd`).

use super::{ObjectKind, Oid};
use crate::limits::COMMAND_SIZE_BYTES_MAX;
use crate::store::loose;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::sync::OnceLock;

/// An object a transaction writes, with the id the client claims for it.
///
/// Holds its content twice once encoded (`data` and its loose encoding), at most about twice
/// what `WriteOp::data_bytes` counts for it. Its hash and loose encoding are kept once
/// computed, so its parts are never changed after it is made (nothing does).
#[derive(Clone)]
pub struct NewObject {
    pub kind: ObjectKind,
    pub data: Vec<u8>,
    /// Verified: must equal `Oid::hash_object(kind, data)`.
    pub oid: Oid,
    /// `data` in Git's loose encoding, once something asked for it (or as it was decoded).
    loose: OnceLock<Vec<u8>>,
    /// The id `data` hashes to, once something asked for it: `check_op` asks before a command
    /// is proposed and again when it applies.
    hashed: OnceLock<Oid>,
    /// Decoded from a command an earlier build encoded (the object whole, not loose): encoded
    /// that way again, so that a command's bytes re-encode exactly.
    whole: bool,
}

impl NewObject {
    /// An object with its correct id.
    pub fn new(kind: ObjectKind, data: Vec<u8>) -> NewObject {
        let oid = Oid::hash_object(kind, &data);
        NewObject { hashed: OnceLock::from(oid), ..NewObject::claimed(kind, data, oid) }
    }

    /// An object with the id a client claims for it (checked before it is proposed, and again
    /// when it is applied).
    pub fn claimed(kind: ObjectKind, data: Vec<u8>, oid: Oid) -> NewObject {
        NewObject { kind, data, oid, loose: OnceLock::new(), hashed: OnceLock::new(), whole: false }
    }

    /// The id `data` hashes to (which `check_op` compares with the claimed `oid`).
    pub fn content_oid(&self) -> Oid {
        *self.hashed.get_or_init(|| Oid::hash_object(self.kind, &self.data))
    }

    /// Does now the work per byte that proposing this object takes, hashing and compressing
    /// it, so that where it is proposed finds both done (see `NodeService::write`).
    pub fn prepare(&self) {
        self.content_oid();
        self.loose();
    }

    /// Whether `prepare` (or what it does) was done.
    pub fn is_prepared(&self) -> bool {
        self.hashed.get().is_some() && self.loose.get().is_some()
    }

    /// The object in Git's loose encoding (zlib of its header and `data`), as the store keeps
    /// it: computed on first use, or the bytes it was decoded from.
    pub fn loose(&self) -> &[u8] {
        self.loose.get_or_init(|| match self.whole {
            true => loose::encode_as_earlier_builds(self.kind, &self.data),
            false => loose::encode(self.kind, &self.data),
        })
    }
}

impl PartialEq for NewObject {
    /// The object's parts; its loose encoding is a function of them, and how it travelled
    /// does not change what it is.
    fn eq(&self, other: &NewObject) -> bool {
        (self.kind, &self.data, self.oid) == (other.kind, &other.data, other.oid)
    }
}

impl Eq for NewObject {}

impl fmt::Debug for NewObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewObject")
            .field("kind", &self.kind)
            .field("oid", &self.oid)
            .field("size_bytes", &self.data.len())
            .finish()
    }
}

/// How an encoded object begins: with this tag, then its id and its loose encoding. The tag is
/// no `ObjectKind`'s variant index, which is how an object encoded before objects travelled
/// loose begins (its kind, then its data and its id), so commands in older logs still decode.
const LOOSE_TAG: u32 = 0x4c4f_4f53; // "LOOS"
const _: () = assert!(LOOSE_TAG as usize >= ObjectKind::ALL.len());

impl Serialize for NewObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(3)?;
        if self.whole {
            tuple.serialize_element(&self.kind)?;
            tuple.serialize_element(serde_bytes::Bytes::new(&self.data))?;
            tuple.serialize_element(&self.oid)?;
            return tuple.end();
        }
        tuple.serialize_element(&LOOSE_TAG)?;
        tuple.serialize_element(&self.oid)?;
        tuple.serialize_element(serde_bytes::Bytes::new(self.loose()))?;
        tuple.end()
    }
}

/// An object as decoded from a command, its content not yet inflated.
enum Encoded {
    Loose {
        oid: Oid,
        loose: Vec<u8>,
    },
    /// As encoded before objects travelled loose.
    Whole(NewObject),
}

impl Encoded {
    /// The object, its content inflated (refused if its header announces more than
    /// `size_bytes_max`). Its id is not checked here: `check_op` checks every object's, before
    /// anything applies it, and hashing twice was a cost on every replica.
    fn inflate(self, size_bytes_max: usize) -> Result<NewObject, String> {
        match self {
            Encoded::Loose { oid, loose } => {
                let (kind, data) = loose::inflate_within(&oid, &loose, size_bytes_max)?;
                Ok(NewObject { loose: OnceLock::from(loose), ..NewObject::claimed(kind, data, oid) })
            }
            Encoded::Whole(object) if object.data.len() > size_bytes_max => {
                Err(format!("object {}: {} bytes, more than {size_bytes_max}", object.oid, object.data.len()))
            }
            Encoded::Whole(object) => Ok(object),
        }
    }
}

impl<'de> Deserialize<'de> for Encoded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Encoded, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Encoded;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object: its id and loose encoding, or its kind, data and id")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Encoded, A::Error> {
                use serde::de::Error;
                let missing = || A::Error::custom("an object ends early");
                let tag: u32 = seq.next_element()?.ok_or_else(missing)?;
                if tag == LOOSE_TAG {
                    let oid: Oid = seq.next_element()?.ok_or_else(missing)?;
                    let loose: serde_bytes::ByteBuf = seq.next_element()?.ok_or_else(missing)?;
                    return Ok(Encoded::Loose { oid, loose: loose.into_vec() });
                }
                let kind = *ObjectKind::ALL
                    .get(tag as usize)
                    .ok_or_else(|| A::Error::custom(format!("an object begins with {tag:#x}")))?;
                let data: serde_bytes::ByteBuf = seq.next_element()?.ok_or_else(missing)?;
                let oid: Oid = seq.next_element()?.ok_or_else(missing)?;
                Ok(Encoded::Whole(NewObject { whole: true, ..NewObject::claimed(kind, data.into_vec(), oid) }))
            }
        }
        deserializer.deserialize_tuple(3, Visitor)
    }
}

impl<'de> Deserialize<'de> for NewObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NewObject, D::Error> {
        Encoded::deserialize(deserializer)?.inflate(usize::MAX).map_err(serde::de::Error::custom)
    }
}

/// A transaction's objects, each inflated only if the size its header announces fits in what
/// is left of `COMMAND_SIZE_BYTES_MAX` (what `validate` allows a proposal): a few bytes of
/// zlib can announce megabytes, and a command's bytes alone no longer bound what it inflates to.
pub(super) fn deserialize_objects<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<NewObject>, D::Error> {
    use serde::de::Error;
    let encoded = Vec::<Encoded>::deserialize(deserializer)?;
    let mut left_bytes = COMMAND_SIZE_BYTES_MAX;
    let mut objects = Vec::with_capacity(encoded.len());
    for object in encoded {
        let object = object.inflate(left_bytes).map_err(|reason| {
            D::Error::custom(format!("{reason} (objects of at most {COMMAND_SIZE_BYTES_MAX} bytes in one command)"))
        })?;
        left_bytes -= object.data.len();
        objects.push(object);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// An object as commands encoded it before objects travelled loose.
    #[derive(Serialize)]
    struct Whole {
        kind: ObjectKind,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        oid: Oid,
    }

    #[derive(Deserialize)]
    struct Objects(#[serde(deserialize_with = "deserialize_objects")] Vec<NewObject>);

    fn objects(bytes: &[u8]) -> Result<Vec<NewObject>, codec::DecodeError> {
        codec::decode::<Objects>("objects", bytes).map(|objects| objects.0)
    }

    fn text(size_bytes: usize) -> Vec<u8> {
        b"a line of text that repeats\n".iter().copied().cycle().take(size_bytes).collect()
    }

    #[test]
    fn an_object_travels_in_its_loose_encoding_and_is_stored_as_it_came() {
        let object = NewObject::new(ObjectKind::Blob, text(10_000));
        let bytes = codec::encode(&object);
        assert!(bytes.len() < 1_000, "compressible content travels compressed ({} bytes)", bytes.len());
        let decoded: NewObject = codec::decode("object", &bytes).unwrap();
        assert_eq!(decoded, object);
        assert_eq!(decoded.loose(), object.loose(), "the replica keeps the leader's bytes");
        assert_eq!(loose::decode(&object.oid, decoded.loose()).unwrap(), (ObjectKind::Blob, text(10_000)));
    }

    #[test]
    fn objects_encoded_whole_by_earlier_builds_still_decode() {
        let object = NewObject::new(ObjectKind::Tree, text(300));
        let whole = Whole { kind: object.kind, data: object.data.clone(), oid: object.oid };
        let whole_bytes = codec::encode(&whole);
        let decoded: NewObject = codec::decode("object", &whole_bytes).unwrap();
        assert_eq!(decoded, object);
        // Found by fuzzing: a decoded command re-encodes to the bytes it came from.
        assert_eq!(codec::encode(&decoded), whole_bytes, "it re-encodes whole, as it came");
        assert_eq!(
            decoded.loose(),
            loose::encode_as_earlier_builds(ObjectKind::Tree, &text(300)),
            "compressed as earlier builds did"
        );
        assert_eq!(objects(&codec::encode(&vec![whole])).unwrap(), vec![object]);
    }

    #[test]
    fn bytes_that_are_not_the_object_they_claim_are_refused_before_they_apply() {
        use crate::state_machine::{check_op, Rejection, RepoId, WriteOp};
        let object = NewObject::new(ObjectKind::Blob, text(100));
        let other = NewObject::new(ObjectKind::Blob, text(101));
        let mut bytes = codec::encode(&object);
        let at = bytes.len() - object.loose().len();
        bytes.truncate(at - 8);
        codec::encode_into(&serde_bytes::Bytes::new(other.loose()), &mut bytes);
        let lying: NewObject = codec::decode("object", &bytes).unwrap();
        assert_eq!((lying.oid, &lying.data), (object.oid, &other.data));
        let repo = RepoId::new("default", "a.git").unwrap();
        let op = WriteOp::Transaction { repo, objects: vec![lying], refs: Vec::new() };
        assert_eq!(check_op(&op), Err(Rejection::ObjectIdMismatch { claimed: object.oid, actual: other.oid }));
        // An unknown tag.
        let mut bytes = codec::encode(&object);
        bytes[..4].copy_from_slice(&7u32.to_le_bytes());
        assert!(codec::decode::<NewObject>("object", &bytes).is_err());
        // Every truncation is an error, never a panic.
        let bytes = codec::encode(&object);
        for end in 0..bytes.len() {
            assert!(codec::decode::<NewObject>("object", &bytes[..end]).is_err());
        }
    }

    #[test]
    fn a_command_cannot_inflate_past_the_command_bound() {
        // Three 4 MiB objects of zeros take a few tens of KiB encoded but announce 12 MiB.
        let zeros = |n: u8| {
            let mut data = vec![0; crate::state_machine::OBJECT_SIZE_BYTES_MAX];
            data[0] = n;
            NewObject::new(ObjectKind::Blob, data)
        };
        let two = vec![zeros(1), zeros(2)];
        let bytes = codec::encode(&two);
        assert!(bytes.len() < 1024 * 1024, "{} bytes announce 8 MiB", bytes.len());
        assert_eq!(objects(&bytes).unwrap(), two, "8 MiB together is within the bound");
        let three = vec![zeros(1), zeros(2), zeros(3)];
        let error = objects(&codec::encode(&three)).unwrap_err();
        assert!(error.reason.contains("more than"), "{error}");
    }
}
