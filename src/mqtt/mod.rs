//! MQTT: the transports around the sans-IO broker core, and an async client. The `quiclab mqtt`
//! commands are the binary's (`src/cli/mqtt.rs`).
//!
//! The protocol logic (codec, topic tries, sessions, the broker state machine, password files,
//! ACLs) is the crate `mqtt_core` (crates/mqtt-core), which cannot reach tokio, sockets or the
//! clock; its modules are re-exported here so `quiclab::mqtt::codec` and friends are one path.
//!
//! | module | what it holds |
//! |--------|---------------|
//! | [`codec`], [`topic`], [`session`], [`broker`], [`config`], [`auth`], [`acl`] | re-exported from `mqtt_core` |
//! | [`driver`] | [`Broker`]: the core behind a mutex, its timer task on tokio's clock, per-channel bounded [`Outbox`]es |
//! | [`tcp`] | [`serve_tcp`]: MQTT over TCP and TLS, one task per connection |
//! | [`quic`] | MQTT over QUIC: the stream mapping of docs/mqtt-over-quic.md on one quinn connection |
//! | [`client`] | an async MQTT 3.1.1 client over TCP, TLS and QUIC (CLI, tests, lab, benchmark) |
//!
//! The design notes (channels, QoS flows, memory bounds, what is not done yet) are in
//! `docs/mqtt.md`.

pub use mqtt_core::{acl, auth, broker, codec, config, session, topic};

pub mod client;
pub mod driver;
pub mod quic;
pub mod tcp;

pub use broker::{Action, BrokerCore, ChannelEnd, CloseReason, CoreStats, SessionInfo};
pub use client::{Client, ClientOptions, MqttUrl};
pub use config::MqttConfig;
pub use driver::{Attachment, Broker, BrokerStats, Outbox};
pub use mqtt_core::{ChannelId, ConnId, CONTROL_CHANNEL};
pub use session::Message;
pub use tcp::serve_tcp;

/// How a TLS or dedicated-QUIC MQTT listener asks for client certificates, given the CA loaded
/// from [`MqttConfig::client_ca_file`]: required with `require_certificate`, otherwise optional
/// (verified when sent); off without a CA.
pub fn client_auth<'a>(cfg: &MqttConfig, ca: Option<&'a crate::tls::ClientCa>) -> crate::tls::ClientAuth<'a> {
    use crate::tls::ClientAuth;
    match ca {
        Some(ca) if cfg.require_certificate => ClientAuth::Required(ca),
        Some(ca) => ClientAuth::Optional(ca),
        None => ClientAuth::Off,
    }
}

/// The identity of a client from the certificate chain its TLS or QUIC handshake verified:
/// the leaf's subject CN (docs/mqtt.md "Client certificates"). `None` without a certificate,
/// and with a certificate that names no CN (logged: `use_identity_as_username` cannot work
/// for it). `proto` and `peer` only go into the log line.
pub(crate) fn cert_identity(
    chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    peer: std::net::SocketAddr,
    proto: &str,
) -> Option<String> {
    let leaf = chain?.first()?;
    match crate::tls::subject_common_name(leaf) {
        Ok(Some(cn)) => {
            tracing::debug!(%peer, identity = %cn, "{proto}: client certificate verified");
            Some(cn)
        }
        Ok(None) => {
            tracing::info!(%peer, "{proto}: client certificate has no subject CN; no identity");
            None
        }
        Err(e) => {
            tracing::info!(%peer, "{proto}: client certificate unreadable ({e}); no identity");
            None
        }
    }
}

/// Errors of the MQTT client and commands.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("malformed packet from the peer")]
    Codec(#[from] codec::CodecError),
    #[error("connection refused by the broker: CONNACK {0:?}")]
    Refused(codec::ConnectReturnCode),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("bad URL {0}")]
    BadUrl(String),
    #[error("not supported yet: {0}")]
    Unsupported(String),
    #[error("the broker closed the connection")]
    Closed,
    /// A password file could not be read, parsed or written (`--mqtt-password-file`, `passwd`).
    #[error(transparent)]
    PasswordFile(#[from] auth::PasswordFileError),
    /// An ACL file could not be read or parsed (`--mqtt-acl-file`).
    #[error(transparent)]
    Acl(#[from] acl::AclError),
    #[error("{0}")]
    Other(String),
}
