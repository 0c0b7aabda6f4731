//! PUBLISH, the one packet this crate encodes and decodes itself in both versions.
//!
//! Why not `mqtt-proto`'s v5 `Publish`: it keeps one Subscription Identifier, but a server
//! sends every identifier of the subscriptions a message matched (MQTT 5.0 §3.3.4), and a client
//! must read them all; and its properties are owned per packet, so a fan-out to N subscribers
//! would copy the user properties N times. Here the properties that travel end to end
//! ([`MessageProps`]) sit behind one `Arc` shared by every delivery, and the per-hop ones (Topic
//! Alias, Subscription Identifiers, the remaining Message Expiry Interval) beside it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::{put_var_int, var_int_len, CodecError, Pid, QosPid, TopicName, UserProperty};

/// A PUBLISH packet of either version. A 3.1.1 PUBLISH has no properties (`props` is `None`),
/// and a 3.1.1 encoding leaves them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub retain: bool,
    pub qos_pid: QosPid,
    /// Empty only in an MQTT 5 PUBLISH that names its topic by a Topic Alias (§3.3.2.3.4).
    pub topic_name: TopicName,
    pub payload: Bytes,
    /// MQTT 5 properties; `None`: none (always for 3.1.1). Boxed: most packets have none.
    pub props: Option<Box<PublishProps>>,
}

/// The properties of an MQTT 5 PUBLISH (§3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProps {
    /// Topic Alias (§3.3.2.3.4): per connection and direction, never forwarded.
    pub topic_alias: Option<u16>,
    /// Message Expiry Interval in seconds (§3.3.2.3.3). Forwarded as what is left of it.
    pub message_expiry: Option<u32>,
    /// Subscription Identifiers (§3.3.2.3.8): server to client only, one per matching
    /// subscription that has one.
    pub subscription_ids: Vec<u32>,
    /// The properties forwarded unaltered to every subscriber (§3.3.2.3).
    pub message: Option<Arc<MessageProps>>,
}

/// The properties of an application message that the server forwards unaltered (MQTT 5.0
/// §3.3.2.3.2, .5, .6, .7, .9): shared by all deliveries of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MessageProps {
    /// Payload Format Indicator: `Some(true)` for UTF-8 (§3.3.2.3.2).
    pub payload_utf8: Option<bool>,
    pub content_type: Option<Arc<str>>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

impl MessageProps {
    /// `None` when there is nothing to forward.
    pub fn shared(self) -> Option<Arc<MessageProps>> {
        (self != MessageProps::default()).then(|| Arc::new(self))
    }

    /// Bytes these take as PUBLISH properties.
    fn encoded_len(&self) -> usize {
        let mut n = 0;
        if self.payload_utf8.is_some() {
            n += 2;
        }
        if let Some(c) = &self.content_type {
            n += 3 + c.len();
        }
        if let Some(t) = &self.response_topic {
            n += 3 + t.len();
        }
        if let Some(d) = &self.correlation_data {
            n += 3 + d.len();
        }
        n + self.user_properties.iter().map(|u| 5 + u.name.len() + u.value.len()).sum::<usize>()
    }

    /// What memory and wire bytes these cost (for the bounds that count message sizes).
    pub fn cost(&self) -> usize {
        self.encoded_len()
    }

    /// These as an MQTT 5 PUBLISH property list without its length prefix (§3.3.2.3): what a
    /// store keeps of them.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let p = Publish {
            dup: false,
            retain: false,
            qos_pid: QosPid::Level0,
            topic_name: TopicName::try_from("").map_err(|_| CodecError::Malformed("empty topic".into()))?,
            payload: Bytes::new(),
            props: Some(Box::new(PublishProps { message: Some(Arc::new(self.clone())), ..Default::default() })),
        };
        let mut v = Vec::with_capacity(self.encoded_len() + 8);
        p.encode(true, &mut v)?;
        // The frame: type byte, Remaining Length, empty topic (2), property length, properties.
        let mut r = Reader { buf: &v, off: 1 };
        r.var_int("Remaining Length")?;
        r.off += 2;
        r.var_int("property length")?;
        Ok(v[r.off..].to_vec())
    }

    /// The inverse of [`MessageProps::to_bytes`], with the same checks as a PUBLISH's.
    pub fn from_bytes(b: &[u8]) -> Result<MessageProps, CodecError> {
        let mut framed = Vec::with_capacity(b.len() + 4);
        put_var_int(&mut framed, b.len());
        framed.extend_from_slice(b);
        let mut r = Reader { buf: &framed, off: 0 };
        let props = decode_props(&mut r)?;
        Ok(props.and_then(|p| p.message).map(|m| (*m).clone()).unwrap_or_default())
    }
}

