# Shoal's wire contract: the Cap'n Proto interfaces between ConfigNodes, DataNodes and
# admin clients.
#
# COMPATIBILITY RULES (read before editing):
# - Every field, union member, method and enumerant carries an explicit ordinal (@N). An
#   ordinal never changes meaning once released: never renumber, reuse or retype one.
#   Add new fields/methods with the next free ordinal; retire old ones by leaving them in
#   place (rename to `obsoleteXxx` if you must) so old peers still decode.
# - Stored codes (region kind, DataNode status) travel as the same explicit numbers core
#   uses on disk (`RegionKind::code`, `DataNodeStatus::code`), never as schema enum ordinals.
# - After editing, run `schema/regenerate.sh` and commit the regenerated
#   `transport-capnp/src/shoal_capnp.rs`; CI (`schema/check-generated.sh`) diffs the two.
#
# Connection flow: a client bootstraps a `Bootstrap` capability, which offers only
# `login(secret, role)`. A correct secret for the role returns the `Services` the node
# serves, each call checked against the role; a wrong one is refused with a typed error. No
# other capability is reachable without logging in. Until login a connection may send only
# small messages (64 KiB by default), a few of them, within the login deadline.

@0xe99fd65e8d7112ff;

# ---------------------------------------------------------------------------------------
# Shared values
# ---------------------------------------------------------------------------------------

struct RegionId {
  kind @0 :UInt8;        # RegionKind code: 1 = schema, 2 = data.
  id @1 :UInt32;
}

# Why a call failed on the peer. Timeouts and unreachable peers are detected by the caller
# and never sent; a server whose own implementation reports one sends `remote` with
# `retryable = true`.
struct Error {
  union {
    refused @0 :Text;            # Will not change by retrying (wrong secret, bad request).
    staleLeader :group {         # The request's leader epoch is older than one seen.
      requestEpoch @1 :UInt64;
      seenEpoch @2 :UInt64;
    }
    remote :group {              # The peer tried and failed.
      message @3 :Text;
      retryable @4 :Bool;
    }
    malformed @5 :Text;          # The request (or a reply) could not be decoded.
    # The peer is a ConfigNode that does not lead its group; the call did not run. `some`:
    # the address of the ConfigNode it believes leads; `none` during an election. (Added
    # with the replicated ConfigNode; older peers read it as an unknown member: malformed.)
    notLeader @6 :OptionalText;
  }
}

# A reply that carries no value on success.
struct UnitReply {
  union {
    ok @0 :Void;
    error @1 :Error;
  }
}

# ---------------------------------------------------------------------------------------
# Bootstrap and login
# ---------------------------------------------------------------------------------------

# The only capability a fresh connection can reach.
interface Bootstrap {
  # `role` (added later, field 1): who logs in, as a code — 1 ConfigNode, 2 DataNode,
  # 3 admin. ConfigNodes and DataNodes present the internal secret, admins the admin secret.
  # Older clients send none (0), which is refused: a login without a role gets nothing.
  login @0 (secret :Text, role :UInt8) -> (reply :LoginReply);
}

struct LoginReply {
  union {
    services @0 :Services;
    error @1 :Error;             # `refused` for a wrong secret or role; `remote` with
                                 # `retryable` while the address made too many failures.
  }
}

# The APIs a node serves. A node that does not serve one still returns a capability for it
# whose every call is refused.
struct Services {
  dataNode @0 :DataNode;
  configNode @1 :ConfigNode;
  # Raft messages between the ConfigNodes of one group: offered only to logins that may act
  # as a ConfigNode peer (every call of a refused or absent one answers `refused`).
  raft @2 :Raft;
  # The ConfigNode group's membership (list, add, remove), for admins.
  configNodeGroup @3 :ConfigNodeGroup;
}

# ---------------------------------------------------------------------------------------
# DataNode: regions and maintain tasks (mirrors core's `DataNodeApi`)
# ---------------------------------------------------------------------------------------

