//! `quiclab certs`: the development certificates and ready-to-paste client command lines, and
//! client certificates for MQTT (`--client NAME`).

use clap::Args;

use quiclab::config;
use quiclab::tls::{self, CertStore};

use super::{CertArgs, CliError};

/// `quiclab certs`.
#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    #[command(flatten)]
    pub(crate) certs: CertArgs,
    /// Port the command lines should use.
    #[arg(long, default_value_t = config::DEFAULT_PORT)]
    pub(crate) port: u16,
    /// Issue a client certificate for NAME (subject CN=NAME, extended key usage clientAuth),
    /// signed by the development CA (ca.pem, ca-key.pem in --certs; created if missing), into
    /// client-NAME.pem and client-NAME-key.pem (mode 0600); existing files for NAME are kept.
    /// For brokers run with --mqtt-require-certificate; NAME is 1 to 64 of A-Z a-z 0-9 . _ @ -.
    #[arg(long, value_name = "NAME")]
    pub(crate) client: Option<String>,
}

/// `quiclab certs --client NAME`.
fn client_cert(dir: &std::path::Path, name: &str) -> Result<i32, CliError> {
    let f = tls::issue_client_cert(dir, name)?;
    if f.created_ca {
        println!("created development certificates in {}", dir.display());
    }
    let state = if f.created { "created" } else { "exists, kept" };
    println!("client certificate:  {}  (CN={name}, {state})", f.cert.display());
    println!("client key:          {}  (mode 0600)", f.key.display());
    println!("signed by:           {}", f.ca.display());
    let (ca, cert, key) = (f.ca.display(), f.cert.display(), f.key.display());
    let tls_port = quiclab::mqtt::config::DEFAULT_TLS_PORT;
    println!();
    println!("mosquitto_pub over TLS (broker: quiclab serve --mqtt-require-certificate):");
    println!("  mosquitto_pub -h localhost -p {tls_port} --cafile {ca} --cert {cert} --key {key} -t test -m hello");
    println!("quiclab over MQTT/QUIC:");
    println!(
        "  quiclab mqtt pub --url mqtt+quic://localhost:{} --cacert {ca} --cert {cert} --key {key} -t test -m hello",
        config::DEFAULT_PORT
    );
    Ok(0)
}

/// `quiclab certs`: create (if missing) and show the certificates, or issue a client
/// certificate. Blocking: file work.
pub(crate) fn run(args: &CertsArgs) -> Result<i32, CliError> {
    if let Some(name) = &args.client {
        return client_cert(&args.certs.certs, name);
    }
    let store = match (&args.certs.cert, &args.certs.key) {
        (Some(c), Some(k)) => CertStore::load(c, k)?,
        _ => CertStore::load_or_create(&args.certs.certs)?,
    };
    let spki = store.spki_sha256()?;
    let port = args.port;
    if store.created {
        println!("created development certificates in {}", args.certs.certs.display());
    }
    if let Some(ca) = &store.ca_path {
        println!("CA certificate:    {}", ca.display());
    }
    println!("leaf certificate:  {}", store.cert_path.display());
    println!("leaf SPKI sha256:  {spki}");
    let ca = store.ca_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "CA.pem".into());
    println!();
    println!("curl (a build with HTTP/3), trusting the local CA:");
    println!("  curl --http3-only --cacert {ca} https://localhost:{port}/");
    println!("curl, pinning the key instead of trusting the CA:");
    println!("  curl --http3-only -k --pinnedpubkey 'sha256//{spki}' https://localhost:{port}/");
    println!("curl over HTTP/2 (any curl):");
    println!("  curl --http2 --cacert {ca} https://localhost:{port}/");
    println!("Chromium over HTTP/3 (QUIC forced for the origin, the key pinned):");
    println!(
        "  chromium --enable-quic --origin-to-force-quic-on=localhost:{port} \
         --ignore-certificate-errors-spki-list={spki} https://localhost:{port}/"
    );
    Ok(0)
}
