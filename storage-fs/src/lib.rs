//! File-system implementations of shoal-core's storage traits. Filled by the storage-fs issue;
//! until then this crate exports nothing.
