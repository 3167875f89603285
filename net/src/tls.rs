//! TLS for peer connections and the client API, from PEM files an operator provides (or
//! `cohort dev --tls` makes).
//!
//! Peers use mutual TLS: each side presents its node certificate and accepts only one signed
//! by the cluster's CA; the dialer also checks that the acceptor's certificate names the
//! address it dialed. The shared-secret handshake (`peer::handshake`) still runs inside the
//! TLS session: it carries the node ids and data-directory instances, and a stolen node
//! certificate alone does not make a peer. The client API serves the node certificate; clients
//! check it against the CA.
//!
//! ring is the one crypto provider, named explicitly, so no process-wide default is needed.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{0} holds no certificate")]
    NoCertificate(&'static str),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("CA certificates: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Where a node's TLS material is: the cluster CA's certificate, and this node's certificate
/// (chain) and private key, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// The PEM bytes of [`TlsFiles`], read once at start.
#[derive(Clone)]
pub struct TlsPems {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl TlsFiles {
    pub fn read(&self) -> Result<TlsPems, TlsError> {
        let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
        Ok(TlsPems { ca: read(&self.ca_path)?, cert: read(&self.cert_path)?, key: read(&self.key_path)? })
    }
}

fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, reason: e.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certificates)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem { what: "private key", reason: e.to_string() })
}

fn roots(ca: &[u8]) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(ca, "CA certificate")? {
        roots.add(certificate)?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Both ends of mutual TLS between peers.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    pub fn new(pems: &TlsPems) -> Result<PeerTls, TlsError> {
        let roots = roots(&pems.ca)?;
        let chain = certificates(&pems.cert, "node certificate")?;
        let key = private_key(&pems.key)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(PeerTls { acceptor: TlsAcceptor::from(Arc::new(server)), connector: TlsConnector::from(Arc::new(client)) })
    }

    /// The accepting side's TLS handshake: the peer must present a certificate the CA signed.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// The dialing side's: the peer's certificate must name `address`.
    pub async fn connect(
        &self,
        address: IpAddr,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(ServerName::IpAddress(address.into()), stream).await
    }
}

/// The client API server's TLS: the node certificate, no client certificates (clients
/// authenticate with the token).
pub fn api_server_config(pems: &TlsPems) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
    // Checked here, where a bad file gets a clear error, rather than at the first connection.
    certificates(&pems.cert, "node certificate")?;
    private_key(&pems.key)?;
    let identity = tonic::transport::Identity::from_pem(&pems.cert, &pems.key);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}

/// A client's TLS: trust the cluster CA only.
pub fn api_client_config(ca_pem: &[u8]) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    certificates(ca_pem, "CA certificate")?;
    Ok(tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca_pem)))
}

/// A throwaway CA and a certificate for each of `nodes` nodes, every one valid for `hosts`
/// (names or IP addresses), for `cohort dev --tls` and tests. Not for production: the CA's
/// key is discarded, so no certificate can be added later.
pub fn throwaway_certificates(hosts: &[String], nodes: usize) -> Result<ThrowawayCertificates, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "cohort throwaway CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let mut node_pems = Vec::with_capacity(nodes);
    for node in 1..=nodes {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, format!("cohort node {node}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        // Peers are both: each node serves and dials.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        node_pems.push(TlsPems {
            ca: ca.pem().into_bytes(),
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
        });
    }
    Ok(ThrowawayCertificates { ca_pem: ca.pem().into_bytes(), nodes: node_pems })
}

/// What [`throwaway_certificates`] made: the CA's certificate, and each node's PEMs (node 1
/// first).
pub struct ThrowawayCertificates {
    pub ca_pem: Vec<u8>,
    pub nodes: Vec<TlsPems>,
}

impl ThrowawayCertificates {
    /// Writes `ca.pem` and `node-<id>.pem`/`node-<id>.key` into `dir`; returns each node's
    /// files. Keys are readable by their owner only.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<TlsFiles>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(dir)?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, &self.ca_pem)?;
        let mut files = Vec::with_capacity(self.nodes.len());
        for (i, pems) in self.nodes.iter().enumerate() {
            let id = i + 1;
            let cert_path = dir.join(format!("node-{id}.pem"));
            let key_path = dir.join(format!("node-{id}.key"));
            std::fs::write(&cert_path, &pems.cert)?;
            let mut key =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&key_path)?;
            std::io::Write::write_all(&mut key, &pems.key)?;
            files.push(TlsFiles { ca_path: ca_path.clone(), cert_path, key_path });
        }
        Ok(files)
    }
}
