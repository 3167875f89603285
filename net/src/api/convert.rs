//! Conversions between wire types and core's types. Every conversion from the wire checks
//! its input and fails with a message for `INVALID_ARGUMENT`; none panics.

use super::proto;
use cohort_core::ids::ClientId;
use cohort_core::state_machine::{
    Command, Expected, NewObject, ObjectKind, Oid, RefName, RefUpdate, RefValue, RelativePath, RepoId, WriteOp,
};

pub type Invalid = String;

pub fn repo(repo: Option<proto::Repo>) -> Result<RepoId, Invalid> {
    let repo = repo.ok_or("missing repo")?;
    let relative_path = RelativePath::new(&repo.relative_path).map_err(|e| e.to_string())?;
    Ok(RepoId { storage: repo.storage, relative_path })
}

pub fn repo_to_wire(repo: &RepoId) -> proto::Repo {
    proto::Repo { storage: repo.storage.clone(), relative_path: repo.relative_path.as_str().to_owned() }
}

pub fn write_id(id: Option<proto::WriteId>) -> Result<(ClientId, u64), Invalid> {
    let id = id.ok_or("missing write id (client id and sequence number)")?;
    Ok((ClientId(id.client_id), id.sequence))
}

pub fn oid(bytes: &[u8]) -> Result<Oid, Invalid> {
    let raw: [u8; 20] = bytes.try_into().map_err(|_| format!("object id has {} bytes, not 20", bytes.len()))?;
    Ok(Oid(raw))
}

pub fn kind(kind: &str) -> Result<ObjectKind, Invalid> {
    kind.parse::<ObjectKind>().map_err(|e| e.to_string())
}

pub fn ref_value(value: Option<proto::RefValue>) -> Result<RefValue, Invalid> {
    match value.and_then(|v| v.value).ok_or("missing reference value")? {
        proto::ref_value::Value::Oid(bytes) => Ok(RefValue::Direct(oid(&bytes)?)),
        proto::ref_value::Value::Symbolic(name) => {
            Ok(RefValue::Symbolic(RefName::new(&name).map_err(|e| e.to_string())?))
        }
    }
}

pub fn ref_value_to_wire(value: &RefValue) -> proto::RefValue {
    let value = match value {
        RefValue::Direct(oid) => proto::ref_value::Value::Oid(oid.0.to_vec()),
        RefValue::Symbolic(name) => proto::ref_value::Value::Symbolic(name.as_str().to_owned()),
    };
    proto::RefValue { value: Some(value) }
}

pub fn ref_update(update: proto::RefUpdate) -> Result<RefUpdate, Invalid> {
    let name = RefName::new(&update.name).map_err(|e| e.to_string())?;
    let expected = match update.expected {
        None | Some(proto::ref_update::Expected::Any(_)) => Expected::Any,
        Some(proto::ref_update::Expected::MustNotExist(_)) => Expected::MustNotExist,
        Some(proto::ref_update::Expected::Value(value)) => Expected::Value(ref_value(Some(value))?),
    };
    let new = match update.new_value {
        None => None,
        Some(value) => Some(ref_value(Some(value))?),
    };
    Ok(RefUpdate { name, expected, new })
}

pub fn write_command(request: proto::WriteRequest) -> Result<Command, Invalid> {
    let repo = repo(request.repo)?;
    let (client, seq) = write_id(request.id)?;
    let objects = request
        .objects
        .into_iter()
        .map(|o| Ok(NewObject::claimed(kind(&o.kind)?, o.data, oid(&o.oid)?)))
        .collect::<Result<Vec<_>, Invalid>>()?;
    let refs = request.refs.into_iter().map(ref_update).collect::<Result<Vec<_>, Invalid>>()?;
    Ok(Command { client, seq, op: WriteOp::Transaction { repo, objects, refs } })
}
