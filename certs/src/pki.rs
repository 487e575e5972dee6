//! Making certificates: a per-cluster CA and the role certificates it issues (rcgen, ECDSA
//! P-256), and the PEM files they live in.
//!
//! A CA names its cluster with the URI SAN `spiffe://raftmesh/cluster/<cluster>`, so the
//! cluster survives a round trip through PEM files. Every leaf names its holder with the
//! identity URI SAN (see [`crate::identity`]), and a CA only issues identities of its own
//! cluster: that is what makes `<cluster>` in a verified identity trustworthy.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, Result};
use crate::identity::{self, Identity, Role, check_name};

/// Days a CA made by `meshctl pki init` is valid for by default.
pub const CA_DAYS: u32 = 3650;

/// Days a leaf certificate is valid for by default.
pub const LEAF_DAYS: u32 = 365;

/// How far back `not_before` is put, so that a peer whose clock is a little behind ours
/// accepts a certificate made just now.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The organization in every subject.
const ORGANIZATION: &str = "raftmesh";

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First moment of validity.
    pub not_before: SystemTime,
    /// Last moment of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From five minutes ago (clock skew) until `days` days from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    /// Applies the validity to rcgen's parameters, refusing an empty or unencodable period.
    fn apply(&self, params: &mut CertificateParams) -> Result<()> {
        if self.not_after <= self.not_before {
            return Err(Error::BadValidity {
                reason: "not_after must be later than not_before".to_owned(),
            });
        }
        params.not_before = offset_date_time(self.not_before)?;
        params.not_after = offset_date_time(self.not_after)?;
        Ok(())
    }
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Who the holder is; its cluster must be the CA's.
    pub identity: Identity,
    /// Extra subject alternative names: IP addresses, or else DNS names.
    pub sans: Vec<String>,
    /// When the certificate is valid (may lie in the past, for tests of expiry).
    pub validity: Validity,
}

/// A freshly issued certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8); secret.
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

