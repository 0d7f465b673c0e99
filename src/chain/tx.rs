//! Transactions: what a block carries, and what the leader proposes as one log entry.
//!
//! A [`Transaction`] is one filesystem change ([`TxOp`]) plus the [`RequestId`] that makes it
//! idempotent: the state machine applies a request id at most once, so a forwarded or retried
//! proposal never changes a state twice. A [`Batch`] is the payload of one consensus log entry:
//! the transactions the leader packed while the previous entry was in flight (group commit),
//! stamped with the leader's clock when it was proposed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StateId;

/// A consensus node's id.
pub type NodeId = u64;

/// Identifies one proposal across retries and forwarding: which node made it, in which life of
/// that node's process (`incarnation`), and its sequence number there (see `chain::dedup`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct RequestId {
    /// The node that accepted the request from an application.
    pub node: NodeId,
    /// Random id of that node's process, made afresh at every start (not the data directory's
    /// incarnation, which names the node to its peers).
    pub incarnation: u64,
    /// Position of the request among that process's proposals, from 1.
    pub seq: u64,
}

/// Immutable, cheaply cloned file content.
///
/// In human-readable formats (the chain's JSON) it is a string when it is UTF-8 text whose
/// escaped form is no larger than base64 would be, so the chain stays readable with
/// `cat`/`jq`, and `{"base64": "..."}` otherwise (binary content, or text such as zero bytes
/// that JSON would escape to six times its size). In binary formats (the consensus log and
/// the wire, see `consensus::codec`) it is the raw bytes, length-prefixed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Content(Arc<[u8]>);

impl Content {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Content {
    fn from(v: Vec<u8>) -> Self {
        Content(v.into())
    }
}

impl From<&[u8]> for Content {
    fn from(v: &[u8]) -> Self {
        Content(v.into())
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.len() <= 64 => write!(f, "{s:?}"),
            _ => write!(f, "<{} bytes>", self.0.len()),
        }
    }
}

/// Content's JSON form, as read.
#[derive(Deserialize)]
#[serde(untagged)]
enum ContentRepr {
    Text(String),
    Binary { base64: String },
}

/// Content's JSON form, as written: the text borrowed, the base64 already a JSON string.
/// serde_json scans every byte of a string it writes for characters to escape (about as long
/// as encoding it in base64 with the `base64` crate, together 2.1 ms per MiB here); base64 has
/// none, so it is written as it is ([`RawValue`](serde_json::value::RawValue), which checks it
/// with serde_json's faster parser), and `base64-simd` encodes it: 0.5 ms per MiB in all.
#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut<'a> {
    Text(&'a str),
    Binary { base64: Box<serde_json::value::RawValue> },
}

/// `bytes` in base64, as a JSON string (quoted).
fn base64_json(bytes: &[u8]) -> Box<serde_json::value::RawValue> {
    let mut quoted = String::with_capacity(bytes.len().div_ceil(3) * 4 + 2);
    quoted.push('"');
    base64_simd::STANDARD.encode_append(bytes, &mut quoted);
    quoted.push('"');
    serde_json::value::RawValue::from_string(quoted).expect("base64 in quotes is a JSON string")
}

/// Bytes `text` takes as a JSON string body (serde_json's escapes).
fn json_escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(&self.0);
        }
        let base64_len = self.0.len().div_ceil(3) * 4;
        match std::str::from_utf8(&self.0) {
            Ok(text) if json_escaped_len(text) <= base64_len.max(text.len()) => {
                ContentOut::Text(text).serialize(s)
            }
            _ => ContentOut::Binary { base64: base64_json(&self.0) }.serialize(s),
        }
    }
}

