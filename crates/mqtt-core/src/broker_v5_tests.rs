//! MQTT 5 flows of the core, with explicit time (a child of `broker_tests`, whose harness it
//! uses).

use super::*;
use crate::codec::{
    v3_options, DisconnectReasonCode, MessageProps, Puback, PubackReasonCode, RetainHandling, SubscriptionOptions,
    UnsubscribeReasonCode, UserProperty, VarByteInt,
};

fn connect5(id: &str, clean: bool, expiry: Option<u32>) -> Connect {
    let mut c = Connect::new(id.into(), 0);
    c.clean_start = clean;
    c.properties.session_expiry_interval = expiry;
    c
}

impl H {
    /// An MQTT 5 connection, accepted; returns (conn, its CONNACK).
    fn connect5(&mut self, c: Connect) -> (ConnId, Box<crate::codec::Connack>) {
        let (conn, out) = self.connect_with(c);
        match packets(&out, conn).into_iter().next() {
            Some(Packet::Connack(a)) if a.reason_code == ConnectReasonCode::Success => (conn, a),
            other => panic!("expected CONNACK 0x00, got {other:?}"),
        }
    }
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        max_qos: qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

fn subscribe5(id: u16, filters: &[(&str, SubscriptionOptions)], sub_id: Option<u32>) -> Packet {
    let mut s = Subscribe::new(
        pid(id),
        filters.iter().map(|(f, o)| (crate::codec::TopicFilter::try_from(*f).unwrap(), *o)).collect(),
    );
    s.properties.subscription_id = sub_id.map(|v| VarByteInt::try_from(v).unwrap());
    Packet::Subscribe(s)
}

/// The PUBLISH packets sent to `conn`, whole.
fn publish_packets(actions: &[Action], conn: ConnId) -> Vec<Publish> {
    packets(actions, conn)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn disconnect_code(actions: &[Action], conn: ConnId) -> Option<DisconnectReasonCode> {
    packets(actions, conn).into_iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

#[test]
fn connack_says_what_the_server_allows_and_assigns_an_id() {
    let mut h = H::with(|c| {
        c.max_keepalive = Some(30);
        c.max_qos = QoS::Level1;
    });
    let mut c = connect5("", false, None);
    c.keep_alive = 100;
    let (_, ack) = h.connect5(c);
    let p = &ack.properties;
    let id = p.assigned_client_id.as_deref().expect("MQTT 5 §3.2.2.3.7: an assigned identifier");
    assert!(h.core.session_state(id).is_some());
    assert_eq!(p.server_keep_alive, Some(30), "the server's keep-alive cap (§3.2.2.3.14)");
    assert_eq!(p.max_qos, Some(QoS::Level1));
    assert_eq!(p.topic_alias_max, Some(10));
    assert_eq!(p.receive_max, Some(1000));
    assert_eq!(p.max_packet_size, Some(1 << 20));
    // A 3.1.1 client gets none of it (its CONNACK has no room) and an empty id stays refused
    // without clean session.
    assert_eq!(h.refused(connect_packet("", false, 0)), ConnectReasonCode::ClientIdentifierNotValid);
}

#[test]
fn a_session_lives_for_its_expiry_interval_after_the_connection() {
    let mut h = H::new();
    let (c, _) = h.connect5(connect5("s", true, Some(10)));
    h.send(c, subscribe5(1, &[("t", opts(QoS::Level1))], None));
    h.lost(c);
    assert!(h.core.session_state("s").is_some_and(|s| !s.online));
    // Messages wait for it meanwhile.
    let (p, _, _) = h.connect("p", true);
    h.send(p, publish("t", QoS::Level1, 1, "while away"));
    h.advance(Duration::from_secs(9));
    let (c, ack) = h.connect5(connect5("s", false, Some(10)));
    assert!(ack.session_present);
    h.lost(c);
    // Ten seconds after this disconnection it is gone, with what it held.
    let out = h.advance(Duration::from_secs(10));
    assert!(out.iter().all(|a| !matches!(a, Action::Send { .. })));
    assert!(h.core.session_state("s").is_none());
    assert_eq!(h.core.stats().sessions_expired, 1);
    let (_, ack) = h.connect5(connect5("s", false, Some(10)));
    assert!(!ack.session_present);
}

#[test]
fn expiry_zero_ends_the_session_with_the_connection_even_without_clean_start() {
    let mut h = H::new();
    let (c, _) = h.connect5(connect5("z", false, None));
    h.lost(c);
    assert!(h.core.session_state("z").is_none());
}

#[test]
fn disconnect_may_change_the_expiry_but_not_from_zero() {
    let mut h = H::new();
    let (c, _) = h.connect5(connect5("d", true, Some(60)));
    let mut d = crate::codec::Disconnect::new(DisconnectReasonCode::NormalDisconnect);
    d.properties.session_expiry_interval = Some(0);
    h.send(c, Packet::Disconnect(Box::new(d)));
    assert!(h.core.session_state("d").is_none(), "expiry set to 0 at DISCONNECT");

    let (c, _) = h.connect5(connect5("d", true, None));
    let mut d = crate::codec::Disconnect::new(DisconnectReasonCode::NormalDisconnect);
    d.properties.session_expiry_interval = Some(5);
    let out = h.send(c, Packet::Disconnect(Box::new(d)));
    assert_eq!(disconnect_code(&out, c), Some(DisconnectReasonCode::ProtocolError), "§3.14.2.2.2");
}

#[test]
fn a_delayed_will_waits_and_is_dropped_if_the_client_returns() {
    let mut h = H::new();
    let (w, _, _) = h.connect("watcher", true);
    h.send(w, subscribe(1, &[("will/#", QoS::Level0)]));
    let with_will = |delay: u32| {
        let mut c = connect5("dev", true, Some(100));
        let mut will = crate::codec::LastWill::new(QoS::Level0, tn("will/dev"), Bytes::from_static(b"gone"));
        will.properties.delay_interval = Some(delay);
        c.last_will = Some(will);
        c
    };
    let (d, _) = h.connect5(with_will(5));
    let out = h.lost(d);
    assert!(publishes(&out, w).is_empty(), "not before its delay");
    let out = h.advance(Duration::from_secs(5));
    assert_eq!(publishes(&out, w).len(), 1, "published when the delay passed");

    // Back before the delay: never published.
    let (d, _) = h.connect5(with_will(5));
    h.lost(d);
    h.advance(Duration::from_secs(2));
    h.connect5(connect5("dev", false, Some(100)));
    let out = h.advance(Duration::from_secs(10));
    assert!(publishes(&out, w).is_empty());
}

#[test]
fn only_a_normal_disconnect_discards_the_will() {
    // §3.14.4-3: 0x00 discards it; 0x04 asks for it (§3.14.2.1), and an error code keeps it.
    for (code, wills) in [
        (DisconnectReasonCode::NormalDisconnect, 0),
        (DisconnectReasonCode::DisconnectWithWillMessage, 1),
        (DisconnectReasonCode::UnspecifiedError, 1),
    ] {
        let mut h = H::new();
        let (w, _, _) = h.connect("watcher", true);
        h.send(w, subscribe(1, &[("will/#", QoS::Level0)]));
        let mut c = connect5("dev", true, None);
        c.last_will = Some(crate::codec::LastWill::new(QoS::Level0, tn("will/dev"), Bytes::from_static(b"bye")));
        let (d, _) = h.connect5(c);
        let out = h.send(d, Packet::disconnect(code));
        assert_eq!(publishes(&out, w).len(), wills, "{code:?}");
    }
}

#[test]
fn messages_expire_and_carry_what_is_left_of_their_interval() {
    let mut h = H::new();
    let (s, _) = h.connect5(connect5("sub", true, Some(100)));
    h.send(s, subscribe5(1, &[("t", opts(QoS::Level1))], None));
    h.lost(s);
    let (p, _) = h.connect5(connect5("pub", true, None));
    let mut short = Publish::new(QosPid::Level1(pid(1)), tn("t"), Bytes::from_static(b"short"));
    short.props_mut().message_expiry = Some(5);
    let mut long = Publish::new(QosPid::Level1(pid(2)), tn("t"), Bytes::from_static(b"long"));
    long.props_mut().message_expiry = Some(60);
    h.send(p, Packet::Publish(short));
    h.send(p, Packet::Publish(long));
    h.now += Duration::from_secs(10);
    let (s, out) = h.connect_with(connect5("sub", false, Some(100)));
    // Delivered on reconnect: only the long one, with 50 s left (§3.3.2-6).
    let got = publish_packets(&out, s);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].payload[..], b"long");
    assert_eq!(got[0].props().message_expiry, Some(50));
    assert_eq!(h.core.stats().expired_messages, 1, "the short one expired while queued");
}

#[test]
fn message_properties_reach_v5_subscribers_and_not_v3_ones() {
    let mut h = H::new();
    let (s5, _) = h.connect5(connect5("s5", true, None));
    h.send(s5, subscribe5(1, &[("t", opts(QoS::Level0))], None));
    let (s3, _, _) = h.connect("s3", true);
    h.send(s3, subscribe(1, &[("t", QoS::Level0)]));
    let (p, _) = h.connect5(connect5("p", true, None));
    let mut msg = Publish::new(QosPid::Level0, tn("t"), Bytes::from_static(b"x"));
    let props = MessageProps {
        response_topic: Some(tn("reply")),
        correlation_data: Some(Bytes::from_static(b"42")),
        user_properties: vec![UserProperty { name: "k".into(), value: "v".into() }],
        ..Default::default()
    };
    msg.props_mut().message = props.clone().shared();
    let out = h.send(p, Packet::Publish(msg));
    let got = publish_packets(&out, s5);
    assert_eq!(got[0].props().message.as_deref(), Some(&props), "forwarded unaltered (§3.3.2.3)");
    // The core hands the same packet to both; the 3.1.1 encoder leaves the properties out.
    assert_eq!(publish_packets(&out, s3).len(), 1);
}

#[test]
fn topic_aliases_name_topics_per_channel() {
    let mut h = H::new();
    let (s, _) = h.connect5(connect5("s", true, None));
    h.send(s, subscribe5(1, &[("a/#", opts(QoS::Level0))], None));
    let (p, _) = h.connect5(connect5("p", true, None));
    let mut first = Publish::new(QosPid::Level0, tn("a/long/topic"), Bytes::from_static(b"1"));
    first.props_mut().topic_alias = Some(1);
    let mut second = Publish::new(QosPid::Level0, tn(""), Bytes::from_static(b"2"));
    second.props_mut().topic_alias = Some(1);
    h.send(p, Packet::Publish(first));
    let out = h.send(p, Packet::Publish(second.clone()));
    assert_eq!(publishes(&out, s)[0].0, "a/long/topic", "the alias resolved");
    // Another channel has its own table: the alias means nothing there.
    let out = h.send_on(p, 4, Packet::Publish(second.clone()));
    assert_eq!(disconnect_code(&out, p), Some(DisconnectReasonCode::ProtocolError));
    // Above the Topic Alias Maximum: 0x94.
    let (p, _) = h.connect5(connect5("p2", true, None));
    let mut big = Publish::new(QosPid::Level0, tn("a/x"), Bytes::new());
    big.props_mut().topic_alias = Some(11);
    let out = h.send(p, Packet::Publish(big));
    assert_eq!(disconnect_code(&out, p), Some(DisconnectReasonCode::TopicAliasInvalid));
}

#[test]
fn no_local_retain_as_published_and_subscription_identifiers() {
    let mut h = H::new();
    let (c, _) = h.connect5(connect5("me", true, None));
    let mut nl = opts(QoS::Level0);
    nl.no_local = true;
    h.send(c, subscribe5(1, &[("own/#", nl)], Some(7)));
    let mut rap = opts(QoS::Level0);
    rap.retain_as_published = true;
    h.send(c, subscribe5(2, &[("x/+", rap)], Some(8)));
    h.send(c, subscribe5(3, &[("x/#", opts(QoS::Level0))], Some(9)));
    // No Local: its own message on own/# does not come back.
    let out = h.send(c, publish("own/1", QoS::Level0, 0, "mine"));
    assert!(publish_packets(&out, c).is_empty(), "§3.8.3-3");
    // Overlapping x/+ and x/#: one delivery, both identifiers, RETAIN kept (Retain As Published).
    let out = h.send(c, retained("x/y", QoS::Level0, 0, "r"));
    let got = publish_packets(&out, c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].props().subscription_ids, vec![8, 9], "§3.3.4-3");
    assert!(got[0].retain, "§3.3.1-13");
    // A 3.1.1 subscriber still gets RETAIN 0 on a live forward.
    let (v3, _, _) = h.connect("v3", true);
    h.send(
        v3,
        Packet::Subscribe(Subscribe::new(
            pid(1),
            vec![(crate::codec::TopicFilter::try_from("x/#").unwrap(), v3_options(QoS::Level0))],
        )),
    );
    let out = h.send(c, retained("x/z", QoS::Level0, 0, "r2"));
    assert!(!publish_packets(&out, v3)[0].retain);
}

