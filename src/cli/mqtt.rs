//! `quiclab mqtt pub|sub|broker|passwd`, and the MQTT flags of `quiclab serve`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};

use quiclab::client::RebindAfter;
use quiclab::config::{parse_duration, parse_size};
use quiclab::mqtt::client::{self, Client, ClientOptions, MqttUrl, QuicSetup, StreamMode, Transport};
use quiclab::mqtt::codec::{QoS, RetainHandling, SubscribeReasonCode, SubscriptionOptions, Version};
use quiclab::mqtt::config::{MqttConfig, ALPN_MQTT};
use quiclab::mqtt::{Message, MqttError};
use quiclab::tls::{CertStore, ClientIdentity, Trust};

use super::mqtt5::{self, V5Props};
use super::signal::Signals;
use super::{client_trust, CliError};

/// The `mqtt` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum MqttCommand {
    /// Publish a message: `quiclab mqtt pub -t TOPIC -m TEXT [-q 0|1|2] [-r]`.
    Pub(PubArgs),
    /// Subscribe and print each message: topic, QoS, retain flag and payload, tab-separated.
    Sub(SubArgs),
    /// Run the broker alone (the same core and transports `quiclab serve` runs).
    Broker(BrokerArgs),
    /// Manage a password file in mosquitto's format (as `mosquitto_passwd`): add or change a
    /// user's password, or delete a user. The file works with `--mqtt-password-file` and with
    /// mosquitto's `password_file`.
    Passwd(PasswdArgs),
}

/// `quiclab mqtt passwd [-c] [-b] [-D] FILE USER [PASSWORD]`.
#[derive(Debug, Args)]
pub(crate) struct PasswdArgs {
    /// Create the file, or overwrite it, with only this user.
    #[arg(short = 'c', conflicts_with = "delete")]
    pub(crate) create: bool,
    /// Take the password from the command line (PASSWORD) instead of asking for it; without
    /// -b it is read from the terminal (twice, not echoed) or as one line of stdin.
    #[arg(short = 'b', requires = "password", conflicts_with = "delete")]
    pub(crate) batch: bool,
    /// Delete USER from the file.
    #[arg(short = 'D')]
    pub(crate) delete: bool,
    /// The password file (written 0600 through a temporary file and a rename).
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// The user name (no ':').
    #[arg(value_name = "USER")]
    pub(crate) user: String,
    /// The password, with -b.
    #[arg(value_name = "PASSWORD", requires = "batch")]
    pub(crate) password: Option<String>,
}

fn parse_qos(s: &str) -> Result<QoS, String> {
    match s {
        "0" => Ok(QoS::Level0),
        "1" => Ok(QoS::Level1),
        "2" => Ok(QoS::Level2),
        _ => Err(format!("QoS must be 0, 1 or 2, not {s:?}")),
    }
}

fn parse_url(s: &str) -> Result<MqttUrl, String> {
    s.parse::<MqttUrl>().map_err(|e| e.to_string())
}

