//! MQTT 3.1 and 3.1.1 on the wire: `mqtt-proto`'s v3 decoders with the rules it leaves out,
//! each packet lifted into the shared MQTT 5 shape; and the encoding back, which leaves the
//! MQTT 5 parts out.

use mqtt_proto::v3;

use super::publish::Publish;
use super::{
    check_strings, put_body, put_pid, put_var_int, Connect, ConnectReasonCode, FrameHead, LastWill, Packet, PacketType,
    Pid, QoS, RetainHandling, Suback, SubscribeReasonCode, SubscriptionOptions, Unsuback, Unsubscribe,
    MAX_REMAINING_LENGTH,
};
use super::{CodecError, Subscribe};

fn kind_of(t: v3::PacketType) -> PacketType {
    match t {
        v3::PacketType::Connect => PacketType::Connect,
        v3::PacketType::Connack => PacketType::Connack,
        v3::PacketType::Publish => PacketType::Publish,
        v3::PacketType::Puback => PacketType::Puback,
        v3::PacketType::Pubrec => PacketType::Pubrec,
        v3::PacketType::Pubrel => PacketType::Pubrel,
        v3::PacketType::Pubcomp => PacketType::Pubcomp,
        v3::PacketType::Subscribe => PacketType::Subscribe,
        v3::PacketType::Suback => PacketType::Suback,
        v3::PacketType::Unsubscribe => PacketType::Unsubscribe,
        v3::PacketType::Unsuback => PacketType::Unsuback,
        v3::PacketType::Pingreq => PacketType::Pingreq,
        v3::PacketType::Pingresp => PacketType::Pingresp,
        v3::PacketType::Disconnect => PacketType::Disconnect,
    }
}

