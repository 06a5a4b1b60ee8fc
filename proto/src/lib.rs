//! redcell's wire contract: the generated `redcell.v1` messages and services.
//!
//! This crate is deliberately slim — generated code only. Domain types with
//! required fields live in the crates that own them and are made from these wire
//! types by `TryFrom`, which validates; wire types stop at the edge.

/// Generated code of package `redcell.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("redcell.v1");

    /// Encoded `FileDescriptorSet` of redcell.proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}
