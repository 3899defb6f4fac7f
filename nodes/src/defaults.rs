//! Defaults every command shares: where `shoal up` keeps its data and which port its
//! ConfigNode takes (admin commands look there when given no flags).

/// Port the local cluster's ConfigNode listens on (`shoal up`), and the admin default.
pub const DEFAULT_CONFIGNODE_PORT: u16 = 7070;
/// Where `shoal up` keeps its data, and where admin commands look for the secret.
pub const DEFAULT_DATA_DIR: &str = "shoal-data";
