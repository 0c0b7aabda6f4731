//! Certificates and TLS configuration.
//!
//! * [`CertStore`] creates (with rcgen) or loads the development certificates: a local CA
//!   (`ca.pem`, `ca-key.pem`) and a leaf for `localhost`, `127.0.0.1` and `::1` (`cert.pem`,
//!   `key.pem`), keys written with mode 0600. Or it serves a user's own `--cert/--key` pair.
//! * rustls configurations for the QUIC endpoint (TLS 1.3 only, 0-RTT enabled) and for the
//!   TLS/TCP listener (ALPN `h2` and `http/1.1`), and client configurations for `quiclab get`.
//! * `SSLKEYLOGFILE` is honoured by every configuration built here, so captures of QUIC and of
//!   TLS/TCP alike can be decrypted with Wireshark or tshark. [`set_key_log_file`] adds a file
//!   chosen at run time (the lab's `--pcap` runs), without touching the environment: every
//!   configuration built here, before or after the call, writes its secrets there too.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Errors from loading or creating certificates and TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Pem { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(&'static str),
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// The process-wide key log file set by [`set_key_log_file`].
static KEY_LOG_FILE: std::sync::Mutex<Option<(PathBuf, fs::File)>> = std::sync::Mutex::new(None);

fn key_log_slot() -> std::sync::MutexGuard<'static, Option<(PathBuf, fs::File)>> {
    KEY_LOG_FILE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Write the TLS secrets of every connection from now on, server and client, QUIC and TLS/TCP
/// alike, to `path` (created or truncated, mode 0600) in the NSS key log format that Wireshark
/// and tshark read (`tls.keylog_file`). It works for configurations already built too, and in
/// addition to `SSLKEYLOGFILE` if that is set. Replaces any earlier file.
pub fn set_key_log_file(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io_err(path))?;
    *key_log_slot() = Some((path.to_path_buf(), f));
    Ok(())
}

/// Stop writing to the file set by [`set_key_log_file`]; returns its path if there was one.
pub fn clear_key_log_file() -> Option<PathBuf> {
    key_log_slot().take().map(|(p, _)| p)
}

/// The file set by [`set_key_log_file`], if any.
pub fn key_log_file() -> Option<PathBuf> {
    key_log_slot().as_ref().map(|(p, _)| p.clone())
}

/// The key log of every configuration built here: `SSLKEYLOGFILE` (rustls' [`rustls::KeyLogFile`])
/// plus the file of [`set_key_log_file`], looked up at each secret so it can be set at any time.
#[derive(Debug)]
struct KeyLog {
    env: rustls::KeyLogFile,
}

impl rustls::KeyLog for KeyLog {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        self.env.log(label, client_random, secret);
        let mut slot = key_log_slot();
        if let Some((path, f)) = slot.as_mut() {
            use std::fmt::Write as _;
            use std::io::Write as _;
            // NSS key log format: LABEL <client random hex> <secret hex>, one line each.
            let mut line = String::with_capacity(label.len() + 2 * (client_random.len() + secret.len()) + 3);
            line.push_str(label);
            line.push(' ');
            for b in client_random {
                let _ = write!(line, "{b:02x}");
            }
            line.push(' ');
            for b in secret {
                let _ = write!(line, "{b:02x}");
            }
            line.push('\n');
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!("key log {}: {e}", path.display());
            }
        }
    }
}

fn key_log() -> Arc<dyn rustls::KeyLog> {
    Arc::new(KeyLog { env: rustls::KeyLogFile::new() })
}

/// The crypto provider used everywhere (ring; see Cargo.toml for why not aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key the server presents, and where they came from.
pub struct CertStore {
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The local CA file (`certs/ca.pem`) when the development certificates are in use.
    pub ca_path: Option<PathBuf>,
    /// The leaf certificate file.
    pub cert_path: PathBuf,
    /// Whether this start created the development certificates.
    pub created: bool,
}

