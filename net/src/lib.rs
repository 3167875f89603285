//! cohort-net: the production network. Peer-to-peer Raft traffic over TCP ([`TcpTransport`])
//! and the client API (in `api`, see the issue "The cohort node").
//!
//! Everything here runs on `tokio` as named in the workspace, which is madsim-tokio: real
//! tokio in production, madsim's simulated network under `--cfg madsim`, so the simulator
//! exercises this very code.

pub mod api;
pub mod client;
pub mod frame;
pub mod limits;
pub mod node;
pub mod peer;
pub mod runtime;
mod tcp_transport;
pub mod tls;

pub use tcp_transport::{TcpTransport, TransportConfig, TransportStats};
