//! State IDs: the names of states, which are paths relative to the mount.
//!
//! A `StateId` is validated once, when it is built, so every layer above can rely on it:
//! UTF-8 (the chain is JSON and must stay human-readable), components separated by a single
//! `/`, no empty, `.` or `..` component, no NUL, no component over 255 bytes, and the first
//! component is never `.lightchain` (the control directory). The root directory is the empty
//! ID; it exists in every tree and cannot be created, removed or renamed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest name component the kernel lets a filesystem hold (`NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Longest whole state ID in bytes (`PATH_MAX` less its NUL). A deeper ID could be created
/// one component at a time with relative paths, but no tool could name it from the mount's
/// root, and the backing directory could not hold it under `states/`.
pub const MAX_PATH_LEN: usize = 4095;

/// The reserved name of the read-only control directory at the root of a mount.
pub const CONTROL_DIR: &str = ".lightchain";

/// Why a name cannot be a state ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateIdError {
    /// A component is empty (`a//b`, a leading or trailing `/`), or the whole ID is.
    #[error("empty name component")]
    Empty,
    /// A component is `.` or `..`.
    #[error("'.' and '..' are not state names")]
    Dot,
    /// A component is longer than 255 bytes.
    #[error("name component longer than {MAX_COMPONENT_LEN} bytes")]
    TooLong,
    /// The whole path is longer than 4,095 bytes.
    #[error("path longer than {MAX_PATH_LEN} bytes")]
    PathTooLong,
    /// The name holds a NUL byte.
    #[error("name contains a NUL byte")]
    Nul,
    /// The name is not valid UTF-8.
    #[error("name is not valid UTF-8")]
    NotUtf8,
    /// The name lies in the reserved control directory.
    #[error("'{CONTROL_DIR}' is reserved for the control directory")]
    Reserved,
}

/// A validated state ID (a path relative to the mount, `/`-separated). Empty means the root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StateId(String);

impl StateId {
    /// The root directory.
    pub fn root() -> StateId {
        StateId(String::new())
    }

    /// Parses and validates a relative path such as `app/config.json`.
    pub fn parse(path: &str) -> Result<StateId, StateIdError> {
        if path.is_empty() {
            return Err(StateIdError::Empty);
        }
        if path.len() > MAX_PATH_LEN {
            return Err(StateIdError::PathTooLong);
        }
        for (i, component) in path.split('/').enumerate() {
            validate_component(component)?;
            if i == 0 && component == CONTROL_DIR {
                return Err(StateIdError::Reserved);
            }
        }
        Ok(StateId(path.to_owned()))
    }

    /// The ID of `name` inside this directory. `name` is one component, as the kernel sends it.
    pub fn child(&self, name: &[u8]) -> Result<StateId, StateIdError> {
        let name = std::str::from_utf8(name).map_err(|_| StateIdError::NotUtf8)?;
        if name.contains('/') {
            return Err(StateIdError::Empty);
        }
        validate_component(name)?;
        if self.0.len() + 1 + name.len() > MAX_PATH_LEN {
            return Err(StateIdError::PathTooLong);
        }
        if self.is_root() {
            if name == CONTROL_DIR {
                return Err(StateIdError::Reserved);
            }
            Ok(StateId(name.to_owned()))
        } else {
            Ok(StateId(format!("{}/{}", self.0, name)))
        }
    }

    /// Whether this is the root directory.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as a string (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The containing directory; `None` for the root.
    pub fn parent(&self) -> Option<StateId> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => StateId(self.0[..i].to_owned()),
            None => StateId::root(),
        })
    }

    /// The last component (empty for the root).
    pub fn name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &StateId) -> bool {
        other.is_root()
            || self == other
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// Replaces the prefix `from` (which `self` must lie within) by `to`.
    pub fn rebase(&self, from: &StateId, to: &StateId) -> StateId {
        debug_assert!(self.is_within(from) && !from.is_root());
        let rest = &self.0[from.0.len()..];
        StateId(format!("{}{}", to.0, rest))
    }
}

