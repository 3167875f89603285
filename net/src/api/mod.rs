//! The client API over gRPC. gRPC and protobuf types live only here and in `client`: the
//! service converts them to core's types and calls [`NodeService`](cohort_core::node::NodeService).

pub mod convert;
mod service;

/// Types generated from `proto/cohort.proto`.
pub mod proto {
    tonic::include_proto!("cohort.v1");
}

pub use service::{ApiServer, NodeDirectory, NodeInfo, LEADER_METADATA, OBJECT_SIZE_BYTES_MAX_DEFAULT, TOKEN_METADATA};