static NO_PROPS: OnceLock<PublishProps> = OnceLock::new();

impl Publish {
    pub fn new(qos_pid: QosPid, topic_name: TopicName, payload: Bytes) -> Publish {
        Publish { dup: false, retain: false, qos_pid, topic_name, payload, props: None }
    }

    /// The properties (all absent when there are none).
    pub fn props(&self) -> &PublishProps {
        match &self.props {
            Some(p) => p,
            None => NO_PROPS.get_or_init(PublishProps::default),
        }
    }

    /// The properties, for changing (created empty when there are none).
    pub fn props_mut(&mut self) -> &mut PublishProps {
        self.props.get_or_insert_with(Default::default)
    }

    fn first_byte(&self) -> u8 {
        let mut first = match self.qos_pid {
            QosPid::Level0 => 0x30,
            QosPid::Level1(_) => 0x32,
            QosPid::Level2(_) => 0x34,
        };
        if self.dup {
            first |= 0x08;
        }
        if self.retain {
            first |= 0x01;
        }
        first
    }

    /// Bytes of the MQTT 5 property list, without its length prefix.
    fn props_len(&self) -> usize {
        let Some(p) = &self.props else { return 0 };
        let mut n = p.message.as_deref().map_or(0, MessageProps::encoded_len);
        if p.topic_alias.is_some() {
            n += 3;
        }
        if p.message_expiry.is_some() {
            n += 5;
        }
        n + p.subscription_ids.iter().map(|&id| 1 + var_int_len(id as usize)).sum::<usize>()
    }

    /// Remaining Length of the encoding (`v5`: with the property list).
    pub(super) fn body_len(&self, v5: bool) -> usize {
        let mut n = 2 + self.topic_name.len() + self.qos_pid.pid().map_or(0, |_| 2) + self.payload.len();
        if v5 {
            let props = self.props_len();
            n += var_int_len(props) + props;
        }
        n
    }