#[test]
fn retain_handling_1_sends_retained_only_to_a_new_subscription_and_2_never() {
    let mut h = H::new();
    let (p, _, _) = h.connect("p", true);
    h.send(p, retained("r/t", QoS::Level0, 0, "kept"));
    let (c, _) = h.connect5(connect5("c", true, None));
    let mut once = opts(QoS::Level0);
    once.retain_handling = RetainHandling::SendAtSubscribeIfNotExist;
    assert_eq!(publish_packets(&h.send(c, subscribe5(1, &[("r/#", once)], None)), c).len(), 1);
    assert_eq!(publish_packets(&h.send(c, subscribe5(2, &[("r/#", once)], None)), c).len(), 0);
    let mut never = opts(QoS::Level0);
    never.retain_handling = RetainHandling::DoNotSend;
    assert_eq!(publish_packets(&h.send(c, subscribe5(3, &[("r/+", never)], None)), c).len(), 0);
}

#[test]
fn acknowledgements_carry_reason_codes() {
    let mut h = H::new();
    let (c, _) = h.connect5(connect5("c", true, None));
    let out = h.send(c, publish("nobody/here", QoS::Level1, 4, "x"));
    assert_eq!(
        packets(&out, c),
        vec![Packet::Puback(Puback::new(pid(4), PubackReasonCode::NoMatchingSubscribers))],
        "§3.4.2.1"
    );
    let out = h.send(c, unsubscribe(5, &["never/subscribed"]));
    match &packets(&out, c)[0] {
        Packet::Unsuback(u) => assert_eq!(u.topics, vec![UnsubscribeReasonCode::NoSubscriptionExisted]),
        other => panic!("{other:?}"),
    }
    let out = h.send(c, Packet::pubrel(pid(9)));
    match &packets(&out, c)[0] {
        Packet::Pubcomp(p) => assert_eq!(p.reason_code, crate::codec::PubcompReasonCode::PacketIdentifierNotFound),
        other => panic!("{other:?}"),
    }
    // A 3.1.1 client gets plain acknowledgements (no reason codes in its packets).
    let (v3, _, _) = h.connect("v3", true);
    assert_eq!(packets(&h.send(v3, publish("nobody", QoS::Level1, 1, "x")), v3), vec![Packet::puback(pid(1))]);
}