/// How a client connects (shared by `pub` and `sub`).
#[derive(Debug, Args)]
pub(crate) struct ConnArgs {
    /// Broker URL: mqtt://HOST:1883 (TCP), mqtts://HOST:8883 (TLS) or mqtt+quic://HOST:14567
    /// (QUIC; `quiclab serve` also answers on its HTTP/3 port, 4433).
    #[arg(long, value_name = "URL", default_value = "mqtt://localhost:1883", value_parser = parse_url)]
    pub(crate) url: MqttUrl,
    /// MQTT version: 3 (3.1.1) or 5 (MQTT 5.0); mosquitto's names (mqttv311, mqttv5) work too.
    #[arg(long = "protocol", value_name = "VERSION", value_parser = mqtt5::parse_version, default_value = "3")]
    pub(crate) protocol: Version,
    /// MQTT 5 Session Expiry Interval in seconds: how long the broker keeps the session after
    /// the connection ends (4294967295: for ever). Needs --protocol 5 (3.1.1 has --persistent).
    #[arg(short = 'x', long, value_name = "SECONDS")]
    pub(crate) session_expiry: Option<u32>,
    /// An MQTT 5 property, as mosquitto_pub's -D: COMMAND PROPERTY VALUE [VALUE], repeatable.
    /// connect: session-expiry-interval, receive-maximum, maximum-packet-size,
    /// topic-alias-maximum, request-problem-information, request-response-information,
    /// user-property NAME VALUE. publish: message-expiry-interval, topic-alias,
    /// payload-format-indicator, content-type, response-topic, correlation-data, user-property.
    /// subscribe: subscription-identifier, user-property. Needs --protocol 5.
    #[arg(
        short = 'D',
        long = "property",
        value_names = ["COMMAND", "PROPERTY", "VALUE"],
        num_args = 3..=4,
        action = clap::ArgAction::Append,
        value_parser = clap::value_parser!(String),
        allow_hyphen_values = true
    )]
    pub(crate) property: Vec<String>,
    /// MQTT over QUIC: `single` sends every packet on the control stream; `per-topic` opens one
    /// data stream per topic published and per filter subscribed, so a loss on one topic does
    /// not hold up the others (docs/mqtt-over-quic.md §2).
    #[arg(long, value_enum, value_name = "MODE", default_value = "single")]
    pub(crate) streams: Streams,
    /// MQTT over QUIC: send CONNECT in 0-RTT early data when a session can be resumed (use
    /// with --repeat: the first connection gets the ticket). Prints per connection whether
    /// 0-RTT was accepted and the time to CONNACK.
    #[arg(long = "0rtt")]
    pub(crate) zero_rtt: bool,
    /// Run the whole command N times in this process, one connection after another; over QUIC
    /// later connections resume the TLS session of an earlier one (tickets live in memory).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) repeat: u32,
    /// MQTT over QUIC: move to a new local UDP socket (connection migration) after N messages
    /// published or received (a count with an optional k, M or G suffix: `100`, `1k`), or after
    /// a time since CONNACK (ending in ms or s: `200ms`, `2s`). The session continues without a
    /// reconnect; the broker logs `path_changed`.
    #[arg(long, value_name = "N|TIME")]
    pub(crate) rebind_after: Option<RebindAfter>,
    /// Client identifier (default: empty, the broker assigns one; needs a clean session).
    #[arg(short = 'i', long = "id", value_name = "ID")]
    pub(crate) client_id: Option<String>,
    /// Keep the session when disconnected (clean session 0): subscriptions and QoS 1/2
    /// messages survive until the next connection with the same --id.
    #[arg(short = 'c', long = "persistent")]
    pub(crate) persistent: bool,
    /// Keepalive in seconds (0: off).
    #[arg(short = 'k', long, value_name = "SECONDS", default_value_t = 60)]
    pub(crate) keepalive: u16,
    /// User name.
    #[arg(short = 'u', long, value_name = "USER")]
    pub(crate) username: Option<String>,
    /// Password (needs --username).
    #[arg(short = 'P', long, value_name = "PASSWORD", requires = "username")]
    pub(crate) password: Option<String>,
    /// Authenticate -u/-P with SCRAM-SHA-512 (MQTT 5 enhanced authentication, needs
    /// --protocol 5 and a broker run with --mqtt-scram): the password is not sent.
    #[arg(long, requires = "password")]
    pub(crate) scram: bool,
    /// Trust the CA certificate(s) in FILE for mqtts:// (default: certs/ca.pem if it exists,
    /// plus the Mozilla roots).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub(crate) cacert: Option<PathBuf>,
    /// Do not verify the broker's certificate (mqtts://).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Present this client certificate (PEM, leaf first) over mqtts:// and mqtt+quic:// when
    /// the broker asks for one; `quiclab certs --client NAME` makes one. Needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Give up if the connection (TCP, TLS, CONNACK) takes longer.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub(crate) connect_timeout: Duration,
    /// Last will: topic published by the broker if this client goes away without DISCONNECT.
    #[arg(long, value_name = "TOPIC")]
    pub(crate) will_topic: Option<String>,
    /// Last will payload.
    #[arg(long, value_name = "TEXT", requires = "will_topic", default_value = "")]
    pub(crate) will_payload: String,
    /// Last will QoS.
    #[arg(long, value_name = "QOS", value_parser = parse_qos, default_value = "0")]
    pub(crate) will_qos: QoS,
    /// Retain the last will.
    #[arg(long)]
    pub(crate) will_retain: bool,
}

impl ConnArgs {
    /// The client options these arguments describe, trusting `trust` and presenting
    /// `client_cert`.
    fn options(&self, trust: Trust, client_cert: Option<ClientIdentity>) -> Result<ClientOptions, MqttError> {
        let will = match &self.will_topic {
            Some(t) => Some(Message::new(
                client::topic(t)?,
                Bytes::from(self.will_payload.clone().into_bytes()),
                self.will_qos,
                self.will_retain,
            )),
            None => None,
        };
        Ok(ClientOptions {
            client_id: self.client_id.clone().unwrap_or_default(),
            clean_session: !self.persistent,
            version: self.protocol,
            scram: self.scram,
            keep_alive: self.keepalive,
            will,
            username: self.username.clone(),
            password: self.password.clone(),
            trust,
            client_cert,
            connect_timeout: self.connect_timeout,
            streams: self.streams.into(),
            zero_rtt: self.zero_rtt,
            ..ClientOptions::default()
        })
    }

