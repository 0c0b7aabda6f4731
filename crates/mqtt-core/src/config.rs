//! Every knob of the MQTT broker, with its default and the reason for it.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::acl::AclFile;
use crate::auth::{AuthMethod, PasswordFile};
use crate::codec::QoS;

/// MQTT over TCP: the IANA port (MQTT 3.1.1 §4.2, "TCP port 1883").
pub const DEFAULT_TCP_PORT: u16 = 1883;
/// MQTT over TLS: the IANA port 8883.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// ALPN a TLS client may offer for MQTT (the name EMQX and AWS IoT use); not required.
pub const ALPN_MQTT: &[u8] = b"mqtt";

/// The broker's configuration: listeners, limits, and the policies that bound memory.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Serve MQTT at all (`quiclab serve --no-mqtt` turns it off).
    pub enabled: bool,
    /// MQTT over plain TCP. `[::]:1883`: the IANA port, dual-stack like the other listeners.
    /// `None`: no plain TCP listener.
    pub tcp_listen: Option<SocketAddr>,
    /// MQTT over TLS (certificates from `certs/`, like the HTTPS listener). `[::]:8883`.
    pub tls_listen: Option<SocketAddr>,
    /// Largest packet accepted, header included; a larger one closes the connection as soon as
    /// its fixed header arrives. 1 MiB: EMQX's default; far above telemetry payloads, and it
    /// bounds what one connection can make the broker buffer for an incomplete packet.
    pub max_packet_size: usize,
    /// Messages kept per session beyond its in-flight windows, in total across its channels:
    /// while it is offline (clean session 0) or while a channel's window is full. 1,000:
    /// mosquitto's `max_queued_messages`. When full, the oldest queued QoS 0 message is dropped
    /// first; with none left, the channel with the longest queue gives up its newest message
    /// (over one channel: the new message is refused; docs/mqtt-over-quic.md §6.13). Every
    /// dropped message is counted and logged.
    pub max_queued_messages: usize,
    /// Keep QoS 0 messages for offline persistent sessions too (MQTT 3.1.1 §3.1.2.4 allows it).
    /// On: a subscriber that reconnects sees what it missed at every QoS, and the offline cap
    /// above has QoS 0 messages to give up first.
    pub queue_qos0_offline: bool,
    /// Outbound QoS 1/2 messages in flight (sent, unacknowledged) per channel: per TCP
    /// connection, per QUIC stream (so a stalled stream holds up only itself,
    /// docs/mqtt-over-quic.md §6.12). 20: mosquitto's `max_inflight_messages`. Together with
    /// `channel_queue` it bounds what one slow subscriber costs the broker.
    pub max_inflight: usize,
    /// Packets waiting to be written per channel (per TCP connection, per QUIC stream).
    /// When that many are queued, further QoS 0 deliveries to that channel are dropped and
    /// counted; QoS 1/2 deliveries stay in the session (bounded by `max_inflight` and
    /// `max_queued_messages`). 1,000: about 100 KiB of small messages per slow subscriber.
    pub channel_queue: usize,
    /// Highest QoS granted in SUBACK (MQTT 3.1.1 §3.9.3). 2: everything the protocol has.
    pub max_qos: QoS,
    /// Time a new connection has to send CONNECT (MQTT 3.1.1 §3.1: "a reasonable amount of
    /// time"). 10 s: the same as the HTTPS handshake timeout.
    pub connect_timeout: Duration,
    /// Server-side cap on keepalive, seconds: a client asking for 0 (off) or more is timed out
    /// after 1.5 × this. `None` (default): the client's keepalive is honoured as sent, 0
    /// included (MQTT 3.1.1 §3.1.2.10 gives the server no say).
    pub max_keepalive: Option<u16>,
    /// Concurrent MQTT connections per broker (all listeners together); more are closed at
    /// once. 10,000: as for the HTTP listeners, within the process's file descriptors.
    pub max_connections: usize,
    /// Sessions kept, online and offline. A CONNECT that would create one more is refused with
    /// CONNACK 0x03 (server unavailable). 100,000: bounds memory against clients that connect
    /// with ever new ids and clean session 0.
    pub max_sessions: usize,
    /// Distinct retained topics. A retained message for a new topic beyond this is delivered
    /// but not retained (counted and logged). 100,000.
    pub max_retained: usize,
    /// Total bytes (topic + payload) of the retained messages. A retained message that would
    /// take the store beyond this is delivered but not retained (counted and logged, as for
    /// `max_retained`). 256 MiB: 100,000 retained messages of 2.5 KiB; with the 1 MiB packet
    /// limit alone, `max_retained` would allow 100 GiB.
    pub max_retained_bytes: usize,
    /// Most levels in a topic name or filter (`a/b/c` has 3). A PUBLISH, SUBSCRIBE or will
    /// with more is a protocol violation: the client is closed with a log line naming the
    /// limit. 128: far beyond real topic trees (mosquitto and EMQX users rarely exceed 10),
    /// and it keeps a trie walk short. MQTT itself has no limit (a 64 KiB filter can have
    /// 32,768 levels).
    pub max_topic_levels: usize,
    /// Subscriptions per session (explicit and parked, all channels). A SUBSCRIBE that would
    /// exceed it is a protocol violation (MQTT 3.1.1 has no refusal code that says "too
    /// many"): the client is closed with a log line naming the limit, and nothing of that
    /// SUBSCRIBE is applied. 1,000: a session's subscriptions are a short list scanned per
    /// SUBSCRIBE; mosquitto and EMQX set no limit by default.
    pub max_subscriptions: usize,
    /// Topic Aliases an MQTT 5 client may set per stream (the Topic Alias Maximum in CONNACK,
    /// §3.2.2.3.8); 0 turns them off. A PUBLISH with a larger alias closes the connection with
    /// DISCONNECT 0x94. 10: mosquitto's `max_topic_alias`; each costs one topic name per
    /// stream.
    pub max_topic_alias: u16,
    /// Inbound QoS 2 messages stored per session awaiting PUBREL. A client that exceeds it is
    /// disconnected (3.1.1 has no way to refuse a PUBLISH). 1,000.
    pub max_awaiting_rel: usize,
    /// Bytes (topics + payloads) of the inbound QoS 2 messages a session may have awaiting
    /// PUBREL; beyond it the client is disconnected, as for `max_awaiting_rel`. 64 MiB: 64
    /// maximum-size messages in flight before their PUBREL; without it, 1,000 messages of
    /// 1 MiB would let one client pin 1 GiB.
    pub max_awaiting_rel_bytes: usize,
    /// Users and password hashes in mosquitto's format (`--mqtt-password-file`, made with
    /// `mosquitto_passwd` or `quiclab mqtt passwd`). `None` (default): user names are not
    /// checked. With a file, an unknown user or a wrong password gets CONNACK 0x05, as
    /// mosquitto 2.0.11 answers (docs/mqtt.md, "Authentication and authorization").
    pub password_file: Option<Arc<PasswordFile>>,
    /// Whether a CONNECT without a user name is accepted (`--mqtt-allow-anonymous`). `None`
    /// (default): yes without a password file, no with one, as mosquitto 2 with a
    /// `password_file`; see `MqttConfig::anonymous_allowed`. Refused: CONNACK 0x05.
    pub allow_anonymous: Option<bool>,
    /// MQTT 5 enhanced authentication methods offered (§4.12): a CONNECT naming one runs its
    /// exchange of AUTH packets instead of the user name and password check; naming another
    /// gets CONNACK 0x8C. Empty by default; `--mqtt-scram` adds SCRAM-SHA-512 over the password
    /// file ([`crate::scram`]).
    pub auth_methods: Vec<Arc<dyn AuthMethod>>,
    /// Topic rules in mosquitto's `acl_file` syntax (`--mqtt-acl-file`). `None` (default):
    /// every client may publish and subscribe to everything.
    pub acl: Option<Arc<AclFile>>,
    /// Refuse clients that presented no verified TLS client certificate: TLS and QUIC refuse
    /// them in the transport, and a CONNECT that arrives without one (plain TCP cannot carry
    /// one) gets CONNACK 0x05. Off by default, as mosquitto's `require_certificate`: a
    /// certificate needs a CA to be issued from, which a default cannot assume.
    pub require_certificate: bool,
    /// PEM file of the CA(s) whose client certificates are accepted (mosquitto's `cafile` for
    /// client certificates). `None` (default): no client certificates are asked for, unless
    /// `require_certificate` is set, which then uses the development CA (`ca.pem` in the
    /// server's certificate directory, see [`MqttConfig::client_ca_file`]), so `quiclab certs
    /// --client NAME` certificates work with no further flag. With a CA but without
    /// `require_certificate`, a certificate is optional but verified when sent.
    pub client_ca: Option<PathBuf>,
    /// Use the client certificate's subject CN as the user name (for ACLs), in place of the
    /// user name in CONNECT; as mosquitto's `use_identity_as_username`. Off by default.
    pub use_identity_as_username: bool,
    /// Where the broker keeps what must survive a restart (`--data-dir`; the driver's store,
    /// docs/mqtt.md "Persistence"). With it, the core says what changed as
    /// [`Action::Store`](crate::broker::Action::Store) and puts them before the packets that
    /// acknowledge them. `None` (the library's default): nothing is stored.
    pub data_dir: Option<PathBuf>,
    /// How often the store is synced to disk (`--sync`). `None` (default): every commit is
    /// fsynced before the packets it holds back go out, so nothing acknowledged is lost to a
    /// crash or a power cut. `Some(d)`: commits release their packets once written to memory
    /// and are fsynced at most every `d` (and at a clean stop); a crash of the process or the
    /// machine loses up to `d` of acknowledged changes, as mosquitto's `autosave_interval`.
    pub sync_interval: Option<Duration>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            tcp_listen: Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, DEFAULT_TCP_PORT))),
            tls_listen: Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, DEFAULT_TLS_PORT))),
            max_packet_size: 1 << 20,
            max_queued_messages: 1000,
            queue_qos0_offline: true,
            max_inflight: 20,
            channel_queue: 1000,
            max_qos: QoS::Level2,
            connect_timeout: Duration::from_secs(10),
            max_keepalive: None,
            max_connections: 10_000,
            max_sessions: 100_000,
            max_retained: 100_000,
            max_awaiting_rel: 1000,
            max_awaiting_rel_bytes: 64 << 20,
            max_retained_bytes: 256 << 20,
            max_topic_levels: 128,
            max_subscriptions: 1000,
            max_topic_alias: 10,
            password_file: None,
            allow_anonymous: None,
            auth_methods: Vec::new(),
            acl: None,
            require_certificate: false,
            client_ca: None,
            use_identity_as_username: false,
            data_dir: None,
            sync_interval: None,
        }
    }
}