#[test]
fn the_server_says_why_it_closes_an_mqtt5_connection() {
    let mut h = H::new();
    let (old, _) = h.connect5(connect5("same", true, None));
    let (_, out) = h.connect_with(connect5("same", true, None));
    assert_eq!(disconnect_code(&out, old), Some(DisconnectReasonCode::SessionTakenOver));
    // A 3.1.1 client is closed without a DISCONNECT (it has none from the server).
    let (v3, _, _) = h.connect("v3same", true);
    let (_, out) = h.connect_with(connect_packet("v3same", true, 0));
    assert_eq!(disconnect_code(&out, v3), None);
    assert_eq!(close_of(&out, v3), Some(CloseReason::TakenOver));
}

#[test]
fn receive_maximum_caps_what_is_in_flight_to_the_client() {
    let mut h = H::new();
    let mut c = connect5("slow", true, None);
    c.properties.receive_max = Some(2);
    let (s, _) = h.connect5(c);
    h.send(s, subscribe5(1, &[("t", opts(QoS::Level1))], None));
    let (p, _, _) = h.connect("p", true);
    let mut out = Vec::new();
    for i in 0..5 {
        out.extend(h.send(p, publish("t", QoS::Level1, i + 1, "m")));
    }
    let sent = publish_packets(&out, s);
    assert_eq!(sent.len(), 2, "§3.3.4-7: no more than Receive Maximum in flight");
    let id = sent[0].qos_pid.pid().unwrap();
    let out = h.send(s, Packet::puback(id));
    assert_eq!(publish_packets(&out, s).len(), 1, "one acknowledged, one more sent");
}

