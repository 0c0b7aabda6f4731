//! MQTT codec, 3.1.1 and 5.0: a small framing layer in front of `mqtt-proto` 0.4's per-packet
//! decoders and encoders, and one packet type for both versions.
//!
//! **One packet type.** The broker speaks in [`Packet`], shaped as MQTT 5 (a superset of
//! 3.1.1): `mqtt-proto`'s v5 structs, and this crate's own [`Publish`] (`publish.rs` says why).
//! A 3.1.1 packet is read into the same shape with every MQTT 5 field at its default, and a
//! packet written to a 3.1.1 peer leaves the MQTT 5 fields out ([`encode`] takes the
//! [`Version`]). So the broker has one code path, and a message published over 3.1.1 reaches
//! an MQTT 5 subscriber (and back) with no conversion in between.
//!
//! **Why a layer at all.** `mqtt-proto` is strict (reserved flag bits, wildcards or NUL in
//! PUBLISH topics, bad subscription option bytes, `a/#/b`, packet id 0, duplicated properties
//! are all rejected) but it has no maximum packet size, its `Packet::decode(&[u8])` does not say
//! how many bytes it used, and its `Header::decode(..).total_len` is wrong in 0.4.0. So this
//! module:
//!
//! 1. reads the fixed header itself (type byte and Remaining Length, §2.2.3 in 3.1.1, §2.1.4
//!    in 5.0), rejects a Remaining Length longer than four bytes, and rejects a packet larger
//!    than the configured maximum as soon as its header is known (before its body is buffered);
//! 2. waits until the whole frame is there and hands exactly that slice to the version's
//!    decoder; the version is the CONNECT's protocol level ([`Decoder`] learns it from the
//!    CONNECT, or is told it);
//! 3. checks that the decoder used every byte of the frame (a CONNECT with junk inside its
//!    length was accepted by `mqtt-proto`; so were PINGREQ/PUBACK with extra bytes);
//! 4. adds the rules `mqtt-proto` leaves to its users (v3.rs, v5.rs), and gives every
//!    rejection the MQTT 5 reason code it calls for ([`CodecError::reason_code`]);
//! 5. encodes packets straight into the caller's buffer (no intermediate allocation per packet).

use bytes::BytesMut;
pub use mqtt_proto::v5::{
    Auth, AuthProperties, AuthReasonCode, Connack, ConnackProperties, Connect, ConnectProperties, ConnectReasonCode,
    Disconnect, DisconnectProperties, DisconnectReasonCode, LastWill, PacketType, Puback, PubackProperties,
    PubackReasonCode, Pubcomp, PubcompReasonCode, Pubrec, PubrecProperties, PubrecReasonCode, Pubrel, PubrelReasonCode,
    RetainHandling, Suback, SubackProperties, Subscribe, SubscribeProperties, SubscribeReasonCode, SubscriptionOptions,
    Unsuback, UnsubackProperties, Unsubscribe, UnsubscribeReasonCode, UserProperty, VarByteInt, WillProperties,
};
pub use mqtt_proto::{Encodable, Pid, Protocol, QoS, QosPid, TopicFilter, TopicName};
pub use publish::{MessageProps, Publish, PublishProps};
pub use v3::{options as v3_options, return_code as v3_return_code};

mod publish;
mod v3;
mod v5;

/// Largest Remaining Length the protocol can express (MQTT 3.1.1 §2.2.3, 5.0 §1.5.5):
/// 268,435,455.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Which packet format a connection speaks: 3.1 and 3.1.1 share one, MQTT 5 has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// MQTT 3.1 ("MQIsdp", level 3) and 3.1.1 (level 4).
    V3,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Version {
    /// The format of a CONNECT's protocol.
    pub fn of(p: Protocol) -> Version {
        match p {
            Protocol::V500 => Version::V5,
            Protocol::V310 | Protocol::V311 => Version::V3,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V3 => "3.1.1",
            Version::V5 => "5.0",
        })
    }
}

