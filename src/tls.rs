//! Certificates and TLS configuration.
//!
//! * [`CertStore`] creates (with rcgen) or loads the development certificates: a local CA
//!   (`ca.pem`, `ca-key.pem`) and a leaf for `localhost`, `127.0.0.1` and `::1` (`cert.pem`,
//!   `key.pem`), keys written with mode 0600. Or it serves a user's own `--cert/--key` pair.
//! * rustls configurations for the QUIC endpoint (TLS 1.3 only, 0-RTT enabled) and for the
//!   TLS/TCP listener (ALPN `h2` and `http/1.1`), and client configurations for `quiclab get`.
//! * Client certificates (MQTT, docs/mqtt.md "Client certificates"): [`ClientCa`] and
//!   [`ClientAuth`] make a server ask for and verify them, [`ClientIdentity`] makes a client
//!   present one, [`issue_client_cert`] signs one with the development CA (`quiclab certs
//!   --client NAME`), and [`subject_common_name`] reads the name a verified one carries.
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
    /// A certificate or key file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why it could not be read or written.
        #[source]
        source: io::Error,
    },
    /// A file holds no PEM block of the kind wanted.
    #[error("{path}: no PEM {what} found")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for (`certificate`, `private key`).
        what: &'static str,
    },
    /// rcgen could not generate or sign a certificate.
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// A certificate is not the DER X.509 it should be; the text says where it went wrong.
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(&'static str),
    /// The rustls configuration cannot drive QUIC (it offers no TLS 1.3 cipher suite QUIC's
    /// Initial packets can use).
    #[error("QUIC TLS configuration")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The client-certificate verifier could not be built from the client CA file (e.g. it
    /// holds no usable CA certificate).
    #[error("client CA")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// A client certificate name (`quiclab certs --client NAME`) that cannot be a file name
    /// part and a user name.
    #[error("client name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ @ -, not starting with . or -")]
    BadClientName(String),
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
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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
    fn dev_paths(dir: &Path) -> DevPaths {
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
struct DevPaths {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Read every certificate in a PEM file.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem { path: path.to_path_buf(), what: "certificate" })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certs)
}

/// Every development certificate is valid from 2024 to 2036: long enough never to expire under
/// a lab, fixed so that certificates made on different days look alike.
fn dev_validity(params: &mut rcgen::CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
}

/// A leaf certificate for `cn` (and `sans`, if any) with extended key usage `eku`, signed by
/// `issuer`; a fresh key. The one way development leaves are made: the server's and clients'.
fn issue_leaf(
    cn: &str,
    sans: Vec<String>,
    eku: rcgen::ExtendedKeyUsagePurpose,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> Result<(rcgen::Certificate, rcgen::KeyPair), TlsError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    leaf.distinguished_name = dn;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![eku];
    dev_validity(&mut leaf);
    let cert = leaf.signed_by(&key, issuer)?;
    Ok((cert, key))
}

fn create_dev_certs(p: &DevPaths) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    if let Some(dir) = p.cert.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "quiclab development CA");
    dn.push(DnType::OrganizationName, "quiclab");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    dev_validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;

    let ca_key_pem = ca_key.serialize_pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let (leaf_cert, leaf_key) = issue_leaf("localhost", sans, ExtendedKeyUsagePurpose::ServerAuth, &issuer)?;

    write_file(&p.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&p.ca_key, ca_key_pem.as_bytes(), 0o600)?;
    write_file(&p.cert, leaf_cert.pem().as_bytes(), 0o644)?;
    write_file(&p.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(())
}

/// The files [`issue_client_cert`] wrote (or found).
#[derive(Debug, Clone)]
pub struct ClientCertFiles {
    /// The client certificate (`DIR/client-NAME.pem`, mode 0644).
    pub cert: PathBuf,
    /// Its private key (`DIR/client-NAME-key.pem`, mode 0600).
    pub key: PathBuf,
    /// The CA that signed it (`DIR/ca.pem`): what a broker's `--mqtt-client-ca` (mosquitto's
    /// `cafile`) must name, and what the client trusts for the broker.
    pub ca: PathBuf,
    /// False when both files existed already and were kept.
    pub created: bool,
    /// True when the development certificates themselves were created by this call.
    pub created_ca: bool,
}

/// Check a client name for [`issue_client_cert`]: it becomes the certificate's CN (a user name
/// with `--mqtt-use-identity-as-username`) and part of two file names, so it is 1 to 64
/// characters (RFC 5280's upper bound for a CN) of `A-Z a-z 0-9 . _ @ -`, not starting with
/// `.` or `-`: no path separators, no MQTT wildcards (`+`, `#`), nothing a shell would mangle.
fn check_client_name(name: &str) -> Result<(), TlsError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    let ok = (1..=64).contains(&name.len()) && name.chars().all(ok_char) && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadClientName(name.to_string()))
    }
}