interface DataNode {
  createRegion @0 (epoch :UInt64, request :CreateRegionRequest) -> (reply :UnitReply);
  deleteRegion @1 (epoch :UInt64, region :RegionId) -> (reply :UnitReply);
  writeRegion @2 (region :RegionId, bytes :Data) -> (reply :WriteRegionReply);
  submitTask @3 (epoch :UInt64, task :MaintainTask) -> (reply :SubmitTaskReply);
  # `waitMs = 0` answers at once; otherwise the DataNode answers as soon as the task is
  # terminal or after `waitMs` milliseconds, whichever comes first (long poll).
  taskResult @4 (taskId :UInt64, waitMs :UInt64) -> (reply :TaskResultReply);
  ackTask @5 (epoch :UInt64, taskId :UInt64) -> (reply :UnitReply);
  heartbeat @6 (epoch :UInt64) -> (reply :HeartbeatReply);
  # Read-only and idempotent (not fenced by epoch): another DataNode's copy task pulls a
  # region through these. `maxLen` is capped by the server.
  readRegion @7 (region :RegionId, offset :UInt64, maxLen :UInt32) -> (reply :ReadRegionReply);
  # crc32c of the first `len` bytes (`none`: all of them).
  regionDigest @8 (region :RegionId, len :OptionalUInt64) -> (reply :RegionDigestReply);
}

struct RegionChunk {
  offset @0 :UInt64;
  data @1 :Data;
  crc32c @2 :UInt32;             # crc32c of `data`, computed by the sender.
  regionLen @3 :UInt64;          # The replica's whole length when read.
}

struct ReadRegionReply {
  union {
    chunk @0 :RegionChunk;
    error @1 :Error;
  }
}

struct RegionDigest {
  len @0 :UInt64;                # Bytes covered.
  crc32c @1 :UInt32;
  regionLen @2 :UInt64;
}

struct RegionDigestReply {
  union {
    digest @0 :RegionDigest;
    error @1 :Error;
  }
}

# A copy task's source: the DataNode to pull from, at the address it had when the task id
# was persisted.
struct CopyRegionTask {
  region @0 :RegionId;
  sourceId @1 :UInt32;
  sourceAddress @2 :Text;
}

struct CreateRegionRequest {
  region @0 :RegionId;
  database @1 :Text;
  peers @2 :List(UInt32);        # DataNode ids.
  generation @3 :UInt64;         # Creation generation; 0 (older senders): none.
}

struct WriteRegionReply {
  union {
    newSize @0 :UInt64;
    error @1 :Error;
  }
}

struct MaintainTask {
  taskId @0 :UInt64;
  # The first member is the default: a sender that set no kind is read as `unset` and
  # refused as malformed, never mistaken for a deletion.
  kind :union {
    unset @1 :Void;
    deleteRegionPeer @2 :RegionId;
    copyRegion @4 :CopyRegionTask;
  }
  # For deleteRegionPeer: the highest creation generation the deletion covers (creates of
  # the region at or below it are refused from its acceptance on). 0 (older senders): none.
  generation @3 :UInt64;
}

struct SubmitTaskReply {
  union {
    accepted @0 :Void;
    rejected @1 :Text;
    error @2 :Error;
  }
}

struct TaskResultReply {
  union {
    processing @0 :Void;
    success @1 :Void;
    fail @2 :Text;
    notExist @3 :Void;
    error @4 :Error;
  }
}

struct RegionReport {
  region @0 :RegionId;
  bytes @1 :UInt64;
}

struct HeartbeatReport {
  regions @0 :List(RegionReport);
  runningTasks @1 :List(UInt64);
}

struct HeartbeatReply {
  union {
    report @0 :HeartbeatReport;
    error @1 :Error;
  }
}

# ---------------------------------------------------------------------------------------
# ConfigNode: admin API and DataNode registration (mirrors core's `ConfigNodeApi`)
# ---------------------------------------------------------------------------------------

