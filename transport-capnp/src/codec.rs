//! Conversions between core's owned values and the generated Cap'n Proto readers/builders.
//!
//! Every decode is checked: an unknown code, a missing field or invalid UTF-8 becomes
//! [`ApiError::Malformed`], never a panic.

use shoal_core::api::{
    ApiError, CreateRegionRequest, DataNodeHeartbeat, DatabaseInfo, HeartbeatReport, MaintainTask,
    MaintainTaskKind, OrphanInfo, ProcedureInfo, ProcedureView, RegionChunk, RegionDigest,
    RegionGroupInfo, RegionReport,
};
use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, ModelError, ProcedureId, RegionId,
    RegionKind, RegionReplicaSet, ReplicationFactor, TaskId,
};
use shoal_core::state::{DataNodeInfo, DataNodeStatus};

use crate::shoal_capnp::{
    create_region_request, data_node_info, database_info, error, heartbeat_report, maintain_task,
    optional_text, optional_u_int32, optional_u_int64, orphan_info, procedure_info, region_chunk,
    region_digest, region_group_info, region_id, region_report,
};

/// A capnp decoding failure as a typed error.
pub(crate) fn malformed(e: capnp::Error) -> ApiError {
    ApiError::Malformed(e.to_string())
}

/// A list length as Cap'n Proto's u32 (lists are far below 2^32 elements).
pub(crate) fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reads a text field as an owned string.
pub(crate) fn read_text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, ApiError> {
    r.map_err(malformed)?
        .to_string()
        .map_err(|e| ApiError::Malformed(format!("invalid UTF-8: {e}")))
}

