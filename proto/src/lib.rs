//! redcell's wire contract: the generated `redcell.v1` messages and services.
//!
//! This crate is deliberately slim: generated code, plus the few wire rules
//! that more than one crate must agree on and that the .proto cannot say —
//! [`internal`] (the router↔cell metadata, credential and Send signals),
//! [`token`] (bearer tokens as clients present them; minting behind the `mint`
//! feature) and [`page`] (page sizes). Domain types with required fields live
//! in the crates that own them and are made from these wire types by
//! `TryFrom`, which validates; wire types stop at the edge. It never depends
//! on another redcell crate.
//!
//! **Owns**: the `redcell.v1` wire types and services, and the wire rules
//! more than one crate applies alike. **Never**: holds domain logic or
//! state, or does I/O; a rule lands here only when two crates speak it.

pub mod internal;
pub mod page;
pub mod token;

/// Generated code of package `redcell.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("redcell.v1");

    /// Encoded `FileDescriptorSet` of redcell.proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}

#[cfg(test)]
mod tests {
    use prost::Message;

    /// The compiled contract is the one DESIGN.md §4 names: a build that silently
    /// dropped or renamed an RPC would break every client.
    #[test]
    fn descriptor_lists_the_client_api() -> Result<(), prost::DecodeError> {
        let set = prost_types::FileDescriptorSet::decode(super::v1::FILE_DESCRIPTOR_SET)?;
        let file = set.file.iter().find(|file| file.package() == "redcell.v1");
        let services: Vec<(String, Vec<String>)> = file
            .map(|file| {
                file.service
                    .iter()
                    .map(|service| {
                        let methods = service.method.iter().map(|m| m.name().to_owned());
                        (service.name().to_owned(), methods.collect())
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            services,
            [
                (
                    "RedEnvelope".to_owned(),
                    ["Send", "Grab", "Open", "Get", "History"]
                        .map(String::from)
                        .to_vec()
                ),
                ("CellInternal".to_owned(), vec!["CellHistory".to_owned()]),
                ("CellOps".to_owned(), vec!["CellStatus".to_owned()]),
                ("RouterOps".to_owned(), vec!["RouterStatus".to_owned()]),
            ]
        );
        Ok(())
    }
}