/// An MQTT control packet of either version, in MQTT 5's shape (see the module documentation).
/// The rare, large ones are boxed so the common ones (PUBLISH, acknowledgements) stay small in
/// the outboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    Connack(Box<Connack>),
    Publish(Publish),
    Puback(Puback),
    Pubrec(Pubrec),
    Pubrel(Pubrel),
    Pubcomp(Pubcomp),
    Subscribe(Subscribe),
    Suback(Suback),
    Unsubscribe(Unsubscribe),
    Unsuback(Unsuback),
    Pingreq,
    Pingresp,
    Disconnect(Box<Disconnect>),
    /// MQTT 5 only (§3.15).
    Auth(Box<Auth>),
}

impl Packet {
    pub fn get_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::Connack(_) => PacketType::Connack,
            Packet::Publish(_) => PacketType::Publish,
            Packet::Puback(_) => PacketType::Puback,
            Packet::Pubrec(_) => PacketType::Pubrec,
            Packet::Pubrel(_) => PacketType::Pubrel,
            Packet::Pubcomp(_) => PacketType::Pubcomp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::Suback(_) => PacketType::Suback,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::Unsuback(_) => PacketType::Unsuback,
            Packet::Pingreq => PacketType::Pingreq,
            Packet::Pingresp => PacketType::Pingresp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The packet's name as the specifications write it ("PUBLISH", "SUBACK", ...).
    pub fn name(&self) -> &'static str {
        type_name(self.get_type())
    }

    pub fn connect(c: Connect) -> Packet {
        Packet::Connect(Box::new(c))
    }

    pub fn connack(session_present: bool, code: ConnectReasonCode) -> Packet {
        Packet::Connack(Box::new(Connack::new(session_present, code)))
    }

    /// PUBACK, success, no properties.
    pub fn puback(pid: Pid) -> Packet {
        Packet::Puback(Puback::new_success(pid))
    }

    /// PUBREC, success, no properties.
    pub fn pubrec(pid: Pid) -> Packet {
        Packet::Pubrec(Pubrec::new_success(pid))
    }

    /// PUBREL, success, no properties.
    pub fn pubrel(pid: Pid) -> Packet {
        Packet::Pubrel(Pubrel::new_success(pid))
    }

    /// PUBCOMP, success, no properties.
    pub fn pubcomp(pid: Pid) -> Packet {
        Packet::Pubcomp(Pubcomp::new_success(pid))
    }

    /// DISCONNECT with `code` and no properties (3.1.1: the plain DISCONNECT).
    pub fn disconnect(code: DisconnectReasonCode) -> Packet {
        Packet::Disconnect(Box::new(Disconnect::new(code)))
    }
}

/// A 3.1.1 CONNECT with Clean Session set (`Connect::new` makes an MQTT 5 one).
pub fn connect_v3(client_id: &str, keep_alive: u16) -> Connect {
    let mut c = Connect::new(client_id.into(), keep_alive);
    c.protocol = Protocol::V311;
    c
}

/// A packet type's name as the specifications write it.
pub fn type_name(t: PacketType) -> &'static str {
    match t {
        PacketType::Connect => "CONNECT",
        PacketType::Connack => "CONNACK",
        PacketType::Publish => "PUBLISH",
        PacketType::Puback => "PUBACK",
        PacketType::Pubrec => "PUBREC",
        PacketType::Pubrel => "PUBREL",
        PacketType::Pubcomp => "PUBCOMP",
        PacketType::Subscribe => "SUBSCRIBE",
        PacketType::Suback => "SUBACK",
        PacketType::Unsubscribe => "UNSUBSCRIBE",
        PacketType::Unsuback => "UNSUBACK",
        PacketType::Pingreq => "PINGREQ",
        PacketType::Pingresp => "PINGRESP",
        PacketType::Disconnect => "DISCONNECT",
        PacketType::Auth => "AUTH",
    }
}