    /// The options, with one QUIC endpoint for every `--repeat` round (so they can resume).
    async fn options_for_rounds(&self) -> Result<ClientOptions, CliError> {
        let trust = client_trust(self.insecure, self.cacert.as_deref()).await;
        let client_cert = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (cert.clone(), key.clone());
                let load = tokio::task::spawn_blocking(move || ClientIdentity::load(&cert, &key));
                Some(load.await.map_err(CliError::Blocking)??)
            }
            _ => None,
        };
        let mut opts = self.options(trust, client_cert)?;
        let props = self.v5_props()?;
        opts.properties = props.connect;
        if let Some(e) = self.session_expiry {
            opts.properties.session_expiry_interval = Some(e);
        }
        let url_flag = |flag, needs| CliError::UrlFlag { flag, needs, url: self.url.to_string() };
        if self.url.transport == Transport::Quic {
            opts.quic = Some(QuicSetup::with_identity(&opts.trust, opts.client_cert.as_ref())?);
        } else if self.zero_rtt {
            return Err(url_flag("--0rtt", "mqtt+quic://"));
        } else if self.url.transport == Transport::Tcp && opts.client_cert.is_some() {
            return Err(url_flag("--cert", "mqtts:// or mqtt+quic://"));
        } else if self.rebind_after.is_some() {
            return Err(url_flag("--rebind-after", "mqtt+quic://"));
        }
        Ok(opts)
    }
}

impl ConnArgs {
    /// The `-D` properties, checked; they, and `-x`, need `--protocol 5`.
    fn v5_props(&self) -> Result<V5Props, CliError> {
        let props = V5Props::parse(&self.property).map_err(CliError::Usage)?;
        if self.protocol == Version::V3 && self.scram {
            return Err(CliError::Usage("--scram is MQTT 5 enhanced authentication: add --protocol 5".into()));
        }
        if self.protocol == Version::V3 && (props.any() || self.session_expiry.is_some()) {
            return Err(CliError::Usage("-D and --session-expiry are MQTT 5 properties: add --protocol 5".into()));
        }
        Ok(props)
    }
}

/// `--streams`: how the client lays MQTT onto QUIC streams (the CLI's name for
/// [`StreamMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Streams {
    /// Every packet on the control stream, as over TCP (§2.2).
    Single,
    /// CONNECT, PINGREQ and DISCONNECT on the control stream; one data stream per topic
    /// published and per filter subscribed, carrying that topic's PUBLISH, SUBSCRIBE and acks,
    /// and the deliveries of that subscription (§2.3–2.5).
    PerTopic,
}

impl From<Streams> for StreamMode {
    fn from(s: Streams) -> StreamMode {
        match s {
            Streams::Single => StreamMode::Single,
            Streams::PerTopic => StreamMode::PerTopic,
        }
    }
}

/// One connection's `--rebind-after`, checked as the command goes.
struct Rebinder {
    when: Option<RebindAfter>,
    since: Instant,
    done: bool,
}

impl Rebinder {
    fn new(when: Option<RebindAfter>) -> Rebinder {
        Rebinder { when, since: Instant::now(), done: false }
    }

    /// How long until a time-based rebind is due (`None`: none pending).
    fn time_left(&self) -> Option<Duration> {
        match self.when {
            Some(RebindAfter::Time(t)) if !self.done => Some(t.saturating_sub(self.since.elapsed())),
            _ => None,
        }
    }

    /// Rebind if due after `messages` messages.
    fn check(&mut self, c: &Client, messages: u64) -> Result<(), MqttError> {
        let due = match self.when {
            Some(RebindAfter::Count(n)) => messages >= n,
            Some(RebindAfter::Time(t)) => self.since.elapsed() >= t,
            None => false,
        };
        if due && !self.done {
            self.done = true;
            let (old, new) = c.rebind()?;
            eprintln!("quiclab mqtt: moved from {old} to {new} after {messages} messages");
        }
        Ok(())
    }

    fn report_missed(&self) {
        if self.when.is_some() && !self.done {
            eprintln!("quiclab mqtt: --rebind-after was not reached; the client did not move");
        }
    }
}

/// Connect once per `--repeat` round, sharing one QUIC endpoint so later rounds can resume;
/// reports 0-RTT and time to CONNACK when asked about.
async fn connect_round(conn: &ConnArgs, opts: &ClientOptions, round: u32) -> Result<Client, MqttError> {
    let c = Client::connect(&conn.url, opts).await?;
    if conn.zero_rtt || conn.repeat > 1 {
        eprintln!(
            "quiclab mqtt: connection {}/{}: 0-RTT {}, CONNACK after {:.1} ms, session present {}",
            round + 1,
            conn.repeat,
            c.early_data(),
            c.connack_after().as_secs_f64() * 1000.0,
            c.session_present()
        );
    }
    Ok(c)
}