    /// Append the encoding (`v5`: MQTT 5, with properties; else 3.1.1, without).
    pub(super) fn encode(&self, v5: bool, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let long = |n: usize| n > u16::MAX as usize;
        if long(self.topic_name.len()) {
            return Err(CodecError::Malformed("a topic name longer than 65,535 bytes".into()));
        }
        let len = self.body_len(v5);
        if len > super::MAX_REMAINING_LENGTH {
            return Err(CodecError::TooLarge { size: len, max: super::MAX_REMAINING_LENGTH });
        }
        out.reserve(len + 5);
        out.push(self.first_byte());
        put_var_int(out, len);
        put_str(out, &self.topic_name);
        if let Some(pid) = self.qos_pid.pid() {
            out.extend_from_slice(&pid.value().to_be_bytes());
        }
        if v5 {
            put_var_int(out, self.props_len());
            if let Some(p) = &self.props {
                // Identifier order is free (§2.2.2.2); this is the numeric one.
                if let Some(m) = &p.message {
                    if let Some(u) = m.payload_utf8 {
                        out.extend_from_slice(&[0x01, u8::from(u)]);
                    }
                }
                if let Some(e) = p.message_expiry {
                    out.push(0x02);
                    out.extend_from_slice(&e.to_be_bytes());
                }
                if let Some(m) = &p.message {
                    let fits = m.content_type.as_deref().is_none_or(|c| !long(c.len()))
                        && m.response_topic.as_deref().is_none_or(|t| !long(t.len()))
                        && m.correlation_data.as_deref().is_none_or(|d| !long(d.len()))
                        && m.user_properties.iter().all(|u| !long(u.name.len()) && !long(u.value.len()));
                    if !fits {
                        return Err(CodecError::Malformed("a PUBLISH property longer than 65,535 bytes".into()));
                    }
                    if let Some(c) = &m.content_type {
                        out.push(0x03);
                        put_str(out, c);
                    }
                    if let Some(t) = &m.response_topic {
                        out.push(0x08);
                        put_str(out, t);
                    }
                    if let Some(d) = &m.correlation_data {
                        out.push(0x09);
                        put_bin(out, d);
                    }
                }
                for &id in &p.subscription_ids {
                    out.push(0x0b);
                    put_var_int(out, id as usize);
                }
                if let Some(a) = p.topic_alias {
                    out.push(0x23);
                    out.extend_from_slice(&a.to_be_bytes());
                }
                if let Some(m) = &p.message {
                    for u in &m.user_properties {
                        out.push(0x26);
                        put_str(out, &u.name);
                        put_str(out, &u.value);
                    }
                }
            }
        }
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    /// Decode the body of a PUBLISH whose fixed header said `first` (type and flags checked by
    /// the caller). `v5`: with a property list (MQTT 5.0 §3.3.2.3).
    pub(super) fn decode(first: u8, body: &[u8], v5: bool) -> Result<Publish, CodecError> {
        let mut r = Reader { buf: body, off: 0 };
        let topic = r.str("PUBLISH topic name")?;
        let topic_name = TopicName::try_from(topic).map_err(|_| {
            CodecError::Malformed(format!("PUBLISH topic name {topic:?} contains a wildcard or U+0000 (§3.3.2-2)"))
        })?;
        let qos_pid = match (first >> 1) & 3 {
            0 => QosPid::Level0,
            q => {
                let id = Pid::try_from(r.u16("PUBLISH packet identifier")?)
                    .map_err(|_| CodecError::Malformed("PUBLISH with packet identifier 0 (§2.3.1-1)".into()))?;
                if q == 1 {
                    QosPid::Level1(id)
                } else {
                    QosPid::Level2(id)
                }
            }
        };
        let dup = first & 0x08 != 0;
        // §3.3.1-2 (both versions): DUP is 0 for QoS 0 messages.
        if dup && qos_pid == QosPid::Level0 {
            return Err(CodecError::Malformed("PUBLISH QoS 0 with DUP set (§3.3.1-2)".into()));
        }
        let props = if v5 { decode_props(&mut r)? } else { None };
        let payload = Bytes::copy_from_slice(&body[r.off..]);
        let p = Publish { dup, retain: first & 1 != 0, qos_pid, topic_name, payload, props };
        if p.topic_name.is_empty() && p.props().topic_alias.is_none() {
            // 3.1.1 §4.7.3-1; MQTT 5 §3.3.2-1 allows it only with a Topic Alias.
            return Err(if v5 {
                CodecError::Protocol("PUBLISH with an empty topic name and no Topic Alias (§3.3.2-1)".into())
            } else {
                CodecError::Malformed("PUBLISH with an empty topic name (§4.7.3-1)".into())
            });
        }
        if p.props().message.as_ref().is_some_and(|m| m.payload_utf8 == Some(true))
            && std::str::from_utf8(&p.payload).is_err()
        {
            // §3.3.2.3.2: the receiver may check; this one does.
            return Err(CodecError::Refused {
                code: 0x99,
                what: "PUBLISH payload is not UTF-8 but its Payload Format Indicator says it is (§3.3.2.3.2)".into(),
            });
        }
        Ok(p)
    }
}

/// Read the property list of an MQTT 5 PUBLISH (§3.3.2.3): which identifiers may appear, each
/// once but User Property and Subscription Identifier (§2.2.2.2).
fn decode_props(r: &mut Reader<'_>) -> Result<Option<Box<PublishProps>>, CodecError> {
    let len = r.var_int("PUBLISH property length")? as usize;
    let end = r.off.checked_add(len).filter(|&e| e <= r.buf.len()).ok_or_else(|| {
        CodecError::Malformed(format!("PUBLISH property length {len} overruns the packet (§2.2.2.1)"))
    })?;
    if len == 0 {
        return Ok(None);
    }
    let mut p = PublishProps::default();
    let mut m = MessageProps::default();
    let once = |seen: bool, name: &str| {
        if seen {
            Err(CodecError::Protocol(format!("PUBLISH with {name} more than once (§3.3.2.3)")))
        } else {
            Ok(())
        }
    };
    while r.off < end {
        let id = r.u8("PUBLISH property identifier")?;
        match id {
            0x01 => {
                once(m.payload_utf8.is_some(), "Payload Format Indicator")?;
                m.payload_utf8 = Some(match r.u8("Payload Format Indicator")? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(CodecError::Protocol(format!(
                            "PUBLISH Payload Format Indicator {v} (0 or 1, §3.3.2.3.2)"
                        )))
                    }
                });
            }
            0x02 => {
                once(p.message_expiry.is_some(), "Message Expiry Interval")?;
                p.message_expiry = Some(r.u32("Message Expiry Interval")?);
            }
            0x03 => {
                once(m.content_type.is_some(), "Content Type")?;
                m.content_type = Some(r.str("Content Type")?.into());
            }
            0x08 => {
                once(m.response_topic.is_some(), "Response Topic")?;
                let t = r.str("Response Topic")?;
                // §3.3.2-13, §3.3.2-14: a topic name, so no wildcards (and not empty, §4.7.3-1).
                m.response_topic = Some(TopicName::try_from(t).ok().filter(|t| !t.is_empty()).ok_or_else(|| {
                    CodecError::Protocol(format!("PUBLISH Response Topic {t:?} is not a topic name (§3.3.2-14)"))
                })?);
            }
            0x09 => {
                once(m.correlation_data.is_some(), "Correlation Data")?;
                m.correlation_data = Some(Bytes::copy_from_slice(r.bin("Correlation Data")?));
            }
            0x0b => {
                let v = r.var_int("Subscription Identifier")?;
                if v == 0 {
                    return Err(CodecError::Protocol("PUBLISH Subscription Identifier 0 (§3.3.2.3.8)".into()));
                }
                p.subscription_ids.push(v);
            }
            0x23 => {
                once(p.topic_alias.is_some(), "Topic Alias")?;
                let a = r.u16("Topic Alias")?;
                if a == 0 {
                    return Err(CodecError::Refused {
                        code: 0x94,
                        what: "PUBLISH with Topic Alias 0 (§3.3.2-8)".into(),
                    });
                }
                p.topic_alias = Some(a);
            }
            0x26 => {
                let name = r.str("User Property name")?.into();
                let value = r.str("User Property value")?.into();
                m.user_properties.push(UserProperty { name, value });
            }
            other => {
                return Err(CodecError::Malformed(format!(
                    "property identifier {other:#04x} is not valid in PUBLISH (§2.2.2.2)"
                )))
            }
        }
    }
    if r.off != end {
        return Err(CodecError::Malformed(format!("PUBLISH property length {len} ends inside a property")));
    }
    p.message = m.shared();
    Ok(Some(Box::new(p)))
}