interface ConfigNode {
  createDatabase @0 (name :Text, schemaRf :UInt8, dataRf :UInt8,
                     dataRegionGroups :UInt32, schemaRegionGroups :UInt32)
      -> (reply :UnitReply);
  # `requestKey` (added later: parameters take ordinals in order, so it is field 1 and
  # old clients, which send none, read as `none`): the client's id for this request, the
  # same on each retry. A retry with the same key returns the first call's procedure id.
  deleteDatabase @1 (name :Text, requestKey :OptionalText) -> (reply :DeleteDatabaseReply);
  listDatabases @2 () -> (reply :ListDatabasesReply);
  # `database` empty: every database's groups.
  listRegionGroups @3 (database :Text) -> (reply :ListRegionGroupsReply);
  listDataNodes @4 () -> (reply :ListDataNodesReply);
  listProcedures @5 () -> (reply :ListProceduresReply);
  getProcedure @6 (id :UInt64) -> (reply :GetProcedureReply);
  registerDataNode @7 (knownId :OptionalUInt32, address :Text) -> (reply :RegisterDataNodeReply);
  dataNodeHeartbeat @8 (id :UInt32, report :HeartbeatReport) -> (reply :DataNodeHeartbeatReply);
  # Like `createDatabase`, but answers with the creating procedure's id so the caller can
  # follow it. Clients use this one; `createDatabase` stays for older clients.
  # `requestKey` (added later, field 5; none from old clients): as for `deleteDatabase`, a
  # retry with the same key returns the first call's procedure instead of "exists".
  startCreateDatabase @9 (name :Text, schemaRf :UInt8, dataRf :UInt8,
                          dataRegionGroups :UInt32, schemaRegionGroups :UInt32,
                          requestKey :OptionalText)
      -> (reply :CreateDatabaseReply);
  # Region migration and DataNode removal answer the procedure's id; `requestKey` as for
  # `deleteDatabase`. `to` none: placement chooses the target.
  migrateRegion @10 (region :RegionId, from :UInt32, to :OptionalUInt32,
                     requestKey :OptionalText) -> (reply :ProcedureIdReply);
  removeDataNode @11 (id :UInt32, force :Bool, requestKey :OptionalText)
      -> (reply :ProcedureIdReply);
  # Replicas DataNodes report that no footprint and no unfinished procedure accounts for.
  listOrphans @12 () -> (reply :ListOrphansReply);
  # What `shoal status` shows beyond the lists: the leader's epoch and queue lengths.
  clusterStatus @13 () -> (reply :ClusterStatusReply);
}

struct ClusterStatus {
  epoch @0 :UInt64;              # The answering leader's epoch.
  queuedCreates @1 :UInt64;      # Replica creates in the region-maintain queue.
  legacyDeletions @2 :UInt64;    # Deletions of an older release awaiting the cleaner.
}

struct ClusterStatusReply {
  union {
    status @0 :ClusterStatus;
    error @1 :Error;
  }
}

struct ProcedureIdReply {
  union {
    procedureId @0 :UInt64;
    error @1 :Error;
  }
}

struct OrphanInfo {
  dataNode @0 :UInt32;
  region @1 :RegionId;
  bytes @2 :UInt64;
  orphanForMs @3 :UInt64;        # How long it has been seen as an orphan (this leader's clock).
  removal @4 :OptionalUInt64;    # The RemoveOrphanRegion procedure deleting it, if any.
}

struct ListOrphansReply {
  union {
    orphans @0 :List(OrphanInfo);
    error @1 :Error;
  }
}

struct CreateDatabaseReply {
  union {
    procedureId @0 :UInt64;
    error @1 :Error;
  }
}

struct OptionalUInt32 {
  union {
    none @0 :Void;
    some @1 :UInt32;
  }
}

