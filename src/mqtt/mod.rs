//! MQTT: the transports around the sans-IO broker core, and an async client. The `quiclab mqtt`
//! commands are the binary's (`src/cli/mqtt.rs`).
//!
//! The protocol logic (codec, topic tries, sessions, the broker state machine, password files,
//! ACLs) is the crate `mqtt_core` (crates/mqtt-core), which cannot reach tokio, sockets or the
//! clock; its modules are re-exported here so `quiclab::mqtt::codec` and friends are one path.
//!
//! | module | what it holds |
//! |--------|---------------|
//! | [`codec`], [`topic`], [`session`], [`broker`], [`config`], [`auth`], [`acl`], [`scram`] | re-exported from `mqtt_core` |
//! | `driver` | [`Broker`]: the core behind a mutex, its timer task on tokio's clock, per-channel bounded outboxes |
//! | [`tcp`] | [`serve_tcp`]: MQTT over TCP and TLS, one task per connection |
//! | [`quic`] | MQTT over QUIC: the stream mapping of docs/mqtt-over-quic.md on one quinn connection |
//! | [`store`] | what survives a restart (`--data-dir`): one redb file, written by a thread in group commits |
//! | `ws` | MQTT over WebSocket: the TCP handler run on the byte stream of a WebSocket's binary messages (the handshake is `web::ws`'s) |
//! | [`client`] | an async MQTT 3.1.1 and 5.0 client over TCP, TLS and QUIC ([`client::QuicConnection`]): CLI, tests, lab, benchmark |
//!
//! The design notes (channels, QoS flows, memory bounds, what is not done yet) are in
//! `docs/mqtt.md`.

pub use mqtt_core::{acl, auth, broker, codec, config, scram, session, topic};

pub mod client;
pub(crate) mod driver;
pub mod quic;
pub mod store;
pub mod tcp;
pub(crate) mod ws;

pub use broker::{Action, BrokerCore, ChannelEnd, CloseReason, CoreStats, SessionInfo, StoreOp};
pub use client::{Client, ClientOptions, MqttUrl};
pub use config::MqttConfig;
pub use driver::{Broker, BrokerStats};
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
    /// A socket, file or terminal operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A TLS configuration could not be built (certificates, keys, trust anchors).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The peer sent bytes that are not a valid MQTT packet.
    #[error("malformed packet from the peer")]
    Codec(#[from] codec::CodecError),
    /// A packet this client built cannot be encoded (e.g. larger than MQTT allows).
    #[error("cannot encode a packet")]
    Encode(#[source] codec::CodecError),
    /// The broker answered CONNECT with this refusal.
    #[error("connection refused by the broker: CONNACK {0:?}")]
    Refused(codec::ConnectReasonCode),
    /// The broker refused a request with an MQTT 5 reason code (0x80 or above).
    #[error("the broker refused the {what} with reason code {code:#04x}")]
    Rejected { what: &'static str, code: u8 },
    /// The peer broke the protocol; the message says how.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Waiting took too long; the message says for what.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A broker URL that cannot be used; the message says why.
    #[error("bad URL {0}")]
    BadUrl(String),
    /// The operation needs what this connection lacks (e.g. QUIC); the message names it.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// The broker closed an MQTT 5 connection with DISCONNECT, saying why.
    #[error("the broker disconnected: reason code {code:#04x} {reason}")]
    Disconnected { code: u8, reason: String },
    /// A QUIC connection could not be started (e.g. an invalid server name).
    #[error("cannot start a QUIC connection")]
    QuicConnect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed (its Display names the peer's error code).
    #[error(transparent)]
    Quic(#[from] quinn::ConnectionError),
    /// The TLS configuration offers no cipher suite QUIC can start with.
    #[error("the TLS configuration cannot be used for QUIC")]
    QuicTls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// An empty topic name (MQTT 3.1.1 §4.7.3-1).
    #[error("a topic name cannot be empty")]
    EmptyTopic,
    /// Not a valid topic name (wildcards or U+0000, §4.7).
    #[error("{topic:?} is not a valid topic name")]
    BadTopic {
        topic: String,
        #[source]
        source: mqtt_proto::Error,
    },
    /// Not a valid topic filter (§4.7.1).
    #[error("{filter:?} is not a valid topic filter")]
    BadFilter {
        filter: String,
        #[source]
        source: mqtt_proto::Error,
    },
    /// [`client::Client::end_stream`] for a topic or filter that has no data stream.
    #[error("no data stream carries {0:?}")]
    NoSuchStream(String),
    /// An MQTT listener could not be bound (`quiclab mqtt broker`).
    #[error(transparent)]
    Listen(#[from] tcp::BindError),
    /// A password file could not be read, parsed or written (`--mqtt-password-file`, `passwd`).
    #[error(transparent)]
    PasswordFile(#[from] auth::PasswordFileError),
    /// An ACL file could not be read or parsed (`--mqtt-acl-file`).
    #[error(transparent)]
    Acl(#[from] acl::AclError),
}
