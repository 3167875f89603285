//! etcd's KV and Maintenance clients, generated from the subset of etcd 3's API the vs-etcd
//! benchmark uses (`proto/etcd.proto`). A benchmark dependency only: nothing in cohort's
//! product links it.

#![allow(clippy::all)]

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub use etcdserverpb::kv_client::KvClient;
pub use etcdserverpb::maintenance_client::MaintenanceClient;
pub use etcdserverpb::{PutRequest, StatusRequest};
