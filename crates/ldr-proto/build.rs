//! Generates the gRPC and protobuf code from `proto/*.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let protos = [
        "../../proto/common.proto",
        "../../proto/kv.proto",
        "../../proto/stream.proto",
        "../../proto/ingest.proto",
        "../../proto/raft.proto",
        "../../proto/changefeed.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_with_config(config, &protos, &["../../proto"])?;
    Ok(())
}
