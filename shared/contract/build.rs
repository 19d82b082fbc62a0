//! Compiles the wire contract in `proto/` with prost, using the vendored protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = [
        "core",
        "lists",
        "assignment",
        "scheduler",
        "dispatch",
        "platform",
    ]
    .iter()
    .map(|name| root.join(format!("{name}.proto")))
    .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.compile_protos(&files, &[root])?;
    Ok(())
}