#[test]
fn a_publish_larger_than_the_client_allows_is_not_sent() {
    let mut h = H::new();
    let mut c = connect5("small", true, None);
    c.properties.max_packet_size = Some(64);
    let (s, _) = h.connect5(c);
    h.send(s, subscribe5(1, &[("t", opts(QoS::Level1))], None));
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("t", QoS::Level1, 1, &"x".repeat(100)));
    assert!(publish_packets(&out, s).is_empty(), "§3.1.2-25");
    assert_eq!(h.core.stats().dropped_too_large, 1);
    let out = h.send(p, publish("t", QoS::Level1, 2, "fits"));
    assert_eq!(publish_packets(&out, s).len(), 1);
}

#[test]
fn an_authentication_method_is_refused_and_auth_is_a_protocol_error() {
    let mut h = H::new();
    let mut c = connect5("a", true, None);
    c.properties.auth_method = Some("SCRAM-SHA-1".into());
    assert_eq!(h.refused(c), ConnectReasonCode::BadAuthMethod);
    let (c, _) = h.connect5(connect5("b", true, None));
    let out = h.send(c, Packet::Auth(Box::new(crate::codec::Auth::new_success())));
    assert_eq!(disconnect_code(&out, c), Some(DisconnectReasonCode::ProtocolError));
}

