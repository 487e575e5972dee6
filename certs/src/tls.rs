//! rustls configurations from PEM files, with raftmesh's identity rules enforced at the
//! handshake, reloaded when the files change.
//!
//! Every port is mutual TLS 1.3. A server refuses, during the handshake, a client that shows
//! no certificate, one not issued by its trusted CA, an expired one, one without a raftmesh
//! identity, and one whose identity the port does not accept ([`Accept`]): the peer port takes
//! only the `apiserver` certificates of its own cluster. A client checks the server the same
//! way: the chain, the host name of the URL, and that it is an `apiserver` of the cluster the
//! client's own certificate belongs to.
//!
//! [`Reloading`] holds the current configuration. [`Reloading::reload`] re-reads the files and
//! swaps in a new configuration when their bytes changed; new connections use it, open ones
//! keep the one they were made with, so streams are never cut by a rotation. A change that
//! does not load (a half-written key, a certificate of another cluster) is refused and the
//! previous configuration stays.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::error::{Error, Result};
use crate::identity::{Identity, Role};

/// The three files of one TLS endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate (PEM; the leaf first, then any intermediates).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA bundle that issued the other side's certificates (PEM).
    pub ca: PathBuf,
}

/// Which identities the other side may have. The cluster is always this side's own cluster,
/// read from its own certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Any role of this cluster (the client port; authorization then decides per request).
    AnyRole,
    /// Only the `apiserver` members of this cluster (the peer port, and what clients expect
    /// a server to be).
    Members,
}

impl Accept {
    fn check(self, cluster: &str, peer: &Identity) -> Result<()> {
        let role_ok = match self {
            Accept::AnyRole => true,
            Accept::Members => peer.role == Role::Apiserver,
        };
        if peer.cluster == cluster && role_ok {
            Ok(())
        } else {
            Err(Error::NotAccepted {
                identity: peer.uri(),
                expected: match self {
                    Accept::AnyRole => format!("a certificate of cluster {cluster}"),
                    Accept::Members => format!("an apiserver certificate of cluster {cluster}"),
                },
            })
        }
    }
}

/// The identity the other side of a TLS connection proved, if it showed a certificate.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Identity> {
    let leaf = conn.peer_certificates()?.first()?;
    Identity::from_der(leaf).ok()
}

/// A TLS configuration kept current with its files.
pub struct Reloading<C> {
    files: TlsFiles,
    accept: Accept,
    build: fn(&Material, Accept) -> Result<C>,
    current: RwLock<Loaded<C>>,
    /// Serializes reloads, so two never race to install older bytes over newer ones.
    reloading: Mutex<()>,
}

struct Loaded<C> {
    material: Material,
    config: Arc<C>,
}

impl<C> fmt::Debug for Reloading<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .field("accept", &self.accept)
            .field("identity", &self.identity().uri())
            .finish_non_exhaustive()
    }
}

/// A server's configuration: its certificate, and which clients it accepts.
pub type ServerTls = Reloading<ServerConfig>;
/// A client's configuration: its certificate, and the servers it trusts.
pub type ClientTls = Reloading<ClientConfig>;

impl Reloading<ServerConfig> {
    /// Loads a server configuration that requires a client certificate `accept`s.
    pub fn server(files: TlsFiles, accept: Accept) -> Result<Self> {
        Self::load(files, accept, server_config)
    }
}

impl Reloading<ServerConfig> {
    /// Loads a server configuration that asks for no client certificate, for the bootstrap
    /// endpoint where agents that have none yet prove themselves otherwise (HTTP/1.1).
    pub fn server_without_client_auth(files: TlsFiles) -> Result<Self> {
        Self::load(files, Accept::AnyRole, open_server_config)
    }
}