/// Reads and validates a database name in a reply (an invalid one is malformed: the peer
/// should never have sent it).
pub(crate) fn read_database_name(
    r: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<DatabaseName, ApiError> {
    DatabaseName::new(read_text(r)?).map_err(|e| ApiError::Malformed(e.to_string()))
}

fn read_rf(factor: u8) -> Result<ReplicationFactor, ApiError> {
    ReplicationFactor::new(factor).map_err(|e| ApiError::Malformed(e.to_string()))
}

/// A request value that decodes but is not valid (a bad name, a replication factor out of
/// range). Every invalid request is refused the same way, whether the wire layer, the
/// ConfigNode's checks or its state machine finds it.
pub(crate) fn invalid_request(e: ModelError) -> ApiError {
    ApiError::Refused(format!("invalid request: {e}"))
}

/// Reads and validates a database name in a request: invalid is refused.
pub(crate) fn read_request_database_name(
    r: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<DatabaseName, ApiError> {
    DatabaseName::new(read_text(r)?).map_err(invalid_request)
}

/// Reads and validates a replication factor in a request: out of range is refused.
pub(crate) fn read_request_rf(factor: u8) -> Result<ReplicationFactor, ApiError> {
    ReplicationFactor::new(factor).map_err(invalid_request)
}

/// Writes an error into a reply's error branch.
pub(crate) fn write_error(mut b: error::Builder<'_>, e: &ApiError) {
    let (message, retryable) = match e {
        ApiError::Refused(m) => return b.set_refused(m.as_str()),
        ApiError::Malformed(m) => return b.set_malformed(m.as_str()),
        ApiError::StaleLeader { request, seen } => {
            let mut g = b.init_stale_leader();
            g.set_request_epoch(request.0);
            g.set_seen_epoch(seen.0);
            return;
        }
        ApiError::NotLeader { leader } => {
            return write_opt_text(b.init_not_leader(), leader.as_deref());
        }
        ApiError::Remote { message, retryable } => (message.clone(), *retryable),
        // Timeouts and unreachable peers are the caller's own findings and have no wire
        // form; a server whose implementation reports one failed to finish: retry may help.
        ApiError::Timeout(d) => (format!("the peer's own call timed out after {d:?}"), true),
        ApiError::Unreachable(m) => (format!("the peer could not reach a node: {m}"), true),
    };
    let mut g = b.init_remote();
    g.set_message(message.as_str());
    g.set_retryable(retryable);
}

/// Reads a reply's error branch.
pub(crate) fn read_error(r: capnp::Result<error::Reader<'_>>) -> ApiError {
    match read_error_inner(r) {
        Ok(e) | Err(e) => e,
    }
}

fn read_error_inner(r: capnp::Result<error::Reader<'_>>) -> Result<ApiError, ApiError> {
    Ok(
        match r.map_err(malformed)?.which().map_err(not_in_schema)? {
            error::Refused(m) => ApiError::Refused(read_text(m)?),
            error::Malformed(m) => ApiError::Malformed(read_text(m)?),
            error::StaleLeader(g) => ApiError::StaleLeader {
                request: shoal_core::model::Epoch(g.get_request_epoch()),
                seen: shoal_core::model::Epoch(g.get_seen_epoch()),
            },
            error::Remote(g) => ApiError::Remote {
                message: read_text(g.get_message())?,
                retryable: g.get_retryable(),
            },
            error::NotLeader(leader) => ApiError::NotLeader {
                leader: read_opt_text(leader)?,
            },
        },
    )
}

/// A union discriminant this build does not know.
pub(crate) fn not_in_schema(e: capnp::NotInSchema) -> ApiError {
    ApiError::Malformed(format!("unknown union member: {e}"))
}

/// Writes a region id.
pub(crate) fn write_region_id(mut b: region_id::Builder<'_>, region: RegionId) {
    b.set_kind(region.kind.code());
    b.set_id(region.id);
}

/// Reads a region id; an unknown kind code is malformed.
pub(crate) fn read_region_id(
    r: capnp::Result<region_id::Reader<'_>>,
) -> Result<RegionId, ApiError> {
    let r = r.map_err(malformed)?;
    let kind =
        RegionKind::try_from(r.get_kind()).map_err(|e| ApiError::Malformed(e.to_string()))?;
    Ok(RegionId::new(kind, r.get_id()))
}

fn write_ids(mut list: capnp::primitive_list::Builder<'_, u32>, ids: &[DataNodeId]) {
    for (i, id) in ids.iter().enumerate() {
        list.set(len32(i), id.0);
    }
}

fn read_ids(
    r: capnp::Result<capnp::primitive_list::Reader<'_, u32>>,
) -> Result<Vec<DataNodeId>, ApiError> {
    Ok(r.map_err(malformed)?.iter().map(DataNodeId).collect())
}

/// Writes a create-region request.
pub(crate) fn write_create_region(
    mut b: create_region_request::Builder<'_>,
    request: &CreateRegionRequest,
) {
    write_region_id(b.reborrow().init_region(), request.region);
    b.set_database(request.database.as_str());
    b.set_generation(request.generation);
    write_ids(b.init_peers(len32(request.peers.len())), &request.peers);
}

/// Reads a create-region request.
pub(crate) fn read_create_region(
    r: capnp::Result<create_region_request::Reader<'_>>,
) -> Result<CreateRegionRequest, ApiError> {
    let r = r.map_err(malformed)?;
    Ok(CreateRegionRequest {
        region: read_region_id(r.get_region())?,
        database: read_request_database_name(r.get_database())?,
        peers: read_ids(r.get_peers())?,
        generation: r.get_generation(),
    })
}

/// Writes a maintain task.
pub(crate) fn write_maintain_task(mut b: maintain_task::Builder<'_>, task: &MaintainTask) {
    b.set_task_id(task.task_id.0);
    match &task.kind {
        MaintainTaskKind::DeleteRegionPeer { region, generation } => {
            b.set_generation(*generation);
            write_region_id(b.init_kind().init_delete_region_peer(), *region);
        }
        MaintainTaskKind::CopyRegion { region, source } => {
            let mut copy = b.init_kind().init_copy_region();
            write_region_id(copy.reborrow().init_region(), *region);
            copy.set_source_id(source.id.0);
            copy.set_source_address(source.address.as_str());
        }
    }
}

/// Reads a maintain task; an unset or unknown kind is malformed.
pub(crate) fn read_maintain_task(
    r: capnp::Result<maintain_task::Reader<'_>>,
) -> Result<MaintainTask, ApiError> {
    let r = r.map_err(malformed)?;
    let kind = match r.get_kind().which().map_err(not_in_schema)? {
        maintain_task::kind::Unset(()) => {
            return Err(ApiError::Malformed("maintain task without a kind".into()));
        }
        maintain_task::kind::DeleteRegionPeer(region) => MaintainTaskKind::DeleteRegionPeer {
            region: read_region_id(region)?,
            generation: r.get_generation(),
        },
        maintain_task::kind::CopyRegion(copy) => {
            let copy = copy.map_err(malformed)?;
            let source = DataNodeLocation::new(
                DataNodeId(copy.get_source_id()),
                read_text(copy.get_source_address())?,
            )
            .map_err(|e| ApiError::Malformed(e.to_string()))?;
            MaintainTaskKind::CopyRegion {
                region: read_region_id(copy.get_region())?,
                source,
            }
        }
    };
    Ok(MaintainTask {
        task_id: TaskId(r.get_task_id()),
        kind,
    })
}

/// Writes a heartbeat report.
pub(crate) fn write_heartbeat_report(
    mut b: heartbeat_report::Builder<'_>,
    report: &HeartbeatReport,
) {
    let mut regions = b.reborrow().init_regions(len32(report.regions.len()));
    for (i, region) in report.regions.iter().enumerate() {
        let mut rb: region_report::Builder<'_> = regions.reborrow().get(len32(i));
        write_region_id(rb.reborrow().init_region(), region.region);
        rb.set_bytes(region.bytes);
    }
    let mut tasks = b.init_running_tasks(len32(report.running_tasks.len()));
    for (i, task) in report.running_tasks.iter().enumerate() {
        tasks.set(len32(i), task.0);
    }
}

/// Reads a heartbeat report.
pub(crate) fn read_heartbeat_report(
    r: capnp::Result<heartbeat_report::Reader<'_>>,
) -> Result<HeartbeatReport, ApiError> {
    let r = r.map_err(malformed)?;
    let mut regions = Vec::new();
    for region in r.get_regions().map_err(malformed)?.iter() {
        regions.push(RegionReport {
            region: read_region_id(region.get_region())?,
            bytes: region.get_bytes(),
        });
    }
    let running_tasks = r
        .get_running_tasks()
        .map_err(malformed)?
        .iter()
        .map(TaskId)
        .collect();
    Ok(HeartbeatReport {
        regions,
        running_tasks,
    })
}

/// Reads a DataNode's heartbeat (id plus report).
pub(crate) fn read_data_node_heartbeat(
    id: u32,
    report: capnp::Result<heartbeat_report::Reader<'_>>,
) -> Result<DataNodeHeartbeat, ApiError> {
    Ok(DataNodeHeartbeat {
        id: DataNodeId(id),
        report: read_heartbeat_report(report)?,
    })
}

/// Writes an optional u32.
pub(crate) fn write_opt_u32(mut b: optional_u_int32::Builder<'_>, value: Option<u32>) {
    match value {
        Some(v) => b.set_some(v),
        None => b.set_none(()),
    }
}

/// Reads an optional u32.
pub(crate) fn read_opt_u32(
    r: capnp::Result<optional_u_int32::Reader<'_>>,
) -> Result<Option<u32>, ApiError> {
    Ok(
        match r.map_err(malformed)?.which().map_err(not_in_schema)? {
            optional_u_int32::None(()) => None,
            optional_u_int32::Some(v) => Some(v),
        },
    )
}

pub(crate) fn write_opt_u64(mut b: optional_u_int64::Builder<'_>, value: Option<u64>) {
    match value {
        Some(v) => b.set_some(v),
        None => b.set_none(()),
    }
}

pub(crate) fn read_opt_u64(
    r: capnp::Result<optional_u_int64::Reader<'_>>,
) -> Result<Option<u64>, ApiError> {
    Ok(
        match r.map_err(malformed)?.which().map_err(not_in_schema)? {
            optional_u_int64::None(()) => None,
            optional_u_int64::Some(v) => Some(v),
        },
    )
}

pub(crate) fn write_opt_text(mut b: optional_text::Builder<'_>, value: Option<&str>) {
    match value {
        Some(v) => b.set_some(v),
        None => b.set_none(()),
    }
}

pub(crate) fn read_opt_text(
    r: capnp::Result<optional_text::Reader<'_>>,
) -> Result<Option<String>, ApiError> {
    Ok(
        match r.map_err(malformed)?.which().map_err(not_in_schema)? {
            optional_text::None(()) => None,
            optional_text::Some(v) => Some(read_text(v)?),
        },
    )
}

/// Writes a database's admin view.
pub(crate) fn write_database_info(mut b: database_info::Builder<'_>, info: &DatabaseInfo) {
    b.set_name(info.schema.name.as_str());
    b.set_schema_rf(info.schema.schema_replication_factor.get());
    b.set_data_rf(info.schema.data_replication_factor.get());
    b.set_deleting(info.deleting);
    b.set_schema_region_groups(info.schema_region_groups);
    b.set_data_region_groups(info.data_region_groups);
}

/// Reads a database's admin view.
pub(crate) fn read_database_info(r: database_info::Reader<'_>) -> Result<DatabaseInfo, ApiError> {
    Ok(DatabaseInfo {
        schema: DatabaseSchema {
            name: read_database_name(r.get_name())?,
            schema_replication_factor: read_rf(r.get_schema_rf())?,
            data_replication_factor: read_rf(r.get_data_rf())?,
        },
        deleting: r.get_deleting(),
        schema_region_groups: r.get_schema_region_groups(),
        data_region_groups: r.get_data_region_groups(),
    })
}

/// Writes a region group's admin view.
pub(crate) fn write_region_group(mut b: region_group_info::Builder<'_>, info: &RegionGroupInfo) {
    b.set_database(info.database.as_str());
    write_region_id(b.reborrow().init_region(), info.replica_set.region);
    write_ids(
        b.init_replicas(len32(info.replica_set.replicas.len())),
        &info.replica_set.replicas,
    );
}

/// Reads a region group's admin view.
pub(crate) fn read_region_group(
    r: region_group_info::Reader<'_>,
) -> Result<RegionGroupInfo, ApiError> {
    Ok(RegionGroupInfo {
        database: read_database_name(r.get_database())?,
        replica_set: RegionReplicaSet::new(
            read_region_id(r.get_region())?,
            read_ids(r.get_replicas())?,
        ),
    })
}

/// Writes a DataNode's admin view.
pub(crate) fn write_data_node(mut b: data_node_info::Builder<'_>, info: &DataNodeInfo) {
    b.set_id(info.location.id.0);
    b.set_address(info.location.address.as_str());
    b.set_status(info.status.code());
}

/// Reads a DataNode's admin view.
pub(crate) fn read_data_node(r: data_node_info::Reader<'_>) -> Result<DataNodeInfo, ApiError> {
    let status = DataNodeStatus::from_code(r.get_status()).ok_or_else(|| {
        ApiError::Malformed(format!("unknown DataNode status code {}", r.get_status()))
    })?;
    let location = DataNodeLocation::new(DataNodeId(r.get_id()), read_text(r.get_address())?)
        .map_err(|e| ApiError::Malformed(e.to_string()))?;
    Ok(DataNodeInfo { location, status })
}

/// Writes a procedure's admin view.
pub(crate) fn write_procedure(mut b: procedure_info::Builder<'_>, info: &ProcedureInfo) {
    b.set_id(info.id.0);
    b.set_type_name(info.type_name.as_str());
    b.set_state_name(info.state_name.as_str());
    // For clients older than `statusCode`: they print this name and test it for success.
    b.set_status(info.status.name());
    b.set_finished(info.is_finished());
    b.set_status_code(info.status.code());
    b.set_type_code(info.type_code);
    b.set_state_code(info.state_code);
    write_opt_u64(b.reborrow().init_parent(), info.parent.map(|p| p.0));
    let mut children = b.reborrow().init_children(len32(info.children.len()));
    for (i, child) in info.children.iter().enumerate() {
        children.set(len32(i), child.0);
    }
    b.set_submitted_at_ms(info.submitted_at_ms);
    b.set_updated_at_ms(info.updated_at_ms);
    b.set_submitted_unix_ms(info.submitted_unix_ms);
    b.set_updated_unix_ms(info.updated_unix_ms);
    b.set_attempts(info.attempts);
    write_opt_text(b.reborrow().init_last_error(), info.last_error.as_deref());
    write_opt_text(b.reborrow().init_waiting_for(), info.waiting_for.as_deref());
    write_opt_text(b.reborrow().init_request_key(), info.request_key.as_deref());
    write_opt_text(
        b.reborrow().init_database(),
        info.database.as_ref().map(DatabaseName::as_str),
    );
    let mut notes = b.init_notes(len32(info.notes.len()));
    for (i, note) in info.notes.iter().enumerate() {
        notes.set(len32(i), note.as_str());
    }
}

/// The status a server older than `statusCode` sent: its durable status's name (the only
/// place a status is read from text, and only to decode that older field). Unknown names
/// are malformed, never guessed.
fn legacy_procedure_status(name: &str, waking: bool) -> Result<ProcedureView, ApiError> {
    use shoal_core::state::ProcedureStatus;
    let durable = ProcedureStatus::ALL
        .iter()
        .copied()
        .find(|s| s.name() == name)
        .ok_or_else(|| ApiError::Malformed(format!("unknown procedure status {name:?}")))?;
    Ok(match durable {
        ProcedureStatus::Runnable if waking => ProcedureView::Waiting,
        ProcedureStatus::Runnable => ProcedureView::Running,
        ProcedureStatus::Waiting => ProcedureView::Waiting,
        ProcedureStatus::Suspended => ProcedureView::Suspended,
        ProcedureStatus::RollingBack => ProcedureView::RollingBack,
        ProcedureStatus::Succeeded => ProcedureView::Succeeded,
        ProcedureStatus::Failed => ProcedureView::Failed,
        ProcedureStatus::RolledBack => ProcedureView::RolledBack,
    })
}

/// Reads a procedure's admin view.
pub(crate) fn read_procedure(r: procedure_info::Reader<'_>) -> Result<ProcedureInfo, ApiError> {
    let waiting_for = read_opt_text(r.get_waiting_for())?;
    let status = match r.get_status_code() {
        0 => legacy_procedure_status(&read_text(r.get_status())?, waiting_for.is_some())?,
        code => ProcedureView::from_code(code)
            .ok_or_else(|| ApiError::Malformed(format!("unknown procedure status code {code}")))?,
    };
    Ok(ProcedureInfo {
        id: ProcedureId(r.get_id()),
        type_code: r.get_type_code(),
        type_name: read_text(r.get_type_name())?,
        state_code: r.get_state_code(),
        state_name: read_text(r.get_state_name())?,
        status,
        parent: read_opt_u64(r.get_parent())?.map(ProcedureId),
        children: r
            .get_children()
            .map_err(malformed)?
            .iter()
            .map(ProcedureId)
            .collect(),
        submitted_at_ms: r.get_submitted_at_ms(),
        updated_at_ms: r.get_updated_at_ms(),
        submitted_unix_ms: r.get_submitted_unix_ms(),
        updated_unix_ms: r.get_updated_unix_ms(),
        attempts: r.get_attempts(),
        last_error: read_opt_text(r.get_last_error())?,
        waiting_for,
        // A procedure's output stays on the ConfigNode: the admin API does not carry it.
        output: None,
        request_key: read_opt_text(r.get_request_key())?,
        database: read_opt_text(r.get_database())?
            .map(|name| DatabaseName::new(name).map_err(|e| ApiError::Malformed(e.to_string())))
            .transpose()?,
        notes: r
            .get_notes()
            .map_err(malformed)?
            .iter()
            .map(read_text)
            .collect::<Result<_, _>>()?,
    })
}

/// Writes a chunk of region data.
pub(crate) fn write_region_chunk(mut b: region_chunk::Builder<'_>, chunk: &RegionChunk) {
    b.set_offset(chunk.offset);
    b.set_data(&chunk.data);
    b.set_crc32c(chunk.crc32c);
    b.set_region_len(chunk.region_len);
}

/// Reads a chunk of region data (its checksum is checked by the receiver's copy task).
pub(crate) fn read_region_chunk(
    r: capnp::Result<region_chunk::Reader<'_>>,
) -> Result<RegionChunk, ApiError> {
    let r = r.map_err(malformed)?;
    Ok(RegionChunk {
        offset: r.get_offset(),
        data: r.get_data().map_err(malformed)?.to_vec(),
        crc32c: r.get_crc32c(),
        region_len: r.get_region_len(),
    })
}

/// Writes a region digest.
pub(crate) fn write_region_digest(mut b: region_digest::Builder<'_>, digest: &RegionDigest) {
    b.set_len(digest.len);
    b.set_crc32c(digest.crc32c);
    b.set_region_len(digest.region_len);
}

/// Reads a region digest.
pub(crate) fn read_region_digest(
    r: capnp::Result<region_digest::Reader<'_>>,
) -> Result<RegionDigest, ApiError> {
    let r = r.map_err(malformed)?;
    Ok(RegionDigest {
        len: r.get_len(),
        crc32c: r.get_crc32c(),
        region_len: r.get_region_len(),
    })
}

/// Writes an orphan replica's admin view.
pub(crate) fn write_orphan(mut b: orphan_info::Builder<'_>, orphan: &OrphanInfo) {
    b.set_data_node(orphan.data_node.0);
    write_region_id(b.reborrow().init_region(), orphan.region);
    b.set_bytes(orphan.bytes);
    b.set_orphan_for_ms(orphan.orphan_for_ms);
    write_opt_u64(b.init_removal(), orphan.removal.map(|p| p.0));
}

/// Reads an orphan replica's admin view.
pub(crate) fn read_orphan(r: orphan_info::Reader<'_>) -> Result<OrphanInfo, ApiError> {
    Ok(OrphanInfo {
        data_node: DataNodeId(r.get_data_node()),
        region: read_region_id(r.get_region())?,
        bytes: r.get_bytes(),
        orphan_for_ms: r.get_orphan_for_ms(),
        removal: read_opt_u64(r.get_removal())?.map(ProcedureId),
    })
}

#[cfg(test)]
mod tests;