fn validate_component(component: &str) -> Result<(), StateIdError> {
    match component {
        "" => Err(StateIdError::Empty),
        "." | ".." => Err(StateIdError::Dot),
        c if c.len() > MAX_COMPONENT_LEN => Err(StateIdError::TooLong),
        c if c.contains('\0') => Err(StateIdError::Nul),
        _ => Ok(()),
    }
}

impl TryFrom<String> for StateId {
    type Error = StateIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() {
            return Ok(StateId::root());
        }
        StateId::parse(&s)
    }
}

impl From<StateId> for String {
    fn from(id: StateId) -> String {
        id.0
    }
}

impl fmt::Display for StateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str("/")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for StateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nested_paths() {
        let id = StateId::parse("app/config.json").unwrap();
        assert_eq!(id.name(), "config.json");
        assert_eq!(id.parent().unwrap().as_str(), "app");
        assert_eq!(id.parent().unwrap().parent(), Some(StateId::root()));
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(StateId::parse(""), Err(StateIdError::Empty));
        assert_eq!(StateId::parse("a//b"), Err(StateIdError::Empty));
        assert_eq!(StateId::parse("/abs"), Err(StateIdError::Empty));
        assert_eq!(StateId::parse("a/"), Err(StateIdError::Empty));
        assert_eq!(StateId::parse("a/./b"), Err(StateIdError::Dot));
        assert_eq!(StateId::parse(".."), Err(StateIdError::Dot));
        assert_eq!(StateId::parse("a\0b"), Err(StateIdError::Nul));
        let long = "x".repeat(256);
        assert_eq!(StateId::parse(&long), Err(StateIdError::TooLong));
        assert!(StateId::parse(&"x".repeat(255)).is_ok());
        assert_eq!(StateId::parse(".lightchain"), Err(StateIdError::Reserved));
        assert_eq!(StateId::parse(".lightchain/status"), Err(StateIdError::Reserved));
        // Only the top level is reserved.
        assert!(StateId::parse("app/.lightchain").is_ok());
    }

    #[test]
    fn child_validates_one_component() {
        let root = StateId::root();
        assert_eq!(root.child(b"a").unwrap().as_str(), "a");
        assert_eq!(root.child(b".lightchain"), Err(StateIdError::Reserved));
        assert_eq!(root.child(b"a/b"), Err(StateIdError::Empty));
        assert_eq!(root.child(&[0xff]), Err(StateIdError::NotUtf8));
        let dir = StateId::parse("d").unwrap();
        assert_eq!(dir.child(b".lightchain").unwrap().as_str(), "d/.lightchain");
        assert_eq!(dir.child(&[b'y'; 256]), Err(StateIdError::TooLong));
    }

    #[test]
    fn whole_paths_stop_at_path_max() {
        // 16 components of 255 bytes and their slashes make 4,095 bytes: the longest legal ID.
        let component = "c".repeat(255);
        let longest = vec![component.as_str(); 16].join("/");
        assert_eq!(longest.len(), MAX_PATH_LEN);
        let id = StateId::parse(&longest).unwrap();
        assert_eq!(StateId::parse(&format!("{longest}x")), Err(StateIdError::PathTooLong));
        let parent = id.parent().unwrap();
        assert_eq!(parent.child(component.as_bytes()).unwrap(), id);
        assert_eq!(id.child(b"x"), Err(StateIdError::PathTooLong));
        assert_eq!(StateId::root().child(component.as_bytes()).unwrap().as_str().len(), 255);
    }

    #[test]
    fn within_and_rebase() {
        let a = StateId::parse("a").unwrap();
        let ab = StateId::parse("a/b").unwrap();
        let abc = StateId::parse("abc").unwrap();
        assert!(ab.is_within(&a));
        assert!(a.is_within(&a));
        assert!(!abc.is_within(&a));
        assert!(ab.is_within(&StateId::root()));
        let z = StateId::parse("z/y").unwrap();
        assert_eq!(ab.rebase(&a, &z).as_str(), "z/y/b");
    }
}