/// A client configuration without a client certificate that trusts only `apiserver`s of
/// `cluster` whose certificates chain to a CA in `ca_pem` and name the host dialled (an agent
/// asking for its first certificate; HTTP/1.1).
pub fn client_without_identity(ca_pem: &[u8], cluster: &str) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(tls_error)?;
        roots.add(ca).map_err(tls_error)?;
    }
    if roots.is_empty() {
        return Err(Error::Tls {
            reason: "no CA certificate to trust".to_owned(),
        });
    }
    let provider = provider();
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(tls_error)?;
    let verifier = Arc::new(ServerCheck {
        chain,
        cluster: cluster.to_owned(),
        accept: Accept::Members,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Reloading<ClientConfig> {
    /// Loads a client configuration that presents `files.cert` and accepts only servers that
    /// are `apiserver`s of its own cluster, for the host name it connects to.
    pub fn client(files: TlsFiles) -> Result<Self> {
        Self::load(files, Accept::Members, client_config)
    }
}

impl<C> Reloading<C> {
    fn load(
        files: TlsFiles,
        accept: Accept,
        build: fn(&Material, Accept) -> Result<C>,
    ) -> Result<Self> {
        let material = Material::read(&files)?;
        let config = Arc::new(build(&material, accept)?);
        Ok(Self {
            files,
            accept,
            build,
            current: RwLock::new(Loaded { material, config }),
            reloading: Mutex::new(()),
        })
    }

    /// The configuration for the next connection.
    pub fn config(&self) -> Arc<C> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .config
            .clone()
    }

    /// This side's own identity (from its current certificate).
    pub fn identity(&self) -> Identity {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .material
            .identity
            .clone()
    }

    /// The files it loads from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files; installs a new configuration if they changed. Returns whether it
    /// did. On error the current configuration stays.
    pub fn reload(&self) -> Result<bool> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let material = Material::read(&self.files)?;
        let old = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            if current.material.bytes == material.bytes {
                return Ok(false);
            }
            current.material.identity.clone()
        };
        if material.identity.cluster != old.cluster || material.identity.role != old.role {
            return Err(Error::Tls {
                reason: format!(
                    "{} is {}, but this side is a {} of cluster {}; it cannot change cluster or role",
                    self.files.cert.display(),
                    material.identity,
                    old.role,
                    old.cluster
                ),
            });
        }
        let config = Arc::new((self.build)(&material, self.accept)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Loaded { material, config };
        Ok(true)
    }
}