#[test]
fn a_v5_session_with_an_expiry_is_not_acted_on_early() {
    let mut h = H::new();
    let conn = h.open_early();
    let out = h.send(conn, Packet::connect(connect5("e", true, Some(60))));
    assert!(packets(&out, conn).is_empty(), "its effects outlive the connection: held (§6.7)");
    let conn = h.open_early();
    let out = h.send(conn, Packet::connect(connect5("f", true, None)));
    assert_eq!(packets(&out, conn).len(), 1, "expiry 0 dies with the connection: acted on");
}

#[test]
fn a_shared_subscription_spreads_messages_over_its_group() {
    let mut h = H::new();
    let (p, _, _) = h.connect("p", true);
    h.send(p, retained("jobs/old", QoS::Level0, 0, "retained"));
    let mut members = Vec::new();
    for id in ["w1", "w2", "w3"] {
        let (c, _) = h.connect5(connect5(id, true, None));
        let out = h.send(c, subscribe5(1, &[("$share/workers/jobs/+", opts(QoS::Level1))], None));
        assert!(publish_packets(&out, c).is_empty(), "§4.8.2: no retained messages for a shared subscription");
        members.push(c);
    }
    // A 3.1.1 client may join the group too; and one plain subscriber sees everything.
    let (v3, _, _) = h.connect("w4", true);
    h.send(v3, subscribe(1, &[("$share/workers/jobs/+", QoS::Level0)]));
    members.push(v3);
    let (all, _, _) = h.connect("all", true);
    h.send(all, subscribe(1, &[("jobs/#", QoS::Level0)]));
    let mut got = vec![0; members.len()];
    let mut plain = 0;
    for i in 0..40u16 {
        let out = h.send(p, publish("jobs/x", QoS::Level1, i + 1, "job"));
        for (k, m) in members.iter().enumerate() {
            got[k] += publish_packets(&out, *m).len();
        }
        plain += publish_packets(&out, all).len();
    }
    assert_eq!(got, vec![10, 10, 10, 10], "one copy per message, round robin");
    assert_eq!(plain, 40, "the plain subscription gets its own copy of each");
    // A member whose session ends leaves the group.
    h.lost(members[0]);
    let out = h.send(p, publish("jobs/x", QoS::Level1, 100, "job"));
    assert!(publish_packets(&out, members[0]).is_empty());
    assert_eq!(members[1..].iter().map(|m| publish_packets(&out, *m).len()).sum::<usize>(), 1);
    assert_eq!(h.core.stats().subscriptions, 4, "three members left and the plain one");
}