/// Why bytes from a peer are not a valid MQTT packet. Every variant is a reason to close the
/// connection (MQTT 3.1.1 §4.8; MQTT 5 §4.13: with a DISCONNECT carrying
/// [`CodecError::reason_code`] once CONNACK was sent), except
/// [`CodecError::UnsupportedProtocolLevel`], which a server first answers with CONNACK 0x01.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Remaining Length with a continuation bit on its fourth byte (§2.2.3).
    #[error("malformed Remaining Length (more than 4 bytes)")]
    BadRemainingLength,
    /// Larger than the configured maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// Reserved packet type (0, or 15 before MQTT 5) or reserved flag bits set (§2.2.2).
    #[error("invalid fixed header byte {0:#04x} (reserved type or flags, §2.2.2)")]
    BadHeader(u8),
    /// QoS 3 in a PUBLISH fixed header (§3.3.1-4).
    #[error("PUBLISH with QoS 3 (§3.3.1-4)")]
    BadQos,
    /// A CONNECT whose protocol name is not "MQTT" (or "MQIsdp" for 3.1) (§3.1.2-1).
    #[error("unknown protocol name {0:?} (§3.1.2-1)")]
    BadProtocolName(String),
    /// A CONNECT with a protocol level this server does not speak (§3.1.2-2): answered with
    /// CONNACK return code 0x01 before the connection is closed.
    #[error("unsupported protocol level {0} (§3.1.2-2)")]
    UnsupportedProtocolLevel(u8),
    /// The packet's content did not fill its Remaining Length exactly.
    #[error("{}: Remaining Length {declared} but the content is {used} bytes", type_name(*kind))]
    LengthMismatch { kind: PacketType, declared: usize, used: usize },
    /// Any other violation of the format (MQTT 5: a Malformed Packet, 0x81): the message names
    /// it and its section.
    #[error("{0}")]
    Malformed(String),
    /// Well-formed but against the protocol's rules (MQTT 5: a Protocol Error, 0x82), named.
    #[error("{0}")]
    Protocol(String),
    /// Refused with a more specific MQTT 5 reason code (0x94 Topic Alias invalid, 0x99 Payload
    /// format invalid, ...), named.
    #[error("{what}")]
    Refused { code: u8, what: String },
    /// A violation `mqtt-proto`'s decoder found that has no message of ours.
    #[error("malformed {}", type_name(*kind))]
    Proto {
        kind: PacketType,
        #[source]
        source: mqtt_proto::Error,
    },
    /// `mqtt-proto` could not encode a packet this process built.
    #[error("cannot encode the packet")]
    Encode(#[source] mqtt_proto::Error),
}

impl CodecError {
    /// The MQTT 5 reason code that names this (§2.4): 0x81 Malformed Packet, 0x82 Protocol
    /// Error, 0x95 Packet too large, or the one the error carries. A protocol name or level is
    /// wrong only in a CONNECT, where it is CONNACK's 0x84 (DISCONNECT has no such code).
    pub fn reason_code(&self) -> u8 {
        match self {
            CodecError::TooLarge { .. } => 0x95,
            CodecError::Protocol(_) => 0x82,
            CodecError::UnsupportedProtocolLevel(_) | CodecError::BadProtocolName(_) => 0x84,
            CodecError::Refused { code, .. } => *code,
            CodecError::Encode(_) => 0x83,
            CodecError::BadRemainingLength
            | CodecError::BadHeader(_)
            | CodecError::BadQos
            | CodecError::LengthMismatch { .. }
            | CodecError::Malformed(_)
            | CodecError::Proto { .. } => 0x81,
        }
    }

    /// From an error of `mqtt-proto`'s shared (v3 and v5) decoding.
    fn from_proto(kind: PacketType, e: mqtt_proto::Error) -> CodecError {
        use mqtt_proto::Error as E;
        let name = type_name(kind);
        match e {
            E::ZeroPid => CodecError::Malformed(format!("{name} with packet identifier 0 (§2.3.1-1)")),
            E::InvalidTopicName(t) => {
                CodecError::Malformed(format!("{name} topic name {t:?} contains a wildcard or U+0000 (§3.3.2-2)"))
            }
            E::InvalidTopicFilter(t) => CodecError::Malformed(format!("invalid topic filter {t:?} (§4.7.1)")),
            E::InvalidString => CodecError::Malformed(format!("{name} contains a string that is not UTF-8 (§1.5.3)")),
            E::EmptySubscription => {
                CodecError::Protocol(format!("{name} without any topic filter (§3.8.3-3, §3.10.3-2)"))
            }
            E::InvalidQos(q) => {
                CodecError::Malformed(format!("{name} with invalid QoS/options byte {q:#04x} (§3.8.3-4)"))
            }
            E::InvalidConnectFlags(f) => {
                CodecError::Malformed(format!("CONNECT flags {f:#010b} invalid (§3.1.2-3, §3.1.2-11..14)"))
            }
            E::InvalidProtocol(name, level) if &*name == "MQTT" || &*name == "MQIsdp" => {
                CodecError::UnsupportedProtocolLevel(level)
            }
            E::InvalidProtocol(name, _) => CodecError::BadProtocolName(name.to_string()),
            E::UnexpectedProtocol(p) => CodecError::UnsupportedProtocolLevel(p as u8),
            E::IoError(mqtt_proto::IoErrorKind::UnexpectedEof) => {
                CodecError::Malformed(format!("{name} is shorter than its content (truncated field)"))
            }
            E::InvalidRemainingLength => CodecError::Malformed(format!("{name} content overruns its Remaining Length")),
            source => CodecError::Proto { kind, source },
        }
    }
}

