//! Two real TCP transports on loopback.

use cohort_core::env::{Envelope, Payload, Transport};
use cohort_core::ids::{NodeId, PartitionId};
use cohort_core::node::identity::{InstanceId, PeerInstances};
use cohort_net::tls::{throwaway_certificates, PeerTls, TlsPems};
use cohort_net::{TcpTransport, TransportConfig};
use cohort_storage::SimDisk;
use futures::channel::mpsc;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

fn envelope(from: u64, to: u64, partition: u64, index: u64) -> Envelope {
    let mut message = raft::eraftpb::Message { from, to, index, ..Default::default() };
    message.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    Envelope { partition: PartitionId(partition), from: NodeId(from), to: NodeId(to), payload: Payload::Raft(message) }
}

struct Pair {
    a: Arc<TcpTransport>,
    b: Arc<TcpTransport>,
    a_inbox: mpsc::Receiver<Vec<Envelope>>,
    b_inbox: mpsc::Receiver<Vec<Envelope>>,
    b_address: SocketAddr,
}

/// What a node remembers of its peers' data directories, on a disk of its own.
fn memory() -> Arc<PeerInstances> {
    Arc::new(PeerInstances::open(Arc::new(SimDisk::new(1))).unwrap())
}

/// Node `node` of a two-node cluster "c" whose other node listens at `peer`, its data
/// directory's instance being `instance`.
fn config(node: u64, secret: &[u8], peer: SocketAddr, instance: u128, memory: &Arc<PeerInstances>) -> TransportConfig {
    let other = NodeId(3 - node);
    TransportConfig::new(
        NodeId(node),
        "c",
        secret,
        BTreeMap::from([(other, peer)]),
        node,
        InstanceId(instance),
        memory.clone(),
    )
}

async fn pair(secret_a: &[u8], secret_b: &[u8]) -> Pair {
    pair_remembering(secret_a, secret_b, &memory(), &memory()).await
}

async fn pair_remembering(
    secret_a: &[u8],
    secret_b: &[u8],
    memory_a: &Arc<PeerInstances>,
    memory_b: &Arc<PeerInstances>,
) -> Pair {
    pair_configured(config(1, secret_a, PLACEHOLDER, 1, memory_a), config(2, secret_b, PLACEHOLDER, 2, memory_b)).await
}

/// Stands for the other node's address until its listener is bound.
const PLACEHOLDER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Nodes 1 and 2 from their configs, each pointed at the other's listener.
async fn pair_configured(mut config_a: TransportConfig, mut config_b: TransportConfig) -> Pair {
    let (la, aa) = listener().await;
    let (lb, ab) = listener().await;
    config_a.peers.insert(NodeId(2), ab);
    config_b.peers.insert(NodeId(1), aa);
    let (tx_a, a_inbox) = mpsc::channel(64);
    let (tx_b, b_inbox) = mpsc::channel(64);
    let a = TcpTransport::start(config_a, la, tx_a);
    let b = TcpTransport::start(config_b, lb, tx_b);
    Pair { a, b, a_inbox, b_inbox, b_address: ab }
}

/// Nodes 1 and 2 sharing a secret, each with the TLS given (certificates for 127.0.0.1).
async fn tls_pair(tls_a: Option<&TlsPems>, tls_b: Option<&TlsPems>) -> Pair {
    let mut config_a = config(1, b"s", PLACEHOLDER, 1, &memory());
    let mut config_b = config(2, b"s", PLACEHOLDER, 2, &memory());
    config_a.tls = tls_a.map(|pems| PeerTls::new(pems).unwrap());
    config_b.tls = tls_b.map(|pems| PeerTls::new(pems).unwrap());
    pair_configured(config_a, config_b).await
}

fn certificates(host: &str) -> Vec<TlsPems> {
    throwaway_certificates(&[host.to_owned()], 2).unwrap().nodes
}

/// Neither side connects, nothing sent is delivered, and the refusal is counted.
async fn assert_refused(mut p: Pair) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(p.a.connected_peers().is_empty() && p.b.connected_peers().is_empty());
    p.a.send(NodeId(2), vec![envelope(1, 2, 5, 1)]);
    assert!(tokio::time::timeout(Duration::from_millis(300), p.b_inbox.next()).await.is_err(), "nothing delivered");
    assert!(
        p.a.stats().connections_rejected.load(Ordering::Relaxed)
            + p.b.stats().connections_rejected.load(Ordering::Relaxed)
            > 0
    );
}

async fn next(inbox: &mut mpsc::Receiver<Vec<Envelope>>) -> Option<Vec<Envelope>> {
    tokio::time::timeout(Duration::from_secs(10), inbox.next()).await.ok().flatten()
}

