//! MQTT 3.1.1 codec: a small framing layer in front of `mqtt-proto` 0.4.
//!
//! `mqtt-proto` is strict (reserved flag bits, wildcards or NUL in PUBLISH topics, bad
//! subscription option bytes, `a/#/b`, packet id 0 are all rejected) but it has no maximum packet
//! size, its `Packet::decode(&[u8])` does not say how many bytes it used, and its
//! `Header::decode(..).total_len` is wrong in 0.4.0. So this module:
//!
//! 1. reads the fixed header itself (type byte and Remaining Length, MQTT 3.1.1 §2.2.3),
//!    rejects a Remaining Length longer than four bytes, and rejects a packet larger than the
//!    configured maximum as soon as its header is known (before its body is buffered);
//! 2. waits until the whole frame is there and hands exactly that slice to `mqtt-proto`'s
//!    per-packet decoders;
//! 3. checks that the decoder used every byte of the frame (a CONNECT with junk inside its
//!    length was accepted by `mqtt-proto`; so were PINGREQ/PUBACK with extra bytes);
//! 4. adds the 3.1.1 rules `mqtt-proto` leaves to its users: empty topic names (§4.7.3-1), DUP on
//!    QoS 0 (§3.3.1-2), a password without a user name (§3.1.2-22), U+0000 in the client id or
//!    user name (§1.5.3-2);
//! 5. encodes packets straight into the caller's buffer (no intermediate allocation per packet).
//!
//! The packet types are `mqtt-proto`'s v3 types, re-exported. MQTT 5 (a later issue) adds a
//! second decoder beside `decode_v3` selected by the CONNECT's protocol level; the framing
//! ([`frame_head`]) is the same for both versions.

use bytes::BytesMut;
pub use mqtt_proto::v3::{
    Connack, Connect, ConnectReturnCode, Header, LastWill, Packet, PacketType, Publish, Suback, Subscribe,
    SubscribeReturnCode, Unsubscribe,
};
pub use mqtt_proto::{Encodable, Pid, Protocol, QoS, QosPid, TopicFilter, TopicName};

