//! Compiles `careers/v1/*.proto` with protox (no system `protoc`) and generates
//! the Rust types, servers and clients with tonic-prost-build.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "careers/v1/common.proto",
        "careers/v1/collector.proto",
        "careers/v1/analyzer.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("careers_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Ordered maps: conditions hash, print and compare deterministically.
        .btree_map(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