/// `quiclab mqtt pub`.
#[derive(Debug, Args)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Topic to publish to.
    #[arg(short = 't', long, value_name = "TOPIC")]
    pub(crate) topic: String,
    /// QoS: 0, 1 or 2.
    #[arg(short = 'q', long, value_name = "QOS", value_parser = parse_qos, default_value = "0")]
    pub(crate) qos: QoS,
    /// Payload (UTF-8 text).
    #[arg(short = 'm', long, value_name = "TEXT", conflicts_with_all = ["null_message", "file"])]
    pub(crate) message: Option<String>,
    /// Send an empty payload (with -r: clears the topic's retained message).
    #[arg(short = 'n', long)]
    pub(crate) null_message: bool,
    /// Payload from a file.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// Set the RETAIN flag: the broker keeps the message for future subscribers.
    #[arg(short = 'r', long)]
    pub(crate) retain: bool,
    /// Publish the message this many times.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) count: u32,
    /// MQTT 5 Message Expiry Interval, seconds: the broker drops the message if it cannot
    /// deliver it in time (--protocol 5).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) message_expiry: Option<u32>,
    /// MQTT 5 Response Topic: where a responder should answer (request/response, --protocol 5).
    #[arg(long, value_name = "TOPIC")]
    pub(crate) response_topic: Option<String>,
    /// MQTT 5 Correlation Data, as text: echoed by the responder (--protocol 5).
    #[arg(long, value_name = "TEXT")]
    pub(crate) correlation_data: Option<String>,
}

/// `quiclab mqtt sub`.
#[derive(Debug, Args)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Topic filter(s) to subscribe to (`+` and `#` wildcards); repeat for several.
    #[arg(short = 't', long, value_name = "FILTER", required = true)]
    pub(crate) topic: Vec<String>,
    /// Requested QoS for every filter.
    #[arg(short = 'q', long, value_name = "QOS", value_parser = parse_qos, default_value = "0")]
    pub(crate) qos: QoS,
    /// Exit after this many messages.
    #[arg(short = 'C', long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Exit with status 3 if no message arrives for this long.
    #[arg(short = 'W', long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// Print the payload only (no topic, QoS and retain columns).
    #[arg(long)]
    pub(crate) payload_only: bool,
    /// MQTT 5 No Local: not the messages this connection publishes (--protocol 5).
    #[arg(long)]
    pub(crate) no_local: bool,
    /// MQTT 5 Retain As Published: keep the RETAIN flag of forwarded messages (--protocol 5).
    #[arg(long)]
    pub(crate) retain_as_published: bool,
    /// MQTT 5 Retain Handling: 0 send retained messages, 1 only for a new subscription, 2 never
    /// (--protocol 5).
    #[arg(long, value_name = "0|1|2", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) retain_handling: u8,
}