/// Issue a client certificate for `name` (subject CN=`name`, extended key usage clientAuth,
/// RFC 5280 §4.2.1.12) signed by the development CA in `dir` (`ca.pem`, `ca-key.pem`; the
/// development certificates are created first if missing, as `quiclab serve` does). Written to
/// `DIR/client-NAME.pem` and `DIR/client-NAME-key.pem` (mode 0600); existing files for the same
/// name are kept.
pub fn issue_client_cert(dir: &Path, name: &str) -> Result<ClientCertFiles, TlsError> {
    check_client_name(name)?;
    let p = CertStore::dev_paths(dir);
    let created_ca = CertStore::load_or_create(dir)?.created;
    let cert = dir.join(format!("client-{name}.pem"));
    let key = dir.join(format!("client-{name}-key.pem"));
    if cert.exists() && key.exists() {
        return Ok(ClientCertFiles { cert, key, ca: p.ca, created: false, created_ca });
    }
    let ca_pem = fs::read_to_string(&p.ca).map_err(io_err(&p.ca))?;
    let ca_key_pem = fs::read_to_string(&p.ca_key).map_err(io_err(&p.ca_key))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let (leaf, leaf_key) = issue_leaf(name, Vec::new(), rcgen::ExtendedKeyUsagePurpose::ClientAuth, &issuer)?;
    write_file(&key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert, leaf.pem().as_bytes(), 0o644)?;
    Ok(ClientCertFiles { cert, key, ca: p.ca, created: true, created_ca })
}

/// The subject common name (CN) of a DER certificate, the first if it has several (as
/// mosquitto takes it); `Ok(None)` when it has none or it is not a text string.
pub fn subject_common_name(cert: &CertificateDer<'_>) -> Result<Option<String>, TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| TlsError::BadCertificate("not a DER X.509 certificate"))?;
    let cn = x509.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    Ok(cn)
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

/// The CA certificate(s) that sign client certificates (`--mqtt-client-ca`), loaded once.
#[derive(Debug, Clone)]
pub struct ClientCa {
    path: PathBuf,
    roots: Arc<rustls::RootCertStore>,
}

impl ClientCa {
    /// Load every certificate in a PEM file as a trust anchor for client certificates.
    pub fn load(path: &Path) -> Result<ClientCa, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs(path)? {
            roots.add(cert)?;
        }
        Ok(ClientCa { path: path.to_path_buf(), roots: Arc::new(roots) })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A WebPKI verifier over these roots: the chain must lead to one of them, be valid now and
    /// allow clientAuth (RFC 5280 §4.2.1.12). `mandatory`: a client without a certificate fails
    /// the handshake; otherwise it is let through unauthenticated (the application decides).
    fn verifier(&self, mandatory: bool) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        let builder = if mandatory { builder } else { builder.allow_unauthenticated() };
        Ok(builder.build()?)
    }
}

/// Whether a server asks its clients for a certificate (RFC 8446 §4.3.2 CertificateRequest).
#[derive(Debug, Clone, Copy, Default)]
pub enum ClientAuth<'a> {
    /// No CertificateRequest: clients present nothing (HTTPS, and MQTT without a client CA).
    #[default]
    Off,
    /// Ask; a certificate sent is verified against the CA (a bad one fails the handshake), a
    /// client that sends none gets in without an identity.
    Optional(&'a ClientCa),
    /// Ask and insist: no valid certificate from the CA, no handshake (mosquitto's
    /// `require_certificate true`).
    Required(&'a ClientCa),
}

/// rustls server configuration shared by QUIC and TLS/TCP.
fn server_config(
    store: &CertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
    clients: ClientAuth<'_>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match clients {
        ClientAuth::Off => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) => builder.with_client_cert_verifier(ca.verifier(false)?),
        ClientAuth::Required(ca) => builder.with_client_cert_verifier(ca.verifier(true)?),
    };
    let mut cfg = builder.with_single_cert(store.chain.clone(), store.key.clone_key())?;
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
    quic_server_config_with(store, alpn, ClientAuth::Off)
}

/// [`quic_server_config`], asking clients for certificates as `clients` says. A resumed
/// session (and so 0-RTT) keeps the certificate verified in the full handshake it came from:
/// rustls stores the client's chain with the session (RFC 8446 §2.2).
pub fn quic_server_config_with(
    store: &CertStore,
    alpn: &[&[u8]],
    clients: ClientAuth<'_>,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let mut cfg = server_config(store, &[&rustls::version::TLS13], alpn, clients)?;
    cfg.max_early_data_size = u32::MAX;
    Ok(quinn::crypto::rustls::QuicServerConfig::try_from(cfg)?)
}