async fn wait_connected(t: &TcpTransport) {
    for _ in 0..500 {
        if !t.connected_peers().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never connected");
}

#[tokio::test]
async fn messages_flow_both_ways_on_one_connection() {
    let mut p = pair(b"s", b"s").await;
    wait_connected(&p.a).await;
    wait_connected(&p.b).await;
    p.a.send(NodeId(2), vec![envelope(1, 2, 5, 1), envelope(1, 2, 6, 2)]);
    let got = next(&mut p.b_inbox).await.expect("b receives");
    assert_eq!(got, vec![envelope(1, 2, 5, 1), envelope(1, 2, 6, 2)]);
    p.b.send(NodeId(1), vec![envelope(2, 1, 5, 3)]);
    assert_eq!(next(&mut p.a_inbox).await.expect("a receives"), vec![envelope(2, 1, 5, 3)]);
}

#[tokio::test]
async fn a_peer_with_the_wrong_secret_is_refused() {
    assert_refused(pair(b"right", b"wrong").await).await;
}

#[tokio::test]
async fn mutual_tls_carries_messages_both_ways() {
    let pems = certificates("127.0.0.1");
    let mut p = tls_pair(Some(&pems[0]), Some(&pems[1])).await;
    wait_connected(&p.a).await;
    wait_connected(&p.b).await;
    p.a.send(NodeId(2), vec![envelope(1, 2, 5, 1)]);
    assert_eq!(next(&mut p.b_inbox).await.expect("b receives"), vec![envelope(1, 2, 5, 1)]);
    p.b.send(NodeId(1), vec![envelope(2, 1, 5, 3)]);
    assert_eq!(next(&mut p.a_inbox).await.expect("a receives"), vec![envelope(2, 1, 5, 3)]);
}

#[tokio::test]
async fn a_peer_without_the_right_certificate_is_refused() {
    let ours = certificates("127.0.0.1");
    // Signed by another CA: each side refuses the other's certificate.
    let theirs = certificates("127.0.0.1");
    assert_refused(tls_pair(Some(&ours[0]), Some(&theirs[1])).await).await;
    // No TLS at all, on either side of the pair.
    assert_refused(tls_pair(Some(&ours[0]), None).await).await;
    assert_refused(tls_pair(None, Some(&ours[1])).await).await;
    // The right CA, but the certificate does not name the address the dialer dialed.
    let elsewhere = certificates("192.0.2.1");
    assert_refused(tls_pair(Some(&ours[0]), Some(&elsewhere[1])).await).await;
}

#[tokio::test]
async fn garbage_on_the_peer_port_closes_that_connection_only() {
    let mut p = pair(b"s", b"s").await;
    wait_connected(&p.a).await;
    for garbage in [vec![0xff; 64], vec![4, 0, 0, 0, 1, 2, 3, 4], u32::MAX.to_le_bytes().to_vec()] {
        let mut stream = tokio::net::TcpStream::connect(p.b_address).await.unwrap();
        stream.write_all(&garbage).await.unwrap();
        stream.flush().await.unwrap();
        drop(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.b.stats().connections_rejected.load(Ordering::Relaxed) >= 2);
    // The authenticated connection still carries messages.
    p.a.send(NodeId(2), vec![envelope(1, 2, 9, 9)]);
    assert_eq!(next(&mut p.b_inbox).await.expect("still delivered"), vec![envelope(1, 2, 9, 9)]);
}

#[tokio::test]
async fn each_side_remembers_the_data_directory_its_peer_first_presented() {
    let (memory_a, memory_b) = (memory(), memory());
    let p = pair_remembering(b"s", b"s", &memory_a, &memory_b).await;
    wait_connected(&p.a).await;
    wait_connected(&p.b).await;
    assert_eq!(memory_a.remembered(NodeId(2)), Some(InstanceId(2)));
    assert_eq!(memory_b.remembered(NodeId(1)), Some(InstanceId(1)));
}

/// A node that knew its peer as another data directory (the peer was wiped and came back
/// under its old id) refuses it, whichever side dials.
#[tokio::test]
async fn a_peer_back_with_another_data_directory_is_refused_by_either_side() {
    for refusing_side in [1, 2] {
        let (memory_a, memory_b) = (memory(), memory());
        let memory = if refusing_side == 1 { &memory_a } else { &memory_b };
        memory.admit(NodeId(3 - refusing_side), InstanceId(77)).unwrap();
        let mut p = pair_remembering(b"s", b"s", &memory_a, &memory_b).await;
        p.a.send(NodeId(2), vec![envelope(1, 2, 5, 1)]);
        assert!(tokio::time::timeout(Duration::from_millis(500), p.b_inbox.next()).await.is_err(), "nothing delivered");
        let refusing = if refusing_side == 1 { &p.a } else { &p.b };
        assert!(refusing.stats().peers_refused_identity.load(Ordering::Relaxed) > 0, "node {refusing_side} refused");
        assert!(refusing.connected_peers().is_empty());
        assert_eq!(memory.remembered(NodeId(3 - refusing_side)), Some(InstanceId(77)), "the first is kept");
    }
}

#[tokio::test]
async fn connections_that_never_finish_their_handshake_are_capped_and_the_peer_link_goes_on() {
    let mut p = pair(b"s", b"s").await;
    wait_connected(&p.a).await;
    let silent: Vec<_> = futures::future::join_all((0..40).map(|_| tokio::net::TcpStream::connect(p.b_address))).await;
    assert!(silent.iter().all(Result::is_ok));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rejected = p.b.stats().connections_rejected.load(Ordering::Relaxed);
    assert!(rejected >= 40 - cohort_net::limits::HANDSHAKES_IN_FLIGHT_MAX as u64, "only {rejected} refused at once");
    p.a.send(NodeId(2), vec![envelope(1, 2, 9, 9)]);
    assert_eq!(next(&mut p.b_inbox).await.expect("still delivered"), vec![envelope(1, 2, 9, 9)]);
}