/// Subscription options of a 3.1.1 SUBSCRIBE: the QoS, and 3.1.1's behaviour for the rest
/// (no "no local", RETAIN cleared when forwarding, retained messages sent at every subscribe).
pub fn options(max_qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        max_qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

/// Decode the body of one 3.1.1 (or 3.1) frame.
pub(super) fn decode(body: &[u8], head: FrameHead) -> Result<Packet, CodecError> {
    // MQTT 3.1.1 §2.2.2: reserved types and flags. mqtt-proto checks them; we name the byte.
    let header = v3::Header::new_with(head.first_byte, head.remaining_len as u32, head.total_len() as u32).map_err(
        |e| match e {
            mqtt_proto::Error::InvalidQos(_) => CodecError::BadQos,
            _ => CodecError::BadHeader(head.first_byte),
        },
    )?;
    let kind = kind_of(header.typ);
    let mut off = 0usize;
    let pe = |e| CodecError::from_proto(kind, e);
    let pid = |body: &[u8], off: &mut usize| -> Result<Pid, CodecError> {
        let b = body.get(*off..*off + 2).ok_or_else(|| {
            CodecError::Malformed(format!(
                "{} without a packet identifier (Remaining Length {})",
                super::type_name(kind),
                body.len()
            ))
        })?;
        *off += 2;
        // MQTT 3.1.1 §2.3.1-1: non-zero packet identifiers.
        Pid::try_from(u16::from_be_bytes([b[0], b[1]])).map_err(pe)
    };
    let packet = match header.typ {
        v3::PacketType::Connect => {
            let c = v3::Connect::decode(body, &mut off).map_err(pe)?;
            // MQTT 3.1.1 §3.1.2-15: Will Retain is 0 when the Will Flag is 0 (mqtt-proto only
            // checks the Will QoS bits). The flags follow the protocol name and level.
            super::check_will_retain_flag(body)?;
            check_connect(&c)?;
            Packet::connect(lift_connect(c))
        }
        v3::PacketType::Connack => {
            let c = v3::Connack::decode(body, &mut off).map_err(pe)?;
            Packet::connack(c.session_present, lift_return_code(c.code))
        }
        v3::PacketType::Publish => {
            // The topic, packet id and payload; QoS 3 was refused with the header.
            off = body.len();
            Packet::Publish(Publish::decode(head.first_byte, body, false)?)
        }
        v3::PacketType::Puback => Packet::puback(pid(body, &mut off)?),
        v3::PacketType::Pubrec => Packet::pubrec(pid(body, &mut off)?),
        v3::PacketType::Pubrel => Packet::pubrel(pid(body, &mut off)?),
        v3::PacketType::Pubcomp => Packet::pubcomp(pid(body, &mut off)?),
        v3::PacketType::Subscribe => {
            let s = v3::Subscribe::decode(body, &mut off, header).map_err(pe)?;
            Packet::Subscribe(Subscribe::new(s.pid, s.topics.into_iter().map(|(f, q)| (f, options(q))).collect()))
        }
        v3::PacketType::Suback => {
            let s = v3::Suback::decode(body, &mut off, header).map_err(pe)?;
            let codes = s
                .topics
                .into_iter()
                .map(|c| match c {
                    v3::SubscribeReturnCode::MaxLevel0 => SubscribeReasonCode::GrantedQoS0,
                    v3::SubscribeReturnCode::MaxLevel1 => SubscribeReasonCode::GrantedQoS1,
                    v3::SubscribeReturnCode::MaxLevel2 => SubscribeReasonCode::GrantedQoS2,
                    v3::SubscribeReturnCode::Failure => SubscribeReasonCode::UnspecifiedError,
                })
                .collect();
            Packet::Suback(Suback::new(s.pid, codes))
        }
        v3::PacketType::Unsubscribe => {
            let u = v3::Unsubscribe::decode(body, &mut off, header).map_err(pe)?;
            Packet::Unsubscribe(Unsubscribe::new(u.pid, u.topics))
        }
        // 3.1.1 UNSUBACK has no reason codes: an empty list.
        v3::PacketType::Unsuback => Packet::Unsuback(Unsuback::new(pid(body, &mut off)?, Vec::new())),
        v3::PacketType::Pingreq => Packet::Pingreq,
        v3::PacketType::Pingresp => Packet::Pingresp,
        v3::PacketType::Disconnect => Packet::disconnect(super::DisconnectReasonCode::NormalDisconnect),
    };
    if off != body.len() {
        return Err(CodecError::LengthMismatch { kind, declared: body.len(), used: off });
    }
    Ok(packet)
}

/// MQTT 3.1.1 rules on CONNECT that `mqtt-proto` does not check.
fn check_connect(c: &v3::Connect) -> Result<(), CodecError> {
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

fn lift_connect(c: v3::Connect) -> Connect {
    Connect {
        protocol: c.protocol,
        clean_start: c.clean_session,
        keep_alive: c.keep_alive,
        properties: Default::default(),
        client_id: c.client_id,
        last_will: c.last_will.map(|w| LastWill {
            qos: w.qos,
            retain: w.retain,
            topic_name: w.topic_name,
            payload: w.message,
            properties: Default::default(),
        }),
        username: c.username,
        password: c.password,
    }
}

fn lift_return_code(c: v3::ConnectReturnCode) -> ConnectReasonCode {
    use v3::ConnectReturnCode as R;
    match c {
        R::Accepted => ConnectReasonCode::Success,
        R::UnacceptableProtocolVersion => ConnectReasonCode::UnsupportedProtocolVersion,
        R::IdentifierRejected => ConnectReasonCode::ClientIdentifierNotValid,
        R::ServerUnavailable => ConnectReasonCode::ServerUnavailable,
        R::BadUserNameOrPassword => ConnectReasonCode::BadUserNameOrPassword,
        R::NotAuthorized => ConnectReasonCode::NotAuthorized,
    }
}

/// The 3.1.1 CONNACK return code (§3.2.2.3) for an MQTT 5 reason code: the six that exist
/// map to themselves; the other refusals become 0x03 (server unavailable), or 0x05 (not
/// authorized) for the authorization ones.
pub fn return_code(c: ConnectReasonCode) -> u8 {
    use ConnectReasonCode as C;
    match c {
        C::Success => 0x00,
        C::UnsupportedProtocolVersion => 0x01,
        C::ClientIdentifierNotValid => 0x02,
        C::BadUserNameOrPassword => 0x04,
        C::NotAuthorized | C::Banned | C::BadAuthMethod => 0x05,
        _ => 0x03,
    }
}

/// Append the 3.1.1 encoding of `p` (not PUBLISH, PINGREQ, PINGRESP: [`super::encode`] writes
/// those for both versions).
pub(super) fn encode(p: &Packet, out: &mut Vec<u8>) -> Result<(), CodecError> {
    check_strings(p)?;
    let pid_list = |out: &mut Vec<u8>, first: u8, pid: Pid, items: &mut dyn Iterator<Item = (&str, Option<u8>)>| {
        let mut body = Vec::new();
        body.extend_from_slice(&pid.value().to_be_bytes());
        for (s, opt) in items {
            body.extend_from_slice(&(s.len() as u16).to_be_bytes());
            body.extend_from_slice(s.as_bytes());
            body.extend(opt);
        }
        if body.len() > MAX_REMAINING_LENGTH {
            return Err(CodecError::TooLarge { size: body.len(), max: MAX_REMAINING_LENGTH });
        }
        out.push(first);
        put_var_int(out, body.len());
        out.extend_from_slice(&body);
        Ok(())
    };
    match p {
        Packet::Connect(c) => {
            let mut v = v3::Connect::new(c.client_id.clone(), c.keep_alive);
            v.protocol = c.protocol;
            v.clean_session = c.clean_start;
            v.username = c.username.clone();
            v.password = c.password.clone();
            v.last_will = c.last_will.as_ref().map(|w| v3::LastWill {
                qos: w.qos,
                retain: w.retain,
                topic_name: w.topic_name.clone(),
                message: w.payload.clone(),
            });
            put_body(out, 0x10, &v)?
        }
        Packet::Connack(c) => out.extend_from_slice(&[0x20, 2, c.session_present as u8, return_code(c.reason_code)]),
        Packet::Puback(a) => put_pid(out, 0x40, a.pid),
        Packet::Pubrec(a) => put_pid(out, 0x50, a.pid),
        // MQTT 3.1.1 §3.6.1-1: PUBREL's flags are 0010.
        Packet::Pubrel(a) => put_pid(out, 0x62, a.pid),
        Packet::Pubcomp(a) => put_pid(out, 0x70, a.pid),
        // MQTT 3.1.1 §3.8.1-1: SUBSCRIBE's flags are 0010; the options byte is the QoS alone.
        Packet::Subscribe(s) => {
            pid_list(out, 0x82, s.pid, &mut s.topics.iter().map(|(f, o)| (&**f, Some(o.max_qos as u8))))?
        }
        // §3.9.3: 0x00-0x02 granted, 0x80 failure (every MQTT 5 refusal is a failure here).
        Packet::Suback(s) => {
            let len = 2 + s.topics.len();
            if len > MAX_REMAINING_LENGTH {
                return Err(CodecError::TooLarge { size: len, max: MAX_REMAINING_LENGTH });
            }
            out.push(0x90);
            put_var_int(out, len);
            out.extend_from_slice(&s.pid.value().to_be_bytes());
            out.extend(s.topics.iter().map(|&c| if (c as u8) < 0x80 { c as u8 } else { 0x80 }));
        }
        // MQTT 3.1.1 §3.10.1-1: UNSUBSCRIBE's flags are 0010.
        Packet::Unsubscribe(u) => pid_list(out, 0xa2, u.pid, &mut u.topics.iter().map(|f| (&**f, None)))?,
        Packet::Unsuback(u) => put_pid(out, 0xb0, u.pid),
        Packet::Disconnect(_) => out.extend_from_slice(&[0xe0, 0]),
        Packet::Auth(_) => return Err(CodecError::Protocol("AUTH has no MQTT 3.1.1 form".into())),
        Packet::Publish(_) | Packet::Pingreq | Packet::Pingresp => return super::encode(p, super::Version::V3, out),
    }
    Ok(())
}
