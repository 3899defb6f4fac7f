//! Every fuzz target, by name.

pub mod codecs;
pub mod files;
pub mod wire;

use crate::Target;

/// The names of every target, in run order.
pub const NAMES: [&str; 12] = [
    "plan",
    "snapshot",
    "procedure",
    "journal_record",
    "raft_entry",
    "raft_meta",
    "raft_snapshot",
    "journal_file",
    "log_recovery",
    "snapshot_file",
    "capnp_request",
    "capnp_frames",
];

/// The target called `name` (built on demand: the wire targets start a cluster).
pub fn by_name(name: &str) -> Option<Target> {
    Some(match name {
        "plan" => codecs::plan(),
        "snapshot" => codecs::snapshot(),
        "procedure" => codecs::procedure(),
        "journal_record" => codecs::journal_record(),
        "raft_entry" => codecs::raft_entry(),
        "raft_meta" => codecs::raft_meta(),
        "raft_snapshot" => codecs::raft_snapshot(),
        "journal_file" => files::journal_file(),
        "log_recovery" => files::log_recovery(),
        "snapshot_file" => files::snapshot_file(),
        "capnp_request" => wire::capnp_request(),
        "capnp_frames" => wire::capnp_frames(),
        _ => return None,
    })
}