#[test]
fn a_stored_v5_session_keeps_its_options_and_expires() {
    let mut h = H::with(|c| c.data_dir = Some("unused".into()));
    let (c, _) = h.connect5(connect5("keeper5", true, Some(30)));
    let mut o = opts(QoS::Level1);
    o.no_local = true;
    let out = h.send(c, subscribe5(1, &[("k/#", o)], Some(3)));
    let stored = out
        .iter()
        .find_map(|a| match a {
            Action::Store(StoreOp::Session { client_id, expiry, subs }) => Some(StoredSession {
                client_id: client_id.clone(),
                expiry: *expiry,
                subs: subs.clone(),
                ..Default::default()
            }),
            _ => None,
        })
        .expect("the session is stored");
    assert_eq!(stored.expiry, 30);
    assert_eq!((stored.subs[0].no_local, stored.subs[0].id), (true, 3));
    // A new core from the store: the session is back with its options, and expires 30 s on.
    let mut h2 = H::new();
    assert!(h2.core.restore_session(stored, h2.now));
    let (p, _) = h2.connect5(connect5("p", true, None));
    let out = h2.send(p, publish("k/1", QoS::Level1, 1, "x"));
    let _ = out;
    h2.advance(Duration::from_secs(31));
    assert!(h2.core.session_state("keeper5").is_none(), "expired 30 s after the restart");
}

#[test]
fn the_broker_sets_topic_aliases_in_qos_1_packets_and_uses_them_after() {
    let mut h = H::new();
    let mut c = connect5("aliased", true, None);
    c.properties.topic_alias_max = Some(2);
    let (s, _) = h.connect5(c);
    h.send(s, subscribe5(1, &[("t/#", opts(QoS::Level1))], None));
    let (p, _, _) = h.connect("p", true);
    let mut got = Vec::new();
    for (topic, qos, id) in
        [("t/zero", QoS::Level0, 0), ("t/a", QoS::Level1, 1), ("t/a", QoS::Level0, 0), ("t/a", QoS::Level1, 2)]
    {
        got.extend(publish_packets(&h.send(p, publish(topic, qos, id, "x")), s));
    }
    let seen: Vec<(String, Option<u16>)> =
        got.iter().map(|p| (p.topic_name.to_string(), p.props().topic_alias)).collect();
    assert_eq!(
        seen,
        vec![
            ("t/zero".into(), None), // QoS 0 sets no alias
            ("t/a".into(), Some(1)), // QoS 1 sets alias 1 with the name
            ("".into(), Some(1)),    // then the alias alone, whatever the QoS
            ("".into(), Some(1)),
        ]
    );
    // A 3.1.1 client or one that did not ask gets names only.
    let (q, _) = h.connect5(connect5("plain", true, None));
    h.send(q, subscribe5(1, &[("t/#", opts(QoS::Level1))], None));
    let out = h.send(p, publish("t/a", QoS::Level1, 3, "x"));
    assert_eq!(publish_packets(&out, q)[0].props().topic_alias, None);
}

