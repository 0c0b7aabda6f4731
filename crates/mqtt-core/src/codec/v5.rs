//! MQTT 5.0 on the wire: `mqtt-proto`'s v5 decoders and encoders (PUBLISH is `publish.rs`'s),
//! with the rules it leaves out, and the reason code of every rejection (§2.4, §4.13).
//!
//! `mqtt-proto` already refuses, per packet: properties that packet cannot carry, duplicated
//! properties, byte properties other than 0 and 1, reason codes the packet cannot carry, a
//! non-UTF-8 will payload whose Payload Format Indicator says UTF-8, subscription options with
//! reserved bits. Added here: the Will Retain flag without a will, U+0000 in the client
//! identifier and user name, an empty will topic, Receive Maximum 0, Maximum Packet Size 0,
//! Authentication Data without an Authentication Method, Subscription Identifier 0, No Local
//! on a shared subscription, and every byte of the frame used.

use mqtt_proto::v5::{ErrorV5, Header};

use super::publish::Publish;
use super::{
    check_strings, check_will_retain_flag, put_body, Auth, CodecError, Connack, Connect, Disconnect, FrameHead, Packet,
    PacketType, Puback, Pubcomp, Pubrec, Pubrel, Suback, Subscribe, Unsuback, Unsubscribe,
};

