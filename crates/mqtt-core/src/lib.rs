//! quiclab's MQTT broker core: everything about MQTT 3.1.1 and 5.0 that does not need a
//! socket, a runtime or a clock.
//!
//! The broker is a sans-IO state machine ([`BrokerCore`]): it is fed `(connection, channel,
//! packet, now)` and answers with [`Action`]s (packets to write, channels to close, a timer to
//! arm). quiclab's transports (`quiclab::mqtt`: TCP, TLS, QUIC streams) own the sockets and the
//! clock and drive it; tests drive it with a fake `now` and no I/O at all.
//!
//! This is a crate of its own so the compiler keeps it that way: it has no tokio, no socket
//! and no `quiclab` dependency, and its `clippy.toml` forbids reading the clock.
//!
//! | module | what it holds |
//! |--------|---------------|
//! | [`codec`] | framing (fixed header, maximum packet size) in front of `mqtt-proto`'s 3.1.1 and 5.0 packets, one packet type for both; encoder |
//! | [`topic`] | the subscription trie and the retained-message trie (`+`, `#`, the `$` rule); iterative, bounded |
//! | `shared` (private) | plain and shared (`$share/{group}/{filter}`) subscriptions: where a message goes, one member per group |
//! | [`session`] | per-client-id state: subscriptions, packet ids, in-flight and queued messages, inbound QoS 2 |
//! | [`broker`] | [`BrokerCore`]: `(connection, channel, packet, now) → actions` |
//! | [`config`] | [`MqttConfig`]: every knob of the broker, its default and the reason for it |
//! | [`auth`] | password files in mosquitto's format (`$7$` PBKDF2-SHA512, `$6$`) |
//! | [`scram`] | SCRAM-SHA-512 as an MQTT 5 enhanced authentication method, over the password file's `$7$` users |
//! | [`acl`] | access control lists in mosquitto's `acl_file` syntax (`topic`, `user`, `pattern`) |
//! | `slab` (private) | the generational table of connections and of sessions, one key type each |
//!
//! Dependencies inside the crate run one way: `broker` → `session` → `acl` → `topic` → `codec`;
//! `broker` → `shared` → `topic`;
//! `broker` and `session` → `slab`; `config` names `auth`, `acl` and `codec` types; `auth`
//! stands alone.

#![deny(clippy::disallowed_methods)]

pub mod acl;
pub mod auth;
pub mod broker;
pub mod codec;
pub mod config;
pub mod scram;
pub mod session;
mod shared;
mod slab;
pub mod topic;

pub use broker::{Action, BrokerCore, ChannelEnd, CloseReason, CoreStats, SessionInfo, StoredSession, StoredSub};
pub use config::MqttConfig;
pub use session::Message;

/// Identifies one network connection attached to a broker core.
pub type ConnId = u64;
/// Identifies one channel (byte stream) of a connection: the TCP connection itself, or one QUIC
/// stream.
pub type ChannelId = u32;
/// The channel CONNECT arrives on; the only channel of TCP and TLS connections.
pub const CONTROL_CHANNEL: ChannelId = 0;
