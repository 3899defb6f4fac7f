//! Cap'n Proto RPC over TCP between Shoal nodes. Filled by the Cap'n Proto transport issue;
//! until then this crate exports nothing.
