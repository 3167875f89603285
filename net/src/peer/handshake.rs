//! Mutual authentication of a new peer connection with the cluster's shared secret.
//!
//! Dialer sends `Hello` (cluster id, its id, the id it expects, a nonce, its data directory's
//! instance id). The acceptor checks the cluster id and that the dialer is a known peer, and
//! answers `Challenge` with its own nonce and instance and an HMAC proving it knows the secret.
//! The dialer checks that proof and answers `Proof`, its own HMAC. Both HMACs cover both
//! nonces, both ids and both instances, so a recorded exchange is useless on another
//! connection, and neither side reveals the secret. Once a side has verified the other's
//! proof, it admits the other's instance (`node::identity`): a node whose data directory was
//! replaced is refused as its old self.

use crate::frame::{read_frame, write_frame, Frame, FrameError, PROTOCOL_VERSION};
use cohort_core::ids::NodeId;
use cohort_core::node::identity::{IdentityError, InstanceId, PeerInstances};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

/// Handshake frames are small; this caps what an unauthenticated peer can make us read.
const HANDSHAKE_FRAME_SIZE_BYTES_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unexpected frame during handshake")]
    Unexpected,
    #[error("protocol version {0} is not supported")]
    Version(u32),
    #[error("peer belongs to cluster {0:?}")]
    WrongCluster(String),
    #[error("peer claims node id {0}, which may not dial this node (not a configured peer, or not the lower id of the pair)")]
    UnknownPeer(u64),
    #[error("peer expected node {expected}, this is node {actual}")]
    WrongTarget { expected: u64, actual: u64 },
    #[error("peer failed to prove it knows the cluster secret")]
    BadProof,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The TLS handshake under this one failed: no certificate, or one the CA did not sign.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
}

/// What both ends need to authenticate.
pub struct Credentials<'a> {
    pub cluster_id: &'a str,
    pub secret: &'a [u8],
    pub node: u64,
    /// This node's data directory.
    pub instance: InstanceId,
    /// The instance each peer first presented.
    pub peers: &'a PeerInstances,
}

/// The HMAC one side sends: `role` says which side, so a proof cannot be reflected back.
struct ProofInput<'a> {
    cluster_id: &'a str,
    dialer: u64,
    acceptor: u64,
    dialer_nonce: &'a [u8; 32],
    acceptor_nonce: &'a [u8; 32],
    dialer_instance: InstanceId,
    acceptor_instance: InstanceId,
}

fn proof_mac(secret: &[u8], role: &[u8], input: &ProofInput<'_>) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(role);
    mac.update(input.cluster_id.as_bytes());
    mac.update(&input.dialer.to_le_bytes());
    mac.update(&input.acceptor.to_le_bytes());
    mac.update(input.dialer_nonce);
    mac.update(input.acceptor_nonce);
    mac.update(&input.dialer_instance.0.to_le_bytes());
    mac.update(&input.acceptor_instance.0.to_le_bytes());
    mac
}

fn proof(secret: &[u8], role: &[u8], input: &ProofInput<'_>) -> [u8; 32] {
    proof_mac(secret, role, input).finalize().into_bytes().into()
}

/// Checks the peer's proof in constant time.
fn verify(secret: &[u8], role: &[u8], input: &ProofInput<'_>, theirs: &[u8; 32]) -> Result<(), HandshakeError> {
    proof_mac(secret, role, input).verify_slice(theirs).map_err(|_| HandshakeError::BadProof)
}

/// The dialing side. Returns once the peer is authenticated.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: &Credentials<'_>,
    peer: u64,
    nonce: [u8; 32],
) -> Result<(), HandshakeError> {
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        cluster_id: me.cluster_id.to_owned(),
        from: me.node,
        to: peer,
        nonce,
        instance: me.instance.0.to_le_bytes(),
    };
    write_frame(stream, &hello, HANDSHAKE_FRAME_SIZE_BYTES_MAX).await?;
    let mut buffer = Vec::new();
    let Frame::Challenge { nonce: their_nonce, proof: their_proof, instance: their_instance } =
        read_frame(stream, HANDSHAKE_FRAME_SIZE_BYTES_MAX, &mut buffer).await?
    else {
        return Err(HandshakeError::Unexpected);
    };
    let their_instance = InstanceId(u128::from_le_bytes(their_instance));
    let input = ProofInput {
        cluster_id: me.cluster_id,
        dialer: me.node,
        acceptor: peer,
        dialer_nonce: &nonce,
        acceptor_nonce: &their_nonce,
        dialer_instance: me.instance,
        acceptor_instance: their_instance,
    };
    verify(me.secret, b"acceptor", &input, &their_proof)?;
    me.peers.admit(NodeId(peer), their_instance)?;
    let mine = proof(me.secret, b"dialer", &input);
    write_frame(stream, &Frame::Proof { proof: mine }, HANDSHAKE_FRAME_SIZE_BYTES_MAX).await?;
    Ok(())
}

/// The accepting side. `is_peer` says whether a node id is a peer that may dial this node. Returns the
/// authenticated peer's id.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: &Credentials<'_>,
    is_peer: impl Fn(u64) -> bool,
    nonce: [u8; 32],
) -> Result<u64, HandshakeError> {
    let mut buffer = Vec::new();
    let Frame::Hello { version, cluster_id, from, to, nonce: their_nonce, instance: their_instance } =
        read_frame(stream, HANDSHAKE_FRAME_SIZE_BYTES_MAX, &mut buffer).await?
    else {
        return Err(HandshakeError::Unexpected);
    };
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version(version));
    }
    if cluster_id != me.cluster_id {
        return Err(HandshakeError::WrongCluster(cluster_id));
    }
    if !is_peer(from) || from == me.node {
        return Err(HandshakeError::UnknownPeer(from));
    }
    if to != me.node {
        return Err(HandshakeError::WrongTarget { expected: to, actual: me.node });
    }
    let input = ProofInput {
        cluster_id: me.cluster_id,
        dialer: from,
        acceptor: me.node,
        dialer_nonce: &their_nonce,
        acceptor_nonce: &nonce,
        dialer_instance: InstanceId(u128::from_le_bytes(their_instance)),
        acceptor_instance: me.instance,
    };
    let mine = proof(me.secret, b"acceptor", &input);
    let challenge = Frame::Challenge { nonce, proof: mine, instance: me.instance.0.to_le_bytes() };
    write_frame(stream, &challenge, HANDSHAKE_FRAME_SIZE_BYTES_MAX).await?;
    let Frame::Proof { proof: their_proof } = read_frame(stream, HANDSHAKE_FRAME_SIZE_BYTES_MAX, &mut buffer).await?
    else {
        return Err(HandshakeError::Unexpected);
    };
    verify(me.secret, b"dialer", &input, &their_proof)?;
    me.peers.admit(NodeId(from), input.dialer_instance)?;
    Ok(from)
}