/// The parsed contents of the three files.
struct Material {
    /// Raw bytes of cert, key and CA, to notice changes.
    bytes: [Vec<u8>; 3],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    identity: Identity,
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| Error::Io {
                op: "reading",
                path: path.to_owned(),
                source,
            })
        };
        let (cert, key_pem, ca) = (read(&files.cert)?, read(&files.key)?, read(&files.ca)?);
        let chain = certificates(&files.cert, &cert)?;
        let identity = Identity::from_der(&chain[0]).map_err(|e| Error::BadPem {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::BadPem {
            path: files.key.clone(),
            reason: format!("no private key: {e}"),
        })?;
        let mut roots = RootCertStore::empty();
        for ca_cert in certificates(&files.ca, &ca)? {
            // Only this cluster's CAs: a CA of another cluster in the bundle could otherwise
            // issue certificates that claim this cluster.
            let ca_of = crate::pki::ca_cluster(&ca_cert).map_err(|e| Error::BadPem {
                path: files.ca.clone(),
                reason: format!("not a raftmesh CA: {e}"),
            })?;
            if ca_of != identity.cluster {
                return Err(Error::BadPem {
                    path: files.ca.clone(),
                    reason: format!(
                        "holds the CA of cluster {ca_of}; only cluster {}'s CAs may be trusted here",
                        identity.cluster
                    ),
                });
            }
            roots.add(ca_cert).map_err(|e| Error::BadPem {
                path: files.ca.clone(),
                reason: format!("not a CA certificate: {e}"),
            })?;
        }
        Ok(Self {
            bytes: [cert, key_pem, ca],
            chain,
            key,
            roots: Arc::new(roots),
            identity,
        })
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::BadPem {
            path: path.to_owned(),
            reason: "no certificate".to_owned(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl fmt::Display) -> Error {
    Error::Tls {
        reason: e.to_string(),
    }
}

fn server_config(m: &Material, accept: Accept) -> Result<ServerConfig> {
    let provider = provider();
    let chain_check =
        WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider.clone())
            .build()
            .map_err(tls_error)?;
    let verifier = Arc::new(ClientCheck {
        chain: chain_check,
        cluster: m.identity.cluster.clone(),
        accept,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn open_server_config(m: &Material, _accept: Accept) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn client_config(m: &Material, accept: Accept) -> Result<ClientConfig> {
    let provider = provider();
    let chain_check =
        WebPkiServerVerifier::builder_with_provider(m.roots.clone(), provider.clone())
            .build()
            .map_err(tls_error)?;
    let verifier = Arc::new(ServerCheck {
        chain: chain_check,
        cluster: m.identity.cluster.clone(),
        accept,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// PEM material of a connection to another cluster, as `mesh/config/remotes/<c>` holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteMaterial<'a> {
    /// The remote cluster.
    pub cluster: &'a str,
    /// Its CA bundle: only CAs of `cluster`.
    pub ca_pem: &'a str,
    /// A `remote` certificate issued by `cluster`'s CA for the reading cluster.
    pub cert_pem: &'a str,
    /// Its private key.
    pub key_pem: &'a str,
}

impl fmt::Debug for RemoteMaterial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteMaterial")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// A client configuration for reading another cluster's exports (the remote mirror). It
/// presents `m.cert_pem`, which must be a `remote` certificate of `m.cluster`; trusts only
/// `m.ca_pem`, which must hold only CAs of `m.cluster`; and accepts only a server that is an
/// `apiserver` of `m.cluster` (TLS 1.3). The host name is not checked: remote clusters are
/// reached through load balancer names and NodePort addresses that are not in the members'
/// certificates, and the identity check is what matters.
pub fn remote_client(m: &RemoteMaterial<'_>) -> Result<ClientConfig> {
    let bad = |what: &str, reason: String| Error::Tls {
        reason: format!("remote {}: {what}: {reason}", m.cluster),
    };
    let chain = CertificateDer::pem_slice_iter(m.cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("client certificate", e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad("client certificate", "no certificate".to_owned()))?;
    let identity =
        Identity::from_der(leaf).map_err(|e| bad("client certificate", e.to_string()))?;
    if identity.cluster != m.cluster || identity.role != Role::Remote {
        return Err(bad(
            "client certificate",
            format!(
                "is {identity}, not a remote certificate of cluster {}",
                m.cluster
            ),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes())
        .map_err(|e| bad("client key", e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_slice_iter(m.ca_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("CA", e.to_string()))?;
    if cas.is_empty() {
        return Err(bad("CA", "no certificate".to_owned()));
    }
    for ca in cas {
        let of = crate::pki::ca_cluster(&ca).map_err(|e| bad("CA", e.to_string()))?;
        if of != m.cluster {
            return Err(bad("CA", format!("is the CA of cluster {of}")));
        }
        roots
            .add(ca)
            .map_err(|e| bad("CA", format!("not a CA certificate: {e}")))?;
    }
    let provider = provider();
    let verifier = Arc::new(RemoteServerCheck {
        roots,
        cluster: m.cluster.to_owned(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("client key", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A mirror's check of a remote cluster's server: the chain to that cluster's CA and the
/// validity period, then that it is an `apiserver` of that cluster; no host name.
#[derive(Debug)]
struct RemoteServerCheck {
    roots: RootCertStore,
    cluster: String,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for RemoteServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        check_identity(end_entity, &self.cluster, Accept::Members)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration allows TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Checks that `cert_pem` chains to a CA in `ca_pem` and is valid now (used to tell whether an
/// issued certificate is still good before issuing another).
pub fn verify_issued_by(cert_pem: &str, ca_pem: &str) -> Result<()> {
    let bad = |reason: String| Error::Tls { reason };
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| bad(e.to_string()))?;
        roots.add(ca).map_err(|e| bad(e.to_string()))?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| bad("no certificate".to_owned()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(tls_error)?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(tls_error)?;
    Ok(())
}

/// The identity check after the chain check, as a rustls error.
fn check_identity(
    leaf: &CertificateDer<'_>,
    cluster: &str,
    accept: Accept,
) -> Result<(), rustls::Error> {
    Identity::from_der(leaf)
        .and_then(|id| accept.check(cluster, &id))
        .map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })
}

/// A server's check of client certificates: webpki's chain and validity check, then the
/// raftmesh identity.
#[derive(Debug)]
struct ClientCheck {
    chain: Arc<dyn ClientCertVerifier>,
    cluster: String,
    accept: Accept,
}

impl ClientCertVerifier for ClientCheck {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, &self.cluster, self.accept)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// A client's check of the server: webpki's chain, validity and host name check, then that
/// the server is a member of the client's cluster.
#[derive(Debug)]
struct ServerCheck {
    chain: Arc<WebPkiServerVerifier>,
    cluster: String,
    accept: Accept,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_identity(end_entity, &self.cluster, self.accept)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