fn auth_packet(code: crate::codec::AuthReasonCode, data: &str) -> Packet {
    let mut a = crate::codec::Auth::new(code);
    a.properties.auth_method = Some("SCRAM-SHA-512".into());
    a.properties.auth_data = Some(Bytes::from(data.to_owned()));
    Packet::Auth(Box::new(a))
}

/// The data of the AUTH 0x18 sent to `conn`.
fn auth_data_sent(actions: &[Action], conn: ConnId) -> String {
    packets(actions, conn)
        .into_iter()
        .find_map(|p| match p {
            Packet::Auth(a) => Some(String::from_utf8(a.properties.auth_data.unwrap().to_vec()).unwrap()),
            _ => None,
        })
        .expect("an AUTH")
}

#[test]
fn scram_sha_512_over_the_password_file() {
    use crate::codec::AuthReasonCode as R;
    use crate::scram;
    let file = passwords().unwrap();
    let mut h = H::with(|c| {
        c.password_file = Some(file.clone());
        c.auth_methods = vec![std::sync::Arc::new(scram::ScramSha512::new(file.clone()))];
    });
    let attempt = |h: &mut H, password: &str| {
        let first = scram::client_first("alice", "cnonce-1");
        let mut c = connect5("scram", true, None);
        c.properties.auth_method = Some("SCRAM-SHA-512".into());
        c.properties.auth_data = Some(Bytes::from(first.clone()));
        let (conn, out) = h.connect_with(c);
        assert!(packets(&out, conn).iter().all(|p| !matches!(p, Packet::Connack(_))), "no CONNACK yet");
        let server_first = auth_data_sent(&out, conn);
        let (last, server_final) = scram::client_final(&first, &server_first, password).unwrap();
        (conn, h.send(conn, auth_packet(R::ContinueAuthentication, &last)), server_final)
    };
    let (conn, out, server_final) = attempt(&mut h, "secret");
    match packets(&out, conn).first() {
        Some(Packet::Connack(a)) => {
            assert_eq!(a.reason_code, ConnectReasonCode::Success);
            assert_eq!(a.properties.auth_method.as_deref(), Some("SCRAM-SHA-512"));
            assert_eq!(a.properties.auth_data.as_deref(), Some(server_final.as_bytes()), "server-final in CONNACK");
        }
        other => panic!("{other:?}"),
    }
    // Re-authentication on the same connection: AUTH 0x19, 0x18, then AUTH 0x00.
    let first = scram::client_first("alice", "cnonce-2");
    let out = h.send(conn, auth_packet(R::ReAuthentication, &first));
    let (last, server_final) = scram::client_final(&first, &auth_data_sent(&out, conn), "secret").unwrap();
    let out = h.send(conn, auth_packet(R::ContinueAuthentication, &last));
    match packets(&out, conn).first() {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, R::Success);
            assert_eq!(a.properties.auth_data.as_deref(), Some(server_final.as_bytes()));
        }
        other => panic!("{other:?}"),
    }
    // A wrong password: CONNACK 0x87.
    let (conn, out, _) = attempt(&mut h, "wrong");
    assert!(
        matches!(packets(&out, conn).first(), Some(Packet::Connack(a)) if a.reason_code == ConnectReasonCode::NotAuthorized)
    );
    assert!(close_of(&out, conn).is_some());
    // Anything but AUTH before the exchange ends is a protocol violation.
    let mut c = connect5("scram2", true, None);
    c.properties.auth_method = Some("SCRAM-SHA-512".into());
    c.properties.auth_data = Some(Bytes::from(scram::client_first("alice", "n3")));
    let (conn, _) = h.connect_with(c);
    let out = h.send(conn, Packet::Pingreq);
    assert!(close_of(&out, conn).is_some());
}

