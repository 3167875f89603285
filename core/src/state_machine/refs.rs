//! Git references: name validation (as `git check-ref-format`), values, and the
//! compare-and-set of a transaction's reference updates.

use super::objects::Oid;
use super::{echo, Rejection};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// Longest reference name accepted, in bytes.
pub const REF_NAME_BYTES_MAX: usize = 1024;

/// A valid reference name: `HEAD`, or a name under `refs/` following the rules of
/// `git check-ref-format`. Validated on every construction, deserialization included.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct RefName(String);

impl RefName {
    pub fn new(name: impl Into<String>) -> Result<RefName, Rejection> {
        let name = name.into();
        match ref_name_problem(&name) {
            None => Ok(RefName(name)),
            Some(reason) => Err(Rejection::InvalidRefName { name: echo(&name), reason: reason.to_string() }),
        }
    }

    /// `HEAD`, the one name outside `refs/`.
    pub fn head() -> RefName {
        RefName("HEAD".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name is under `refs/` (everything but `HEAD`).
    pub fn is_under_refs(&self) -> bool {
        self.0.starts_with("refs/")
    }
}

impl TryFrom<String> for RefName {
    type Error = Rejection;
    fn try_from(name: String) -> Result<RefName, Rejection> {
        RefName::new(name)
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn ref_name_problem(name: &str) -> Option<&'static str> {
    if name == "HEAD" {
        return None;
    }
    if name.len() > REF_NAME_BYTES_MAX {
        return Some("longer than 1024 bytes");
    }
    if !name.starts_with("refs/") {
        return Some("must be HEAD or start with refs/");
    }
    if name.ends_with('/') {
        return Some("ends with `/`");
    }
    if name.ends_with('.') {
        return Some("ends with `.`");
    }
    if name.contains("//") {
        return Some("contains `//`");
    }
    if name.contains("..") {
        return Some("contains `..`");
    }
    if name.contains("@{") {
        return Some("contains `@{`");
    }
    // Bounded: the name is at most REF_NAME_BYTES_MAX bytes.
    for c in name.chars() {
        if c.is_ascii_control() {
            return Some("contains a control character");
        }
        if matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\') {
            return Some("contains one of space ~ ^ : ? * [ \\");
        }
    }
    for component in name.split('/') {
        if component.starts_with('.') {
            return Some("a component starts with `.`");
        }
        if component.ends_with(".lock") {
            return Some("a component ends with `.lock`");
        }
    }
    None
}

/// What a reference holds. Values are compared as stored: a symbolic reference is not resolved.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RefValue {
    Direct(Oid),
    /// Points to another reference (typically `HEAD` → `refs/heads/main`); the target must be
    /// under `refs/` and need not exist (an unborn branch).
    Symbolic(RefName),
}

impl fmt::Display for RefValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefValue::Direct(oid) => write!(f, "{oid}"),
            // Git's own spelling of a symbolic ref in a loose ref file.
            RefValue::Symbolic(target) => write!(f, "ref: {target}"),
        }
    }
}

/// The precondition of one reference update (the "compare" of compare-and-set).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Expected {
    /// No condition: overwrite whatever is there.
    Any,
    /// The reference must not exist (creating a branch).
    MustNotExist,
    /// The reference must hold exactly this value.
    Value(RefValue),
}

impl Expected {
    pub fn matches(&self, current: Option<&RefValue>) -> bool {
        match self {
            Expected::Any => true,
            Expected::MustNotExist => current.is_none(),
            Expected::Value(value) => current == Some(value),
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Any => f.write_str("any value"),
            Expected::MustNotExist => f.write_str("no reference"),
            Expected::Value(value) => write!(f, "{value}"),
        }
    }
}

/// One compare-and-set on a reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RefUpdate {
    pub name: RefName,
    pub expected: Expected,
    /// `None` deletes the reference.
    pub new: Option<RefValue>,
}

/// Checks what does not depend on the state: no name twice (preconditions are all checked
/// against the state before the transaction, so a second update of a name would be
/// ambiguous) and symbolic targets under `refs/` (so `HEAD` cannot point to itself).
pub(crate) fn check_update_shapes(updates: &[RefUpdate]) -> Result<(), Rejection> {
    let mut names = BTreeSet::new();
    for update in updates {
        if !names.insert(&update.name) {
            return Err(Rejection::DuplicateRefUpdate { name: update.name.clone() });
        }
        if let Some(RefValue::Symbolic(target)) = &update.new {
            if !target.is_under_refs() {
                return Err(Rejection::InvalidSymbolicTarget { name: update.name.clone(), target: target.clone() });
            }
        }
    }
    Ok(())
}