/// Listener and limit flags of the broker, shared by `quiclab serve` and `quiclab mqtt broker`.
#[derive(Debug, Args, Clone)]
pub(crate) struct MqttKnobs {
    /// Largest MQTT packet accepted (k, M suffixes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1M")]
    pub(crate) mqtt_max_packet: u64,
    /// Messages kept per session while it is offline or its in-flight window is full.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(crate) mqtt_max_queued: usize,
    /// Outbound QoS 1/2 messages in flight per session.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(crate) mqtt_max_inflight: usize,
    /// Packets queued per channel before QoS 0 deliveries to it are dropped.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(crate) mqtt_channel_queue: usize,
    /// Highest QoS granted to subscriptions.
    #[arg(long, value_name = "QOS", value_parser = parse_qos, default_value = "2")]
    pub(crate) mqtt_max_qos: QoS,
    /// Most concurrent MQTT connections.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub(crate) mqtt_max_connections: usize,
    /// Most sessions kept (online and offline); more CONNECTs get 0x03.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub(crate) mqtt_max_sessions: usize,
    /// Do not keep QoS 0 messages for offline persistent sessions.
    #[arg(long)]
    pub(crate) mqtt_no_offline_qos0: bool,
    /// Most levels in a topic name or filter; a client sending more is closed.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) mqtt_max_topic_levels: u32,
    /// Most subscriptions per session; a SUBSCRIBE beyond it closes the client.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(crate) mqtt_max_subscriptions: usize,
    /// MQTT 5 Topic Aliases a client may set per stream (the Topic Alias Maximum in CONNACK);
    /// 0 turns them off.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) mqtt_max_topic_alias: u16,
    /// Most retained topics; beyond it retained messages are delivered but not kept.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub(crate) mqtt_max_retained: usize,
    /// Most bytes (topics + payloads) of retained messages (k, M, G suffixes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    pub(crate) mqtt_max_retained_bytes: u64,
    /// Inbound QoS 2 messages awaiting PUBREL per session; a client with more is closed.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(crate) mqtt_max_awaiting_rel: usize,
    /// Bytes of inbound QoS 2 messages awaiting PUBREL per session (k, M, G suffixes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    pub(crate) mqtt_max_awaiting_rel_bytes: u64,
    /// MQTT over TLS and QUIC: refuse clients without a valid certificate from the client CA
    /// (--mqtt-client-ca; default: the development CA, ca.pem in the certificate directory,
    /// which `quiclab certs --client NAME` signs with). On TLS and the dedicated QUIC listener
    /// the handshake fails; on the port shared with HTTP/3 the MQTT connection is closed
    /// (code 0x3, "client certificate required"). Plain TCP cannot carry a certificate: every
    /// CONNECT there gets CONNACK 0x05.
    #[arg(long)]
    pub(crate) mqtt_require_certificate: bool,
    /// PEM file of the CA(s) that sign accepted client certificates. Without
    /// --mqtt-require-certificate, a certificate is optional but verified when sent.
    #[arg(long, value_name = "FILE")]
    pub(crate) mqtt_client_ca: Option<PathBuf>,
    /// Use the client certificate's subject CN as the MQTT user name (for ACLs), in place of
    /// the one in CONNECT, as mosquitto's use_identity_as_username.
    #[arg(long)]
    pub(crate) mqtt_use_identity_as_username: bool,
    /// Users and passwords in mosquitto's format (made with `mosquitto_passwd` or `quiclab
    /// mqtt passwd`). A client with an unknown user name or a wrong password gets CONNACK 0x05.
    /// A malformed line stops the broker from starting.
    #[arg(long, value_name = "FILE")]
    pub(crate) mqtt_password_file: Option<PathBuf>,
    /// Offer MQTT 5 enhanced authentication with SCRAM-SHA-512 over the password file's `$7$`
    /// users (the password never crosses the wire; `quiclab mqtt pub|sub --scram` speaks it).
    #[arg(long, requires = "mqtt_password_file")]
    pub(crate) mqtt_scram: bool,
    /// Accept clients that send no user name (CONNACK 0x05 otherwise). Default: true without
    /// --mqtt-password-file, false with one (as mosquitto 2).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) mqtt_allow_anonymous: Option<bool>,
    /// Topic rules in mosquitto's acl_file syntax (`topic [read|write|readwrite|deny] TOPIC`,
    /// `user NAME`, `pattern ... TOPIC` with %c and %u). A denied SUBSCRIBE filter gets 0x80,
    /// a denied PUBLISH is acknowledged and dropped, each delivery needs read. Default: no
    /// rules, everything allowed.
    #[arg(long, value_name = "FILE")]
    pub(crate) mqtt_acl_file: Option<PathBuf>,
    /// Keep what must survive a restart in DIR (one file, DIR/mqtt.redb, created if missing;
    /// a relative DIR is under the working directory): retained messages, persistent sessions
    /// with their subscriptions and their QoS 1/2 messages, inbound QoS 2 state. A packet is
    /// acknowledged only once what it changed is committed (see --sync). A file that is not
    /// this store, or one another process has open, is refused, never overwritten
    /// (docs/mqtt.md "Persistence").
    #[arg(long, value_name = "DIR", default_value = "data", conflicts_with = "no_persist")]
    pub(crate) data_dir: PathBuf,
    /// Keep nothing: every session, retained message and queued message is lost when the
    /// broker stops (no file is opened).
    #[arg(long)]
    pub(crate) no_persist: bool,
    /// When the store reaches the disk: `always` (an fsync per group commit, before the
    /// acknowledgements it holds: nothing acknowledged is lost to a crash or a power cut), or
    /// an interval such as `1s` (acknowledged once committed in memory, fsynced every
    /// interval and at a clean stop: a crash loses up to that much, as mosquitto's
    /// autosave_interval; acknowledgements do not wait for the disk, but the CPU per message
    /// stays about the same).
    #[arg(
        long,
        value_name = "always|DURATION",
        value_parser = parse_sync,
        default_value = "always",
        conflicts_with = "no_persist"
    )]
    pub(crate) sync: SyncPolicy,
}

impl MqttKnobs {
    /// Set `cfg` from these flags. Blocking: reads the password and ACL files.
    fn apply(&self, cfg: &mut MqttConfig) -> Result<(), MqttError> {
        if let Some(path) = &self.mqtt_password_file {
            let file = std::sync::Arc::new(quiclab::mqtt::auth::PasswordFile::load(path)?);
            if self.mqtt_scram {
                cfg.auth_methods.push(std::sync::Arc::new(quiclab::mqtt::scram::ScramSha512::new(file.clone())));
            }
            cfg.password_file = Some(file);
        }
        cfg.allow_anonymous = self.mqtt_allow_anonymous;
        if let Some(path) = &self.mqtt_acl_file {
            cfg.acl = Some(std::sync::Arc::new(quiclab::mqtt::acl::AclFile::load(path)?));
        }
        cfg.max_packet_size = self.mqtt_max_packet.min(quiclab::mqtt::codec::MAX_REMAINING_LENGTH as u64 + 5) as usize;
        cfg.max_queued_messages = self.mqtt_max_queued;
        cfg.max_inflight = self.mqtt_max_inflight.max(1);
        cfg.channel_queue = self.mqtt_channel_queue;
        cfg.max_qos = self.mqtt_max_qos;
        cfg.max_connections = self.mqtt_max_connections;
        cfg.max_sessions = self.mqtt_max_sessions;
        cfg.queue_qos0_offline = !self.mqtt_no_offline_qos0;
        cfg.max_topic_levels = self.mqtt_max_topic_levels as usize;
        cfg.max_subscriptions = self.mqtt_max_subscriptions;
        cfg.max_topic_alias = self.mqtt_max_topic_alias;
        cfg.max_retained = self.mqtt_max_retained;
        cfg.max_retained_bytes = usize::try_from(self.mqtt_max_retained_bytes).unwrap_or(usize::MAX);
        cfg.max_awaiting_rel = self.mqtt_max_awaiting_rel;
        cfg.max_awaiting_rel_bytes = usize::try_from(self.mqtt_max_awaiting_rel_bytes).unwrap_or(usize::MAX);
        cfg.require_certificate = self.mqtt_require_certificate;
        cfg.client_ca = self.mqtt_client_ca.clone();
        cfg.use_identity_as_username = self.mqtt_use_identity_as_username;
        cfg.data_dir = (!self.no_persist).then(|| self.data_dir.clone());
        cfg.sync_interval = self.sync.0;
        Ok(())
    }
}

