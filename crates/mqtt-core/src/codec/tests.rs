use super::*;
use bytes::Bytes;

const MAX: usize = 1 << 20;

fn pid(n: u16) -> Pid {
    Pid::try_from(n).unwrap()
}

fn v3_connect(id: &str, keep_alive: u16) -> Connect {
    let mut c = Connect::new(id.into(), keep_alive);
    c.protocol = Protocol::V311;
    c
}

fn roundtrip(p: Packet) {
    roundtrip_as(p, Version::V3)
}

fn roundtrip_as(p: Packet, version: Version) {
    let bytes = encode_to_vec(&p, version).unwrap();
    let (back, used) = decode_one(&bytes, MAX, Some(version)).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(back, p);
    // Byte by byte, the decoder waits and then yields exactly one packet.
    let mut d = Decoder::with_version(MAX, version);
    let mut out = Vec::new();
    for b in &bytes {
        d.feed(std::slice::from_ref(b), &mut out).unwrap();
    }
    assert_eq!(out, vec![p]);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn roundtrips() {
    let mut c = v3_connect("client-1", 30);
    c.clean_start = false;
    c.username = Some("u".into());
    c.password = Some(Bytes::from_static(b"p"));
    c.last_will = Some(LastWill {
        qos: QoS::Level1,
        retain: true,
        topic_name: TopicName::try_from("will/t").unwrap(),
        payload: Bytes::from_static(b"bye"),
        properties: Default::default(),
    });
    roundtrip(Packet::connect(c));
    roundtrip(Packet::connect(v3_connect("", 0)));
    roundtrip(Packet::connack(true, ConnectReasonCode::Success));
    roundtrip(Packet::connack(false, ConnectReasonCode::NotAuthorized));
    for qp in [QosPid::Level0, QosPid::Level1(pid(7)), QosPid::Level2(pid(65535))] {
        let mut p = Publish::new(qp, TopicName::try_from("a/b").unwrap(), Bytes::from(vec![1u8; 300]));
        p.retain = true;
        p.dup = qp != QosPid::Level0;
        roundtrip(Packet::Publish(p));
    }
    roundtrip(Packet::Publish(Publish::new(QosPid::Level0, TopicName::try_from("x").unwrap(), Bytes::new())));
    roundtrip(Packet::puback(pid(1)));
    roundtrip(Packet::pubrec(pid(2)));
    roundtrip(Packet::pubrel(pid(3)));
    roundtrip(Packet::pubcomp(pid(4)));
    roundtrip(Packet::Subscribe(Subscribe::new(
        pid(5),
        vec![
            (TopicFilter::try_from("a/+/c").unwrap(), v3_options(QoS::Level2)),
            (TopicFilter::try_from("#").unwrap(), v3_options(QoS::Level0)),
        ],
    )));
    roundtrip(Packet::Suback(Suback::new(
        pid(5),
        vec![SubscribeReasonCode::GrantedQoS2, SubscribeReasonCode::UnspecifiedError],
    )));
    roundtrip(Packet::Unsubscribe(Unsubscribe::new(pid(6), vec![TopicFilter::try_from("a/#").unwrap()])));
    roundtrip(Packet::Unsuback(Unsuback::new(pid(6), Vec::new())));
    roundtrip(Packet::Pingreq);
    roundtrip(Packet::Pingresp);
    roundtrip(Packet::disconnect(DisconnectReasonCode::NormalDisconnect));
}

#[test]
fn several_packets_in_one_read_and_split_across_reads() {
    let mut bytes = Vec::new();
    for p in [Packet::Pingreq, Packet::puback(pid(9)), Packet::disconnect(DisconnectReasonCode::NormalDisconnect)] {
        encode(&p, Version::V3, &mut bytes).unwrap();
    }
    let mut d = Decoder::new(MAX);
    let mut out = Vec::new();
    d.feed(&bytes[..3], &mut out).unwrap();
    assert_eq!(out, vec![Packet::Pingreq]);
    assert_eq!(d.buffered(), 1);
    d.feed(&bytes[3..], &mut out).unwrap();
    assert_eq!(
        out,
        vec![Packet::Pingreq, Packet::puback(pid(9)), Packet::disconnect(DisconnectReasonCode::NormalDisconnect)]
    );
    assert_eq!(d.buffered(), 0);
}

fn reject(bytes: &[u8]) -> CodecError {
    match decode_one(bytes, MAX, None) {
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
    // Protocol level 6: answered with CONNACK 0x01 by the broker (§3.1.2-2).
    let mut v5 = connect_bytes(0x02, &[0, 1, b'c']);
    v5[8] = 5;
    // Level 5 is MQTT 5, whose CONNECT has a property list this one lacks.
    assert!(matches!(reject(&v5), CodecError::Malformed(_)));
    v5[8] = 6;
    assert_eq!(reject(&v5), CodecError::UnsupportedProtocolLevel(6));
    // Wrong protocol name (§3.1.2-1).
    let mut bad = connect_bytes(0x02, &[0, 1, b'c']);
    bad[4] = b'X';
    assert!(matches!(reject(&bad), CodecError::BadProtocolName(_)));
    // Empty SUBSCRIBE / UNSUBSCRIBE (§3.8.3-3, §3.10.3-2), bad filter, options byte with reserved bits.
    assert!(matches!(reject(&[0x82, 2, 0, 1]), CodecError::Protocol(_)));
    assert!(matches!(reject(&[0xa2, 2, 0, 1]), CodecError::Protocol(_)));
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
    let p =
        Packet::Publish(Publish::new(QosPid::Level0, TopicName::try_from("t").unwrap(), Bytes::from(vec![0u8; 59])));
    let bytes = encode_to_vec(&p, Version::V3).unwrap();
    assert_eq!(bytes.len(), small);
    assert!(decode_one(&bytes, small, None).unwrap().is_some());
}

#[test]
fn wire_len_hint_is_exact() {
    // Found by the mqtt_codec fuzz target: SUBACK was counted one byte short.
    let codes = |n: usize| vec![SubscribeReasonCode::GrantedQoS1; n];
    let mut packets: Vec<Packet> =
        [0, 1, 5, 200].into_iter().map(|n| Packet::Suback(Suback::new(pid(3), codes(n)))).collect();
    packets.push(Packet::Publish(Publish::new(
        QosPid::Level1(pid(2)),
        TopicName::try_from("a/b").unwrap(),
        Bytes::from(vec![7u8; 200]),
    )));
    packets.push(Packet::Publish(Publish::new(QosPid::Level0, TopicName::try_from("t").unwrap(), Bytes::new())));
    packets.extend([Packet::puback(pid(1)), Packet::pubrec(pid(1)), Packet::pubrel(pid(1)), Packet::pubcomp(pid(1))]);
    packets.push(Packet::connack(false, ConnectReasonCode::Success));
    for p in packets {
        for v in [Version::V3, Version::V5] {
            assert_eq!(wire_len_hint(&p, v), encode_to_vec(&p, v).unwrap().len(), "{v} {p:?}");
        }
    }
}

#[test]
fn non_minimal_remaining_length_is_accepted() {
    // §2.2.3 does not forbid it in 3.1.1; the frame is still exactly delimited.
    let (p, n) = decode_one(&[0xc0, 0x80, 0x00], MAX, None).unwrap().unwrap();
    assert_eq!((p, n), (Packet::Pingreq, 3));
}

#[test]
fn encoder_refuses_overlong_strings() {
    let topic = "a".repeat(70_000);
    // TopicName itself refuses > 65535, so build a filter list instead.
    assert!(TopicName::try_from(topic.as_str()).is_err());
    let c = v3_connect(&topic, 0);
    assert!(encode_to_vec(&Packet::connect(c), Version::V3).is_err());
    assert!(encode_to_vec(&Packet::connect(Connect::new(topic.as_str().into(), 0)), Version::V5).is_err());
}

fn user(name: &str, value: &str) -> UserProperty {
    UserProperty { name: name.into(), value: value.into() }
}

/// A PUBLISH with every MQTT 5 property, two Subscription Identifiers among them.
fn rich_publish() -> Publish {
    let mut p = Publish::new(QosPid::Level1(pid(7)), TopicName::try_from("a/b").unwrap(), Bytes::from_static(b"hi"));
    p.props = Some(Box::new(PublishProps {
        topic_alias: Some(3),
        message_expiry: Some(60),
        subscription_ids: vec![1, 300_000],
        message: MessageProps {
            payload_utf8: Some(true),
            content_type: Some("text/plain".into()),
            response_topic: Some(TopicName::try_from("reply/here").unwrap()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![user("k", "v"), user("k", "w")],
        }
        .shared(),
    }));
    p
}

#[test]
fn v5_roundtrips() {
    let mut c = Connect::new("c5".into(), 30);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    c.properties.receive_max = Some(10);
    c.properties.max_packet_size = Some(4096);
    c.properties.topic_alias_max = Some(5);
    c.properties.user_properties = vec![user("a", "b")];
    c.password = Some(Bytes::from_static(b"no user name: fine in MQTT 5"));
    let mut w = LastWill::new(QoS::Level1, TopicName::try_from("will/t").unwrap(), Bytes::from_static(b"bye"));
    w.properties.delay_interval = Some(5);
    w.properties.message_expiry_interval = Some(9);
    c.last_will = Some(w);
    roundtrip_as(Packet::connect(c), Version::V5);
    let mut ack = Connack::new(true, ConnectReasonCode::Success);
    ack.properties.assigned_client_id = Some("quiclab-1".into());
    ack.properties.topic_alias_max = Some(10);
    roundtrip_as(Packet::Connack(Box::new(ack)), Version::V5);
    roundtrip_as(Packet::Publish(rich_publish()), Version::V5);
    let mut p = rich_publish();
    p.topic_name = TopicName::try_from("").unwrap(); // by alias only
    roundtrip_as(Packet::Publish(p), Version::V5);
    roundtrip_as(Packet::puback(pid(1)), Version::V5);
    roundtrip_as(Packet::Puback(Puback::new(pid(1), PubackReasonCode::NoMatchingSubscribers)), Version::V5);
    let mut rel = Pubrel::new_success(pid(2));
    rel.properties.reason_string = Some("why".into());
    roundtrip_as(Packet::Pubrel(rel), Version::V5);
    let mut s = Subscribe::new(
        pid(3),
        vec![(
            TopicFilter::try_from("$share/g/a/#").unwrap(),
            SubscriptionOptions {
                max_qos: QoS::Level2,
                no_local: false,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        )],
    );
    s.properties.subscription_id = Some(VarByteInt::try_from(42).unwrap());
    roundtrip_as(Packet::Subscribe(s), Version::V5);
    roundtrip_as(
        Packet::Suback(Suback::new(pid(3), vec![SubscribeReasonCode::GrantedQoS1, SubscribeReasonCode::NotAuthorized])),
        Version::V5,
    );
    roundtrip_as(
        Packet::Unsuback(Unsuback::new(pid(4), vec![UnsubscribeReasonCode::NoSubscriptionExisted])),
        Version::V5,
    );
    roundtrip_as(Packet::disconnect(DisconnectReasonCode::SessionTakenOver), Version::V5);
    roundtrip_as(Packet::Auth(Box::new(Auth::new(AuthReasonCode::ContinueAuthentication))), Version::V5);
}

#[test]
fn a_server_decoder_takes_the_version_of_the_connect() {
    let mut c = Connect::new("c".into(), 0);
    c.properties.session_expiry_interval = Some(1);
    let mut bytes = encode_to_vec(&Packet::connect(c), Version::V5).unwrap();
    // The same PUBACK bytes mean "success" in both versions; a v5 PUBACK with a reason code
    // has three bytes, which 3.1.1 refuses.
    bytes.extend_from_slice(&[0x40, 3, 0, 1, 0x10]);
    let mut d = Decoder::new(MAX);
    let mut out = Vec::new();
    d.feed(&bytes, &mut out).unwrap();
    assert_eq!(d.version(), Some(Version::V5));
    assert_eq!(out[1], Packet::Puback(Puback::new(pid(1), PubackReasonCode::NoMatchingSubscribers)));
    let mut d = Decoder::new(MAX);
    let mut v3 = encode_to_vec(&Packet::connect(v3_connect("c", 0)), Version::V3).unwrap();
    v3.extend_from_slice(&[0x40, 3, 0, 1, 0x10]);
    assert!(matches!(d.feed(&v3, &mut Vec::new()), Err(CodecError::LengthMismatch { .. })));
    assert_eq!(d.version(), Some(Version::V3));
}

#[test]
fn a_v3_peer_gets_no_v5_fields() {
    // PUBLISH: the properties are left out.
    let mut plain = rich_publish();
    plain.props = None;
    assert_eq!(
        encode_to_vec(&Packet::Publish(rich_publish()), Version::V3).unwrap(),
        encode_to_vec(&Packet::Publish(plain), Version::V3).unwrap()
    );
    // CONNACK: the 3.1.1 return code for an MQTT 5 reason code.
    let bytes = |p: Packet| encode_to_vec(&p, Version::V3).unwrap();
    assert_eq!(bytes(Packet::connack(false, ConnectReasonCode::QuotaExceeded)), [0x20, 2, 0, 3]);
    assert_eq!(bytes(Packet::connack(false, ConnectReasonCode::ClientIdentifierNotValid)), [0x20, 2, 0, 2]);
    // SUBACK: every refusal is 0x80; acks carry no reason code.
    let s = Suback::new(pid(1), vec![SubscribeReasonCode::NotAuthorized, SubscribeReasonCode::GrantedQoS2]);
    assert_eq!(bytes(Packet::Suback(s)), [0x90, 4, 0, 1, 0x80, 2]);
    assert_eq!(bytes(Packet::Puback(Puback::new(pid(1), PubackReasonCode::NotAuthorized))), [0x40, 2, 0, 1]);
    assert!(encode_to_vec(&Packet::Auth(Box::new(Auth::new_success())), Version::V3).is_err());
}

fn reject5(bytes: &[u8]) -> CodecError {
    match decode_one(bytes, MAX, Some(Version::V5)) {
        Err(e) => e,
        other => panic!("{bytes:02x?} decoded to {other:?}"),
    }
}

/// A v5 PUBLISH QoS 0 to "t" with `props` as its property list.
fn publish5(props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1, b't', props.len() as u8];
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    let mut v = vec![0x30, body.len() as u8];
    v.extend_from_slice(&body);
    v
}

#[test]
fn v5_rejections_carry_their_reason_codes() {
    let code = |bytes: &[u8]| reject5(bytes).reason_code();
    // Duplicated property: Protocol Error (§2.2.2.2).
    assert_eq!(code(&publish5(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1], b"")), 0x82);
    // A property PUBLISH cannot carry (Session Expiry Interval): Malformed Packet.
    assert_eq!(code(&publish5(&[0x11, 0, 0, 0, 1], b"")), 0x81);
    // Topic Alias 0: Topic Alias invalid.
    assert_eq!(code(&publish5(&[0x23, 0, 0], b"")), 0x94);
    // Payload Format Indicator 2: Protocol Error; 1 with a non-UTF-8 payload: 0x99.
    assert_eq!(code(&publish5(&[0x01, 2], b"")), 0x82);
    assert_eq!(code(&publish5(&[0x01, 1], &[0xff, 0xfe])), 0x99);
    // Subscription Identifier 0, property length past the end, empty topic without alias.
    assert_eq!(code(&publish5(&[0x0b, 0], b"")), 0x82);
    assert_eq!(code(&[0x30, 4, 0, 1, b't', 9]), 0x81);
    assert_eq!(code(&[0x30, 3, 0, 0, 0]), 0x82);
    // A response topic with a wildcard.
    assert_eq!(code(&publish5(&[0x08, 0, 1, b'#'], b"")), 0x82);
    // CONNECT: Receive Maximum 0 (§3.1.2.11.3).
    let mut c = Connect::new("c".into(), 0);
    c.properties.receive_max = Some(0);
    assert_eq!(code(&encode_to_vec(&Packet::connect(c), Version::V5).unwrap()), 0x82);
    // SUBSCRIBE: Retain Handling 3, reserved option bits, Subscription Identifier 0, No Local
    // on a shared subscription.
    assert_eq!(code(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30]), 0x82);
    assert_eq!(code(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40]), 0x81);
    assert_eq!(code(&[0x82, 9, 0, 1, 2, 0x0b, 0, 0, 1, b'a', 0]), 0x82);
    let shared = b"$share/g/a";
    let mut s = vec![0x82, (6 + shared.len()) as u8, 0, 1, 0, 0, shared.len() as u8];
    s.extend_from_slice(shared);
    s.push(0x04);
    assert_eq!(code(&s), 0x82);
    // A reason code PUBACK cannot carry (0x04).
    assert_eq!(code(&[0x40, 3, 0, 1, 0x04]), 0x81);
    // Too large: 0x95.
    assert_eq!(decode_one(&[0x30, 0xc5, 0x01], 64, Some(Version::V5)).unwrap_err().reason_code(), 0x95);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let mut d = Decoder::new(256);
        let mut out = Vec::new();
        let _ = d.feed(&data, &mut out);
        let _ = decode_one(&data, 1 << 20, None);
        let _ = decode_one(&data, 1 << 20, Some(Version::V5));
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        which in 0usize..6,
        flips in proptest::collection::vec((0usize..64, proptest::prelude::any::<u8>()), 1..4),
    ) {
        let mut c = v3_connect("cid", 10);
        c.username = Some("u".into());
        c.password = Some(Bytes::from_static(b"pw"));
        c.last_will = Some(LastWill::new(QoS::Level1, TopicName::try_from("w").unwrap(), Bytes::from_static(b"x")));
        let packets = [
            Packet::connect(c),
            Packet::Publish(Publish::new(QosPid::Level2(pid(3)), TopicName::try_from("a/b").unwrap(), Bytes::from_static(b"hello"))),
            Packet::Subscribe(Subscribe::new(pid(4), vec![(TopicFilter::try_from("a/+").unwrap(), v3_options(QoS::Level1))])),
            Packet::Unsubscribe(Unsubscribe::new(pid(4), vec![TopicFilter::try_from("a/+").unwrap()])),
            Packet::Suback(Suback::new(pid(4), vec![SubscribeReasonCode::GrantedQoS1])),
            Packet::pubrel(pid(9)),
        ];
        let mut bytes = encode_to_vec(&packets[which], Version::V3).unwrap();
        for (i, v) in flips {
            let n = bytes.len();
            bytes[i % n] = v;
        }
        let mut d = Decoder::new(1 << 16);
        let mut out = Vec::new();
        let _ = d.feed(&bytes, &mut out);
        // Whatever decodes must re-encode without panicking.
        for p in &out {
            let _ = encode_to_vec(p, Version::V3);
        }
    }
}