/// Decode the body of one MQTT 5 frame.
pub(super) fn decode(body: &[u8], head: FrameHead) -> Result<Packet, CodecError> {
    let header =
        Header::new_with(head.first_byte, head.remaining_len as u32, head.total_len() as u32).map_err(|e| match e {
            ErrorV5::Common(mqtt_proto::Error::InvalidQos(_)) => CodecError::BadQos,
            _ => CodecError::BadHeader(head.first_byte),
        })?;
    let kind = header.typ;
    let mut off = 0usize;
    let pe = |e: ErrorV5| from_v5(kind, e);
    let packet = match kind {
        PacketType::Connect => {
            let c = Connect::decode(body, &mut off, header).map_err(pe)?;
            check_will_retain_flag(body)?;
            check_connect(&c)?;
            Packet::connect(c)
        }
        PacketType::Connack => Packet::Connack(Box::new(Connack::decode(body, &mut off, header).map_err(pe)?)),
        PacketType::Publish => {
            off = body.len();
            Packet::Publish(Publish::decode(head.first_byte, body, true)?)
        }
        PacketType::Puback => Packet::Puback(Puback::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Pubrec => Packet::Pubrec(Pubrec::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Pubrel => Packet::Pubrel(Pubrel::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Pubcomp => Packet::Pubcomp(Pubcomp::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Subscribe => {
            let s = Subscribe::decode(body, &mut off, header).map_err(pe)?;
            check_subscribe(&s)?;
            Packet::Subscribe(s)
        }
        PacketType::Suback => Packet::Suback(Suback::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Unsuback => Packet::Unsuback(Unsuback::decode(body, &mut off, header).map_err(pe)?),
        PacketType::Pingreq => Packet::Pingreq,
        PacketType::Pingresp => Packet::Pingresp,
        PacketType::Disconnect => Packet::Disconnect(Box::new(Disconnect::decode(body, &mut off, header).map_err(pe)?)),
        PacketType::Auth => Packet::Auth(Box::new(Auth::decode(body, &mut off, header).map_err(pe)?)),
    };
    if off != body.len() {
        return Err(CodecError::LengthMismatch { kind, declared: body.len(), used: off });
    }
    Ok(packet)
}

fn from_v5(kind: PacketType, e: ErrorV5) -> CodecError {
    let name = super::type_name(kind);
    match e {
        ErrorV5::Common(e) => CodecError::from_proto(kind, e),
        ErrorV5::InvalidReasonCode(_, b) => {
            CodecError::Malformed(format!("{name} with reason code {b:#04x}, which it cannot carry (§2.4)"))
        }
        ErrorV5::InvalidSubscriptionOption(b) if b & 0xc0 != 0 => {
            CodecError::Malformed(format!("SUBSCRIBE options byte {b:#04x} has reserved bits set (§3.8.3-5)"))
        }
        ErrorV5::InvalidSubscriptionOption(b) => {
            CodecError::Protocol(format!("SUBSCRIBE options byte {b:#04x}: QoS 3 or Retain Handling 3 (§3.8.3.1)"))
        }
        ErrorV5::InvalidPayloadFormat => CodecError::Refused {
            code: 0x99,
            what: format!("{name} will payload is not UTF-8 but its Payload Format Indicator says it is (§3.1.3-4)"),
        },
        ErrorV5::InvalidResponseTopic => {
            CodecError::Protocol(format!("{name} Response Topic is not a topic name (§3.1.3-6, §3.3.2-14)"))
        }
        ErrorV5::InvalidPropertyId(id) => {
            CodecError::Malformed(format!("{name} with unknown property identifier {id:#04x} (§2.2.2.2)"))
        }
        ErrorV5::InvalidPropertyLength(n) => {
            CodecError::Malformed(format!("{name} property length {n} does not match its properties (§2.2.2.1)"))
        }
        ErrorV5::InvalidByteProperty(p, v) => CodecError::Protocol(format!("{name} {p} with value {v} (0 or 1)")),
        ErrorV5::DuplicatedProperty(p) => CodecError::Protocol(format!("{name} with {p} more than once (§2.2.2.2)")),
        ErrorV5::InvalidProperty(_, p) => CodecError::Malformed(format!("{p} is not a property of {name} (§2.2.2.2)")),
        ErrorV5::InvalidWillProperty(p) => CodecError::Malformed(format!("{p} is not a will property (§3.1.3.2)")),
    }
}

/// MQTT 5 rules on CONNECT that `mqtt-proto` does not check. (Unlike 3.1.1, a password without
/// a user name is allowed, §3.1.2.9.)
fn check_connect(c: &Connect) -> Result<(), CodecError> {
    if c.client_id.contains('\0') {
        return Err(CodecError::Malformed("CONNECT client identifier contains U+0000 (§1.5.4-2)".into()));
    }
    if c.username.as_deref().is_some_and(|u| u.contains('\0')) {
        return Err(CodecError::Malformed("CONNECT user name contains U+0000 (§1.5.4-2)".into()));
    }
    if c.last_will.as_ref().is_some_and(|w| w.topic_name.is_empty()) {
        return Err(CodecError::Malformed("CONNECT with an empty Will Topic (§4.7.3-1)".into()));
    }
    let p = &c.properties;
    if p.receive_max == Some(0) {
        return Err(CodecError::Protocol("CONNECT with Receive Maximum 0 (§3.1.2.11.3)".into()));
    }
    if p.max_packet_size == Some(0) {
        return Err(CodecError::Protocol("CONNECT with Maximum Packet Size 0 (§3.1.2.11.4)".into()));
    }
    if p.auth_data.is_some() && p.auth_method.is_none() {
        return Err(CodecError::Protocol(
            "CONNECT with Authentication Data but no Authentication Method (§3.1.2.11.10)".into(),
        ));
    }
    Ok(())
}

/// MQTT 5 rules on SUBSCRIBE that `mqtt-proto` does not check.
fn check_subscribe(s: &Subscribe) -> Result<(), CodecError> {
    if s.properties.subscription_id.is_some_and(|id| id.value() == 0) {
        return Err(CodecError::Protocol("SUBSCRIBE with Subscription Identifier 0 (§3.8.2.1.2)".into()));
    }
    if let Some((f, _)) = s.topics.iter().find(|(f, o)| o.no_local && f.is_shared()) {
        return Err(CodecError::Protocol(format!(
            "SUBSCRIBE with No Local on the shared subscription {:?} (§3.8.3-4)",
            &**f
        )));
    }
    Ok(())
}

/// Append the MQTT 5 encoding of `p`.
pub(super) fn encode(p: &Packet, out: &mut Vec<u8>) -> Result<(), CodecError> {
    check_strings(p)?;
    match p {
        Packet::Connect(c) => put_body(out, 0x10, &**c),
        Packet::Connack(c) => put_body(out, 0x20, &**c),
        Packet::Puback(a) => put_body(out, 0x40, a),
        Packet::Pubrec(a) => put_body(out, 0x50, a),
        // §3.6.1-1: PUBREL's flags are 0010; so are SUBSCRIBE's and UNSUBSCRIBE's.
        Packet::Pubrel(a) => put_body(out, 0x62, a),
        Packet::Pubcomp(a) => put_body(out, 0x70, a),
        Packet::Subscribe(s) => put_body(out, 0x82, s),
        Packet::Suback(s) => put_body(out, 0x90, s),
        Packet::Unsubscribe(u) => put_body(out, 0xa2, u),
        Packet::Unsuback(u) => put_body(out, 0xb0, u),
        Packet::Disconnect(d) => put_body(out, 0xe0, &**d),
        Packet::Auth(a) => put_body(out, 0xf0, &**a),
        Packet::Publish(_) | Packet::Pingreq | Packet::Pingresp => super::encode(p, super::Version::V5, out),
    }
}
