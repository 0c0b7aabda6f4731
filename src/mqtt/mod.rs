//! MQTT: a broker whose protocol logic is a sans-IO core, its TCP and TLS transports, an async
//! client, and the `quiclab mqtt pub|sub|broker|passwd` commands.
//!
//! | module | what it holds |
//! |--------|---------------|
//! | [`auth`] | password files in mosquitto's format (`$7$` PBKDF2-SHA512, `$6$`); `quiclab mqtt passwd` |
//! | [`acl`] | access control lists in mosquitto's `acl_file` syntax (`topic`, `user`, `pattern` with `%c`/`%u`) |
//! | [`codec`] | framing (fixed header, maximum packet size) in front of `mqtt-proto`'s v3.1.1 packets; encoder |
//! | [`topic`] | the subscription trie and the retained-message trie (`+`, `#`, the `$` rule) |
//! | [`session`] | per-client-id state: subscriptions, packet ids, in-flight and queued messages, inbound QoS 2 |
//! | [`broker`] | [`BrokerCore`]: `(connection, channel, packet, now) → actions`; no I/O, no clock |
//! | [`driver`] | [`Broker`]: the core behind a mutex, its timer task, per-channel bounded [`Outbox`]es |
//! | [`tcp`] | [`serve_tcp`]: MQTT over TCP and TLS, one task per connection |
//! | [`client`] | an async MQTT 3.1.1 client over TCP and TLS (CLI, tests, benchmarks) |
//! | [`cli`] | clap types and runners for `quiclab mqtt pub`, `sub`, `broker`, `passwd` |
//!
//! The design notes (channels, QoS flows, memory bounds, what is not done yet) are in
//! `docs/mqtt.md`.

pub mod acl;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod driver;
pub mod quic;
pub mod session;
pub mod tcp;
pub mod topic;

pub use broker::{Action, BrokerCore, ChannelEnd, CloseReason, CoreStats, SessionInfo};
pub use cli::{run, MqttCommand};
pub use client::{Client, ClientOptions, MqttUrl};
pub use config::MqttConfig;
pub use driver::{Attachment, Broker, BrokerStats, Outbox};
pub use session::Message;
pub use tcp::serve_tcp;

/// Identifies one network connection attached to a broker core.
pub type ConnId = u64;
/// Identifies one channel (byte stream) of a connection.
pub type ChannelId = u32;
/// The channel CONNECT arrives on; the only channel of TCP and TLS connections.
pub const CONTROL_CHANNEL: ChannelId = 0;

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
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("malformed packet from the peer: {0}")]
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
