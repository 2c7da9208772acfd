//! shipgate's own certificate authority, and the mutual TLS between the server and the agents of
//! other hosts (rustls with `ring`).
//!
//! The server makes the CA on its first start (`ca.key`, `ca.crt` in its data dir, 0600). A
//! joining agent keeps its private key to itself: it sends only its public key, and gets back a
//! certificate for its host name signed by the CA, together with the CA's certificate. From then
//! on each side pins the other: the agent trusts only servers with a certificate from that CA,
//! and the server accepts only client certificates from its CA whose fingerprint it recorded at
//! the join and has not revoked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::Digest as _;

/// The name every server's agent-protocol certificate is issued to, and that agents check.
pub const SERVER_NAME: &str = "shipgate-server";

/// The CA's distinguished name; the CA is rebuilt from it and its key at every start.
const CA_NAME: &str = "shipgate hosts CA";

fn tls_error(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The ring provider: rustls is built without aws-lc-rs.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 of a certificate's DER, in hex: how the server pins a host's certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

/// The fingerprint of a certificate in PEM: how a joining agent checks the CA it is sent.
pub fn pem_fingerprint(pem: &str) -> Result<String, String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    Ok(fingerprint(&der))
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    crate::write_private(path, text.as_bytes())
        .map_err(|e| format!("could not write {}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("could not read {}: {e}", path.display()))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A public key sent by a joining agent: the raw P-256 point of its key pair.
struct RawPublicKey(Vec<u8>);

impl PublicKeyData for RawPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// The server's certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, as agents get it at the join.
    pub cert_pem: String,
}

impl Ca {
    /// The CA of `data_dir`, made on the first call.
    pub fn load_or_create(data_dir: &Path) -> Result<Ca, String> {
        let key_path = data_dir.join("ca.key");
        let cert_path = data_dir.join("ca.crt");
        if key_path.exists() && cert_path.exists() {
            let key =
                KeyPair::from_pem(&read(&key_path)?).map_err(tls_error("reading the CA key"))?;
            return Ok(Ca {
                issuer: Issuer::new(ca_params(), key),
                cert_pem: read(&cert_path)?,
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(tls_error("making the CA key"))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(tls_error("making the CA certificate"))?;
        write_private(&key_path, &key.serialize_pem())?;
        write_private(&cert_path, &cert.pem())?;
        Ok(Ca {
            issuer: Issuer::new(ca_params(), key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA as PEM key and certificate, to be shared with other servers.
    pub fn to_pem(&self) -> (String, String) {
        (self.issuer.key().serialize_pem(), self.cert_pem.clone())
    }

    /// Makes `data_dir`'s CA the one given as PEM (another server's, shared through the
    /// database), so that agents trust every server of one database alike.
    pub fn adopt(data_dir: &Path, key_pem: &str, cert_pem: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(tls_error("reading the shared CA key"))?;
        write_private(&data_dir.join("ca.key"), key_pem)?;
        write_private(&data_dir.join("ca.crt"), cert_pem)?;
        Ok(Ca {
            issuer: Issuer::new(ca_params(), key),
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// A client certificate for host `name`, for the public key it sent (hex of the raw P-256
    /// point). Returns its PEM and its fingerprint.
    pub fn issue_host(&self, name: &str, public_key_hex: &str) -> Result<(String, String), String> {
        let raw = hex::decode(public_key_hex.trim())
            .ok()
            .filter(|k| k.len() == 65 && k[0] == 4)
            .ok_or("the public key must be the hex of an uncompressed P-256 point")?;
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .map_err(tls_error("the host's certificate"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&RawPublicKey(raw), &self.issuer)
            .map_err(tls_error("signing the host's certificate"))?;
        Ok((cert.pem(), fingerprint(cert.der())))
    }

    /// The TLS config of the agent-protocol port: a certificate for [`SERVER_NAME`] made now,
    /// and client certificates required, from this CA. Which of them are still allowed (their
    /// fingerprints) is checked after the handshake.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(tls_error("making the server's key"))?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .map_err(tls_error("the server's certificate"))?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(tls_error("signing the server's certificate"))?;
        let roots = Arc::new(roots(&self.cert_pem)?);
        let clients =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| format!("the client verifier: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .map_err(|e| format!("the server's key: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(clients)
            .with_single_cert(vec![cert.der().clone()], key)
            .map_err(|e| format!("the server's certificate: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| format!("the CA certificate: {e}"))?;
    roots
        .add(ca)
        .map_err(|e| format!("the CA certificate: {e}"))?;
    Ok(roots)
}

/// What an agent of another host keeps in its data dir once it has joined.
pub struct Identity {
    /// Its host name, as the server knows it.
    pub name: String,
    /// The server's API address, where it asks for the agent-protocol address.
    pub server: String,
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
}

/// The files of an agent's identity in its data dir.
fn identity_files(data_dir: &Path) -> [PathBuf; 4] {
    [
        data_dir.join("host.json"),
        data_dir.join("host.key"),
        data_dir.join("host.crt"),
        data_dir.join("server-ca.crt"),
    ]
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HostFile {
    name: String,
    server: String,
}

impl Identity {
    /// A fresh key pair, and its public key as the join sends it.
    pub fn new_key() -> Result<(KeyPair, String), String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(tls_error("making the host's key"))?;
        let public = hex::encode(key.public_key_raw());
        Ok((key, public))
    }

    /// The identity the join gave, written to `data_dir` (the key and certificates 0600).
    pub fn save(
        data_dir: &Path,
        name: &str,
        server: &str,
        key: &KeyPair,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<Identity, String> {
        let [host, key_path, cert, ca] = identity_files(data_dir);
        write_private(&key_path, &key.serialize_pem())?;
        write_private(&cert, cert_pem)?;
        write_private(&ca, ca_pem)?;
        let file = HostFile {
            name: name.to_owned(),
            server: server.to_owned(),
        };
        write_private(
            &host,
            &serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?,
        )?;
        Ok(Identity {
            name: name.to_owned(),
            server: server.to_owned(),
            key_pem: key.serialize_pem(),
            cert_pem: cert_pem.to_owned(),
            ca_pem: ca_pem.to_owned(),
        })
    }

    /// The identity saved in `data_dir` by an earlier join, if any.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, String> {
        let [host, key, cert, ca] = identity_files(data_dir);
        if !host.exists() {
            return Ok(None);
        }
        let file: HostFile = serde_json::from_str(&read(&host)?)
            .map_err(|e| format!("{} is damaged: {e}", host.display()))?;
        Ok(Some(Identity {
            name: file.name,
            server: file.server,
            key_pem: read(&key)?,
            cert_pem: read(&cert)?,
            ca_pem: read(&ca)?,
        }))
    }

    /// The TLS config the agent dials the server with: its certificate, and only servers with
    /// a certificate from the CA it got at the join.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let certs = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| format!("the host's certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("the host's key: {e}"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(&self.ca_pem)?)
            .with_client_auth_cert(vec![certs], key)
            .map_err(|e| format!("the host's certificate: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// The name the server's certificate must carry.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_certificate_from_the_ca_survives_a_reload_of_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("ca");
        let again = Ca::load_or_create(dir.path()).expect("ca again");
        assert_eq!(ca.cert_pem, again.cert_pem);
        let (_key, public) = Identity::new_key().expect("key");
        let (pem, print) = again.issue_host("web-1", &public).expect("issued");
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(print.len(), 64);
        assert!(again.issue_host("web-1", "00").is_err());
        again.server_config().expect("server config");
    }
}