#[test]
fn a_clean_start_publishes_a_delayed_will_and_drops_a_stored_session() {
    let mut h = H::new();
    let (w, _, _) = h.connect("watcher", true);
    h.send(w, subscribe(1, &[("will/#", QoS::Level0)]));
    // A delayed will goes out when a Clean Start ends its session first (§3.1.3.2.2).
    let mut c = connect5("dev2", true, Some(60));
    let mut will = crate::codec::LastWill::new(QoS::Level0, tn("will/dev2"), Bytes::from_static(b"gone"));
    will.properties.delay_interval = Some(30);
    c.last_will = Some(will);
    let (d, _) = h.connect5(c);
    h.lost(d);
    let (_, out) = h.connect_with(connect5("dev2", true, None));
    assert_eq!(publishes(&out, w).len(), 1, "the session ended before the delay: the will now");

    // A stored session resumed with expiry 0 is dropped from the store at once.
    let mut h = H::with(|c| c.data_dir = Some("unused".into()));
    let (c, _) = h.connect5(connect5("s", true, Some(60)));
    h.lost(c);
    let (_, out) = h.connect_with(connect5("s", false, Some(0)));
    assert!(
        stores(&out).iter().any(|op| matches!(op, StoreOp::DropSession { client_id } if &**client_id == "s")),
        "{out:?}"
    );
}

#[test]
fn disconnect_during_auth_and_reauthentication_as_someone_else() {
    use crate::codec::AuthReasonCode as R;
    use crate::scram;
    let file = passwords().unwrap();
    let mut h = H::with(|c| {
        c.password_file = Some(file.clone());
        c.auth_methods = vec![std::sync::Arc::new(scram::ScramSha512::new(file.clone()))];
    });
    let start = |h: &mut H, user: &str| {
        let first = scram::client_first(user, "n1");
        let mut c = connect5(&format!("c-{user}"), true, None);
        c.properties.auth_method = Some("SCRAM-SHA-512".into());
        c.properties.auth_data = Some(Bytes::from(first.clone()));
        let (conn, out) = h.connect_with(c);
        (conn, first, auth_data_sent(&out, conn))
    };
    // DISCONNECT before CONNACK during the exchange: a plain close, no violation (§3.1.2-30).
    let (conn, _, _) = start(&mut h, "alice");
    let before = h.core.stats().violations;
    let out = h.send(conn, Packet::disconnect(DisconnectReasonCode::NormalDisconnect));
    assert_eq!(close_of(&out, conn), Some(CloseReason::Disconnect));
    assert_eq!(h.core.stats().violations, before);
    // Connected as alice, re-authenticating as bob is refused.
    let (conn, first, server_first) = start(&mut h, "alice");
    let (last, _) = scram::client_final(&first, &server_first, "secret").unwrap();
    h.send(conn, auth_packet(R::ContinueAuthentication, &last));
    let first = scram::client_first("bob", "n2");
    let out = h.send(conn, auth_packet(R::ReAuthentication, &first));
    let (last, _) = scram::client_final(&first, &auth_data_sent(&out, conn), "p@ss:w0rd").unwrap();
    let out = h.send(conn, auth_packet(R::ContinueAuthentication, &last));
    assert_eq!(disconnect_code(&out, conn), Some(DisconnectReasonCode::NotAuthorized));
}

#[test]
fn reason_strings_only_when_problem_information_is_requested() {
    // §3.1.2.11.7: with Request Problem Information 0, no reason string on a PUBACK.
    let mut h = H::with(|c| {
        c.acl = Some(std::sync::Arc::new(
            crate::acl::AclFile::parse(std::path::Path::new("acl"), "topic read #\n").unwrap(),
        ));
    });
    for (ask, want) in [(None, true), (Some(true), true), (Some(false), false)] {
        let mut c = connect5("rpi", true, None);
        c.properties.request_problem_info = ask;
        let (conn, _) = h.connect5(c);
        let out = h.send(conn, publish("denied", QoS::Level1, 1, "x"));
        match &packets(&out, conn)[..] {
            [Packet::Puback(a)] => {
                assert_eq!(a.reason_code, PubackReasonCode::NotAuthorized);
                assert_eq!(a.properties.reason_string.is_some(), want, "{ask:?}");
            }
            other => panic!("{other:?}"),
        }
        h.send(conn, Packet::disconnect(DisconnectReasonCode::NormalDisconnect));
    }
}
