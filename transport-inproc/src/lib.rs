//! In-process transport: hosts whole Shoal clusters inside one test process, every call going
//! through async-channel, with per-link fault injection. Filled by the region-lifecycle issue.
