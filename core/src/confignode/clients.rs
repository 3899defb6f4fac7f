//! How the ConfigNode reaches DataNodes: a factory the embedding transport provides.

use std::sync::Arc;

use crate::api::DataNodeApi;
use crate::model::DataNodeLocation;

/// Gives a client for a DataNode at a location. Implementations cache connections.
pub trait DataNodeClients: Send + Sync + 'static {
    /// A client for the DataNode at `location`.
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi>;
}