/// `--sync`: `None` is `always`, else the interval between fsyncs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncPolicy(Option<std::time::Duration>);

fn parse_sync(s: &str) -> Result<SyncPolicy, String> {
    if s.trim() == "always" {
        return Ok(SyncPolicy(None));
    }
    match quiclab::config::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(SyncPolicy(Some(d))),
        Ok(_) => Err("an interval of 0 is `always`".into()),
        Err(e) => Err(format!("{e} (or `always`)")),
    }
}

/// The MQTT flags of `quiclab serve` (flatten into its arguments).
#[derive(Debug, Args, Clone)]
pub(crate) struct MqttServeArgs {
    /// MQTT over TCP listens here.
    #[arg(long, value_name = "ADDR", default_value = "[::]:1883")]
    pub(crate) mqtt_tcp: SocketAddr,
    /// MQTT over TLS listens here (certificate as for HTTPS).
    #[arg(long, value_name = "ADDR", default_value = "[::]:8883")]
    pub(crate) mqtt_tls: SocketAddr,
    /// Do not serve MQTT.
    #[arg(long)]
    pub(crate) no_mqtt: bool,
    #[command(flatten)]
    pub(crate) knobs: MqttKnobs,
}

impl MqttServeArgs {
    /// The broker configuration for these flags. Blocking: reads the password and ACL files.
    pub(crate) fn to_config(&self) -> Result<MqttConfig, MqttError> {
        let mut cfg = MqttConfig {
            enabled: !self.no_mqtt,
            tcp_listen: Some(self.mqtt_tcp),
            tls_listen: Some(self.mqtt_tls),
            ..MqttConfig::default()
        };
        self.knobs.apply(&mut cfg)?;
        Ok(cfg)
    }
}

/// `quiclab mqtt broker`.
#[derive(Debug, Args)]
pub(crate) struct BrokerArgs {
    /// MQTT over TCP listens here.
    #[arg(long, value_name = "ADDR", default_value = "[::]:1883")]
    pub(crate) tcp: SocketAddr,
    /// Also serve MQTT over TLS here.
    #[arg(long, value_name = "ADDR")]
    pub(crate) tls: Option<SocketAddr>,
    /// Also serve MQTT over QUIC (ALPN mqtt) on this UDP address, e.g. [::]:14567, with the
    /// transport parameters of `serve --mqtt-quic` (idle timeout 300 s, keep-alive PINGs every
    /// 60 s, 50 concurrent streams; docs/mqtt-over-quic.md §4.2).
    #[arg(long, value_name = "ADDR")]
    pub(crate) quic: Option<SocketAddr>,
    /// Directory of the development certificates (for --tls and --quic; its ca.pem is the
    /// default --mqtt-client-ca).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub(crate) certs: PathBuf,
    #[command(flatten)]
    pub(crate) knobs: MqttKnobs,
}

/// Run an `mqtt` subcommand; returns the process exit code.
pub(crate) async fn run(cmd: MqttCommand) -> Result<i32, CliError> {
    match cmd {
        MqttCommand::Pub(a) => publish(a).await,
        MqttCommand::Sub(a) => subscribe(a).await,
        MqttCommand::Broker(a) => broker(a).await,
        MqttCommand::Passwd(a) => tokio::task::spawn_blocking(move || passwd(a)).await.map_err(CliError::Blocking)?,
    }
}

/// `quiclab mqtt passwd`. Blocking: reads the terminal or stdin, writes the file.
fn passwd(a: PasswdArgs) -> Result<i32, CliError> {
    use quiclab::mqtt::auth::{update_file, PasswdOp};
    let op = if a.delete {
        PasswdOp::Delete
    } else {
        let password = match &a.password {
            Some(p) => p.clone().into_bytes(),
            None => read_password()?,
        };
        PasswdOp::Set { create: a.create, password }
    };
    update_file(&a.file, &a.user, &op).map_err(MqttError::from)?;
    Ok(0)
}

