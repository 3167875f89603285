//! Dropping uploads their clients abandoned. An upload holds its pieces until it finishes, so
//! one whose client went away would hold them for ever; the leader of each partition drops an
//! upload that has not grown for the configured idle time. A client that comes back later
//! begins again with the same write id and sends every piece again.

use cohort_core::ids::{ClientId, PartitionId};
use cohort_core::node::NodeService;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Checks for idle uploads every quarter of the idle time, until the runtime stops.
pub async fn sweep_idle_uploads(service: Arc<NodeService>, idle: Duration) {
    // Each upload seen, with the size it had and since when it has had it.
    let mut seen: BTreeMap<(PartitionId, ClientId, u64), (u64, Instant)> = BTreeMap::new();
    let mut interval = tokio::time::interval(idle / 4);
    loop {
        interval.tick().await;
        let now = Instant::now();
        let uploads = service.led_uploads().await;
        let mut still = BTreeMap::new();
        for (partition, client, seq, repo, status) in uploads {
            let key = (partition, client, seq);
            let since = match seen.get(&key) {
                Some(&(received, since)) if received == status.received_bytes => since,
                _ => now,
            };
            if now.duration_since(since) >= idle {
                match service.abort_upload(partition, client, seq, repo.clone()).await {
                    Ok(()) => tracing::info!(%partition, %client, seq, %repo, received_bytes = status.received_bytes,
                        "dropped an upload idle for {idle:?}"),
                    Err(error) => tracing::warn!(%partition, %client, seq, %error, "cannot drop an idle upload yet"),
                }
                continue;
            }
            still.insert(key, (status.received_bytes, since));
        }
        seen = still;
    }
}