impl MqttConfig {
    /// Loopback, ephemeral ports for both listeners: for tests and examples.
    pub fn ephemeral() -> Self {
        let lo = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        MqttConfig { tcp_listen: Some(lo), tls_listen: Some(lo), ..MqttConfig::default() }
    }

    /// The client CA file in effect: `client_ca`, or with `require_certificate` and none given,
    /// the development CA `certs_dir/ca.pem`. `None`: client certificates are not asked for.
    pub fn client_ca_file(&self, certs_dir: &Path) -> Option<PathBuf> {
        match &self.client_ca {
            Some(ca) => Some(ca.clone()),
            None if self.require_certificate => Some(certs_dir.join("ca.pem")),
            None => None,
        }
    }

    /// Whether clients without a user name are let in: `allow_anonymous`, or by default only
    /// when there is no password file.
    pub(crate) fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }

    /// `key value` lines for the startup banner ("effective configuration").
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &dyn fmt::Display| s.push_str(&format!("  {k:<24} {v}\n"));
        let addr = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "(off)".into());
        line("mqtt", &if self.enabled { "on" } else { "off" });
        line("mqtt_tcp", &addr(&self.tcp_listen));
        line("mqtt_tls", &addr(&self.tls_listen));
        line("mqtt_max_packet", &self.max_packet_size);
        line("mqtt_max_queued", &self.max_queued_messages);
        line("mqtt_queue_qos0_offline", &self.queue_qos0_offline);
        line("mqtt_max_inflight", &self.max_inflight);
        line("mqtt_channel_queue", &self.channel_queue);
        line("mqtt_max_qos", &(self.max_qos as u8));
        line("mqtt_connect_timeout_ms", &self.connect_timeout.as_millis());
        line("mqtt_max_keepalive_s", &self.max_keepalive.map(|k| k.to_string()).unwrap_or_else(|| "(client's)".into()));
        line("mqtt_max_connections", &self.max_connections);
        line("mqtt_max_sessions", &self.max_sessions);
        line("mqtt_max_retained", &self.max_retained);
        line("mqtt_max_retained_bytes", &self.max_retained_bytes);
        line("mqtt_max_awaiting_rel", &self.max_awaiting_rel);
        line("mqtt_max_awaiting_rel_bytes", &self.max_awaiting_rel_bytes);
        line("mqtt_max_topic_levels", &self.max_topic_levels);
        line("mqtt_max_subscriptions", &self.max_subscriptions);
        line("mqtt_max_topic_alias", &self.max_topic_alias);
        line("mqtt_require_certificate", &self.require_certificate);
        let ca = match (&self.client_ca, self.require_certificate) {
            (Some(ca), _) => ca.display().to_string(),
            (None, true) => "ca.pem of the certificate directory (development CA)".into(),
            (None, false) => "(none: no client certificates asked for)".into(),
        };
        line("mqtt_client_ca", &ca);
        line("mqtt_identity_as_user", &self.use_identity_as_username);
        let data = self.data_dir.as_ref().map(|d| d.display().to_string());
        line("mqtt_data_dir", &data.as_deref().unwrap_or("(none: nothing survives a restart)"));
        if self.data_dir.is_some() {
            let sync = match self.sync_interval {
                None => "always (an fsync per commit, before its acknowledgements)".to_string(),
                Some(d) => format!("every {d:?} (acknowledged before the fsync; a crash loses up to that)"),
            };
            line("mqtt_sync", &sync);
        }
        let pw = self.password_file.as_ref().map(|f| format!("{} ({} users)", f.path().display(), f.len()));
        line("mqtt_password_file", &pw.as_deref().unwrap_or("(none)"));
        line("mqtt_allow_anonymous", &self.anonymous_allowed());
        let methods: Vec<&str> = self.auth_methods.iter().map(|m| m.name()).collect();
        line("mqtt_auth_methods", &if methods.is_empty() { "(none)".to_string() } else { methods.join(", ") });
        let acl = self.acl.as_ref().map(|f| format!("{} ({} rules)", f.path().display(), f.rules()));
        line("mqtt_acl_file", &acl.as_deref().unwrap_or("(none: all allowed)"));
        s
    }
}