/// A cluster's certificate authority: its certificate and the key that signs leaves.
pub struct CertificateAuthority {
    /// The cluster it issues identities for, read from its URI SAN.
    cluster: String,
    /// Its certificate, PEM, as written to `ca.crt`.
    cert_pem: String,
    /// Its certificate, DER, for trust stores.
    cert_der: CertificateDer<'static>,
    /// Its subject, key identifier method and signing key.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA for `cluster` with a fresh ECDSA P-256 key.
    pub fn generate(cluster: &str, validity: Validity) -> Result<Self> {
        check_name("cluster", cluster)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(&format!("raftmesh CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![uri_san(&ca_uri(cluster))?];
        validity.apply(&mut params)?;
        let key = generate_key("the CA key")?;
        let cert = params
            .self_signed(&key)
            .map_err(generate_error("the CA certificate"))?;
        Ok(Self {
            cluster: cluster.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in `cert_pem` with its key in `key_pem`, checking that the certificate is a
    /// raftmesh CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert_der = parse_cert_pem(cert_pem)?;
        let cluster = {
            let cert = parse_x509(&cert_der)?;
            check_is_ca(&cert)?;
            cert_cluster(&cert)?
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::BadKey {
            reason: e.to_string(),
        })?;
        if !key_matches(&cert_der, &key)? {
            return Err(Error::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(generate_error("an issuer from the CA certificate"))?;
        Ok(Self {
            cluster,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    /// The CA in the PEM files `cert_path` and `key_path` (as written by `meshctl pki init`).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let cert_pem = read_pem(cert_path)?;
        let key_pem = read_pem(key_path)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| {
            let path = match e {
                Error::BadKey { .. } | Error::KeyMismatch => key_path,
                _ => cert_path,
            };
            Error::BadPem {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        })
    }

    /// The cluster this CA issues identities for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate, PEM (what peers put in their trust store).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key, PEM (PKCS#8). Secret: only for writing `ca.key`.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A leaf certificate for `spec.identity` with a fresh ECDSA P-256 key.
    ///
    /// Every role may authenticate as a TLS client; apiserver certificates may also serve,
    /// because a member both serves and dials its peers with the same certificate.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued> {
        let identity = &spec.identity;
        // The fields are public, so the names may not have been through Identity::new.
        check_name("cluster", &identity.cluster)?;
        check_name("name", &identity.name)?;
        if identity.cluster != self.cluster {
            return Err(Error::WrongCluster {
                ca: self.cluster.clone(),
                identity: identity.uri(),
            });
        }
        let common_name = format!("{}/{}", identity.role, identity.name);
        let mut usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if identity.role == Role::Apiserver {
            usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let mut params = leaf_params(&common_name, &spec.sans, spec.validity, usages)?;
        params
            .subject_alt_names
            .insert(0, uri_san(&identity.uri())?);
        self.sign(&params)
    }

    /// A leaf certificate signed by this CA but WITHOUT a raftmesh identity URI SAN (client
    /// and server usages), for tests and tools that need a certificate the server must
    /// refuse.
    pub fn issue_without_identity(
        &self,
        common_name: &str,
        sans: &[String],
        validity: Validity,
    ) -> Result<Issued> {
        let usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let params = leaf_params(common_name, sans, validity, usages)?;
        self.sign(&params)
    }

    /// A certificate for `spec` over the public key of the certificate signing request
    /// `csr_pem` (PEM, `CERTIFICATE REQUEST`), whose signature proves its sender holds the key.
    /// Nothing else the request asks for is used: the identity, names and validity are
    /// `spec`'s. Only `agent` and `remote` identities are signed this way (the bootstrap of
    /// agents); the others are made with their keys by [`CertificateAuthority::issue`].
    pub fn sign_request(&self, csr_pem: &str, spec: &LeafSpec) -> Result<String> {
        let identity = &spec.identity;
        check_name("name", &identity.name)?;
        if identity.cluster != self.cluster {
            return Err(Error::WrongCluster {
                ca: self.cluster.clone(),
                identity: identity.uri(),
            });
        }
        if !matches!(identity.role, Role::Agent | Role::Remote) {
            return Err(Error::BadCertificate {
                reason: format!(
                    "{} certificates are not signed from requests",
                    identity.role
                ),
            });
        }
        let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::BadCertificate {
                reason: format!("certificate signing request: {e}"),
            }
        })?;
        let common_name = format!("{}/{}", identity.role, identity.name);
        let mut params = leaf_params(
            &common_name,
            &spec.sans,
            spec.validity,
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        params
            .subject_alt_names
            .insert(0, uri_san(&identity.uri())?);
        let ours = rcgen::CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        };
        let cert = ours
            .signed_by(&self.issuer)
            .map_err(generate_error("a certificate from a signing request"))?;
        Ok(cert.pem())
    }

    /// Signs `params` over a fresh key.
    fn sign(&self, params: &CertificateParams) -> Result<Issued> {
        let key = generate_key("a leaf key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error("a leaf certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// When the first certificate in `pem` is valid.
pub fn validity_of(pem: &str) -> Result<Validity> {
    let der = parse_cert_pem(pem)?;
    let cert = parse_x509(&der)?;
    let time = |t: x509_parser::time::ASN1Time| {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok(Validity {
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// A fresh ECDSA P-256 key and a certificate signing request over it (PEM both; the key is
/// secret). The request names nothing: the signer decides the identity.
pub fn signing_request() -> Result<(String, String)> {
    let key = generate_key("a key for a signing request")?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(generate_error("a certificate signing request"))?;
    let pem = csr
        .pem()
        .map_err(generate_error("a certificate signing request"))?;
    Ok((pem, key.serialize_pem()))
}

/// The DER of the first certificate in `pem`.
pub fn parse_cert_pem(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::BadCertificate {
        reason: format!("no PEM CERTIFICATE: {e}"),
    })
}

/// SHA-256 of the first certificate in `pem` (its DER), lowercase hex: how a cluster record
/// names its CA.
pub fn fingerprint_pem(pem: &str) -> Result<String> {
    let der = parse_cert_pem(pem)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// The identity and the end of validity of the first certificate in `pem`.
pub fn leaf_info(pem: &str) -> Result<(Identity, SystemTime)> {
    let der = parse_cert_pem(pem)?;
    let cert = parse_x509(&der)?;
    let identity = Identity::from_der(&der)?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok((identity, not_after))
}

/// Writes `contents` to `path` with mode 0600, atomically: a reader sees the old file or the
/// new one, never a part (servers reload certificates while they are rewritten). Creates
/// missing parent directories with mode 0700.
pub fn write_pem(path: &Path, contents: &str) -> Result<()> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create directory", dir))?;
    let tmp = temp_path(path)?;
    let written = write_synced(&tmp, contents).map_err(io("write", &tmp));
    let renamed = written.and_then(|()| fs::rename(&tmp, path).map_err(io("rename", path)));
    if renamed.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&tmp);
    }
    renamed?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

/// The contents of the PEM file at `path`.
pub fn read_pem(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

/// Creates `tmp` (which must not exist) with mode 0600, writes `contents` and syncs it.
fn write_synced(tmp: &Path, contents: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// A name beside `path` that no other writer in this or another process uses.
fn temp_path(path: &Path) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| Error::Io {
        op: "write",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp.{}.{}",
        process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

/// The URI SAN a CA of `cluster` carries.
fn ca_uri(cluster: &str) -> String {
    format!("{}{cluster}", identity::PREFIX)
}

/// O=raftmesh, CN=`common_name`.
fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The parameters every leaf shares: not a CA, digitalSignature, `usages`, `sans`.
fn leaf_params(
    common_name: &str,
    sans: &[String],
    validity: Validity,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_>>()?;
    validity.apply(&mut params)?;
    Ok(params)
}

/// An IP SAN if `s` is an IP address, else a DNS SAN if it looks like a host name.
fn san(s: &str) -> Result<SanType> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |reason: &str| Error::BadSan {
        san: s.to_owned(),
        reason: reason.to_owned(),
    };
    let host = s.strip_prefix("*.").unwrap_or(s);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if s.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad(
            "expected an IP address or a DNS name (labels of 1-63 letters, digits and '-')",
        ));
    }
    let dns = s
        .try_into()
        .map_err(|e: rcgen::Error| bad(&e.to_string()))?;
    Ok(SanType::DnsName(dns))
}

/// A URI SAN.
fn uri_san(uri: &str) -> Result<SanType> {
    let uri = uri.try_into().map_err(|e: rcgen::Error| Error::BadSan {
        san: uri.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(SanType::URI(uri))
}

/// A fresh ECDSA P-256 key.
fn generate_key(what: &str) -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error(what))
}

/// Wraps an rcgen error with what was being made.
fn generate_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Generate {
        what: what.to_owned(),
        source,
    }
}

/// `t` as rcgen wants it, refusing what X.509 cannot encode.
fn offset_date_time(t: SystemTime) -> Result<OffsetDateTime> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()),
        Err(before) => i64::try_from(before.duration().as_secs()).map(|s| -s),
    };
    secs.ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| Error::BadValidity {
            reason: format!("{t:?} is outside the years X.509 can encode"),
        })
}

/// Parses a DER certificate.
fn parse_x509<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::BadCertificate {
        reason: e.to_string(),
    })?;
    Ok(cert)
}

/// Refuses a certificate that may not sign others.
fn check_is_ca(cert: &X509Certificate<'_>) -> Result<()> {
    let constraints = cert
        .basic_constraints()
        .map_err(|e| Error::BadCertificate {
            reason: e.to_string(),
        })?;
    match constraints {
        Some(ext) if ext.value.ca => Ok(()),
        _ => Err(Error::BadCertificate {
            reason: "not a CA certificate (basic constraints CA:FALSE or missing)".to_owned(),
        }),
    }
}

/// The cluster a CA certificate (DER) belongs to, from its URI SAN.
pub fn ca_cluster(der: &CertificateDer<'_>) -> Result<String> {
    cert_cluster(&parse_x509(der)?)
}

/// The cluster in a CA certificate's one `spiffe://raftmesh/cluster/<cluster>` URI SAN.
fn cert_cluster(cert: &X509Certificate<'_>) -> Result<String> {
    let uri = identity::raftmesh_uri(cert)?;
    let bad = |reason: &str| Error::BadIdentity {
        uri: uri.to_owned(),
        reason: reason.to_owned(),
    };
    let cluster = uri
        .strip_prefix(identity::PREFIX)
        .ok_or_else(|| bad("a CA's URI must be spiffe://raftmesh/cluster/<cluster>"))?;
    check_name("cluster", cluster).map_err(|e| bad(&e.to_string()))?;
    Ok(cluster.to_owned())
}

/// Whether `key` is the private half of the certificate's public key.
/// Whether the private key in `key_pem` belongs to the first certificate in `cert_pem`.
pub fn pair_matches(cert_pem: &str, key_pem: &str) -> bool {
    let (Ok(der), Ok(key)) = (parse_cert_pem(cert_pem), KeyPair::from_pem(key_pem)) else {
        return false;
    };
    key_matches(&der, &key).unwrap_or(false)
}

fn key_matches(cert_der: &CertificateDer<'_>, key: &KeyPair) -> Result<bool> {
    let cert = parse_x509(cert_der)?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

#[cfg(test)]
mod tests;
