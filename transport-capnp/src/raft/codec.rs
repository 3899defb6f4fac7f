//! Raft messages to and from their Cap'n Proto form. Log entries travel in
//! shoal-consensus-raft's own stable entry encoding (the bytes it stores), so the wire and
//! the disk never disagree on what an entry is. Every decode is checked: damage is
//! [`ApiError::Malformed`], never a panic.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::vote::leader_id_std::CommittedLeaderId;
use shoal_consensus_raft::types::{LogId, Vote, decode_entry, encode_entry};
use shoal_consensus_raft::{GroupMember, GroupStatus, ShoalRaft};
use shoal_core::api::ApiError;

use crate::codec::{len32, malformed, not_in_schema, read_text};
use crate::shoal_capnp::{
    append_entries_reply, group_member, group_status, optional_raft_log_id, optional_u_int64, raft,
    raft_log_id, raft_vote, vote_reply,
};

pub(crate) fn write_vote(mut b: raft_vote::Builder<'_>, vote: &Vote) {
    b.set_term(vote.leader_id.term);
    b.set_node_id(vote.leader_id.voted_for);
    b.set_committed(vote.committed);
}

pub(crate) fn read_vote(r: capnp::Result<raft_vote::Reader<'_>>) -> Result<Vote, ApiError> {
    let r = r.map_err(malformed)?;
    Ok(if r.get_committed() {
        Vote::new_committed(r.get_term(), r.get_node_id())
    } else {
        Vote::new(r.get_term(), r.get_node_id())
    })
}

fn write_log_id(mut b: raft_log_id::Builder<'_>, id: &LogId) {
    b.set_term(id.leader_id.term);
    b.set_index(id.index);
}

pub(crate) fn write_opt_log_id(mut b: optional_raft_log_id::Builder<'_>, id: Option<&LogId>) {
    match id {
        Some(id) => write_log_id(b.init_some(), id),
        None => b.set_none(()),
    }
}

pub(crate) fn read_opt_log_id(
    r: capnp::Result<optional_raft_log_id::Reader<'_>>,
) -> Result<Option<LogId>, ApiError> {
    Ok(
        match r.map_err(malformed)?.which().map_err(not_in_schema)? {
            optional_raft_log_id::None(()) => None,
            optional_raft_log_id::Some(id) => {
                let id = id.map_err(malformed)?;
                Some(LogId::new(
                    CommittedLeaderId::new(id.get_term()),
                    id.get_index(),
                ))
            }
        },
    )
}

/// Fills an `appendEntries` request.
pub(crate) fn write_append_request(
    mut p: raft::append_entries_params::Builder<'_>,
    request: &AppendEntriesRequest<ShoalRaft>,
) {
    write_vote(p.reborrow().init_vote(), &request.vote);
    write_opt_log_id(
        p.reborrow().init_prev_log_id(),
        request.prev_log_id.as_ref(),
    );
    write_opt_log_id(
        p.reborrow().init_leader_commit(),
        request.leader_commit.as_ref(),
    );
    let mut entries = p.init_entries(len32(request.entries.len()));
    for (i, entry) in request.entries.iter().enumerate() {
        entries.set(len32(i), &encode_entry(entry));
    }
}

/// Reads an `appendEntries` request.
pub(crate) fn read_append_request(
    p: raft::append_entries_params::Reader<'_>,
) -> Result<AppendEntriesRequest<ShoalRaft>, ApiError> {
    let list = p.get_entries().map_err(malformed)?;
    let mut entries = Vec::with_capacity(list.len() as usize);
    for bytes in list.iter() {
        let bytes = bytes.map_err(malformed)?;
        entries.push(decode_entry(bytes).map_err(|e| ApiError::Malformed(e.to_string()))?);
    }
    Ok(AppendEntriesRequest {
        vote: read_vote(p.get_vote())?,
        prev_log_id: read_opt_log_id(p.get_prev_log_id())?,
        entries,
        leader_commit: read_opt_log_id(p.get_leader_commit())?,
    })
}

/// Fills an `appendEntries` reply.
pub(crate) fn write_append_reply(
    mut b: append_entries_reply::Builder<'_>,
    outcome: Result<AppendEntriesResponse<ShoalRaft>, ApiError>,
) {
    match outcome {
        Ok(AppendEntriesResponse::Success) => b.set_success(()),
        Ok(AppendEntriesResponse::PartialSuccess(id)) => {
            write_opt_log_id(b.init_partial_success(), id.as_ref());
        }
        Ok(AppendEntriesResponse::Conflict) => b.set_conflict(()),
        Ok(AppendEntriesResponse::HigherVote(vote)) => write_vote(b.init_higher_vote(), &vote),
        Err(e) => crate::codec::write_error(b.init_error(), &e),
    }
}

