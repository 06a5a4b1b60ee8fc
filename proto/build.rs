//! Compiles `proto/redcell/v1/redcell.proto` with protox (pure Rust), so a fresh
//! machine builds with cargo alone: no system `protoc`.
//!
//! The encoded descriptor set is written to `OUT_DIR/descriptor.bin` for gRPC
//! reflection (prost-build only writes one when it runs protoc itself).

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/redcell/v1/redcell.proto";
    println!("cargo:rerun-if-changed={proto}");

    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("descriptor.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
