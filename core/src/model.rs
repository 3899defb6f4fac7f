//! Ids and value types shared by every part of Shoal.
//!
//! Constructors that take user input validate it and return [`ModelError`]; the plain
//! newtype ids are infallible because any value is a valid id.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Smallest replication factor a database may ask for.
pub const MIN_REPLICATION_FACTOR: u8 = 1;
/// Largest replication factor a database may ask for.
pub const MAX_REPLICATION_FACTOR: u8 = 7;
/// Longest database name accepted, in bytes.
pub const MAX_DATABASE_NAME_LEN: usize = 64;

/// A value a user or peer supplied that Shoal refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum ModelError {
    /// Database names are 1..=64 bytes of `[A-Za-z0-9_]`, starting with a letter.
    #[error("invalid database name {name:?}: {reason}")]
    InvalidDatabaseName {
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Replication factor outside `MIN_REPLICATION_FACTOR..=MAX_REPLICATION_FACTOR`.
    #[error(
        "replication factor {0} is outside {MIN_REPLICATION_FACTOR}..={MAX_REPLICATION_FACTOR}"
    )]
    InvalidReplicationFactor(u8),
    /// A region kind code that is neither schema (1) nor data (2).
    #[error("unknown region kind code {0}")]
    UnknownRegionKind(u8),
    /// An address that is not `host:port`.
    #[error("invalid address {0:?}: expected host:port")]
    InvalidAddress(String),
}

/// Identifies a DataNode for the life of the cluster; allocated by the ConfigNode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DataNodeId(pub u32);

impl fmt::Display for DataNodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dn-{}", self.0)
    }
}

/// What a region holds. The numeric code is stable on the wire and on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum RegionKind {
    /// Metadata regions (time-series schema in IoTDB terms).
    Schema = 1,
    /// Data regions: the bulk of the bytes, and the slow ones to delete.
    Data = 2,
}

impl RegionKind {
    /// The stable numeric code of this kind.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<RegionKind> for u8 {
    fn from(kind: RegionKind) -> u8 {
        kind.code()
    }
}

impl TryFrom<u8> for RegionKind {
    type Error = ModelError;
    fn try_from(code: u8) -> Result<Self, ModelError> {
        match code {
            1 => Ok(RegionKind::Schema),
            2 => Ok(RegionKind::Data),
            other => Err(ModelError::UnknownRegionKind(other)),
        }
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionKind::Schema => "schema",
            RegionKind::Data => "data",
        })
    }
}

/// Identifies one region group (all replicas of a region share it). Ids are allocated from
/// [`crate::state::ClusterState`], so a replay of the log allocates the same ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RegionId {
    pub kind: RegionKind,
    /// Unique across kinds within a cluster.
    pub id: u32,
}

impl RegionId {
    /// A region id of `kind` with number `id`.
    pub const fn new(kind: RegionKind, id: u32) -> Self {
        Self { kind, id }
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.kind, self.id)
    }
}

/// Where a DataNode can be reached.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct DataNodeLocation {
    pub id: DataNodeId,
    /// `host:port` of its RPC endpoint (opaque to core; the transport interprets it).
    pub address: String,
}

impl DataNodeLocation {
    /// Validates that `address` looks like `host:port`.
    pub fn new(id: DataNodeId, address: impl Into<String>) -> Result<Self, ModelError> {
        let address = address.into();
        let valid = match address.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
            None => false,
        };
        if !valid {
            return Err(ModelError::InvalidAddress(address));
        }
        Ok(Self { id, address })
    }
}

/// A region group and the DataNodes that hold its replicas, in placement order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RegionReplicaSet {
    pub region: RegionId,
    /// DataNodes holding a replica (sorted, no duplicates).
    pub replicas: Vec<DataNodeId>,
}

impl RegionReplicaSet {
    /// A replica set; `replicas` is sorted and deduplicated so equal sets compare equal.
    pub fn new(region: RegionId, mut replicas: Vec<DataNodeId>) -> Self {
        replicas.sort();
        replicas.dedup();
        Self { region, replicas }
    }
}

/// A validated database name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatabaseName(String);

