//! `shoal confignode list|add|remove`: a ConfigNode group's membership from the admin CLI.
//! Changes go to the leader (the session follows it) and are made one at a time through
//! joint consensus; a change that would leave no reachable majority is refused with one line.

use serde::Serialize;
use shoal_consensus_raft::{ConfigNodeGroupApi, GroupStatus};
use shoal_core::api::ApiError;

use crate::admin::Admin;
use crate::error::CliError;

/// One member as `confignode list` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// Address.
    pub address: String,
    /// `leader`, `voter` or `learner`.
    pub role: &'static str,
}

/// The group as `confignode list --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// Every member.
    pub members: Vec<MemberView>,
    /// The leader's id, if known.
    pub leader: Option<u64>,
    /// The Raft term of the member that answered.
    pub term: u64,
    /// The member that answered.
    pub answered_by: u64,
    /// A membership change is under way.
    pub changing: bool,
}

impl GroupView {
    /// The admin view of `status`.
    pub fn of(status: &GroupStatus) -> Self {
        let members = status
            .members
            .iter()
            .map(|m| MemberView {
                id: m.id,
                address: m.address.clone(),
                role: if Some(m.id) == status.leader {
                    "leader"
                } else if m.voter {
                    "voter"
                } else {
                    "learner"
                },
            })
            .collect();
        Self {
            members,
            leader: status.leader,
            term: status.term,
            answered_by: status.node_id,
            changing: status.changing,
        }
    }
}

impl Admin {
    async fn group_status(&self) -> Result<GroupStatus, CliError> {
        self.retry(|| self.confignodes().group().status()).await
    }

    /// `confignode list`.
    pub async fn list_confignodes(&self) -> Result<(), CliError> {
        let view = GroupView::of(&self.group_status().await?);
        self.print(&view, || {
            let mut out = String::new();
            for m in &view.members {
                out += &format!("{}\t{}\t{}\n", m.id, m.address, m.role);
            }
            if view.leader.is_none() {
                out += "(no leader known: an election may be under way)\n";
            }
            if view.changing {
                out += "(a membership change is under way)\n";
            }
            out
        })
    }

    /// `confignode add ADDRESS`: the node at ADDRESS says which id it runs as; the leader
    /// adds it under that id.
    pub async fn add_confignode(&self, address: &str) -> Result<(), CliError> {
        let id = self
            .retry(|| {
                self.confignodes()
                    .status_at(self.rpc(), address, self.options().clone())
            })
            .await?
            .node_id;
        self.retry(|| {
            self.confignodes()
                .group()
                .add_member(id, address.to_string())
        })
        .await?;
        self.print(
            &serde_json::json!({ "added": id, "address": address }),
            || format!("added ConfigNode {id} at {address} to the group\n"),
        )
    }

    /// `confignode remove ID|ADDRESS`.
    pub async fn remove_confignode(&self, member: &str) -> Result<(), CliError> {
        let status = self.group_status().await?;
        let id = match member.parse::<u64>() {
            Ok(id) => status.members.iter().find(|m| m.id == id),
            Err(_) => status.members.iter().find(|m| m.address == member),
        }
        .map(|m| m.id)
        .ok_or_else(|| {
            CliError::Failed(format!(
                "{member} is not a member of the ConfigNode group (see `shoal confignode list`)"
            ))
        })?;
        match self
            .retry(|| self.confignodes().group().remove_member(id))
            .await
        {
            Ok(()) => {}
            // A retry after a lost reply finds the change made: done, if it is gone now.
            Err(CliError::Api(ApiError::Refused(m))) if m.contains("is not a member") => {
                let now = self.group_status().await?;
                if now.members.iter().any(|m| m.id == id) {
                    return Err(CliError::Api(ApiError::Refused(m)));
                }
            }
            Err(e) => return Err(e),
        }
        self.print(&serde_json::json!({ "removed": id }), || {
            format!("removed ConfigNode {id} from the group; stop its process now\n")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_consensus_raft::GroupMember;

    #[test]
    fn list_shows_the_leader_voters_and_learners() {
        let status = GroupStatus {
            node_id: 2,
            members: vec![
                GroupMember {
                    id: 1,
                    address: "a:1".into(),
                    voter: true,
                },
                GroupMember {
                    id: 2,
                    address: "b:1".into(),
                    voter: true,
                },
                GroupMember {
                    id: 4,
                    address: "d:1".into(),
                    voter: false,
                },
            ],
            leader: Some(1),
            term: 3,
            epoch: 0,
            applied: Some(9),
            changing: false,
        };
        let view = GroupView::of(&status);
        let roles: Vec<_> = view.members.iter().map(|m| (m.id, m.role)).collect();
        assert_eq!(roles, vec![(1, "leader"), (2, "voter"), (4, "learner")]);
        assert_eq!(view.answered_by, 2);
    }
}
