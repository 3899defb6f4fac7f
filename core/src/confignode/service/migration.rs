//! The ConfigNode's admin requests for region migration, DataNode removal and orphans, and
//! the leader's orphan reconciliation loop.

use crate::api::OrphanInfo;
use crate::model::{DataNodeId, Epoch, ProcedureId, RegionId};
use crate::procedures::{MigrateRegionProcedure, RemoveDataNodeProcedure, removal_refusal};
use crate::state::{DataNodeStatus, Rejection};

use super::{ConfigNode, ConfigNodeError};

impl ConfigNode {
    /// Starts moving the replica of `region` on `from` to `to` (`None`: placement chooses);
    /// returns the migration's procedure id. Refused up front, recording nothing: an
    /// unpublished group, a source that holds no replica of it, a named target that is not
    /// running or already may hold one, a database being deleted.
    pub async fn migrate_region(
        &self,
        region: RegionId,
        from: DataNodeId,
        to: Option<DataNodeId>,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ConfigNodeError> {
        if let Some(id) = self.submitted_with(&request_key) {
            return Ok(id);
        }
        let database = self.consensus.state().read(|s| {
            let database = s
                .database_of(region)
                .cloned()
                .ok_or(Rejection::UnknownRegion(region))?;
            if s.databases.get(&database).is_none_or(|d| d.deleting) {
                return Err(Rejection::DatabaseDeleting(database));
            }
            let replicas = s
                .region_group(region)
                .map(|g| g.replicas.clone())
                .unwrap_or_default();
            if !replicas.contains(&from) {
                return Err(Rejection::Invalid(format!(
                    "{from} holds no replica of {region} (replicas: {replicas:?})"
                )));
            }
            match to {
                Some(to) => match s.data_nodes.get(&to) {
                    None => return Err(Rejection::UnknownDataNode(to)),
                    Some(n) if n.status != DataNodeStatus::Running => {
                        return Err(Rejection::Invalid(format!(
                            "target {to} is {}, not running",
                            n.status
                        )));
                    }
                    Some(_) if s.footprint(region).contains(&to) => {
                        return Err(Rejection::Invalid(format!(
                            "{to} already holds (or may hold) a replica of {region}"
                        )));
                    }
                    Some(_) => {}
                },
                None => {
                    if crate::placement::place_replacement(s, region, &[from]).is_none() {
                        return Err(Rejection::Invalid(format!(
                            "no running DataNode outside the group of {region} can take it"
                        )));
                    }
                }
            }
            Ok(database)
        })?;
        let procedure = MigrateRegionProcedure::new(database, region, from, to);
        Ok(self
            .executor
            .submit(Box::new(procedure), request_key)
            .await?)
    }

    /// Starts removing DataNode `id` (`force`: it is gone for good); returns the removal's
    /// procedure id. Refused up front, recording nothing: an unknown DataNode; the last
    /// replica of a group whose database is not being deleted (forced); a group with no
    /// running DataNode to move to (planned).
    pub async fn remove_data_node(
        &self,
        id: DataNodeId,
        force: bool,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ConfigNodeError> {
        if let Some(procedure) = self.submitted_with(&request_key) {
            return Ok(procedure);
        }
        let refusal = self.consensus.state().read(|s| {
            if !s.data_nodes.contains_key(&id) {
                return Some(Rejection::UnknownDataNode(id));
            }
            // A removal already under way resumes; only a fresh one is judged here.
            let removing = s
                .data_nodes
                .get(&id)
                .is_some_and(|n| n.status == DataNodeStatus::Removing);
            (!removing)
                .then(|| removal_refusal(s, id, force))
                .flatten()
                .map(Rejection::Invalid)
        });
        if let Some(rejection) = refusal {
            return Err(rejection.into());
        }
        let procedure = RemoveDataNodeProcedure::new(id, force);
        Ok(self
            .executor
            .submit(Box::new(procedure), request_key)
            .await?)
    }

    /// Replicas DataNodes report that nothing accounts for, with how long this leader has
    /// seen them so.
    pub fn list_orphans(&self) -> Result<Vec<OrphanInfo>, ConfigNodeError> {
        self.epoch()?;
        Ok(self.orphans.list(self.runtime.clock.now_ms()))
    }

    /// What an operator should know about procedure `id` beyond its status: replicas it
    /// abandoned, or whose deletion it had to give up because their DataNode was removed
    /// for good.
    pub fn procedure_notes(&self, id: ProcedureId) -> Vec<String> {
        self.consensus.state().read(|s| {
            let mut notes = Vec::new();
            for (region, nodes) in &s.abandoned_replicas {
                for (node, record) in nodes {
                    if record.by == id {
                        notes.push(format!(
                            "replica of {region} on {node} abandoned: {node} was removed for \
                             good; its bytes were never deleted"
                        ));
                    }
                    if record.deletions.contains(&id) {
                        notes.push(format!(
                            "deletion of {region} on {node} abandoned (not done): {node} was \
                             removed for good by {}",
                            record.by
                        ));
                    }
                }
            }
            notes
        })
    }

    /// While leading at `epoch`: checks orphan candidates every heartbeat interval and
    /// removes those past the grace period (see [`super::super::orphans`]).
    pub(super) async fn reconcile_orphans(&self, epoch: Epoch) {
        self.orphans.clear();
        let watch = self.consensus.leadership();
        super::super::every_while_leading(
            &watch,
            epoch,
            &self.runtime,
            self.config.heartbeat_interval,
            || {
                self.orphans.reconcile(
                    &self.executor,
                    &self.config.orphans,
                    epoch,
                    self.runtime.clock.now_ms(),
                )
            },
        )
        .await;
    }
}