/// Reads an `appendEntries` reply.
pub(crate) fn read_append_reply(
    r: capnp::Result<append_entries_reply::Reader<'_>>,
) -> Result<AppendEntriesResponse<ShoalRaft>, ApiError> {
    match r.map_err(malformed)?.which().map_err(not_in_schema)? {
        append_entries_reply::Success(()) => Ok(AppendEntriesResponse::Success),
        append_entries_reply::PartialSuccess(id) => {
            Ok(AppendEntriesResponse::PartialSuccess(read_opt_log_id(id)?))
        }
        append_entries_reply::Conflict(()) => Ok(AppendEntriesResponse::Conflict),
        append_entries_reply::HigherVote(vote) => {
            Ok(AppendEntriesResponse::HigherVote(read_vote(vote)?))
        }
        append_entries_reply::Error(e) => Err(crate::codec::read_error(e)),
    }
}

/// Reads a `vote` request.
pub(crate) fn read_vote_request(
    p: raft::vote_params::Reader<'_>,
) -> Result<VoteRequest<ShoalRaft>, ApiError> {
    Ok(VoteRequest {
        vote: read_vote(p.get_vote())?,
        last_log_id: read_opt_log_id(p.get_last_log_id())?,
        leadership_transfer: p.get_leadership_transfer(),
    })
}

/// Fills a `vote` reply.
pub(crate) fn write_vote_reply(
    b: vote_reply::Builder<'_>,
    outcome: Result<VoteResponse<ShoalRaft>, ApiError>,
) {
    match outcome {
        Ok(response) => {
            let mut answer = b.init_answer();
            write_vote(answer.reborrow().init_vote(), &response.vote);
            answer.set_granted(response.vote_granted);
            write_opt_log_id(answer.init_last_log_id(), response.last_log_id.as_ref());
        }
        Err(e) => crate::codec::write_error(b.init_error(), &e),
    }
}

/// Reads a `vote` reply.
pub(crate) fn read_vote_reply(
    r: capnp::Result<vote_reply::Reader<'_>>,
) -> Result<VoteResponse<ShoalRaft>, ApiError> {
    match r.map_err(malformed)?.which().map_err(not_in_schema)? {
        vote_reply::Answer(answer) => Ok(VoteResponse {
            vote: read_vote(answer.get_vote())?,
            vote_granted: answer.get_granted(),
            last_log_id: read_opt_log_id(answer.get_last_log_id())?,
        }),
        vote_reply::Error(e) => Err(crate::codec::read_error(e)),
    }
}

/// Fills a group status.
pub(crate) fn write_group_status(mut b: group_status::Builder<'_>, status: &GroupStatus) {
    b.set_node_id(status.node_id);
    b.set_term(status.term);
    b.set_epoch(status.epoch);
    b.set_changing(status.changing);
    write_opt_u64(b.reborrow().init_leader(), status.leader);
    write_opt_u64(b.reborrow().init_applied(), status.applied);
    let mut members = b.init_members(len32(status.members.len()));
    for (i, m) in status.members.iter().enumerate() {
        let mut w: group_member::Builder<'_> = members.reborrow().get(len32(i));
        w.set_id(m.id);
        w.set_address(m.address.as_str());
        w.set_voter(m.voter);
    }
}

/// Reads a group status.
pub(crate) fn read_group_status(
    r: capnp::Result<group_status::Reader<'_>>,
) -> Result<GroupStatus, ApiError> {
    let r = r.map_err(malformed)?;
    let mut members = Vec::new();
    for m in r.get_members().map_err(malformed)?.iter() {
        members.push(GroupMember {
            id: m.get_id(),
            address: read_text(m.get_address())?,
            voter: m.get_voter(),
        });
    }
    Ok(GroupStatus {
        node_id: r.get_node_id(),
        members,
        leader: read_opt_u64(r.get_leader())?,
        term: r.get_term(),
        epoch: r.get_epoch(),
        applied: read_opt_u64(r.get_applied())?,
        changing: r.get_changing(),
    })
}

fn write_opt_u64(mut b: optional_u_int64::Builder<'_>, value: Option<u64>) {
    match value {
        Some(v) => b.set_some(v),
        None => b.set_none(()),
    }
}

fn read_opt_u64(r: capnp::Result<optional_u_int64::Reader<'_>>) -> Result<Option<u64>, ApiError> {
    Ok(
        match r.map_err(malformed)?.which().map_err(not_in_schema)? {
            optional_u_int64::None(()) => None,
            optional_u_int64::Some(v) => Some(v),
        },
    )
}