/// Reads the raw bytes of a binary format.
struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Content;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("content bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Content, E> {
        Ok(Content::from(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Content, E> {
        Ok(Content::from(v))
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return d.deserialize_byte_buf(BytesVisitor);
        }
        match ContentRepr::deserialize(d)? {
            ContentRepr::Text(text) => Ok(Content::from(text.into_bytes())),
            ContentRepr::Binary { base64 } => base64_simd::STANDARD
                .decode_to_vec(base64)
                .map(Content::from)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// How a rename treats an existing target (`renameat2` flags).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenameMode {
    /// Plain `rename`: an existing target is replaced.
    #[default]
    Replace,
    /// `RENAME_NOREPLACE`: fail with "exists" if the target exists.
    NoReplace,
    /// `RENAME_EXCHANGE`: atomically swap source and target, which must both exist.
    Exchange,
}

/// The consensus membership a membership block records: voter sets (one, or two during a
/// joint change) and the address of every node.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Members {
    /// Voter configurations; more than one only during a joint-consensus change.
    pub configs: Vec<BTreeSet<NodeId>>,
    /// Every member (voter or learner) and the address peers reach it at.
    pub nodes: BTreeMap<NodeId, String>,
}

/// A time a `times` transaction sets (`utimensat`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSpec {
    /// The timestamp of the block that applies the transaction (deterministic on every node).
    Now,
    /// Nanoseconds since the Unix epoch (negative: before 1970).
    At(i64),
}

/// Longest symlink target, in bytes (Linux's `PATH_MAX` less the terminating NUL).
pub const MAX_SYMLINK_TARGET: usize = 4095;

/// For `skip_serializing_if`: root's owner (0) and "no acknowledged bound" (0) are left out of
/// the JSON, so old readers and people see nothing new where nothing is.
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One change to the tree of states.
///
/// Owner fields (`uid`, `gid`) name the caller that creates a state. They default to 0 (root)
/// and are left out of the JSON when 0, so chains written before owners existed — when every
/// state was root's — decode to the same transactions and keep their hashes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxOp {
    /// Replace a file's content, creating the file if it is missing (its parent must exist).
    Put {
        /// The file.
        id: StateId,
        /// Its new content.
        content: Content,
        /// Owner of the file if this creates it.
        #[serde(default, skip_serializing_if = "is_zero")]
        uid: u32,
        /// Group of the file if this creates it.
        #[serde(default, skip_serializing_if = "is_zero")]
        gid: u32,
        /// The inode the writing handle opened: the change applies only while `id` still
        /// names that inode (otherwise it is rejected as `moved`, and the writer looks for where
        /// its file went). `None`: whatever `id` names, created if missing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ino: Option<u64>,
    },
    /// Add bytes to the end of whatever the file holds when the block is applied.
    Append {
        /// The file.
        id: StateId,
        /// The bytes to add.
        content: Content,
        /// Owner of the file if this creates it.
        #[serde(default, skip_serializing_if = "is_zero")]
        uid: u32,
        /// Group of the file if this creates it.
        #[serde(default, skip_serializing_if = "is_zero")]
        gid: u32,
        /// The inode the writing handle opened: the change applies only while `id` still
        /// names that inode (otherwise it is rejected as `moved`, and the writer looks for where
        /// its file went). `None`: whatever `id` names, created if missing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ino: Option<u64>,
    },
    /// Create an empty file. With `exclusive`, the file must not exist (`O_EXCL`).
    Create {
        /// The file.
        id: StateId,
        /// Its permission bits.
        mode: u32,
        /// Fail if it exists.
        exclusive: bool,
        /// Its owner.
        #[serde(default, skip_serializing_if = "is_zero")]
        uid: u32,
        /// Its group.
        #[serde(default, skip_serializing_if = "is_zero")]
        gid: u32,
    },
    /// Remove a file or a symlink.
    Delete { id: StateId },
    /// Cut or zero-extend a file to `size` bytes (`truncate(path)`).
    Truncate { id: StateId, size: u64 },
    /// Move a file, a symlink or a whole directory.
    Rename {
        from: StateId,
        to: StateId,
        #[serde(default)]
        mode: RenameMode,
    },
    /// Create a directory.
    Mkdir {
        /// The directory.
        id: StateId,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        #[serde(default, skip_serializing_if = "is_zero")]
        uid: u32,
        /// Its group.
        #[serde(default, skip_serializing_if = "is_zero")]
        gid: u32,
    },
    /// Remove an empty directory.
    Rmdir { id: StateId },
    /// Change permission bits.
    Chmod { id: StateId, mode: u32 },
    /// A consensus membership change (also the genesis block's only transaction). Only
    /// consensus itself (request node 0, alone in its block) makes one; from anyone else it is
    /// rejected as invalid.
    Membership { members: Members },
    /// Set the cluster-wide limits ([`Limits`](super::Limits)). With `initial`, only if none
    /// were set yet (the first limits a new cluster's members propose; one wins).
    Limits {
        /// The most bytes a file's content may hold (1 up to [`MAX_STATE_SIZE_CAP`](super::MAX_STATE_SIZE_CAP)).
        max_state_size: u64,
        /// Apply only if the chain holds no limits yet (else rejected as `already_exists`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        initial: bool,
    },
    /// Create a symbolic link holding `target` (at most [`MAX_SYMLINK_TARGET`] bytes).
    Symlink {
        /// The link.
        id: StateId,
        /// What it points to, as given (never resolved by lightchain).
        target: String,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Change the owner and/or group (`chown`), with the permission bits the kernel sends in
    /// the same request (setuid/setgid cleared), so both change in one transaction.
    Chown {
        /// The state.
        id: StateId,
        /// New owner.
        uid: Option<u32>,
        /// New group.
        gid: Option<u32>,
        /// New permission bits, if they change too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Set access and/or modification time (`utimensat`); ctime becomes the block's time.
    Times {
        /// The state.
        id: StateId,
        /// New access time.
        atime: Option<TimeSpec>,
        /// New modification time.
        mtime: Option<TimeSpec>,
    },
}

impl TxOp {
    /// The states this transaction names (for `lightchain log STATE_ID` and for logs).
    pub fn state_ids(&self) -> Vec<&StateId> {
        match self {
            TxOp::Put { id, .. }
            | TxOp::Append { id, .. }
            | TxOp::Create { id, .. }
            | TxOp::Delete { id }
            | TxOp::Truncate { id, .. }
            | TxOp::Mkdir { id, .. }
            | TxOp::Rmdir { id }
            | TxOp::Chmod { id, .. }
            | TxOp::Symlink { id, .. }
            | TxOp::Chown { id, .. }
            | TxOp::Times { id, .. } => vec![id],
            TxOp::Rename { from, to, .. } => vec![from, to],
            TxOp::Membership { .. } | TxOp::Limits { .. } => vec![],
        }
    }

    /// A short name of the kind of change.
    pub fn kind(&self) -> &'static str {
        match self {
            TxOp::Put { .. } => "put",
            TxOp::Append { .. } => "append",
            TxOp::Create { .. } => "create",
            TxOp::Delete { .. } => "delete",
            TxOp::Truncate { .. } => "truncate",
            TxOp::Rename { .. } => "rename",
            TxOp::Mkdir { .. } => "mkdir",
            TxOp::Rmdir { .. } => "rmdir",
            TxOp::Chmod { .. } => "chmod",
            TxOp::Membership { .. } => "membership",
            TxOp::Limits { .. } => "limits",
            TxOp::Symlink { .. } => "symlink",
            TxOp::Chown { .. } => "chown",
            TxOp::Times { .. } => "times",
        }
    }
}

/// A change with the request id that makes it idempotent.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Transaction {
    /// Who asked, for deduplication.
    pub request: RequestId,
    /// Every seq of this request's origin below this was answered to its application and is
    /// never retried: the state machine may forget them (see `chain::dedup`). 0 in old chains.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub acked_below: u64,
    /// What to change.
    pub op: TxOp,
}

