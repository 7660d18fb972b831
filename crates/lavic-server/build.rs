//! Compiles `proto/lavic/v1/*.proto` with protox (pure Rust: no `protoc` needed) into tonic
//! client + server code, and writes the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["lavic/v1/recommender.proto", "lavic/v1/catalog.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("lavic_v1_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Our codec: tonic-prost's, with unparsable requests answered INVALID_ARGUMENT (src/codec.rs).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::LavicCodec")
        .compile_fds(fds)?;
    Ok(())
}