/// A cursor over a packet body: every read checks the bounds and names what it read.
pub(super) struct Reader<'a> {
    pub buf: &'a [u8],
    pub off: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        let b = self.off.checked_add(n).and_then(|end| self.buf.get(self.off..end)).ok_or_else(|| {
            CodecError::Malformed(format!("{what} runs past the end of the packet (truncated field)"))
        })?;
        self.off += n;
        Ok(b)
    }

    fn u8(&mut self, what: &str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, CodecError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bin(&mut self, what: &str) -> Result<&'a [u8], CodecError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }

    /// A UTF-8 string (§1.5.4): well-formed and without U+0000, or the packet is malformed.
    fn str(&mut self, what: &str) -> Result<&'a str, CodecError> {
        let b = self.bin(what)?;
        let s = std::str::from_utf8(b)
            .map_err(|_| CodecError::Malformed(format!("{what} is not well-formed UTF-8 (§1.5.4)")))?;
        if s.contains('\0') {
            return Err(CodecError::Malformed(format!("{what} contains U+0000 (§1.5.4)")));
        }
        Ok(s)
    }

    /// A Variable Byte Integer (§1.5.5): at most four bytes.
    fn var_int(&mut self, what: &str) -> Result<u32, CodecError> {
        let mut v: u32 = 0;
        for i in 0..4 {
            let b = self.u8(what)?;
            v |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Malformed(format!("{what}: Variable Byte Integer longer than 4 bytes (§1.5.5)")))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bin(out, s.as_bytes());
}

/// A length-prefixed field; the caller has checked it fits 16 bits.
fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}