/// The payload of one consensus log entry: the transactions of one block.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Batch {
    /// The leader's clock when it proposed the entry (milliseconds since the Unix epoch).
    pub timestamp_ms: u64,
    /// The transactions, applied in this order.
    pub txs: Vec<Transaction>,
}

/// Why a transaction's precondition failed when its block was applied. Deterministic: every
/// node rejects the same transaction for the same reason.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    /// The state, or the directory it should be in, does not exist.
    #[error("no such state")]
    NotFound,
    /// The name is taken (exclusive create, mkdir, no-replace rename).
    #[error("already exists")]
    AlreadyExists,
    /// A path component that must be a directory is a file.
    #[error("not a directory")]
    NotADirectory,
    /// A file operation named a directory.
    #[error("is a directory")]
    IsADirectory,
    /// A directory that must be empty is not.
    #[error("directory not empty")]
    NotEmpty,
    /// The operation makes no sense (a directory moved into itself, the root removed).
    #[error("invalid operation")]
    Invalid,
    /// The change would give a state a path longer than 4,095 bytes (a rename of a directory
    /// whose deepest state would end up too deep).
    #[error("a resulting path would be too long")]
    NameTooLong,
    /// The path no longer names the inode the writing handle opened (it was renamed away or
    /// removed after the commit named it).
    #[error("the state moved")]
    Moved,
    /// The change would make a state larger than the cluster's `max_state_size`.
    #[error("larger than the cluster's max state size")]
    TooBig,
}

