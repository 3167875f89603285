//! The production [`Transport`]: one TCP connection per pair of nodes, carrying
//! length-prefixed frames of Raft message batches for many partitions.
//!
//! Of each pair, the node with the lower id dials and the other accepts; both then send and
//! receive on that one connection. Each peer has a bounded outbox (full: drop and count; Raft
//! retransmits) and a link task that (re)connects with backoff, authenticates, then pumps the
//! outbox out and received frames into the node's inbox. Bad bytes from a peer close that
//! connection only. With TLS configured (`crate::tls`), each connection is mutual TLS first
//! and the handshake runs inside it.

use crate::frame::{read_frame, received_envelopes, write_frame, Frame, FrameError, ProtocolError, WireMessage};
use crate::limits;
use crate::peer::backoff::Backoff;
use crate::peer::handshake::{self, Credentials, HandshakeError};
use crate::peer::outbox::Outbox;
use crate::tls::PeerTls;
use cohort_core::env::{Envelope, Payload, Transport};
use cohort_core::ids::NodeId;
use cohort_core::node::identity::{InstanceId, PeerInstances};
use futures::channel::mpsc;
use protobuf::Message as _;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// Capacity a connection's read buffer keeps between frames; a larger one is given back.
const READ_BUFFER_RETAINED_BYTES_MAX: usize = 1024 * 1024;

/// An authenticated peer connection: TCP, or TLS over TCP.
trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerIo for T {}
type PeerStream = Box<dyn PeerIo>;

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub node: NodeId,
    pub cluster_id: String,
    pub secret: Vec<u8>,
    /// Every other node of the cluster and its peer address.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub frame_size_bytes_max: usize,
    pub outbox_messages_max: usize,
    /// Seeds handshake nonces and backoff jitter.
    pub seed: u64,
    /// This node's data directory, presented to peers.
    pub instance: InstanceId,
    /// The data directory each peer first presented; another is refused.
    pub peer_instances: Arc<PeerInstances>,
    /// Mutual TLS under the handshake, if configured (`crate::tls`).
    pub tls: Option<PeerTls>,
}

impl TransportConfig {
    pub fn new(
        node: NodeId,
        cluster_id: &str,
        secret: &[u8],
        peers: BTreeMap<NodeId, SocketAddr>,
        seed: u64,
        instance: InstanceId,
        peer_instances: Arc<PeerInstances>,
    ) -> TransportConfig {
        TransportConfig {
            instance,
            peer_instances,
            node,
            cluster_id: cluster_id.to_owned(),
            secret: secret.to_vec(),
            peers,
            frame_size_bytes_max: limits::FRAME_SIZE_BYTES_MAX,
            outbox_messages_max: limits::OUTBOX_MESSAGES_MAX,
            seed,
            tls: None,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    /// Dropped because a peer's outbox was full or the inbox was.
    pub messages_dropped: AtomicU64,
    /// Connections closed for a failed handshake or a bad frame.
    pub connections_rejected: AtomicU64,
    /// Handshakes refused because the peer presented another data directory than the one
    /// this node first saw for it (it was wiped or replaced; `node::identity`).
    pub peers_refused_identity: AtomicU64,
}

struct Link {
    peer: NodeId,
    address: SocketAddr,
    outbox: Outbox,
    /// Accepted connections from this peer, newest wins.
    accepted: tokio::sync::Mutex<Option<tokio::sync::mpsc::Receiver<PeerStream>>>,
    accepted_tx: tokio::sync::mpsc::Sender<PeerStream>,
    connected: AtomicBool,
}

pub struct TcpTransport {
    config: TransportConfig,
    links: BTreeMap<NodeId, Arc<Link>>,
    stats: Arc<TransportStats>,
    rng: Mutex<StdRng>,
    inbox: mpsc::Sender<Vec<Envelope>>,
    /// Permits for unauthenticated connections in their handshake.
    handshakes: Arc<tokio::sync::Semaphore>,
}

impl TcpTransport {
    /// Starts accepting on `listener` and connecting to every peer. Received messages are
    /// pushed, in batches, into `inbox`.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        inbox: mpsc::Sender<Vec<Envelope>>,
    ) -> Arc<TcpTransport> {
        assert!(!config.peers.contains_key(&config.node), "a node is not its own peer");
        let links = config
            .peers
            .iter()
            .map(|(&peer, &address)| {
                let (accepted_tx, accepted_rx) = tokio::sync::mpsc::channel(2);
                let link = Link {
                    peer,
                    address,
                    outbox: Outbox::new(config.outbox_messages_max, limits::OUTBOX_BYTES_MAX),
                    accepted: tokio::sync::Mutex::new(Some(accepted_rx)),
                    accepted_tx,
                    connected: AtomicBool::new(false),
                };
                (peer, Arc::new(link))
            })
            .collect();
        let transport = Arc::new(TcpTransport {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config,
            links,
            stats: Arc::new(TransportStats::default()),
            inbox,
            handshakes: Arc::new(tokio::sync::Semaphore::new(limits::HANDSHAKES_IN_FLIGHT_MAX)),
        });
        tokio::spawn(transport.clone().accept_loop(listener));
        for link in transport.links.values() {
            tokio::spawn(transport.clone().run_link(link.clone()));
        }
        transport
    }

    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Peers with an authenticated connection right now.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.links.values().filter(|l| l.connected.load(Ordering::Relaxed)).map(|l| l.peer).collect()
    }