impl CertStore {
    /// Paths of the development files inside `dir`.
    pub fn dev_paths(dir: &Path) -> DevPaths {
        DevPaths {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Load the development certificates from `dir`, creating them on first use.
    pub fn load_or_create(dir: &Path) -> Result<CertStore, TlsError> {
        let p = Self::dev_paths(dir);
        let created = if p.cert.exists() && p.key.exists() {
            false
        } else {
            create_dev_certs(&p)?;
            true
        };
        let mut store = Self::load(&p.cert, &p.key)?;
        store.ca_path = p.ca.exists().then_some(p.ca);
        store.created = created;
        Ok(store)
    }

    /// Load a PEM certificate chain and private key (`--cert` / `--key`).
    pub fn load(cert: &Path, key: &Path) -> Result<CertStore, TlsError> {
        let chain = load_certs(cert)?;
        let key_pem = fs::read(key).map_err(io_err(key))?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| TlsError::Pem { path: key.to_path_buf(), what: "private key" })?;
        Ok(CertStore { chain, key: key_der, ca_path: None, cert_path: cert.to_path_buf(), created: false })
    }

    /// Base64 of the SHA-256 of the leaf's SubjectPublicKeyInfo: what Chromium's
    /// `--ignore-certificate-errors-spki-list` and curl's `--pinnedpubkey sha256//...` take.
    pub fn spki_sha256(&self) -> Result<String, TlsError> {
        let leaf = self.chain.first().ok_or(TlsError::BadCertificate("empty chain"))?;
        spki_sha256(leaf)
    }
}

/// The files of the development certificate set.
pub struct DevPaths {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Read every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem { path: path.to_path_buf(), what: "certificate" })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certs)
}

fn create_dev_certs(p: &DevPaths) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    if let Some(dir) = p.cert.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let validity = |params: &mut CertificateParams| {
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    };

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "quiclab development CA");
    dn.push(DnType::OrganizationName, "quiclab");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    leaf.distinguished_name = dn;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut leaf);
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    write_file(&p.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&p.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&p.cert, leaf_cert.pem().as_bytes(), 0o644)?;
    write_file(&p.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, base64.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let spki = der::spki(cert.as_ref())?;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    Ok(base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
}

/// Just enough DER to find the SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 §4.1).
mod der {
    use super::TlsError;

    /// One DER tag-length-value, split off the front of an input.
    struct Tlv<'a> {
        tag: u8,
        /// The whole encoding, header included.
        whole: &'a [u8],
        /// The value, without the header.
        contents: &'a [u8],
        /// What follows it in the input.
        rest: &'a [u8],
    }

    /// Split one TLV off the front of `input`.
    fn tlv(input: &[u8]) -> Result<Tlv<'_>, TlsError> {
        let bad = || TlsError::BadCertificate("truncated DER");
        let tag = *input.first().ok_or_else(bad)?;
        let first = *input.get(1).ok_or_else(bad)?;
        let (len, hdr) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return Err(TlsError::BadCertificate("unsupported DER length"));
            }
            let bytes = input.get(2..2 + n).ok_or_else(bad)?;
            (bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), 2 + n)
        };
        let end = hdr.checked_add(len).ok_or_else(bad)?;
        let whole = input.get(..end).ok_or_else(bad)?;
        Ok(Tlv { tag, whole, contents: &whole[hdr..], rest: &input[end..] })
    }

    /// The DER of the SubjectPublicKeyInfo inside a certificate.
    pub fn spki(cert: &[u8]) -> Result<&[u8], TlsError> {
        let cert = tlv(cert)?; // Certificate ::= SEQUENCE
        let tbs = tlv(cert.contents)?; // tbsCertificate ::= SEQUENCE
        let mut rest = tbs.contents;
        // [0] version is optional; then serial, signature, issuer, validity, subject, spki.
        let first = tlv(rest)?;
        if first.tag == 0xa0 {
            rest = first.rest;
        }
        for _ in 0..5 {
            rest = tlv(rest)?.rest;
        }
        let spki = tlv(rest)?;
        if spki.tag != 0x30 {
            return Err(TlsError::BadCertificate("SubjectPublicKeyInfo not found"));
        }
        Ok(spki.whole)
    }
}

/// rustls server configuration shared by QUIC and TLS/TCP.
fn server_config(
    store: &CertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(store.chain.clone(), store.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg.key_log = key_log();
    Ok(cfg)
}

/// TLS for the QUIC endpoint: TLS 1.3 only (RFC 9001 §4.2), the given ALPNs, and 0-RTT.
///
/// 0-RTT: rustls accepts early data only with its stateful session cache (the default
/// `ServerSessionMemoryCache`; no stateless ticketer), whose sessions are taken on use, so a
/// replayed ClientHello cannot resume twice (RFC 9001 §9.2). QUIC requires
/// `max_early_data_size` of 0 or 0xffffffff (RFC 9001 §4.6.1).
pub fn quic_server_config(
    store: &CertStore,
    alpn: &[&[u8]],
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let mut cfg = server_config(store, &[&rustls::version::TLS13], alpn)?;
    cfg.max_early_data_size = u32::MAX;
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(|e| TlsError::Quic(e.to_string()))
}

/// TLS for the TCP listener: TLS 1.3 and 1.2, ALPN in preference order.
pub fn tcp_server_config(store: &CertStore, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    server_config(store, rustls::DEFAULT_VERSIONS, alpn)
}

/// How a client decides to trust the server.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The Mozilla roots plus, if given, a PEM CA file (e.g. `certs/ca.pem`).
    #[default]
    WebPki,
    /// Trust the CA(s) in this PEM file, plus the Mozilla roots.
    CaFile(PathBuf),
    /// Accept any certificate (`--insecure`). Signatures are still checked, names are not.
    Insecure,
}