struct OptionalUInt64 {
  union {
    none @0 :Void;
    some @1 :UInt64;
  }
}

struct OptionalText {
  union {
    none @0 :Void;
    some @1 :Text;
  }
}

struct DeleteDatabaseReply {
  union {
    procedureId @0 :UInt64;
    error @1 :Error;
  }
}

struct DatabaseInfo {
  name @0 :Text;
  schemaRf @1 :UInt8;
  dataRf @2 :UInt8;
  deleting @3 :Bool;
  schemaRegionGroups @4 :UInt32;
  dataRegionGroups @5 :UInt32;
}

struct ListDatabasesReply {
  union {
    databases @0 :List(DatabaseInfo);
    error @1 :Error;
  }
}

struct RegionGroupInfo {
  database @0 :Text;
  region @1 :RegionId;
  replicas @2 :List(UInt32);     # DataNode ids.
}

struct ListRegionGroupsReply {
  union {
    groups @0 :List(RegionGroupInfo);
    error @1 :Error;
  }
}

struct DataNodeInfo {
  id @0 :UInt32;
  address @1 :Text;
  status @2 :UInt8;              # DataNodeStatus code: 1 running, 2 unknown, 3 removing.
}

struct ListDataNodesReply {
  union {
    dataNodes @0 :List(DataNodeInfo);
    error @1 :Error;
  }
}

struct ProcedureInfo {
  id @0 :UInt64;
  typeName @1 :Text;
  stateName @2 :Text;
  # The status's name, e.g. "Running", "Succeeded": still written for clients older than
  # `statusCode`, never read by this release's (except from a server older than it).
  status @3 :Text;
  finished @4 :Bool;
  parent @5 :OptionalUInt64;
  children @6 :List(UInt64);
  submittedAtMs @7 :UInt64;
  updatedAtMs @8 :UInt64;
  attempts @9 :UInt32;
  lastError @10 :OptionalText;
  waitingFor @11 :OptionalText;
  # What the procedure wants an operator to know beyond its status (e.g. replicas whose
  # deletion was abandoned on a DataNode removed for good).
  notes @12 :List(Text);
  # The status (core's ProcedureView code: 1 running, 2 waiting, 3 suspended, 4 rolling
  # back, 10 succeeded, 11 failed, 12 rolled back, 20 unreadable); 0 from a server older
  # than this field, whose `status` text then holds the durable status's name.
  statusCode @13 :UInt8;
  typeCode @14 :UInt32;
  stateCode @15 :UInt32;
  submittedUnixMs @16 :UInt64;   # Wall clock (Unix ms); 0 when unknown.
  updatedUnixMs @17 :UInt64;
  requestKey @18 :OptionalText;
  database @19 :OptionalText;    # The database it works in, if it locks one.
}

struct ListProceduresReply {
  union {
    procedures @0 :List(ProcedureInfo);
    error @1 :Error;
  }
}

struct GetProcedureReply {
  union {
    found @0 :ProcedureInfo;
    notFound @1 :Void;
    error @2 :Error;
  }
}

struct RegisterDataNodeReply {
  union {
    id @0 :UInt32;
    error @1 :Error;
  }
}

struct DataNodeHeartbeatReply {
  union {
    epoch @0 :UInt64;            # The ConfigNode leader's current epoch.
    error @1 :Error;
  }
}

# ---------------------------------------------------------------------------------------
# Raft between the ConfigNodes of a replicated group (shoal-consensus-raft's transport)
# ---------------------------------------------------------------------------------------

# A Raft vote: the term, the candidate (the leader once committed), and whether a quorum
# granted it.
struct RaftVote {
  term @0 :UInt64;
  nodeId @1 :UInt64;
  committed @2 :Bool;
}

# A Raft log id: the term of the leader that wrote the entry, and its Raft index.
struct RaftLogId {
  term @0 :UInt64;
  index @1 :UInt64;
}