/// Read a password for `passwd` without `-b`: from a terminal, prompted twice with echo off
/// (as `mosquitto_passwd`); otherwise one line of stdin. Blocking.
fn read_password() -> Result<Vec<u8>, CliError> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let read_line = || -> Result<String, CliError> {
        let mut s = String::new();
        stdin.lock().read_line(&mut s).map_err(CliError::PasswordInput)?;
        Ok(s.trim_end_matches(['\r', '\n']).to_string())
    };
    if !stdin.is_terminal() {
        let pw = read_line()?;
        if pw.is_empty() {
            return Err(CliError::EmptyPassword);
        }
        return Ok(pw.into_bytes());
    }
    let prompt = |p: &str| -> Result<String, CliError> {
        eprint!("{p}");
        let _ = std::io::stderr().flush();
        let echo = EchoOff::new();
        let line = read_line();
        drop(echo);
        eprintln!();
        line
    };
    let first = prompt("Password: ")?;
    let again = prompt("Reenter password: ")?;
    if first != again {
        return Err(CliError::PasswordMismatch);
    }
    if first.is_empty() {
        return Err(CliError::EmptyPassword);
    }
    Ok(first.into_bytes())
}

/// Terminal echo turned off on stdin while this lives (restored on drop).
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios they fill in; no pointers
        // are kept.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

async fn publish(a: PubArgs) -> Result<i32, CliError> {
    let payload = match (&a.message, &a.file) {
        (Some(m), _) => Bytes::from(m.clone().into_bytes()),
        (None, Some(f)) => {
            Bytes::from(tokio::fs::read(f).await.map_err(|source| CliError::Read { path: f.clone(), source })?)
        }
        (None, None) if a.null_message => Bytes::new(),
        (None, None) => return Err(CliError::NoPayload),
    };
    let opts = a.conn.options_for_rounds().await?;
    let mut v5 = a.conn.v5_props()?;
    if let Some(e) = a.message_expiry {
        v5.publish.message_expiry = Some(e);
    }
    if let Some(t) = &a.response_topic {
        v5.message.response_topic =
            Some(client::topic(t).map_err(|_| CliError::Usage(format!("--response-topic {t:?}: not a topic name")))?);
    }
    if let Some(d) = &a.correlation_data {
        v5.message.correlation_data = Some(Bytes::from(d.clone().into_bytes()));
    }
    if a.conn.protocol == Version::V3 && v5.any() {
        return Err(CliError::Usage(
            "--message-expiry, --response-topic and --correlation-data are MQTT 5 properties: add --protocol 5".into(),
        ));
    }
    let props = v5.publish_props();
    for round in 0..a.conn.repeat {
        let mut c = connect_round(&a.conn, &opts, round).await?;
        let mut rebind = Rebinder::new(a.conn.rebind_after);
        for k in 0..a.count {
            rebind.check(&c, u64::from(k))?;
            c.publish_with(&a.topic, a.qos, a.retain, payload.clone(), props.clone()).await?;
        }
        rebind.report_missed();
        c.disconnect().await?;
    }
    Ok(0)
}

async fn subscribe(a: SubArgs) -> Result<i32, CliError> {
    let opts = a.conn.options_for_rounds().await?;
    for round in 0..a.conn.repeat {
        let status = subscribe_once(&a, &opts, round).await?;
        if status != 0 {
            return Ok(status);
        }
    }
    Ok(0)
}

