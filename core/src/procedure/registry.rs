//! [`ProcedureRegistry`]: procedure type code to decoder, so records can be reloaded.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Procedure, ProcedureError, ProcedureType};

/// Rebuilds a procedure from its persistent data.
pub type ProcedureDecoder =
    Arc<dyn Fn(&[u8]) -> Result<Box<dyn Procedure>, ProcedureError> + Send + Sync>;

/// Every procedure type this build can run, by stable type code.
#[derive(Clone, Default)]
pub struct ProcedureRegistry {
    types: BTreeMap<u32, (&'static str, ProcedureDecoder)>,
}

impl std::fmt::Debug for ProcedureRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.types.iter().map(|(code, (name, _))| (code, name)))
            .finish()
    }
}

impl ProcedureRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `P` under [`ProcedureType::TYPE_CODE`]; refuses a code already taken.
    pub fn register<P: ProcedureType>(&mut self) -> Result<&mut Self, ProcedureError> {
        self.register_decoder(
            P::TYPE_CODE,
            P::TYPE_NAME,
            Arc::new(|data: &[u8]| Ok(Box::new(P::decode(data)?) as Box<dyn Procedure>)),
        )
    }

    /// Registers a decoder for `code`; refuses a code already taken.
    pub fn register_decoder(
        &mut self,
        code: u32,
        name: &'static str,
        decoder: ProcedureDecoder,
    ) -> Result<&mut Self, ProcedureError> {
        if let Some((existing, _)) = self.types.get(&code) {
            return Err(ProcedureError::Data(format!(
                "procedure type code {code} is already registered to {existing}"
            )));
        }
        self.types.insert(code, (name, decoder));
        Ok(self)
    }

    /// Whether `code` is registered.
    pub fn contains(&self, code: u32) -> bool {
        self.types.contains_key(&code)
    }

    /// The registered name of `code`.
    pub fn name_of(&self, code: u32) -> Option<&'static str> {
        self.types.get(&code).map(|(name, _)| *name)
    }

    /// Rebuilds a procedure of type `code` from `data`.
    pub fn decode(&self, code: u32, data: &[u8]) -> Result<Box<dyn Procedure>, ProcedureError> {
        let (_, decoder) = self
            .types
            .get(&code)
            .ok_or(ProcedureError::UnknownType(code))?;
        decoder(data)
    }
}
