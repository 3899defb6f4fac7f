//! Admin commands for region migration, DataNode removal and orphans.

use std::time::{Duration, Instant};

use shoal_core::api::{ConfigNodeApi, ProcedureInfo};
use shoal_core::model::{DataNodeId, RegionId, RegionKind};

use super::{Admin, new_request_key, succeeded};
use crate::error::CliError;
use crate::size::format_size;

/// Parses `dn-2` or `2`.
pub fn parse_data_node_id(text: &str) -> Result<DataNodeId, CliError> {
    text.trim_start_matches("dn-")
        .parse()
        .map(DataNodeId)
        .map_err(|_| CliError::Invalid(format!("invalid DataNode id {text:?} (e.g. dn-2)")))
}

/// Parses `data-3` or `schema-0`.
pub fn parse_region_id(text: &str) -> Result<RegionId, CliError> {
    let invalid = || CliError::Invalid(format!("invalid region {text:?} (e.g. data-3)"));
    let (kind, id) = text.split_once('-').ok_or_else(invalid)?;
    let kind = match kind {
        "data" => RegionKind::Data,
        "schema" => RegionKind::Schema,
        _ => return Err(invalid()),
    };
    Ok(RegionId::new(kind, id.parse().map_err(|_| invalid())?))
}

impl Admin {
    /// `region migrate`: submits the migration and waits for it.
    pub async fn migrate_region(
        &self,
        region: RegionId,
        from: DataNodeId,
        to: Option<DataNodeId>,
    ) -> Result<(), CliError> {
        let key = new_request_key();
        let id = self
            .retry(|| {
                self.client
                    .migrate_region(region, from, to, Some(key.clone()))
            })
            .await?;
        let info = self.wait_finished(id, |_| {}).await?;
        self.print(&super::procedures::ProcedureJson::alone(&info), || {
            format!(
                "{region}: migration from {from} {} ({id}){}\n",
                info.status,
                notes(&info)
            )
        })?;
        succeeded(&info)
    }

    /// Replicas of published groups on `node` (what a removal still has to move).
    async fn replicas_on(&self, node: DataNodeId) -> Result<u64, CliError> {
        let groups = self.retry(|| self.client.list_region_groups(None)).await?;
        Ok(groups
            .iter()
            .filter(|g| g.replica_set.replicas.contains(&node))
            .count() as u64)
    }

    /// `datanode remove`, optionally waiting with a progress bar of replicas left.
    pub async fn remove_data_node(
        &self,
        node: DataNodeId,
        force: bool,
        wait: bool,
    ) -> Result<(), CliError> {
        let total = self.replicas_on(node).await?;
        let key = new_request_key();
        let id = self
            .retry(|| self.client.remove_data_node(node, force, Some(key.clone())))
            .await?;
        if !wait {
            return self.print(&serde_json::json!({ "procedure": id.0 }), || {
                format!(
                    "removing {node}{}: {id} (follow with `shoal procedure show {id}`)\n",
                    if force { " (forced)" } else { "" }
                )
            });
        }
        let bar = if self.json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(total)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} replicas moved, {prefix} left ({elapsed})",
            )
            .map_err(|e| CliError::Failed(e.to_string()))?
            .progress_chars("=> "),
        );
        bar.set_message(format!("removing {node}"));
        bar.set_prefix(total.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.borrow_mut() = Some(bar.clone());
        let info = loop {
            let info = self
                .retry(|| self.client.get_procedure(id))
                .await?
                .ok_or_else(|| CliError::Failed(format!("{id} is not recorded")))?;
            let left = self.replicas_on(node).await?;
            bar.set_position(total.saturating_sub(left));
            bar.set_prefix(left.to_string());
            if info.is_finished() {
                break info;
            }
            if Instant::now() >= self.deadline.get() {
                bar.abandon();
                return Err(CliError::Failed(format!(
                    "{id} still {} with {left} replicas left on {node} at the deadline",
                    info.status
                )));
            }
            smol::Timer::after(Duration::from_millis(250)).await;
        };
        bar.finish_and_clear();
        self.print(&super::procedures::ProcedureJson::alone(&info), || {
            format!("{node}: removal {} ({id}){}\n", info.status, notes(&info))
        })?;
        succeeded(&info)
    }

    /// `region orphans`.
    pub async fn list_orphans(&self) -> Result<(), CliError> {
        let orphans = self.retry(|| self.client.list_orphans()).await?;
        self.print(&orphans, || {
            if orphans.is_empty() {
                return "no orphan replicas\n".into();
            }
            let mut out = String::new();
            for o in &orphans {
                out += &format!(
                    "{}\t{}\t{}\tunaccounted for {}s\t{}\n",
                    o.data_node,
                    o.region,
                    format_size(o.bytes),
                    o.orphan_for_ms / 1000,
                    o.removal
                        .map(|p| format!("being deleted by {p}"))
                        .unwrap_or_else(|| "within the grace period".into())
                );
            }
            out
        })
    }
}

fn notes(info: &ProcedureInfo) -> String {
    info.notes
        .iter()
        .map(|n| format!("\n  note: {n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_in_both_spellings() {
        assert_eq!(parse_data_node_id("dn-2").ok(), Some(DataNodeId(2)));
        assert_eq!(parse_data_node_id("7").ok(), Some(DataNodeId(7)));
        assert!(parse_data_node_id("node2").is_err());
        assert_eq!(
            parse_region_id("data-3").ok(),
            Some(RegionId::new(RegionKind::Data, 3))
        );
        assert_eq!(
            parse_region_id("schema-0").ok(),
            Some(RegionId::new(RegionKind::Schema, 0))
        );
        assert!(parse_region_id("data3").is_err());
    }
}