struct OptionalRaftLogId {
  union {
    none @0 :Void;
    some @1 :RaftLogId;
  }
}

interface Raft {
  # Replicates `entries` (each one log entry in shoal-consensus-raft's own stable entry
  # encoding, the bytes it stores), or is a heartbeat when empty.
  appendEntries @0 (vote :RaftVote, prevLogId :OptionalRaftLogId, entries :List(Data),
                    leaderCommit :OptionalRaftLogId) -> (reply :AppendEntriesReply);
  # `leadershipTransfer`: the election was started by the leader handing over leadership,
  # so a voter answers it even while it still holds that leader's lease.
  vote @1 (vote :RaftVote, lastLogId :OptionalRaftLogId, leadershipTransfer :Bool)
      -> (reply :VoteReply);
  # One chunk of a snapshot, sent in order from offset 0. The receiver checks each chunk's
  # checksum and offset, and the whole snapshot's length and checksum with the last chunk,
  # before installing it. A chunk at offset 0 starts the transfer over.
  snapshotChunk @2 (vote :RaftVote, chunk :SnapshotChunk) -> (reply :SnapshotChunkReply);
}

struct AppendEntriesReply {
  union {
    success @0 :Void;
    partialSuccess @1 :OptionalRaftLogId;  # Accepted up to this log id.
    conflict @2 :Void;                     # prevLogId does not match the receiver's log.
    higherVote @3 :RaftVote;               # The receiver has seen a higher vote.
    error @4 :Error;
  }
}

struct VoteReply {
  union {
    answer :group {
      vote @0 :RaftVote;                   # The receiver's vote after handling the request.
      granted @1 :Bool;
      lastLogId @2 :OptionalRaftLogId;     # The receiver's last log id.
    }
    error @3 :Error;
  }
}

struct SnapshotChunk {
  # Names one transfer: chunks of different transfers never mix.
  transferId @0 :Text;
  offset @1 :UInt64;
  data @2 :Data;
  dataCrc @3 :UInt32;            # crc32c(data).
  totalLength @4 :UInt64;        # The whole snapshot's length in bytes.
  totalCrc @5 :UInt32;           # crc32c of the whole snapshot.
  last @6 :Bool;                 # The final chunk: install once it checks out.
}

struct SnapshotChunkReply {
  union {
    received @0 :Void;           # A chunk before the last one was stored.
    installed @1 :RaftVote;      # The last chunk: the snapshot was installed; the receiver's vote.
    error @2 :Error;             # E.g. out of order or damaged: the sender starts over.
  }
}

# ---------------------------------------------------------------------------------------
# ConfigNode group membership (admin)
# ---------------------------------------------------------------------------------------

interface ConfigNodeGroup {
  # The group as the answering ConfigNode sees it (any member answers; followers too).
  status @0 () -> (reply :GroupStatusReply);
  # Adds the ConfigNode `id` listening at `address` as a voter (a learner first, until it has
  # caught up), through joint consensus. Only the leader changes membership (`notLeader`).
  addMember @1 (id :UInt64, address :Text) -> (reply :UnitReply);
  # Removes voter `id` through joint consensus.
  removeMember @2 (id :UInt64) -> (reply :UnitReply);
}

struct GroupMember {
  id @0 :UInt64;
  address @1 :Text;
  voter @2 :Bool;                # false: a learner being caught up.
}

struct GroupStatus {
  nodeId @0 :UInt64;             # The answering ConfigNode.
  members @1 :List(GroupMember);
  leader @2 :OptionalUInt64;     # The leader's id, if known.
  term @3 :UInt64;
  epoch @4 :UInt64;              # The epoch of the leadership this node published last.
  applied @5 :OptionalUInt64;    # The Raft index of the last entry applied here.
  changing @6 :Bool;             # A joint or uncommitted membership change is in force.
}

struct GroupStatusReply {
  union {
    status @0 :GroupStatus;
    error @1 :Error;
  }
}
