//! Compiles the gRPC protocol in `proto/` with the `protoc` binary shipped inside the
//! `protoc-bin-vendored` crate, so building needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["proto/lightchain.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
