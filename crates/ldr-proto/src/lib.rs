//! Generated gRPC/protobuf code.
pub mod pb {
    tonic::include_proto!("ldr.v1");
}