/// A rustls client configuration for `quiclab get` and the tests.
///
/// Sessions are cached in memory (rustls' default resumption store) so a client reusing this
/// configuration within one process resumes, and early data is enabled for 0-RTT.
pub fn client_config(trust: &Trust, alpn: &[&[u8]], tls13_only: bool) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with_tickets(trust, alpn, tls13_only).map(|(cfg, _)| cfg)
}

/// [`client_config`], plus a handle that tells when the server's session tickets arrive.
pub fn client_config_with_tickets(
    trust: &Trust,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<(rustls::ClientConfig, Arc<TicketWatch>), TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        if tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let mut cfg = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
            .with_no_client_auth(),
        Trust::WebPki | Trust::CaFile(_) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Trust::CaFile(path) = trust {
                for cert in load_certs(path)? {
                    roots.add(cert)?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg.enable_early_data = true;
    cfg.key_log = key_log();
    let tickets = Arc::new(TicketWatch::new());
    cfg.resumption = rustls::client::Resumption::store(tickets.clone());
    Ok((cfg, tickets))
}

/// rustls' in-memory session store, counting the TLS 1.3 tickets the server sends
/// (NewSessionTicket, RFC 8446 §4.6.1), so a client can wait for one before it closes a
/// connection it means to resume from.
#[derive(Debug)]
pub struct TicketWatch {
    inner: rustls::client::ClientSessionMemoryCache,
    received: tokio::sync::watch::Sender<u64>,
}

impl TicketWatch {
    fn new() -> Self {
        TicketWatch {
            inner: rustls::client::ClientSessionMemoryCache::new(256),
            received: tokio::sync::watch::channel(0).0,
        }
    }

    /// Tickets received so far.
    pub fn received(&self) -> u64 {
        *self.received.borrow()
    }

    /// Wait until more than `seen` tickets have arrived, at most `limit`. True if one did.
    pub async fn wait_beyond(&self, seen: u64, limit: std::time::Duration) -> bool {
        let mut rx = self.received.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n > seen)).await.is_ok_and(|r| r.is_ok())
    }
}

impl rustls::client::ClientSessionStore for TicketWatch {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.inner.insert_tls13_ticket(server_name, value);
        self.received.send_modify(|n| *n += 1);
    }
    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

/// `--insecure`: skip name and chain checks, keep signature checks (so the handshake is real).
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_reuses_and_hashes_dev_certs() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertStore::load_or_create(dir.path()).unwrap();
        assert!(first.created);
        let p = CertStore::dev_paths(dir.path());
        for f in [&p.ca, &p.ca_key, &p.cert, &p.key] {
            assert!(f.exists(), "{} missing", f.display());
        }
        use std::os::unix::fs::PermissionsExt;
        for key in [&p.key, &p.ca_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.display());
        }
        let second = CertStore::load_or_create(dir.path()).unwrap();
        assert!(!second.created);
        assert_eq!(first.chain, second.chain);
        let hash = first.spki_sha256().unwrap();
        assert_eq!(hash.len(), 44, "base64 of 32 bytes");
        // The SPKI found by the DER walk is the one rcgen wrote for the key.
        let key_pem = fs::read_to_string(&p.key).unwrap();
        let kp = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        use rcgen::PublicKeyData;
        let want = ring::digest::digest(&ring::digest::SHA256, &kp.subject_public_key_info());
        assert_eq!(hash, base64::engine::general_purpose::STANDARD.encode(want.as_ref()));
    }

    #[test]
    fn rejects_garbage_der() {
        assert!(der::spki(&[0x30, 0x82, 0xff]).is_err());
        assert!(der::spki(&[]).is_err());
        assert!(der::spki(&[0x30, 0x00]).is_err());
    }
}