/// TLS for the TCP listener: TLS 1.3 and 1.2, ALPN in preference order.
pub fn tcp_server_config(store: &CertStore, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    tcp_server_config_with(store, alpn, ClientAuth::Off)
}

/// [`tcp_server_config`], asking clients for certificates as `clients` says.
pub fn tcp_server_config_with(
    store: &CertStore,
    alpn: &[&[u8]],
    clients: ClientAuth<'_>,
) -> Result<rustls::ServerConfig, TlsError> {
    server_config(store, rustls::DEFAULT_VERSIONS, alpn, clients)
}

/// A certificate chain and key a client presents when the server asks (`quiclab mqtt pub|sub
/// --cert FILE --key FILE`). Cloning shares the key.
#[derive(Clone)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    cert_path: PathBuf,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("cert", &self.cert_path).finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Load a PEM certificate chain (leaf first) and its PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientIdentity, TlsError> {
        let store = CertStore::load(cert, key)?;
        Ok(ClientIdentity { chain: store.chain, key: Arc::new(store.key), cert_path: cert.to_path_buf() })
    }

    /// The certificate file it was loaded from.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
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
    client_config_with_identity(trust, None, alpn, tls13_only)
}

/// [`client_config_with_tickets`], presenting `identity` when the server asks for a client
/// certificate (none: the client answers a CertificateRequest with an empty Certificate,
/// RFC 8446 §4.4.2). The one client configuration of TLS and QUIC alike.
pub fn client_config_with_identity(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<(rustls::ClientConfig, Arc<TicketWatch>), TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        if tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match trust {
        Trust::Insecure => builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider()))),
        Trust::WebPki | Trust::CaFile(_) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Trust::CaFile(path) = trust {
                for cert in load_certs(path)? {
                    roots.add(cert)?;
                }
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut cfg = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
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
    fn client_names() {
        for ok in ["alice", "sensor-7", "a.b_c@example.org", "A", &"x".repeat(64)] {
            assert!(check_client_name(ok).is_ok(), "{ok:?}");
        }
        let long = "x".repeat(65);
        for bad in ["", "../x", "a/b", "a\\b", ".hidden", "-flag", "a b", "a+b", "a#", "é", "a\0", &long] {
            assert!(matches!(check_client_name(bad), Err(TlsError::BadClientName(_))), "{bad:?}");
        }
    }

    #[test]
    fn issues_a_client_certificate_from_the_dev_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = issue_client_cert(dir.path(), "alice").unwrap();
        assert!(f.created && f.created_ca);
        assert_eq!(f.cert, dir.path().join("client-alice.pem"));
        assert_eq!(f.key, dir.path().join("client-alice-key.pem"));
        assert_eq!(fs::metadata(&f.key).unwrap().permissions().mode() & 0o777, 0o600);
        let chain = load_certs(&f.cert).unwrap();
        assert_eq!(subject_common_name(&chain[0]).unwrap().as_deref(), Some("alice"));
        // It verifies as a client certificate against the CA, and the server leaf does not.
        let ca = ClientCa::load(&f.ca).unwrap();
        let v = ca.verifier(true).unwrap();
        let now = UnixTime::now();
        assert!(v.verify_client_cert(&chain[0], &[], now).is_ok());
        let server_leaf = load_certs(&CertStore::dev_paths(dir.path()).cert).unwrap();
        assert!(v.verify_client_cert(&server_leaf[0], &[], now).is_err(), "serverAuth only");
        // Kept on a second call; the key still matches.
        let again = issue_client_cert(dir.path(), "alice").unwrap();
        assert!(!again.created && !again.created_ca);
        assert_eq!(load_certs(&again.cert).unwrap(), chain);
        assert!(ClientIdentity::load(&again.cert, &again.key).is_ok());
        assert!(issue_client_cert(dir.path(), "../evil").is_err());
        assert!(!dir.path().join("client-..").exists());
    }

    #[test]
    fn common_name_absent_or_garbage() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["device.example".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_common_name(cert.der()).unwrap(), None);
        assert!(subject_common_name(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }

    #[test]
    fn rejects_garbage_der() {
        assert!(der::spki(&[0x30, 0x82, 0xff]).is_err());
        assert!(der::spki(&[]).is_err());
        assert!(der::spki(&[0x30, 0x00]).is_err());
    }
}