/// The fixed header of a frame: the first byte and the size of the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub first_byte: u8,
    /// Bytes of the fixed header (1 + length of the Remaining Length field).
    pub header_len: usize,
    /// The Remaining Length.
    pub remaining_len: usize,
}

impl FrameHead {
    /// Header plus body.
    pub fn total_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Read a fixed header from the front of `buf`. `Ok(None)`: not enough bytes yet.
/// A frame larger than `max_packet` is refused here, before its body is buffered.
pub fn frame_head(buf: &[u8], max_packet: usize) -> Result<Option<FrameHead>, CodecError> {
    let Some(&first_byte) = buf.first() else { return Ok(None) };
    let mut remaining: usize = 0;
    // MQTT 3.1.1 §2.2.3: at most four bytes, seven bits each, least significant first.
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        remaining |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            let head = FrameHead { first_byte, header_len: 2 + i, remaining_len: remaining };
            if head.total_len() > max_packet {
                return Err(CodecError::TooLarge { size: head.total_len(), max: max_packet });
            }
            return Ok(Some(head));
        }
    }
    Err(CodecError::BadRemainingLength)
}

/// MQTT 3.1.1 §3.1.2-15, MQTT 5 §3.1.2-13: Will Retain is 0 when the Will Flag is 0
/// (`mqtt-proto` only checks the Will QoS bits). The flags follow the protocol name and level.
fn check_will_retain_flag(body: &[u8]) -> Result<(), CodecError> {
    let name_len = body.get(..2).map_or(0, |n| u16::from_be_bytes([n[0], n[1]]) as usize);
    if let Some(&flags) = body.get(2 + name_len + 1) {
        if flags & 0x04 == 0 && flags & 0x20 != 0 {
            return Err(CodecError::Malformed("CONNECT with Will Retain but no Will Flag (§3.1.2-15)".into()));
        }
    }
    Ok(())
}

/// The version a CONNECT frame asks for, from its protocol level (the byte after the protocol
/// name): level 5 is MQTT 5, anything else is for the 3.1.1 decoder to accept or refuse.
fn connect_version(body: &[u8]) -> Version {
    let level =
        body.get(..2).map(|n| 2 + u16::from_be_bytes([n[0], n[1]]) as usize).and_then(|at| body.get(at).copied());
    if level == Some(5) {
        Version::V5
    } else {
        Version::V3
    }
}

/// Decode one complete frame (exactly the bytes of one packet, header included) of `version`;
/// with `None` (a server before CONNECT), a CONNECT's own protocol level decides.
fn decode_frame(frame: &[u8], head: FrameHead, version: Option<Version>) -> Result<Packet, CodecError> {
    let body = frame
        .get(head.header_len..head.total_len())
        .ok_or_else(|| CodecError::Malformed(format!("frame of {} bytes shorter than its header says", frame.len())))?;
    let version = match version {
        Some(v) => v,
        None if head.first_byte >> 4 == 1 => connect_version(body),
        None => Version::V3,
    };
    match version {
        Version::V3 => v3::decode(body, head),
        Version::V5 => v5::decode(body, head),
    }
}

/// Decode the first complete packet in `buf`: `Ok(Some((packet, used)))`, or `Ok(None)` when
/// more bytes are needed. `version`: as for [`Decoder::with_version`]; `None` lets a CONNECT
/// say which.
pub fn decode_one(
    buf: &[u8],
    max_packet: usize,
    version: Option<Version>,
) -> Result<Option<(Packet, usize)>, CodecError> {
    let Some(head) = frame_head(buf, max_packet)? else { return Ok(None) };
    let total = head.total_len();
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((decode_frame(&buf[..total], head, version)?, total)))
}