impl DatabaseName {
    /// Validates `name`: 1..=64 bytes of `[A-Za-z0-9_]`, starting with a letter.
    pub fn new(name: impl Into<String>) -> Result<Self, ModelError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > MAX_DATABASE_NAME_LEN {
            Some("longer than 64 bytes")
        } else if !name.as_bytes()[0].is_ascii_alphabetic() {
            Some("must start with a letter")
        } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            Some("only letters, digits and '_' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ModelError::InvalidDatabaseName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DatabaseName {
    type Error = ModelError;
    fn try_from(name: String) -> Result<Self, ModelError> {
        Self::new(name)
    }
}

impl From<DatabaseName> for String {
    fn from(name: DatabaseName) -> String {
        name.0
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated replication factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct ReplicationFactor(u8);

impl ReplicationFactor {
    /// Validates `factor` against `MIN_REPLICATION_FACTOR..=MAX_REPLICATION_FACTOR`.
    pub fn new(factor: u8) -> Result<Self, ModelError> {
        if (MIN_REPLICATION_FACTOR..=MAX_REPLICATION_FACTOR).contains(&factor) {
            Ok(Self(factor))
        } else {
            Err(ModelError::InvalidReplicationFactor(factor))
        }
    }

    /// The factor as a number.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Replicas needed for a majority.
    pub const fn majority(self) -> usize {
        self.0 as usize / 2 + 1
    }
}

impl TryFrom<u8> for ReplicationFactor {
    type Error = ModelError;
    fn try_from(factor: u8) -> Result<Self, ModelError> {
        Self::new(factor)
    }
}

impl From<ReplicationFactor> for u8 {
    fn from(factor: ReplicationFactor) -> u8 {
        factor.0
    }
}

/// A database's schema as the ConfigNode stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct DatabaseSchema {
    pub name: DatabaseName,
    /// Replicas per schema region group.
    pub schema_replication_factor: ReplicationFactor,
    /// Replicas per data region group.
    pub data_replication_factor: ReplicationFactor,
}

/// Identifies one asynchronous DataNode task. Chosen and persisted by the procedure that owns
/// it before it is submitted, so a retry resubmits the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task-{}", self.0)
    }
}

/// Identifies an entry of the ConfigNode's region-maintain queue: a queued create of a
/// missing replica, or (from old logs) a pending legacy deletion. Allocated from the cluster
/// state. Not a DataNode task id ([`TaskId`]): the two never name the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MaintainQueueId(pub u64);

impl fmt::Display for MaintainQueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queued-{}", self.0)
    }
}

/// Identifies one procedure; allocated from the cluster state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcedureId(pub u64);

impl fmt::Display for ProcedureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proc-{}", self.0)
    }
}

/// A leader's epoch (the Raft term later). Strictly increases with every leader change.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_validated() {
        assert!(DatabaseName::new("root_sg1").is_ok());
        for bad in ["", "1abc", "a-b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(
                    DatabaseName::new(bad),
                    Err(ModelError::InvalidDatabaseName { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn replication_factor_bounds_are_enforced() {
        assert_eq!(
            ReplicationFactor::new(0),
            Err(ModelError::InvalidReplicationFactor(0))
        );
        assert_eq!(
            ReplicationFactor::new(8),
            Err(ModelError::InvalidReplicationFactor(8))
        );
        assert_eq!(ReplicationFactor::new(3).map(|f| f.majority()), Ok(2));
    }

    #[test]
    fn unknown_region_kind_is_typed_error() {
        assert_eq!(
            RegionKind::try_from(9),
            Err(ModelError::UnknownRegionKind(9))
        );
        assert_eq!(RegionKind::try_from(2), Ok(RegionKind::Data));
    }

    #[test]
    fn addresses_need_host_and_port() {
        assert!(DataNodeLocation::new(DataNodeId(1), "127.0.0.1:6667").is_ok());
        assert!(DataNodeLocation::new(DataNodeId(1), "localhost").is_err());
        assert!(DataNodeLocation::new(DataNodeId(1), ":80").is_err());
        assert!(DataNodeLocation::new(DataNodeId(1), "h:99999").is_err());
    }

    #[test]
    fn serde_rejects_invalid_names() {
        let mut bytes = Vec::new();
        ciborium::into_writer(&"9bad", &mut bytes).unwrap();
        let decoded: Result<DatabaseName, _> = ciborium::from_reader(bytes.as_slice());
        assert!(decoded.is_err());
    }
}