/// What applying a transaction did, recorded in the block.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The change was made.
    Ok,
    /// A precondition failed; nothing changed.
    Rejected(Reject),
    /// The request id was applied before; nothing changed. Its proposer is told the first
    /// application's outcome.
    Duplicate,
    /// The request id is below its origin's horizon and not remembered: whether it applied
    /// can no longer be told. Nothing changed; its proposer hears "outcome unknown".
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_json_is_readable_text_or_base64() {
        let text = Content::from(b"hello\n".to_vec());
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""hello\n""#);
        let binary = Content::from(vec![0xff, 0x00]);
        let json = serde_json::to_string(&binary).unwrap();
        assert_eq!(json, r#"{"base64":"/wA="}"#);
        assert_eq!(serde_json::from_str::<Content>(&json).unwrap(), binary);
        assert_eq!(serde_json::from_str::<Content>(r#""hello\n""#).unwrap(), text);
        // Text that JSON would escape to several times its size goes as base64.
        let zeros = Content::from(vec![0u8; 300]);
        let json = serde_json::to_string(&zeros).unwrap();
        assert!(json.starts_with(r#"{"base64":"#) && json.len() < 420, "{json}");
        assert_eq!(serde_json::from_str::<Content>(&json).unwrap(), zeros);
        let tabs = Content::from(b"a\tb\n".to_vec());
        assert_eq!(serde_json::to_string(&tabs).unwrap(), r#""a\tb\n""#);
    }

    #[test]
    fn binary_content_is_standard_padded_base64_and_reads_back_at_every_length() {
        // RFC 4648's vectors, behind a byte that is not UTF-8 so they go as base64.
        for (tail, want) in
            [("", "/w=="), ("f", "/2Y="), ("fo", "/2Zv"), ("foo", "/2Zvbw=="), ("foobar", "/2Zvb2Jhcg==")]
        {
            let content = Content::from([&[0xff][..], tail.as_bytes()].concat());
            let json = serde_json::to_string(&content).unwrap();
            assert_eq!(json, format!(r#"{{"base64":"{want}"}}"#));
            assert_eq!(serde_json::from_str::<Content>(&json).unwrap(), content);
        }
        // Inside a transaction's JSON, and through serde_json's Value, at lengths around the
        // encoder's blocks.
        for len in (0..100).chain([1 << 20, (1 << 20) + 1]) {
            let bytes: Vec<u8> =
                (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] | 0x80).collect();
            let op = TxOp::Put {
                id: StateId::parse("a/b").unwrap(),
                content: Content::from(bytes),
                uid: 0,
                gid: 0,
                ino: None,
            };
            let json = serde_json::to_vec(&op).unwrap();
            assert_eq!(serde_json::from_slice::<TxOp>(&json).unwrap(), op, "length {len}");
            let value = serde_json::to_value(&op).unwrap();
            assert_eq!(serde_json::from_value::<TxOp>(value).unwrap(), op, "length {len} through a Value");
        }
    }

    #[test]
    fn content_is_raw_bytes_in_binary_formats() {
        let mut bytes = vec![0u8; 1000];
        bytes.extend((0..=255u8).cycle().take(5000));
        let content = Content::from(bytes.clone());
        let encoded = rmp_serde::to_vec_named(&content).unwrap();
        assert!(encoded.len() <= bytes.len() + 3, "length prefix plus the bytes: {}", encoded.len());
        assert_eq!(rmp_serde::from_slice::<Content>(&encoded).unwrap(), content);
    }

    #[test]
    fn ops_serialize_externally_tagged() {
        let id = StateId::parse("greeting").unwrap();
        let op =
            TxOp::Put { id: id.clone(), content: Content::from(b"hi".to_vec()), uid: 0, gid: 0, ino: None };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"{"put":{"id":"greeting","content":"hi"}}"#, "root's owner is left out");
        assert_eq!(serde_json::from_str::<TxOp>(&json).unwrap(), op);
        let op = TxOp::Put {
            id: id.clone(),
            content: Content::from(b"hi".to_vec()),
            uid: 1000,
            gid: 5,
            ino: None,
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"{"put":{"id":"greeting","content":"hi","uid":1000,"gid":5}}"#);
        assert_eq!(serde_json::from_str::<TxOp>(&json).unwrap(), op);
        let op = TxOp::Times { id, atime: Some(TimeSpec::Now), mtime: Some(TimeSpec::At(-1_500_000_000)) };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"{"times":{"id":"greeting","atime":"now","mtime":{"at":-1500000000}}}"#);
        assert_eq!(serde_json::from_str::<TxOp>(&json).unwrap(), op);
        assert!(serde_json::from_str::<TxOp>(r#"{"delete":{"id":"../x"}}"#).is_err());
    }
}