/// Splits a byte stream into packets; keeps only an incomplete frame between reads, and no
/// buffer at all when there is none (an idle connection holds no memory here).
///
/// A server's decoder starts without a version and takes the one of the first CONNECT it
/// decodes ([`Decoder::version`]); a client's, and a QUIC data stream's, is told it.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: BytesMut,
    max_packet: usize,
    version: Option<Version>,
}

impl Decoder {
    /// A decoder that learns its version from the CONNECT it decodes.
    pub fn new(max_packet: usize) -> Decoder {
        Decoder { partial: BytesMut::new(), max_packet, version: None }
    }

    /// A decoder for a stream of `version`'s packets.
    pub fn with_version(max_packet: usize, version: Version) -> Decoder {
        Decoder { partial: BytesMut::new(), max_packet, version: Some(version) }
    }

    /// The version of the packets: told, or learnt from a CONNECT (`None` before one).
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Bytes of an incomplete frame held between reads.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feed bytes read from the stream; decoded packets are appended to `out`. On an error the
    /// packets decoded before it are still in `out` (the caller handles them, then closes).
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Packet>) -> Result<(), CodecError> {
        if self.partial.is_empty() {
            let used = decode_all(self.max_packet, &mut self.version, data, out)?;
            if used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
            return Ok(());
        }
        self.partial.extend_from_slice(data);
        let buf = std::mem::take(&mut self.partial);
        let used = decode_all(self.max_packet, &mut self.version, &buf, out)?;
        if used < buf.len() {
            let mut rest = buf;
            let _ = rest.split_to(used);
            if rest.capacity() > 4 * rest.len().max(4096) {
                // Don't keep a large buffer around for a small remainder.
                self.partial = BytesMut::from(&rest[..]);
            } else {
                self.partial = rest;
            }
        }
        // else: the buffer is dropped; an idle connection keeps nothing.
        Ok(())
    }

    /// Keep `data` for [`Decoder::decode`] (which decodes it a few packets at a time).
    pub fn extend(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
    }

    /// Decode at most `max` complete packets of the bytes kept so far into `out`; the rest stay
    /// for the next call. For a reader that hands packets over in slices and stops while the
    /// connection's output is over its bound: what waits is bytes, not decoded packets. On an
    /// error the packets decoded before it are still in `out`.
    pub fn decode(&mut self, out: &mut Vec<Packet>, max: usize) -> Result<(), CodecError> {
        let mut used = 0;
        let mut n = 0;
        let res = loop {
            if n == max {
                break Ok(());
            }
            match decode_next(&self.partial[used..], self.max_packet, &mut self.version) {
                Ok(Some((p, len))) => {
                    out.push(p);
                    used += len;
                    n += 1;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let _ = self.partial.split_to(used);
        if self.partial.is_empty() {
            self.partial = BytesMut::new(); // an idle stream keeps no buffer
        }
        res
    }
}

/// [`decode_one`] for a decoder: a CONNECT sets the version of what follows.
fn decode_next(
    buf: &[u8],
    max_packet: usize,
    version: &mut Option<Version>,
) -> Result<Option<(Packet, usize)>, CodecError> {
    let got = decode_one(buf, max_packet, *version)?;
    if let Some((Packet::Connect(c), _)) = &got {
        version.get_or_insert(Version::of(c.protocol));
    }
    Ok(got)
}

fn decode_all(
    max_packet: usize,
    version: &mut Option<Version>,
    data: &[u8],
    out: &mut Vec<Packet>,
) -> Result<usize, CodecError> {
    let mut used = 0;
    while let Some((p, n)) = decode_next(&data[used..], max_packet, version)? {
        out.push(p);
        used += n;
    }
    Ok(used)
}

fn put_var_int(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn var_int_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Fixed header and body of a packet `mqtt-proto` encodes.
fn put_body<E: Encodable>(out: &mut Vec<u8>, first: u8, body: &E) -> Result<(), CodecError> {
    let len = body.encode_len();
    if len > MAX_REMAINING_LENGTH {
        return Err(CodecError::TooLarge { size: len, max: MAX_REMAINING_LENGTH });
    }
    out.reserve(len + 5);
    out.push(first);
    put_var_int(out, len);
    body.encode(out).map_err(CodecError::Encode)
}

fn put_pid(out: &mut Vec<u8>, first: u8, pid: Pid) {
    let v = pid.value();
    out.extend_from_slice(&[first, 2, (v >> 8) as u8, v as u8]);
}

/// Append the encoding of `p` for a peer of `version`. For 3.1.1 the MQTT 5 parts (properties,
/// reason codes the 3.1.1 packet has no room for) are left out; AUTH has no 3.1.1 form. A
/// CONNECT is written in the version its protocol names. On an error nothing is appended (a
/// half-written packet would corrupt the stream).
pub fn encode(p: &Packet, version: Version, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    let res = encode_inner(p, version, out);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

fn encode_inner(p: &Packet, version: Version, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match p {
        Packet::Publish(p) => p.encode(version == Version::V5, out),
        Packet::Pingreq => {
            out.extend_from_slice(&[0xc0, 0]);
            Ok(())
        }
        Packet::Pingresp => {
            out.extend_from_slice(&[0xd0, 0]);
            Ok(())
        }
        Packet::Connect(c) if c.protocol == Protocol::V500 => v5::encode(p, out),
        Packet::Connect(_) => v3::encode(p, out),
        _ if version == Version::V5 => v5::encode(p, out),
        _ => v3::encode(p, out),
    }
}

/// About how many bytes `p` takes on the wire for a peer of `version` (exact for the packets a
/// broker sends most: PUBLISH, acks, SUBACK): what a writer counts against its batch budget
/// without encoding.
pub fn wire_len_hint(p: &Packet, version: Version) -> usize {
    let framed = |body: usize| 1 + var_int_len(body) + body;
    let v5 = version == Version::V5;
    match p {
        Packet::Publish(p) => framed(p.body_len(v5)),
        // Type byte, Remaining Length, packet id, one code per filter (§3.9).
        Packet::Suback(s) if !v5 => framed(2 + s.topics.len()),
        Packet::Connack(_)
        | Packet::Puback(_)
        | Packet::Pubrec(_)
        | Packet::Pubrel(_)
        | Packet::Pubcomp(_)
        | Packet::Unsuback(_)
            if !v5 =>
        {
            4
        }
        Packet::Disconnect(_) if !v5 => 2,
        Packet::Pingreq | Packet::Pingresp => 2,
        Packet::Connect(c) => framed(c.encode_len()),
        Packet::Connack(c) => framed(c.encode_len()),
        Packet::Puback(a) => framed(a.encode_len()),
        Packet::Pubrec(a) => framed(a.encode_len()),
        Packet::Pubrel(a) => framed(a.encode_len()),
        Packet::Pubcomp(a) => framed(a.encode_len()),
        Packet::Subscribe(s) => framed(s.encode_len()),
        Packet::Suback(s) => framed(s.encode_len()),
        Packet::Unsubscribe(u) => framed(u.encode_len()),
        Packet::Unsuback(u) => framed(u.encode_len()),
        Packet::Disconnect(d) => framed(d.encode_len()),
        Packet::Auth(a) => framed(a.encode_len()),
    }
}

/// Encode into a new vector.
pub fn encode_to_vec(p: &Packet, version: Version) -> Result<Vec<u8>, CodecError> {
    let mut v = Vec::new();
    encode(p, version, &mut v)?;
    Ok(v)
}

/// Check the strings of a CONNECT, SUBSCRIBE or UNSUBSCRIBE we are about to send fit their
/// 16-bit length prefixes (`mqtt-proto` would silently truncate the length).
fn check_strings(p: &Packet) -> Result<(), CodecError> {
    let long = |s: &str| s.len() > u16::MAX as usize;
    let bad = match p {
        Packet::Connect(c) => {
            long(&c.client_id)
                || c.username.as_deref().is_some_and(long)
                || c.password.as_ref().is_some_and(|p| p.len() > u16::MAX as usize)
                || c.last_will.as_ref().is_some_and(|w| long(&w.topic_name) || w.payload.len() > u16::MAX as usize)
        }
        Packet::Subscribe(s) => s.topics.iter().any(|(f, _)| long(f)),
        Packet::Unsubscribe(u) => u.topics.iter().any(|f| long(f)),
        _ => false,
    };
    if bad {
        return Err(CodecError::Malformed("a string or binary field longer than 65,535 bytes".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
