//! The `careers.v1` contract.
//!
//! This crate owns the `.proto` files under `proto/careers/v1/` and everything
//! generated from them. Every other crate imports wire types from here, so the
//! contract lives in exactly one place:
//!
//! - [`v1`]: messages, the `CollectorService` and `AnalyzerService` servers and
//!   clients (tonic + prost).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection and
//!   for the canonical proto3 JSON mapping ([`json`]).
//! - [`ids`]: deterministic response ids (UUID v5 of the task key).
//! - [`scale`]: RIASEC letters and helpers shared by both services.
//! - [`serve`]: putting a service on a listener with health, reflection and
//!   graceful shutdown (both servers use it).

pub mod ids;
pub mod json;
pub mod scale;
pub mod serve;

/// Generated code for package `careers.v1`.
#[allow(clippy::all, clippy::unwrap_used, missing_docs)]
pub mod v1 {
    tonic::include_proto!("careers.v1");
}

/// Encoded `FileDescriptorSet` of `careers.v1` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/careers_descriptor.bin"));

/// The gRPC reflection (v1) service of a server whose main service is
/// `service_name`: it advertises that service, `grpc.health.v1.Health` and
/// itself (not the other service of the pair, which this server does not
/// serve), and describes every type of `careers.v1`.
pub fn reflection_service(
    service_name: &str,
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service_name)
        .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
        .with_service_name(tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME)
        .build_v1()
}