async fn subscribe_once(a: &SubArgs, opts: &ClientOptions, round: u32) -> Result<i32, CliError> {
    let v5 = a.conn.v5_props()?;
    let options = SubscriptionOptions {
        max_qos: a.qos,
        no_local: a.no_local,
        retain_as_published: a.retain_as_published,
        retain_handling: match a.retain_handling {
            1 => RetainHandling::SendAtSubscribeIfNotExist,
            2 => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        },
    };
    if a.conn.protocol == Version::V3 && (a.no_local || a.retain_as_published || a.retain_handling != 0) {
        return Err(CliError::Usage(
            "--no-local, --retain-as-published and --retain-handling are MQTT 5 options: add --protocol 5".into(),
        ));
    }
    let mut c = connect_round(&a.conn, opts, round).await?;
    let filters: Vec<(&str, SubscriptionOptions)> = a.topic.iter().map(|t| (t.as_str(), options)).collect();
    let codes = c.subscribe_with(&filters, &v5.subscribe).await?;
    for (f, code) in a.topic.iter().zip(&codes) {
        if (*code as u8) >= 0x80 {
            if *code == SubscribeReasonCode::NotAuthorized || a.conn.protocol == Version::V3 {
                return Err(CliError::SubscriptionRefused(f.clone()));
            }
            return Err(CliError::Usage(format!("subscription to {f:?} refused: SUBACK {:#04x}", *code as u8)));
        }
    }
    let mut seen = 0u64;
    if a.count == Some(0) {
        c.disconnect().await?;
        return Ok(0);
    }
    let mut rebind = Rebinder::new(a.conn.rebind_after);
    let mut stdout = std::io::stdout();
    loop {
        // Wait for a message, or for a time-based rebind, whichever comes first.
        let wait = match (a.timeout, rebind.time_left()) {
            (Some(t), Some(r)) => Some((t.min(r), r < t)),
            (Some(t), None) => Some((t, false)),
            (None, Some(r)) => Some((r, true)),
            (None, None) => None,
        };
        let msg = match wait {
            Some((t, for_rebind)) => match c.recv_timeout(t).await? {
                Some(m) => m,
                None if for_rebind => {
                    rebind.check(&c, seen)?;
                    continue;
                }
                None => {
                    eprintln!("quiclab mqtt sub: no message within {t:?}");
                    return Ok(3);
                }
            },
            None => c.recv().await?,
        };
        let payload = String::from_utf8_lossy(&msg.payload);
        let line = if a.payload_only {
            format!("{payload}\n")
        } else {
            let props = mqtt5::describe(&msg);
            let sep = if props.is_empty() { "" } else { "\t" };
            format!("{}\tqos={}\tretain={}\t{payload}{sep}{props}\n", &*msg.topic, msg.qos as u8, msg.retain as u8)
        };
        // A closed stdout (e.g. `| head`) ends the command quietly.
        if stdout.write_all(line.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            return Ok(0);
        }
        seen += 1;
        rebind.check(&c, seen)?;
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    rebind.report_missed();
    c.disconnect().await?;
    Ok(0)
}

/// Everything `mqtt broker` reads from files before it listens.
struct BrokerSetup {
    cfg: MqttConfig,
    store: Option<CertStore>,
    client_ca: Option<quiclab::tls::ClientCa>,
}

/// Read the password, ACL and certificate files `mqtt broker` needs. Blocking.
fn broker_setup(a: &BrokerArgs) -> Result<BrokerSetup, CliError> {
    let mut cfg = MqttConfig { tcp_listen: Some(a.tcp), tls_listen: a.tls, ..MqttConfig::default() };
    a.knobs.apply(&mut cfg)?;
    let store = match (a.tls, a.quic) {
        (None, None) => None,
        _ => Some(CertStore::load_or_create(&a.certs)?),
    };
    let client_ca = match (&store, cfg.client_ca_file(&a.certs)) {
        (Some(_), Some(path)) => Some(quiclab::tls::ClientCa::load(&path)?),
        _ => None,
    };
    Ok(BrokerSetup { cfg, store, client_ca })
}

/// `quiclab mqtt broker`: listen until SIGINT or SIGTERM.
async fn broker(a: BrokerArgs) -> Result<i32, CliError> {
    let mut signals = Signals::catch();
    let (setup, a) =
        tokio::task::spawn_blocking(move || broker_setup(&a).map(|s| (s, a))).await.map_err(CliError::Blocking)??;
    let BrokerSetup { cfg, store, client_ca } = setup;
    let tls = match (a.tls, &store) {
        (Some(_), Some(store)) => Some(quiclab::tls::tcp_server_config_with(
            store,
            &[ALPN_MQTT],
            quiclab::mqtt::client_auth(&cfg, client_ca.as_ref()),
        )?),
        _ => None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let started = quiclab::mqtt::tcp::start(&cfg, tls, &shutdown, &tracker)?;
    let quic = match (a.quic, &store) {
        (Some(addr), Some(store)) => {
            let defaults = quiclab::config::ServerConfig::default();
            let listener = quiclab::server::MqttQuicListener {
                addr,
                transport: defaults.mqtt_quic_transport(),
                max_connections: cfg.max_connections,
                handshake_timeout: defaults.limits.handshake_timeout,
                retry: false,
                client_ca: client_ca.clone(),
            };
            Some(listener.start(store, started.broker.clone(), &shutdown, &tracker)?)
        }
        _ => None,
    };
    let mut banner = String::new();
    if let Some(t) = started.tcp {
        banner += &format!("mqtt tcp {t}\n");
    }
    if let Some(t) = started.tls {
        banner += &format!("mqtt tls {t}\n");
    }
    if let Some(q) = quic {
        banner += &format!("mqtt quic {q}\n");
    }
    banner += &format!("runtime {} worker threads\n", super::worker_threads_now());
    banner += &format!("effective configuration:\n{}", cfg.summary());
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    drop(out);
    signals.recv().await;
    let t0 = Instant::now();
    shutdown.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    tracing::info!("mqtt broker stopped in {:?}", t0.elapsed());
    Ok(0)
}
