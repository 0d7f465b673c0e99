//! How log entries travel and rest: a binary encoding (MessagePack over serde, structs as maps
//! of named fields) for the consensus log and for the messages that carry entries or
//! transactions between members.
//!
//! JSON escapes binary content (base64, 1.33×) or text with control bytes (`\u0000`, 6×), and
//! parsing megabytes of it costs more than the fsync that follows. MessagePack writes a state's
//! content as its raw bytes with a length prefix (`chain::Content` serializes as bytes in
//! non-human-readable formats), so an entry holding a 1 MiB state is about 1 MiB in the log and
//! on the wire. The chain in `chain/` stays JSON, for people.
//!
//! The format must be self-describing: transactions leave fields out when they hold their
//! default (`uid`/`gid` 0, `acked_below` 0, no inode precondition — so old chains read the
//! same), and a format that decodes by position (postcard, bincode) misreads everything after
//! an omitted field. Field names cost a few bytes per transaction; content dominates.
//!
//! - Log records carry a one-byte tag ([`RECORD_BINARY`]) before the MessagePack bytes. Records
//!   written by earlier versions are JSON objects (their first byte is `{`) and still read.
//! - gRPC messages say their encoding in an `encoding` field (`pb::Encoding`): absent (`JSON`)
//!   from earlier versions, so both are read.
//!
//! This module encodes and decodes; it never touches files or sockets.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rpc::pb::Encoding;

/// Tag of a MessagePack log record. (1 was a positional encoding that never shipped.)
pub const RECORD_BINARY: u8 = 2;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not the MessagePack encoding of the expected type.
    #[error("bad binary encoding: {0}")]
    Binary(#[from] rmp_serde::decode::Error),
    /// The bytes are not the JSON encoding of the expected type.
    #[error("bad JSON encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// A log record with an unknown tag.
    #[error("unknown log record format {0:#04x}")]
    UnknownFormat(u8),
    /// An encoding this version does not know.
    #[error("unknown message encoding {0}")]
    UnknownEncoding(i32),
}

/// The binary encoding of `value`.
pub fn to_binary<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("lightchain's types serialize as MessagePack")
}

/// Decodes the binary encoding of a `T`.
pub fn from_binary<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// A consensus log record for `value`: the tag, then the binary encoding.
pub fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_BINARY];
    rmp_serde::encode::write_named(&mut out, value).expect("lightchain's types serialize as MessagePack");
    out
}

/// Decodes a consensus log record: tagged binary, or the JSON of earlier versions.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.first() {
        Some(&RECORD_BINARY) => from_binary(&bytes[1..]),
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(&other) => Err(DecodeError::UnknownFormat(other)),
        None => Err(DecodeError::UnknownFormat(0)),
    }
}

/// Decodes a message payload in the `encoding` its sender named.
pub fn decode_message<T: DeserializeOwned>(encoding: i32, bytes: &[u8]) -> Result<T, DecodeError> {
    match Encoding::try_from(encoding) {
        Ok(Encoding::Binary) => from_binary(bytes),
        Ok(Encoding::Json) => Ok(serde_json::from_slice(bytes)?),
        Err(_) => Err(DecodeError::UnknownEncoding(encoding)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Batch, Content, RequestId, StateId, Transaction, TxOp};
    use crate::consensus::typ::Entry;

    fn entry_with(content: Vec<u8>) -> Entry {
        // One transaction with every optional field set, and one where they are left out of
        // the serialization (root's owner, acked_below 0, no inode): both must come back.
        let tx = |owner: u32, acked_below: u64, ino: Option<u64>, content: Content| Transaction {
            request: RequestId { node: 1, incarnation: 2, seq: 3 },
            acked_below,
            op: TxOp::Put { id: StateId::parse("big").unwrap(), content, uid: owner, gid: owner, ino },
        };
        let content = Content::from(content);
        let txs = vec![tx(1000, 3, Some(9), content.clone()), tx(0, 0, None, Content::from(&b"x"[..]))];
        let batch = Batch { timestamp_ms: 42, txs };
        Entry {
            log_id: openraft::LogId::new(crate::consensus::typ::CommittedLeaderId { term: 3, node_id: 1 }, 7),
            payload: openraft::EntryPayload::Normal(batch),
        }
    }

    #[test]
    fn records_are_compact_and_old_json_records_still_read() {
        for content in [
            vec![0u8; 1 << 20],
            (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect(),
        ] {
            let entry = entry_with(content);
            let record = encode_record(&entry);
            assert!(record.len() < (1 << 20) + 300, "a 1 MiB state takes {} bytes", record.len());
            let back: Entry = decode_record(&record).unwrap();
            assert_eq!(back.log_id, entry.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", entry.payload));
            let json = serde_json::to_vec(&entry).unwrap();
            let old: Entry = decode_record(&json).unwrap();
            assert_eq!(format!("{:?}", old.payload), format!("{:?}", entry.payload));
        }
        assert!(matches!(decode_record::<Entry>(&[9, 1, 2]), Err(DecodeError::UnknownFormat(9))));
    }

    #[test]
    fn messages_are_read_in_the_encoding_they_name() {
        let entry = entry_with(b"text".to_vec());
        let binary = to_binary(&entry);
        let json = serde_json::to_vec(&entry).unwrap();
        let a: Entry = decode_message(Encoding::Binary as i32, &binary).unwrap();
        let b: Entry = decode_message(Encoding::Json as i32, &json).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(decode_message::<Entry>(Encoding::Json as i32, &binary).is_err());
        assert!(matches!(decode_message::<Entry>(77, &binary), Err(DecodeError::UnknownEncoding(77))));
    }
}