    /// Messages queued for sending, over all peers.
    pub fn outbox_messages(&self) -> usize {
        self.links.values().map(|l| l.outbox.len()).sum()
    }

    /// Payload bytes (entries, snapshot data) queued for sending, over all peers.
    pub fn outbox_payload_bytes(&self) -> usize {
        self.links.values().map(|l| l.outbox.payload_bytes()).sum()
    }

    fn nonce(&self) -> [u8; 32] {
        self.rng.lock().expect("not poisoned").gen()
    }

    fn credentials(&self) -> Credentials<'_> {
        Credentials {
            cluster_id: &self.config.cluster_id,
            secret: &self.config.secret,
            node: self.config.node.0,
            instance: self.config.instance,
            peers: &self.config.peer_instances,
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(limits::BACKOFF_MIN_MS)).await;
                    continue;
                }
            };
            // Unauthenticated connections are capped: a flood of them is refused at once
            // rather than each holding a task, a socket and a handshake timer.
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                self.stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "peer connection refused: too many handshakes in progress");
                continue;
            };
            let transport = self.clone();
            // Raft messages are small and latency-bound: never wait to coalesce them.
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let nonce = transport.nonce();
                let credentials = transport.credentials();
                // Of each pair the lower id dials: only those peers connect here.
                let me = transport.config.node;
                let dials_here = |id| NodeId(id) < me && transport.links.contains_key(&NodeId(id));
                let handshake = async {
                    let mut stream: PeerStream = match &transport.config.tls {
                        Some(tls) => Box::new(tls.accept(stream).await.map_err(HandshakeError::Tls)?),
                        None => Box::new(stream),
                    };
                    let peer = handshake::accept(&mut stream, &credentials, dials_here, nonce).await?;
                    Ok::<_, HandshakeError>((peer, stream))
                };
                let result = tokio::time::timeout(Duration::from_millis(limits::HANDSHAKE_TIMEOUT_MS), handshake).await;
                drop(permit);
                match result {
                    Ok(Ok((peer, stream))) => {
                        // The link task picks it up; a newer one replaces it there. Never
                        // waits: with two already queued, this one is dropped.
                        if transport.links[&NodeId(peer)].accepted_tx.try_send(stream).is_err() {
                            tracing::warn!(%remote, %peer, "peer connection dropped: two newer are queued");
                        }
                    }
                    Ok(Err(error @ HandshakeError::Identity(_))) => transport.refused_identity(remote, &error),
                    Ok(Err(error)) => {
                        transport.stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%remote, %error, "peer connection refused");
                    }
                    Err(_) => {
                        transport.stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%remote, "peer handshake timed out");
                    }
                }
            });
        }
    }

    /// A peer presented another data directory than the one this node first saw for it. Not
    /// a network failure: an operator must act, so it is counted and said loudly at each
    /// attempt, from either side of the handshake.
    fn refused_identity(&self, peer: impl std::fmt::Display, error: &HandshakeError) {
        self.stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
        self.stats.peers_refused_identity.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%peer, %error, "peer refused");
    }

    async fn dial(&self, link: &Link) -> Result<PeerStream, String> {
        let connect = async {
            let stream = TcpStream::connect(link.address).await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let mut stream: PeerStream = match &self.config.tls {
                Some(tls) => Box::new(tls.connect(link.address.ip(), stream).await.map_err(|e| format!("TLS: {e}"))?),
                None => Box::new(stream),
            };
            match handshake::dial(&mut stream, &self.credentials(), link.peer.0, self.nonce()).await {
                Ok(()) => Ok(stream),
                Err(error @ HandshakeError::Identity(_)) => {
                    self.refused_identity(link.peer, &error);
                    Err(error.to_string())
                }
                Err(error) => Err(error.to_string()),
            }
        };
        match tokio::time::timeout(Duration::from_millis(limits::HANDSHAKE_TIMEOUT_MS), connect).await {
            Ok(result) => result,
            Err(_) => Err("timed out".into()),
        }
    }

    async fn run_link(self: Arc<Self>, link: Arc<Link>) {
        let dialer = self.config.node < link.peer;
        let seed = self.config.seed ^ link.peer.0;
        let mut backoff = Backoff::new(limits::BACKOFF_MIN_MS, limits::BACKOFF_MAX_MS, seed);
        let mut accepted = link.accepted.lock().await.take().expect("one task per link");
        loop {
            let stream = if dialer {
                match self.dial(&link).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        // What is queued stays queued (the outbox is bounded): a peer that comes
                        // back soon gets it, and Raft copes with messages that arrive late.
                        tracing::debug!(peer = %link.peer, %error, "connecting to peer failed");
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                }
            } else {
                match accepted.recv().await {
                    Some(stream) => stream,
                    None => return,
                }
            };
            backoff.reset();
            link.connected.store(true, Ordering::Relaxed);
            tracing::info!(peer = %link.peer, "peer connected");
            let outcome = self.pump(&link, stream, if dialer { None } else { Some(&mut accepted) }).await;
            link.connected.store(false, Ordering::Relaxed);
            tracing::info!(peer = %link.peer, %outcome, "peer connection closed");
            if let Some(replacement) = outcome.replacement {
                // The peer reconnected (it restarted): serve the new connection at once.
                let _ = link.accepted_tx.try_send(replacement);
            }
            if dialer {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }

    /// Moves frames both ways on `stream` until it fails or, on the accepting side, a newer
    /// connection from the same peer arrives.
    async fn pump(
        &self,
        link: &Link,
        stream: PeerStream,
        accepted: Option<&mut tokio::sync::mpsc::Receiver<PeerStream>>,
    ) -> PumpOutcome {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let frame_max = self.config.frame_size_bytes_max;
        let write = async {
            loop {
                let batch = link.outbox.take(limits::FRAME_MESSAGES_MAX);
                if batch.is_empty() {
                    link.outbox.notify.notified().await;
                    continue;
                }
                for frame in self.frames(batch, frame_max) {
                    let Frame::Batch(messages) = &frame else { unreachable!("frames() makes batches") };
                    let count = messages.len() as u64;
                    write_frame(&mut writer, &frame, frame_max).await?;
                    self.stats.messages_sent.fetch_add(count, Ordering::Relaxed);
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), FrameError>(())
        };
        let read = self.read_loop(link, &mut reader);
        let replaced = async {
            match accepted {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = write => PumpOutcome { reason: format!("write: {}", result.err().map(|e| e.to_string()).unwrap_or_default()), replacement: None },
            error = read => {
                if matches!(error, PeerError::Protocol(_) | PeerError::Frame(FrameError::TooLarge { .. }) | PeerError::Frame(FrameError::Decode(_))) {
                    self.stats.connections_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %link.peer, %error, "closing peer connection on bad input");
                }
                PumpOutcome { reason: format!("read: {error}"), replacement: None }
            }
            newer = replaced => PumpOutcome { reason: "replaced by a newer connection".into(), replacement: newer },
        }
    }
}

impl TcpTransport {
    /// Encodes `batch` into frames of at most `frame_max` less a margin for the frame's own
    /// encoding each, so that a frame
    /// never exceeds the limit however large the messages queued together. A message too large
    /// for any frame is dropped and counted (Raft bounds its messages far below the limit).
    fn frames(&self, batch: Vec<Envelope>, frame_max: usize) -> Vec<Frame> {
        let budget_bytes = frame_max.saturating_sub(limits::FRAME_MARGIN_BYTES);
        let mut frames = Vec::new();
        let (mut current, mut current_bytes) = (Vec::new(), 0);
        for envelope in batch {
            let partition = envelope.partition.0;
            let message = match envelope.payload {
                Payload::Raft(message) => {
                    WireMessage::Raft { partition, message: message.write_to_bytes().expect("raft messages encode") }
                }
                Payload::Snapshot(message) => WireMessage::Snapshot { partition, message },
                Payload::NodeHeartbeat(heartbeat) => WireMessage::NodeHeartbeat(heartbeat),
            };
            let size_bytes = message.size_bytes();
            if size_bytes > budget_bytes {
                tracing::warn!(partition, size_bytes, budget_bytes, "message too large for a frame; dropped");
                self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if current_bytes + size_bytes > budget_bytes {
                frames.push(Frame::Batch(std::mem::take(&mut current)));
                current_bytes = 0;
            }
            current.push(message);
            current_bytes += size_bytes;
        }
        if !current.is_empty() {
            frames.push(Frame::Batch(current));
        }
        frames
    }

    /// Reads frames into the inbox until the connection fails; returns why.
    async fn read_loop<R: tokio::io::AsyncRead + Unpin>(&self, link: &Link, reader: &mut R) -> PeerError {
        let mut buffer = Vec::new();
        let mut inbox = self.inbox.clone();
        loop {
            let frame = match read_frame(reader, self.config.frame_size_bytes_max, &mut buffer).await {
                Ok(frame) => frame,
                Err(error) => return PeerError::Frame(error),
            };
            if buffer.capacity() > READ_BUFFER_RETAINED_BYTES_MAX {
                // A frame of large entries would otherwise keep its size allocated per peer.
                buffer = Vec::new();
            }
            let envelopes = match received_envelopes(frame, link.peer, self.config.node) {
                Ok(envelopes) => envelopes,
                Err(error) => return PeerError::Protocol(error),
            };
            let count = envelopes.len() as u64;
            self.stats.messages_received.fetch_add(count, Ordering::Relaxed);
            if inbox.try_send(envelopes).is_err() {
                self.stats.messages_dropped.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
}

struct PumpOutcome {
    reason: String,
    replacement: Option<PeerStream>,
}

impl std::fmt::Display for PumpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: NodeId, batch: Vec<Envelope>) {
        let Some(link) = self.links.get(&to) else {
            self.stats.messages_dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            return;
        };
        let dropped = link.outbox.push(batch);
        if dropped > 0 {
            self.stats.messages_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
}