/// Largest Remaining Length the protocol can express (MQTT 3.1.1 §2.2.3): 268,435,455.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Why bytes from a peer are not a valid MQTT packet. Every variant is a reason to close the
/// connection (MQTT 3.1.1 §4.8: "the receiver MUST close the Network Connection"), except
/// [`CodecError::UnsupportedProtocolLevel`], which a server first answers with CONNACK 0x01.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Remaining Length with a continuation bit on its fourth byte (§2.2.3).
    #[error("malformed Remaining Length (more than 4 bytes)")]
    BadRemainingLength,
    /// Larger than the configured maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// Reserved packet type (0 or 15) or reserved flag bits set (§2.2.2).
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
    #[error("{kind:?}: Remaining Length {declared} but the content is {used} bytes")]
    LengthMismatch { kind: PacketType, declared: usize, used: usize },
    /// Any other violation of the format: the message names it (and the section of MQTT 3.1.1).
    #[error("{0}")]
    Malformed(String),
    /// A violation `mqtt-proto`'s decoder found that has no message of ours.
    #[error("malformed {kind:?}")]
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
    fn from_proto(kind: PacketType, e: mqtt_proto::Error) -> CodecError {
        use mqtt_proto::Error as E;
        match e {
            E::ZeroPid => CodecError::Malformed(format!("{kind:?} with packet identifier 0 (§2.3.1-1)")),
            E::InvalidTopicName(t) => {
                CodecError::Malformed(format!("{kind:?} topic name {t:?} contains a wildcard or U+0000 (§3.3.2-2)"))
            }
            E::InvalidTopicFilter(t) => CodecError::Malformed(format!("invalid topic filter {t:?} (§4.7.1)")),
            E::InvalidString => CodecError::Malformed(format!("{kind:?} contains a string that is not UTF-8 (§1.5.3)")),
            E::EmptySubscription => {
                CodecError::Malformed(format!("{kind:?} without any topic filter (§3.8.3-3, §3.10.3-2)"))
            }
            E::InvalidQos(q) => {
                CodecError::Malformed(format!("{kind:?} with invalid QoS/options byte {q:#04x} (§3.8.3-4)"))
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
                CodecError::Malformed(format!("{kind:?} is shorter than its content (truncated field)"))
            }
            E::InvalidRemainingLength => {
                CodecError::Malformed(format!("{kind:?} content overruns its Remaining Length"))
            }
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

/// Decode one complete v3.1.1 (or 3.1) frame: exactly the bytes of one packet, header included.
pub(crate) fn decode_v3(frame: &[u8], head: FrameHead) -> Result<Packet, CodecError> {
    let body = frame
        .get(head.header_len..head.total_len())
        .ok_or_else(|| CodecError::Malformed(format!("frame of {} bytes shorter than its header says", frame.len())))?;
    // MQTT 3.1.1 §2.2.2: reserved types and flags. mqtt-proto checks them; we name the byte.
    let header =
        Header::new_with(head.first_byte, head.remaining_len as u32, head.total_len() as u32).map_err(|e| match e {
            mqtt_proto::Error::InvalidQos(_) => CodecError::BadQos,
            _ => CodecError::BadHeader(head.first_byte),
        })?;
    let kind = header.typ;
    let mut off = 0usize;
    let pe = |e| CodecError::from_proto(kind, e);
    let pid = |body: &[u8], off: &mut usize| -> Result<Pid, CodecError> {
        let b = body.get(*off..*off + 2).ok_or_else(|| {
            CodecError::Malformed(format!("{kind:?} without a packet identifier (Remaining Length {})", body.len()))
        })?;
        *off += 2;
        // MQTT 3.1.1 §2.3.1-1: non-zero packet identifiers.
        Pid::try_from(u16::from_be_bytes([b[0], b[1]])).map_err(pe)
    };
    let packet = match kind {
        PacketType::Connect => {
            let c = Connect::decode(body, &mut off).map_err(pe)?;
            // MQTT 3.1.1 §3.1.2-15: Will Retain is 0 when the Will Flag is 0 (mqtt-proto only
            // checks the Will QoS bits). The flags follow the protocol name and level.
            let name_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            if let Some(&flags) = body.get(2 + name_len + 1) {
                if flags & 0x04 == 0 && flags & 0x20 != 0 {
                    return Err(CodecError::Malformed("CONNECT with Will Retain but no Will Flag (§3.1.2-15)".into()));
                }
            }
            check_connect(&c)?;
            Packet::Connect(c)
        }
        PacketType::Connack => Packet::Connack(Connack::decode(body, &mut off).map_err(pe)?),
        PacketType::Publish => {
            let p = Publish::decode(body, &mut off, header).map_err(pe)?;
            // Publish::decode consumes the rest as payload; it never leaves bytes behind.
            off = body.len();
            // MQTT 3.1.1 §4.7.3-1: topic names are at least one character long.
            if p.topic_name.is_empty() {
                return Err(CodecError::Malformed("PUBLISH with an empty topic name (§4.7.3-1)".into()));
            }
            // MQTT 3.1.1 §3.3.1-2: DUP is 0 for QoS 0 messages.
            if p.dup && p.qos_pid == QosPid::Level0 {
                return Err(CodecError::Malformed("PUBLISH QoS 0 with DUP set (§3.3.1-2)".into()));
            }
            Packet::Publish(p)
        }
        PacketType::Puback => Packet::Puback(pid(body, &mut off)?),
        PacketType::Pubrec => Packet::Pubrec(pid(body, &mut off)?),
        PacketType::Pubrel => Packet::Pubrel(pid(body, &mut off)?),
        PacketType::Pubcomp => Packet::Pubcomp(pid(body, &mut off)?),
        PacketType::Subscribe => {
            let s = Subscribe::decode(body, &mut off, header).map_err(pe)?;
            Packet::Subscribe(s)
        }
        PacketType::Suback => Packet::Suback(Suback::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Unsuback => Packet::Unsuback(pid(body, &mut off)?),
        PacketType::Pingreq => Packet::Pingreq,
        PacketType::Pingresp => Packet::Pingresp,
        PacketType::Disconnect => Packet::Disconnect,
    };
    if off != body.len() {
        return Err(CodecError::LengthMismatch { kind, declared: body.len(), used: off });
    }
    Ok(packet)
}

/// MQTT 3.1.1 rules on CONNECT that `mqtt-proto` does not check.
fn check_connect(c: &Connect) -> Result<(), CodecError> {
    // MQTT 3.1.1 §3.1.2-22: no password without a user name.
    if c.password.is_some() && c.username.is_none() {
        return Err(CodecError::Malformed("CONNECT with a password but no user name (§3.1.2-22)".into()));
    }
    // MQTT 3.1.1 §1.5.3-2: no U+0000 in UTF-8 strings.
    if c.client_id.contains('\0') {
        return Err(CodecError::Malformed("CONNECT client identifier contains U+0000 (§1.5.3-2)".into()));
    }
    if c.username.as_deref().is_some_and(|u| u.contains('\0')) {
        return Err(CodecError::Malformed("CONNECT user name contains U+0000 (§1.5.3-2)".into()));
    }
    if let Some(w) = &c.last_will {
        // MQTT 3.1.1 §4.7.3-1 (the Will Topic is a topic name, §3.1.3.3).
        if w.topic_name.is_empty() {
            return Err(CodecError::Malformed("CONNECT with an empty Will Topic (§4.7.3-1)".into()));
        }
    }
    Ok(())
}

/// Decode the first complete packet in `buf`: `Ok(Some((packet, used)))`, or `Ok(None)` when
/// more bytes are needed.
pub fn decode_one(buf: &[u8], max_packet: usize) -> Result<Option<(Packet, usize)>, CodecError> {
    let Some(head) = frame_head(buf, max_packet)? else { return Ok(None) };
    let total = head.total_len();
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((decode_v3(&buf[..total], head)?, total)))
}

/// Splits a byte stream into packets; keeps only an incomplete frame between reads, and no
/// buffer at all when there is none (an idle connection holds no memory here).
#[derive(Debug, Default)]
pub struct Decoder {
    partial: BytesMut,
    max_packet: usize,
}

impl Decoder {
    pub fn new(max_packet: usize) -> Decoder {
        Decoder { partial: BytesMut::new(), max_packet }
    }

    /// Bytes of an incomplete frame held between reads.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feed bytes read from the stream; decoded packets are appended to `out`. On an error the
    /// packets decoded before it are still in `out` (the caller handles them, then closes).
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Packet>) -> Result<(), CodecError> {
        if self.partial.is_empty() {
            let used = self.decode_all(data, out)?;
            if used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
            return Ok(());
        }
        self.partial.extend_from_slice(data);
        let buf = std::mem::take(&mut self.partial);
        let used = self.decode_all(&buf, out)?;
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
            match decode_one(&self.partial[used..], self.max_packet) {
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

    fn decode_all(&self, data: &[u8], out: &mut Vec<Packet>) -> Result<usize, CodecError> {
        let mut used = 0;
        while let Some((p, n)) = decode_one(&data[used..], self.max_packet)? {
            out.push(p);
            used += n;
        }
        Ok(used)
    }
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

/// Check the strings of a packet we are about to send fit their 16-bit length prefixes
/// (`mqtt-proto` would silently truncate the length).
fn check_strings(p: &Packet) -> Result<(), CodecError> {
    let long = |s: &str| s.len() > u16::MAX as usize;
    let bad = match p {
        Packet::Connect(c) => {
            long(&c.client_id)
                || c.username.as_deref().is_some_and(long)
                || c.password.as_ref().is_some_and(|p| p.len() > u16::MAX as usize)
                || c.last_will.as_ref().is_some_and(|w| long(&w.topic_name) || w.message.len() > u16::MAX as usize)
        }
        Packet::Publish(p) => long(&p.topic_name),
        Packet::Subscribe(s) => s.topics.iter().any(|(f, _)| long(f)),
        Packet::Unsubscribe(u) => u.topics.iter().any(|f| long(f)),
        _ => false,
    };
    if bad {
        return Err(CodecError::Malformed("a string or binary field longer than 65,535 bytes".into()));
    }
    Ok(())
}

/// Append the encoding of `p` to `out`.
pub fn encode(p: &Packet, out: &mut Vec<u8>) -> Result<(), CodecError> {
    check_strings(p)?;
    match p {
        Packet::Connect(c) => put_body(out, 0x10, c)?,
        Packet::Connack(c) => out.extend_from_slice(&[0x20, 2, c.session_present as u8, c.code as u8]),
        Packet::Publish(p) => {
            let mut first = match p.qos_pid {
                QosPid::Level0 => 0x30,
                QosPid::Level1(_) => 0x32,
                QosPid::Level2(_) => 0x34,
            };
            if p.dup {
                first |= 0x08;
            }
            if p.retain {
                first |= 0x01;
            }
            put_body(out, first, p)?
        }
        Packet::Puback(pid) => put_pid(out, 0x40, *pid),
        Packet::Pubrec(pid) => put_pid(out, 0x50, *pid),
        // MQTT 3.1.1 §3.6.1-1: PUBREL's flags are 0010.
        Packet::Pubrel(pid) => put_pid(out, 0x62, *pid),
        Packet::Pubcomp(pid) => put_pid(out, 0x70, *pid),
        // MQTT 3.1.1 §3.8.1-1: SUBSCRIBE's flags are 0010.
        Packet::Subscribe(s) => put_body(out, 0x82, s)?,
        // mqtt-proto 0.4.0 encodes the failure code as 0x03 instead of 0x80 (§3.9.3): our own.
        Packet::Suback(s) => {
            let len = 2 + s.topics.len();
            if len > MAX_REMAINING_LENGTH {
                return Err(CodecError::TooLarge { size: len, max: MAX_REMAINING_LENGTH });
            }
            out.push(0x90);
            put_var_int(out, len);
            out.extend_from_slice(&s.pid.value().to_be_bytes());
            out.extend(s.topics.iter().map(|c| match c {
                SubscribeReturnCode::MaxLevel0 => 0x00,
                SubscribeReturnCode::MaxLevel1 => 0x01,
                SubscribeReturnCode::MaxLevel2 => 0x02,
                SubscribeReturnCode::Failure => 0x80,
            }));
        }
        // MQTT 3.1.1 §3.10.1-1: UNSUBSCRIBE's flags are 0010.
        Packet::Unsubscribe(u) => put_body(out, 0xa2, u)?,
        Packet::Unsuback(pid) => put_pid(out, 0xb0, *pid),
        Packet::Pingreq => out.extend_from_slice(&[0xc0, 0]),
        Packet::Pingresp => out.extend_from_slice(&[0xd0, 0]),
        Packet::Disconnect => out.extend_from_slice(&[0xe0, 0]),
    }
    Ok(())
}

/// About how many bytes `p` takes on the wire (exact for the packets a broker sends most:
/// PUBLISH, acks, SUBACK): what a writer counts against its batch budget without encoding.
pub fn wire_len_hint(p: &Packet) -> usize {
    match p {
        Packet::Publish(p) => {
            let body = 2 + p.topic_name.len() + p.qos_pid.pid().map_or(0, |_| 2) + p.payload.len();
            1 + var_int_len(body) + body
        }
        // Type byte, Remaining Length, packet id, one code per filter (§3.9).
        Packet::Suback(s) => 3 + var_int_len(2 + s.topics.len()) + s.topics.len(),
        Packet::Connect(c) => 5 + c.encode_len(),
        Packet::Subscribe(s) => 5 + s.encode_len(),
        Packet::Unsubscribe(u) => 5 + u.encode_len(),
        _ => 4,
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

/// Encode into a new vector.
pub fn encode_to_vec(p: &Packet) -> Result<Vec<u8>, CodecError> {
    let mut v = Vec::new();
    encode(p, &mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const MAX: usize = 1 << 20;

    fn pid(n: u16) -> Pid {
        Pid::try_from(n).unwrap()
    }

    fn roundtrip(p: Packet) {
        let bytes = encode_to_vec(&p).unwrap();
        let (back, used) = decode_one(&bytes, MAX).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, p);
        // Byte by byte, the decoder waits and then yields exactly one packet.
        let mut d = Decoder::new(MAX);
        let mut out = Vec::new();
        for b in &bytes {
            d.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out, vec![p]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn roundtrips() {
        let mut c = Connect::new("client-1".into(), 30);
        c.clean_session = false;
        c.username = Some("u".into());
        c.password = Some(Bytes::from_static(b"p"));
        c.last_will = Some(LastWill {
            qos: QoS::Level1,
            retain: true,
            topic_name: TopicName::try_from("will/t").unwrap(),
            message: Bytes::from_static(b"bye"),
        });
        roundtrip(Packet::Connect(c));
        roundtrip(Packet::Connect(Connect::new("".into(), 0)));
        roundtrip(Packet::Connack(Connack::new(true, ConnectReturnCode::Accepted)));
        roundtrip(Packet::Connack(Connack::new(false, ConnectReturnCode::NotAuthorized)));
        for qp in [QosPid::Level0, QosPid::Level1(pid(7)), QosPid::Level2(pid(65535))] {
            let mut p = Publish::new(qp, TopicName::try_from("a/b").unwrap(), Bytes::from(vec![1u8; 300]));
            p.retain = true;
            p.dup = qp != QosPid::Level0;
            roundtrip(Packet::Publish(p));
        }
        roundtrip(Packet::Publish(Publish::new(QosPid::Level0, TopicName::try_from("x").unwrap(), Bytes::new())));
        roundtrip(Packet::Puback(pid(1)));
        roundtrip(Packet::Pubrec(pid(2)));
        roundtrip(Packet::Pubrel(pid(3)));
        roundtrip(Packet::Pubcomp(pid(4)));
        roundtrip(Packet::Subscribe(Subscribe::new(
            pid(5),
            vec![
                (TopicFilter::try_from("a/+/c").unwrap(), QoS::Level2),
                (TopicFilter::try_from("#").unwrap(), QoS::Level0),
            ],
        )));
        roundtrip(Packet::Suback(Suback::new(
            pid(5),
            vec![SubscribeReturnCode::MaxLevel2, SubscribeReturnCode::Failure],
        )));
        roundtrip(Packet::Unsubscribe(Unsubscribe::new(pid(6), vec![TopicFilter::try_from("a/#").unwrap()])));
        roundtrip(Packet::Unsuback(pid(6)));
        roundtrip(Packet::Pingreq);
        roundtrip(Packet::Pingresp);
        roundtrip(Packet::Disconnect);
    }

    #[test]
    fn several_packets_in_one_read_and_split_across_reads() {
        let mut bytes = Vec::new();
        for p in [Packet::Pingreq, Packet::Puback(pid(9)), Packet::Disconnect] {
            encode(&p, &mut bytes).unwrap();
        }
        let mut d = Decoder::new(MAX);
        let mut out = Vec::new();
        d.feed(&bytes[..3], &mut out).unwrap();
        assert_eq!(out, vec![Packet::Pingreq]);
        assert_eq!(d.buffered(), 1);
        d.feed(&bytes[3..], &mut out).unwrap();
        assert_eq!(out, vec![Packet::Pingreq, Packet::Puback(pid(9)), Packet::Disconnect]);
        assert_eq!(d.buffered(), 0);
    }

    fn reject(bytes: &[u8]) -> CodecError {
        match decode_one(bytes, MAX) {
            Err(e) => e,
            other => panic!("{bytes:02x?} decoded to {other:?}"),
        }
    }

    fn connect_bytes(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
        body.extend_from_slice(payload);
        let mut v = vec![0x10, body.len() as u8];
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn rejections() {
        // Remaining Length with five bytes (§2.2.3).
        assert_eq!(reject(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), CodecError::BadRemainingLength);
        // Reserved flags (§2.2.2): PUBACK with flags, SUBSCRIBE without 0010, type 0 and 15.
        assert_eq!(reject(&[0x41, 2, 0, 1]), CodecError::BadHeader(0x41));
        assert_eq!(reject(&[0x80, 6, 0, 1, 0, 1, b'a', 0]), CodecError::BadHeader(0x80));
        assert_eq!(reject(&[0x00, 0]), CodecError::BadHeader(0));
        assert_eq!(reject(&[0xf0, 0]), CodecError::BadHeader(0xf0));
        // QoS 3 (§3.3.1-4).
        assert_eq!(reject(&[0x36, 5, 0, 1, b'a', 0, 1]), CodecError::BadQos);
        // Wildcards and NUL in a PUBLISH topic (§3.3.2-2, §1.5.3-2).
        assert!(matches!(reject(&[0x30, 3, 0, 1, b'+']), CodecError::Malformed(_)));
        assert!(matches!(reject(&[0x30, 3, 0, 1, b'#']), CodecError::Malformed(_)));
        assert!(matches!(reject(&[0x30, 3, 0, 1, 0]), CodecError::Malformed(_)));
        // Empty topic (§4.7.3-1).
        assert!(matches!(reject(&[0x30, 2, 0, 0]), CodecError::Malformed(_)));
        // Invalid UTF-8 in a topic (§1.5.3).
        assert!(matches!(reject(&[0x30, 4, 0, 2, 0xc3, 0x28]), CodecError::Malformed(_)));
        // Packet id 0 (§2.3.1-1).
        assert!(matches!(reject(&[0x32, 5, 0, 1, b'a', 0, 0]), CodecError::Malformed(_)));
        assert!(matches!(reject(&[0x40, 2, 0, 0]), CodecError::Malformed(_)));
        // DUP on QoS 0 (§3.3.1-2).
        assert!(matches!(reject(&[0x38, 3, 0, 1, b'a']), CodecError::Malformed(_)));
        // Extra bytes inside the length of fixed-size packets.
        assert!(matches!(reject(&[0xc0, 1, 0]), CodecError::LengthMismatch { .. }));
        assert!(matches!(reject(&[0x40, 3, 0, 1, 0]), CodecError::LengthMismatch { .. }));
        assert!(matches!(reject(&[0x40, 1, 0]), CodecError::Malformed(_)));
        // CONNECT with junk after its last field.
        let mut c = connect_bytes(0x02, &[0, 1, b'c']);
        c.push(0xee);
        c[1] += 1;
        assert!(matches!(reject(&c), CodecError::LengthMismatch { .. }));
        // Will Retain without Will Flag (§3.1.2-15).
        assert!(matches!(reject(&connect_bytes(0x22, &[0, 1, b'c'])), CodecError::Malformed(_)));
        // Reserved CONNECT flag (§3.1.2-3), will QoS without will flag (§3.1.2-13).
        assert!(matches!(reject(&connect_bytes(0x03, &[0, 1, b'c'])), CodecError::Malformed(_)));
        assert!(matches!(reject(&connect_bytes(0x0a, &[0, 1, b'c'])), CodecError::Malformed(_)));
        // Password without user name (§3.1.2-22).
        assert!(matches!(reject(&connect_bytes(0x42, &[0, 1, b'c', 0, 1, b'p'])), CodecError::Malformed(_)));
        // NUL in the client id (§1.5.3-2).
        assert!(matches!(reject(&connect_bytes(0x02, &[0, 1, 0])), CodecError::Malformed(_)));
        // Protocol level 5 and 6: answered with CONNACK 0x01 by the broker (§3.1.2-2).
        let mut v5 = connect_bytes(0x02, &[0, 1, b'c']);
        v5[8] = 5;
        assert_eq!(reject(&v5), CodecError::UnsupportedProtocolLevel(5));
        v5[8] = 6;
        assert_eq!(reject(&v5), CodecError::UnsupportedProtocolLevel(6));
        // Wrong protocol name (§3.1.2-1).
        let mut bad = connect_bytes(0x02, &[0, 1, b'c']);
        bad[4] = b'X';
        assert!(matches!(reject(&bad), CodecError::BadProtocolName(_)));
        // Empty SUBSCRIBE / UNSUBSCRIBE (§3.8.3-3, §3.10.3-2), bad filter, options byte with reserved bits.
        assert!(matches!(reject(&[0x82, 2, 0, 1]), CodecError::Malformed(_)));
        assert!(matches!(reject(&[0xa2, 2, 0, 1]), CodecError::Malformed(_)));
        assert!(matches!(reject(&[0x82, 8, 0, 1, 0, 3, b'a', b'#', b'b', 0]), CodecError::Malformed(_)));
        assert!(matches!(reject(&[0x82, 6, 0, 1, 0, 1, b'a', 0x81]), CodecError::Malformed(_)));
        assert!(matches!(reject(&[0x82, 6, 0, 1, 0, 1, b'a', 3]), CodecError::Malformed(_)));
        // Truncated string inside a complete frame.
        assert!(matches!(reject(&[0x82, 5, 0, 1, 0, 9, b'a']), CodecError::Malformed(_)));
    }

    #[test]
    fn oversized_is_refused_from_the_header_alone() {
        let small = 64;
        // Only the first three bytes of a 200-byte PUBLISH have arrived.
        assert_eq!(frame_head(&[0x30, 0xc5, 0x01], small), Err(CodecError::TooLarge { size: 200, max: small }));
        let mut d = Decoder::new(small);
        let mut out = Vec::new();
        assert!(d.feed(&[0x30, 0xc5, 0x01], &mut out).is_err());
        // Exactly the maximum is fine.
        let p = Packet::Publish(Publish::new(
            QosPid::Level0,
            TopicName::try_from("t").unwrap(),
            Bytes::from(vec![0u8; 59]),
        ));
        let bytes = encode_to_vec(&p).unwrap();
        assert_eq!(bytes.len(), small);
        assert!(decode_one(&bytes, small).unwrap().is_some());
    }

    #[test]
    fn wire_len_hint_is_exact_for_publish_suback_and_acks() {
        // Found by the mqtt_codec fuzz target: SUBACK was counted one byte short.
        let codes = |n: usize| vec![SubscribeReturnCode::MaxLevel1; n];
        let mut packets: Vec<Packet> =
            [0, 1, 5, 200].into_iter().map(|n| Packet::Suback(Suback::new(pid(3), codes(n)))).collect();
        packets.push(Packet::Publish(Publish::new(
            QosPid::Level1(pid(2)),
            TopicName::try_from("a/b").unwrap(),
            Bytes::from(vec![7u8; 200]),
        )));
        packets.push(Packet::Publish(Publish::new(QosPid::Level0, TopicName::try_from("t").unwrap(), Bytes::new())));
        packets.extend([
            Packet::Puback(pid(1)),
            Packet::Pubrec(pid(1)),
            Packet::Pubrel(pid(1)),
            Packet::Pubcomp(pid(1)),
        ]);
        packets.push(Packet::Connack(Connack::new(false, ConnectReturnCode::Accepted)));
        for p in packets {
            assert_eq!(wire_len_hint(&p), encode_to_vec(&p).unwrap().len(), "{p:?}");
        }
    }

    #[test]
    fn non_minimal_remaining_length_is_accepted() {
        // §2.2.3 does not forbid it in 3.1.1; the frame is still exactly delimited.
        let (p, n) = decode_one(&[0xc0, 0x80, 0x00], MAX).unwrap().unwrap();
        assert_eq!((p, n), (Packet::Pingreq, 3));
    }

    #[test]
    fn encoder_refuses_overlong_strings() {
        let topic = "a".repeat(70_000);
        // TopicName itself refuses > 65535, so build a filter list instead.
        assert!(TopicName::try_from(topic.as_str()).is_err());
        let mut c = Connect::new(topic.as_str().into(), 0);
        c.clean_session = true;
        assert!(encode_to_vec(&Packet::Connect(c)).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut d = Decoder::new(256);
            let mut out = Vec::new();
            let _ = d.feed(&data, &mut out);
            let _ = decode_one(&data, 1 << 20);
        }

        #[test]
        fn mutated_valid_packets_never_panic(
            which in 0usize..6,
            flips in proptest::collection::vec((0usize..64, proptest::prelude::any::<u8>()), 1..4),
        ) {
            let mut c = Connect::new("cid".into(), 10);
            c.username = Some("u".into());
            c.password = Some(Bytes::from_static(b"pw"));
            c.last_will = Some(LastWill::new(QoS::Level1, TopicName::try_from("w").unwrap(), Bytes::from_static(b"x")));
            let packets = [
                Packet::Connect(c),
                Packet::Publish(Publish::new(QosPid::Level2(pid(3)), TopicName::try_from("a/b").unwrap(), Bytes::from_static(b"hello"))),
                Packet::Subscribe(Subscribe::new(pid(4), vec![(TopicFilter::try_from("a/+").unwrap(), QoS::Level1)])),
                Packet::Unsubscribe(Unsubscribe::new(pid(4), vec![TopicFilter::try_from("a/+").unwrap()])),
                Packet::Suback(Suback::new(pid(4), vec![SubscribeReturnCode::MaxLevel1])),
                Packet::Pubrel(pid(9)),
            ];
            let mut bytes = encode_to_vec(&packets[which]).unwrap();
            for (i, v) in flips {
                let n = bytes.len();
                bytes[i % n] = v;
            }
            let mut d = Decoder::new(1 << 16);
            let mut out = Vec::new();
            let _ = d.feed(&bytes, &mut out);
            // Whatever decodes must re-encode without panicking.
            for p in &out {
                let _ = encode_to_vec(p);
            }
        }
    }
}
