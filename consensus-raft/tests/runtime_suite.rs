//! openraft's own conformance suite for async runtimes, run against the smol adapter.

use shoal_consensus_raft::SmolRuntime;

#[test]
fn smol_runtime_passes_openraft_runtime_suite() {
    openraft::testing::runtime::Suite::<SmolRuntime>::test_all();
}
