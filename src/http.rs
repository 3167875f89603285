//! The node's HTTP endpoints: `/health`, `/metrics` (Prometheus text), `/` (the status page,
//! `status_page.rs`) and `/status.json` (what it shows).

use crate::node::NodeHandle;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves until the task is aborted. A failed bind is logged: the node goes on without HTTP.
pub async fn serve(address: SocketAddr, node: Arc<NodeHandle>) {
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%address, %error, "cannot bind the HTTP address");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(route(request, &node).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
}

async fn route(request: Request<Incoming>, node: &NodeHandle) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/health" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/metrics" => {
            text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics(node).await)
        }
        "/" => text(StatusCode::OK, "text/html; charset=utf-8", crate::status_page::PAGE.into()),
        "/status.json" => {
            text(StatusCode::OK, "application/json", crate::status_page::status_json(node).await.to_string())
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a well-formed response")
}

async fn metrics(node: &NodeHandle) -> String {
    // Replicas by role and by state are kept by the replicas themselves as they change: a
    // scrape asks none of them (at 100,000 partitions that would be 100,000 round trips).
    let metrics = &node.router.env().metrics;

    let mut registry = Registry::with_prefix("cohort");
    metrics.register(&mut registry);
    let transport = node.transport.stats();
    registry.register(
        "transport_messages_sent",
        "Raft messages written to peers",
        ConstCounter::new(transport.messages_sent.load(Ordering::Relaxed)),
    );
    registry.register(
        "transport_messages_received",
        "Raft messages read from peers",
        ConstCounter::new(transport.messages_received.load(Ordering::Relaxed)),
    );
    registry.register(
        "transport_messages_dropped",
        "Raft messages dropped: a full outbox or inbox, or an unreachable peer",
        ConstCounter::new(transport.messages_dropped.load(Ordering::Relaxed)),
    );
    registry.register(
        "transport_connections_rejected",
        "Peer connections closed for a failed handshake or bad bytes",
        ConstCounter::new(transport.connections_rejected.load(Ordering::Relaxed)),
    );
    registry.register(
        "transport_peers_refused_identity",
        "Peer handshakes refused because the peer came back with another data directory (wiped or replaced)",
        ConstCounter::new(transport.peers_refused_identity.load(Ordering::Relaxed)),
    );
    registry.register(
        "transport_queue_messages",
        "Raft messages waiting in outboxes",
        ConstGauge::new(node.transport.outbox_messages() as i64),
    );
    registry.register_with_unit(
        "transport_queue",
        "Payload bytes (entries, snapshot data) waiting in outboxes",
        Unit::Bytes,
        ConstGauge::new(node.transport.outbox_payload_bytes() as i64),
    );
    registry.register(
        "peers_connected",
        "Peers with an authenticated connection",
        ConstGauge::new(node.transport.connected_peers().len() as i64),
    );
    registry.register(
        "heap_in_use_bytes",
        "Heap memory the node holds (allocated and not freed; its resident set is larger)",
        ConstGauge::new(crate::memory::heap_in_use_bytes() as i64),
    );
    registry.register_with_unit(
        "store_cache",
        "Bytes in the state store's page cache (bounded by [store] cache_bytes); part of the heap in use",
        Unit::Bytes,
        ConstGauge::new(node.router.store().cache_bytes() as i64),
    );
    if let Ok((uploads, upload_bytes)) = node.router.store().uploads_in_progress() {
        registry.register(
            "uploads_in_progress",
            "Uploads begun and neither finished nor dropped, over this node's replicas",
            ConstGauge::new(uploads as i64),
        );
        registry.register(
            "upload_bytes_held",
            "Content held by uploads in progress, over this node's replicas",
            ConstGauge::new(upload_bytes as i64),
        );
    }
    let stats = &node.router.stats;
    registry.register(
        "router_messages_dropped",
        "Raft messages dropped at a full mailbox or for an unknown partition",
        ConstCounter::new(
            stats.messages_dropped_mailbox_full.load(Ordering::Relaxed)
                + stats.messages_dropped_unknown_partition.load(Ordering::Relaxed),
        ),
    );
    let data_dir = &node.config.data_dir;
    if let Ok(space) = cohort_storage::fs_disk::space(data_dir) {
        registry.register_with_unit(
            "disk_available",
            "Space a writer may still use on the data directory's file system",
            Unit::Bytes,
            ConstGauge::new(space.available_bytes as i64),
        );
        registry.register_with_unit(
            "disk_size",
            "Size of the data directory's file system",
            Unit::Bytes,
            ConstGauge::new(space.total_bytes as i64),
        );
    }
    registry.register_with_unit(
        "log",
        "Bytes of the write-ahead log's segments",
        Unit::Bytes,
        ConstGauge::new(directory_bytes(&data_dir.join(cohort_net::node::WAL_DIR)) as i64),
    );
    let store_bytes = std::fs::metadata(data_dir.join(cohort_core::store::STORE_FILE)).map_or(0, |m| m.len());
    registry.register_with_unit(
        "store",
        "Bytes of the state store's file",
        Unit::Bytes,
        ConstGauge::new(store_bytes as i64),
    );
    let (mailbox_bytes, mailbox_requests) = node.router.mailbox_load();
    registry.register_with_unit(
        "mailbox",
        "Bytes of inputs waiting in the loaded replicas' mailboxes",
        Unit::Bytes,
        ConstGauge::new(mailbox_bytes as i64),
    );
    registry.register(
        "mailbox_requests",
        "Client requests and inspections waiting in the loaded replicas' mailboxes",
        ConstGauge::new(mailbox_requests as i64),
    );
    register_lags(&mut registry, &node.router.leader_lags());
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// Upper bounds of the lag histograms over partitions, in seconds and in entries.
const LAG_SECONDS_BUCKETS: [f64; 5] = [0.1, 1.0, 10.0, 60.0, 600.0];
const LAG_ENTRIES_BUCKETS: [u64; 5] = [0, 10, 100, 1_000, 10_000];

/// How far behind followers are, over the partitions this node leads: the worst one, and how
/// many partitions have their furthest member within each bound (a histogram of the present,
/// recomputed at each scrape: cumulative like a histogram's buckets, but gauges, not counters).
fn register_lags(registry: &mut Registry, lags: &[(u64, std::time::Duration)]) {
    let entries_max = lags.iter().map(|&(entries, _)| entries).max().unwrap_or(0);
    let seconds_max = lags.iter().map(|&(_, time)| time.as_secs_f64()).fold(0.0, f64::max);
    registry.register(
        "replica_lag_entries_max",
        "Largest lag in entries of a follower behind its leader, over partitions this node leads",
        ConstGauge::new(entries_max as i64),
    );
    registry.register(
        "replica_lag_seconds_max",
        "Largest lag in time of a follower behind its leader (the age of the oldest entry it lacks), over partitions this node leads",
        ConstGauge::new(seconds_max),
    );
    let seconds: Vec<f64> = lags.iter().map(|&(_, time)| time.as_secs_f64()).collect();
    registry.register(
        "partitions_lag_seconds",
        "Partitions led here whose furthest-behind member is at most `le` seconds behind",
        counted_within(&seconds, &LAG_SECONDS_BUCKETS),
    );
    let entries: Vec<u64> = lags.iter().map(|&(entries, _)| entries).collect();
    registry.register(
        "partitions_lag_entries",
        "Partitions led here whose furthest-behind member is at most `le` entries behind",
        counted_within(&entries, &LAG_ENTRIES_BUCKETS),
    );
}

/// Gauges labelled `le`: partitions counted by a bound.
type Within =
    prometheus_client::metrics::family::Family<Vec<(&'static str, String)>, prometheus_client::metrics::gauge::Gauge>;

/// How many of `values` are at most each bound (label `le`, and `+Inf` for all of them).
fn counted_within<T: PartialOrd + ToString>(values: &[T], bounds: &[T]) -> Within {
    let family = Within::default();
    for bound in bounds {
        let within = values.iter().filter(|&value| value <= bound).count();
        family.get_or_create(&vec![("le", bound.to_string())]).set(within as i64);
    }
    family.get_or_create(&vec![("le", "+Inf".to_owned())]).set(values.len() as i64);
    family
}

/// The files directly in `dir`, in bytes (0 if it cannot be read).
fn directory_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(|entry| entry.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}
