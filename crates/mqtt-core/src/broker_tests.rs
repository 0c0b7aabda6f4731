//! Unit tests of the sans-IO core: every flow with explicit time, no sockets, no sleeps.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::codec::{LastWill, Protocol, TopicName};

struct H {
    core: BrokerCore,
    now: Instant,
}

fn pid(n: u16) -> Pid {
    Pid::try_from(n).unwrap()
}

fn tn(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

fn publish(topic: &str, qos: QoS, id: u16, payload: &str) -> Packet {
    let qos_pid = match qos {
        QoS::Level0 => QosPid::Level0,
        QoS::Level1 => QosPid::Level1(pid(id)),
        QoS::Level2 => QosPid::Level2(pid(id)),
    };
    Packet::Publish(Publish::new(qos_pid, tn(topic), Bytes::copy_from_slice(payload.as_bytes())))
}

fn retained(topic: &str, qos: QoS, id: u16, payload: &str) -> Packet {
    let mut p = publish(topic, qos, id, payload);
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    p
}

fn subscribe(id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe::new(
        pid(id),
        filters
            .iter()
            .map(|(f, q)| (super::super::codec::TopicFilter::try_from(*f).unwrap(), crate::codec::v3_options(*q)))
            .collect(),
    ))
}

fn connect_packet(id: &str, clean: bool, keepalive: u16) -> Connect {
    let mut c = Connect::new(id.into(), keepalive);
    c.protocol = Protocol::V311;
    c.clean_start = clean;
    c
}

/// Sends to `conn`, in order.
fn sends(actions: &[Action], conn: ConnId) -> Vec<(ChannelId, Packet)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, channel, packet } if *c == conn => Some((*channel, packet.clone())),
            _ => None,
        })
        .collect()
}

fn packets(actions: &[Action], conn: ConnId) -> Vec<Packet> {
    sends(actions, conn).into_iter().map(|(_, p)| p).collect()
}

fn close_of(actions: &[Action], conn: ConnId) -> Option<CloseReason> {
    actions.iter().find_map(|a| match a {
        Action::Close { conn: c, reason } if *c == conn => Some(reason.clone()),
        _ => None,
    })
}

/// The PUBLISH packets sent to `conn`: (topic, payload, qos, pid, retain, dup).
fn publishes(actions: &[Action], conn: ConnId) -> Vec<(String, String, u8, Option<u16>, bool, bool)> {
    packets(actions, conn)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.topic_name.to_string(),
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos_pid.qos() as u8,
                p.qos_pid.pid().map(|p| p.value()),
                p.retain,
                p.dup,
            )),
            _ => None,
        })
        .collect()
}

/// The PUBLISH packets sent to `conn` with their channel: (channel, payload, qos, pid, dup).
fn publishes_on(actions: &[Action], conn: ConnId) -> Vec<(ChannelId, String, u8, Option<u16>, bool)> {
    sends(actions, conn)
        .into_iter()
        .filter_map(|(ch, p)| match p {
            Packet::Publish(p) => Some((
                ch,
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos_pid.qos() as u8,
                p.qos_pid.pid().map(|p| p.value()),
                p.dup,
            )),
            _ => None,
        })
        .collect()
}

fn with_dup(mut p: Packet) -> Packet {
    if let Packet::Publish(x) = &mut p {
        x.dup = true;
    }
    p
}

fn unsubscribe(id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe::new(
        pid(id),
        filters.iter().map(|f| super::super::codec::TopicFilter::try_from(*f).unwrap()).collect(),
    ))
}

impl H {
    fn new() -> H {
        Self::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut MqttConfig)) -> H {
        let mut cfg = MqttConfig::default();
        tweak(&mut cfg);
        // An arbitrary origin: the core only ever sees times derived from it.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        H { core: BrokerCore::new(cfg), now }
    }

    fn open(&mut self) -> ConnId {
        let mut out = Vec::new();
        self.core.open(None, (), self.now, &mut out)
    }

    fn send(&mut self, conn: ConnId, packet: Packet) -> Vec<Action> {
        self.send_on(conn, CONTROL_CHANNEL, packet)
    }

    fn send_on(&mut self, conn: ConnId, ch: ChannelId, packet: Packet) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.handle(conn, ch, packet, self.now, &mut out);
        out
    }

    fn connect_with(&mut self, c: Connect) -> (ConnId, Vec<Action>) {
        let conn = self.open();
        let out = self.send(conn, Packet::connect(c));
        (conn, out)
    }

    /// Connect and assert acceptance; returns (conn, session_present, everything sent).
    fn connect(&mut self, id: &str, clean: bool) -> (ConnId, bool, Vec<Action>) {
        let (conn, out) = self.connect_with(connect_packet(id, clean, 0));
        match packets(&out, conn).first() {
            Some(Packet::Connack(c)) => {
                assert_eq!(c.reason_code, ConnectReasonCode::Success);
                (conn, c.session_present, out)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Data channel `ch` of `conn` ended.
    fn end(&mut self, conn: ConnId, ch: ChannelId, end: ChannelEnd) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.close_channel(conn, ch, end, self.now, &mut out);
        out
    }

    /// A new connection whose QUIC handshake has not completed.
    fn open_early(&mut self) -> ConnId {
        let conn = self.open();
        self.core.set_early(conn);
        conn
    }

    /// The QUIC handshake of `conn` completed.
    fn complete(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.handshake_complete(conn, self.now, &mut out);
        out
    }

    fn lost(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.closed(conn, self.now, &mut out);
        out
    }

    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        let mut out = Vec::new();
        self.core.handle_timeout(self.now, &mut out);
        out
    }

    fn refused(&mut self, c: Connect) -> ConnectReasonCode {
        let (conn, out) = self.connect_with(c);
        let code = match packets(&out, conn).first() {
            Some(Packet::Connack(c)) => {
                assert!(!c.session_present, "§3.2.2-4");
                c.reason_code
            }
            other => panic!("expected CONNACK, got {other:?}"),
        };
        assert!(matches!(close_of(&out, conn), Some(CloseReason::Refused(_))), "§3.2.2-5: closed after refusal");
        code
    }
}

#[test]
fn connack_return_codes() {
    let mut h = H::new();
    // 0x00 and a server-assigned id for an empty id with clean session (§3.1.3-6).
    let (conn, present, _) = h.connect("", true);
    assert!(!present);
    assert_eq!(h.core.stats().sessions, 1);
    let _ = conn;
    // 0x02: empty id with clean session 0 (§3.1.3-8).
    assert_eq!(h.refused(connect_packet("", false, 0)), ConnectReasonCode::ClientIdentifierNotValid);
    // 0x02: MQTT 3.1 id longer than 23 characters.
    let mut c = connect_packet("abcdefghijklmnopqrstuvwxyz", true, 0);
    c.protocol = Protocol::V310;
    assert_eq!(h.refused(c), ConnectReasonCode::ClientIdentifierNotValid);
    // 0x01: unsupported protocol level, reported by the codec (§3.1.2-2).
    let conn = h.open();
    let mut out = Vec::new();
    h.core.malformed(conn, CONTROL_CHANNEL, &CodecError::UnsupportedProtocolLevel(5), h.now, &mut out);
    assert_eq!(packets(&out, conn), vec![Packet::connack(false, ConnectReasonCode::UnsupportedProtocolVersion)]);
    assert!(close_of(&out, conn).is_some());

    // 0x03: max_sessions reached.
    let mut h = H::with(|c| c.max_sessions = 1);
    h.connect("a", false);
    assert_eq!(h.refused(connect_packet("b", true, 0)), ConnectReasonCode::ServerUnavailable);
    // ...but the existing id may come back.
    let (a2, present, _) = h.connect("a", false);
    assert!(present);
    let _ = a2;

    let _ = a2;
}

/// Made with Debian's `mosquitto_passwd` 2.0.11: alice/secret, bob/"p@ss:w0rd".
const PASSWORDS: &str = "\
alice:$7$101$MuO2Fm6HrzkAJjvy$TaGs0vf11YIWmwYTi7IP5Z2KW8Wt8UtLx1hjT85qbFiTmADu71nxXZ8ZrX/4wey9BwMqRo7tS7mk6rMCkNmhnw==
bob:$7$101$zU1B8nBHC9PWLC5R$8+30DMmqC2R1WwdNwC2CZLZXUrhH0suFHMGDlZWY6XONNB0w7qwluAUrzxKxVDT+wnp0mry0vigAEMOPrSysRg==
";

fn passwords() -> Option<std::sync::Arc<crate::auth::PasswordFile>> {
    Some(std::sync::Arc::new(crate::auth::PasswordFile::parse(std::path::Path::new("pw"), PASSWORDS).unwrap()))
}

fn login(id: &str, user: Option<&str>, password: Option<&[u8]>) -> Connect {
    let mut c = connect_packet(id, true, 0);
    c.username = user.map(Into::into);
    c.password = password.map(Bytes::copy_from_slice);
    c
}

#[test]
fn connect_outcomes_with_a_password_file() {
    use ConnectReasonCode::{NotAuthorized, Success as Accepted};
    // (allow_anonymous, user, password, outcome): mosquitto 2.0.11 answers 0x05 to each
    // refusal, and so does quiclab.
    type Row<'a> = (Option<bool>, Option<&'a str>, Option<&'a [u8]>, ConnectReasonCode);
    let rows: [Row; 9] = [
        (None, Some("alice"), Some(b"secret"), Accepted),
        (None, Some("bob"), Some(b"p@ss:w0rd"), Accepted),
        (None, Some("alice"), Some(b"wrong"), NotAuthorized),
        (None, Some("alice"), None, NotAuthorized),
        (None, Some("nobody"), Some(b"secret"), NotAuthorized),
        (None, None, None, NotAuthorized),
        (Some(false), None, None, NotAuthorized),
        (Some(true), None, None, Accepted),
        (Some(true), Some("alice"), Some(b"wrong"), NotAuthorized),
    ];
    for (i, (anon, user, pw, want)) in rows.into_iter().enumerate() {
        let mut h = H::with(|c| {
            c.password_file = passwords();
            c.allow_anonymous = anon;
        });
        let (conn, out) = h.connect_with(login("x", user, pw));
        let code = match packets(&out, conn).first() {
            Some(Packet::Connack(c)) => c.reason_code,
            other => panic!("row {i}: {other:?}"),
        };
        assert_eq!(code, want, "row {i}");
        let st = h.core.stats();
        if want == Accepted {
            assert_eq!((st.auth_failures, close_of(&out, conn)), (0, None), "row {i}");
        } else {
            assert_eq!(st.auth_failures, 1, "row {i}");
            assert_eq!(close_of(&out, conn), Some(CloseReason::Refused(want)), "row {i}: §3.2.2-5");
        }
    }
}

#[test]
fn connect_outcomes_without_a_password_file() {
    // Default: anyone, user names taken as given.
    let mut h = H::new();
    let (conn, out) = h.connect_with(login("a", Some("anyone"), Some(b"x")));
    assert_eq!(packets(&out, conn), vec![Packet::connack(false, ConnectReasonCode::Success)]);
    // allow_anonymous false and no file: nothing to check a user against; both refused 0x05
    // (as mosquitto 2.0.11).
    let mut h = H::with(|c| c.allow_anonymous = Some(false));
    assert_eq!(h.refused(login("a", None, None)), ConnectReasonCode::NotAuthorized);
    assert_eq!(h.refused(login("b", Some("anyone"), Some(b"x"))), ConnectReasonCode::NotAuthorized);
    assert_eq!(h.core.stats().auth_failures, 2);
}

#[test]
fn identity_as_username_replaces_connect_user() {
    let acl = "user device-7\ntopic readwrite dev/7/#\n";
    let mut h = H::with(|c| {
        c.use_identity_as_username = true;
        c.password_file = passwords();
        c.acl = Some(std::sync::Arc::new(crate::acl::AclFile::parse(std::path::Path::new("acl"), acl).unwrap()));
    });
    // No certificate: 0x04, as mosquitto (CONNACK_REFUSED_BAD_USERNAME_PASSWORD), even with a
    // good user name and password.
    assert_eq!(h.refused(login("a", Some("alice"), Some(b"secret"))), ConnectReasonCode::BadUserNameOrPassword);
    // A certificate: its CN is the user; CONNECT's user and password are not checked.
    let conn = h.open();
    h.core.set_cert_identity(conn, Some("device-7"));
    let out = h.send(conn, Packet::connect(login("d7", Some("alice"), Some(b"wrong"))));
    assert_eq!(packets(&out, conn), vec![Packet::connack(false, ConnectReasonCode::Success)]);
    // ...and the ACL sees the CN, not "alice".
    let out = h.send(conn, subscribe(1, &[("dev/7/#", QoS::Level0), ("alice/#", QoS::Level0)]));
    assert_eq!(
        packets(&out, conn),
        vec![Packet::Suback(Suback::new(
            pid(1),
            vec![SubscribeReasonCode::GrantedQoS0, SubscribeReasonCode::NotAuthorized]
        ))]
    );
}

/// The ACL of the interop tests, whose outcomes were checked against mosquitto 2.0.11.
const ACL: &str = "\
topic read public/#
topic write anon/in
user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read public/#
topic write public/alice
user bob
topic read #
pattern readwrite clients/%c/#
";

fn with_acl() -> H {
    H::with(|c| {
        c.password_file = passwords();
        c.allow_anonymous = Some(true);
        c.acl = Some(std::sync::Arc::new(crate::acl::AclFile::parse(std::path::Path::new("acl"), ACL).unwrap()));
    })
}

fn connect_as(h: &mut H, id: &str, user: Option<&str>, password: &[u8]) -> ConnId {
    let (conn, out) = h.connect_with(login(id, user, user.map(|_| password)));
    assert_eq!(packets(&out, conn), vec![Packet::connack(false, ConnectReasonCode::Success)], "{id}");
    conn
}

#[test]
fn acl_subscribe_codes_and_deliveries() {
    use SubscribeReasonCode::{GrantedQoS1 as MaxLevel1, NotAuthorized as Failure};
    let mut h = with_acl();
    let alice = connect_as(&mut h, "al", Some("alice"), b"secret");
    let bob = connect_as(&mut h, "bo", Some("bob"), b"p@ss:w0rd");
    let anon = connect_as(&mut h, "an", None, b"");
    // Alice: a filter nothing can pass gets 0x80, the others are granted, in order (§3.9.3).
    let out = h.send(
        alice,
        subscribe(
            1,
            &[("alice/#", QoS::Level1), ("alice/secret/#", QoS::Level1), ("#", QoS::Level1), ("nope/#", QoS::Level1)],
        ),
    );
    assert_eq!(
        packets(&out, alice),
        vec![Packet::Suback(Suback::new(pid(1), vec![MaxLevel1, Failure, MaxLevel1, Failure]))]
    );
    assert_eq!(h.core.stats().acl_denied_subscribe, 2);
    assert_eq!(h.core.session_state("al").unwrap().subscriptions, 2);
    h.send(bob, subscribe(1, &[("#", QoS::Level0)]));
    h.send(anon, subscribe(1, &[("#", QoS::Level0)]));

    // Alice publishes: allowed topics reach each reader it may read; alice/secret/x is dropped
    // and still acknowledged; public/x is not hers to write.
    let out = h.send(alice, publish("alice/x", QoS::Level1, 5, "a"));
    assert!(packets(&out, alice).contains(&Packet::puback(pid(5))));
    assert_eq!(publishes(&out, bob).len(), 1);
    assert_eq!(publishes(&out, anon).len(), 0, "anonymous clients may not read alice/#");
    let out = h.send(alice, publish("alice/secret/x", QoS::Level1, 6, "s"));
    assert_eq!(packets(&out, alice), vec![Packet::puback(pid(6))], "denied, acknowledged, delivered to nobody");
    assert!(publishes(&out, bob).is_empty());
    let out = h.send(alice, publish("public/x", QoS::Level0, 0, "p"));
    assert!(out.is_empty());
    // QoS 2 denied: PUBREC, then PUBCOMP on PUBREL, nothing delivered.
    let out = h.send(alice, publish("public/x", QoS::Level2, 7, "p2"));
    assert_eq!(packets(&out, alice), vec![Packet::pubrec(pid(7))]);
    let out = h.send(alice, Packet::pubrel(pid(7)));
    assert_eq!(packets(&out, alice), vec![Packet::pubcomp(pid(7))]);
    assert!(publishes(&out, bob).is_empty() && publishes(&out, anon).is_empty());
    assert_eq!(h.core.stats().acl_denied_publish, 3);
    // public/alice: written by alice, read by everyone allowed (anon: public/#; bob: #).
    let out = h.send(alice, publish("public/alice", QoS::Level0, 0, "hello"));
    assert_eq!(publishes(&out, alice).len(), 1);
    assert_eq!(publishes(&out, bob).len(), 1);
    assert_eq!(publishes(&out, anon).len(), 1);
    // Patterns: %c.
    let out = h.send(anon, publish("clients/an/x", QoS::Level0, 0, "c"));
    assert_eq!(publishes(&out, bob).len(), 1);
    let out = h.send(anon, publish("clients/other/x", QoS::Level0, 0, "c"));
    assert!(out.is_empty());
    assert!(h.core.stats().acl_denied_read > 0);
}

#[test]
fn acl_retained_and_wills() {
    let mut h = with_acl();
    let alice = connect_as(&mut h, "al", Some("alice"), b"secret");
    h.send(alice, retained("alice/r", QoS::Level0, 0, "kept"));
    h.send(alice, retained("public/alice", QoS::Level0, 0, "kept too"));
    assert_eq!(h.core.stats().retained, 2);
    // Anonymous "#" is granted (public/# can pass) but gets only the retained message it may
    // read.
    let anon = connect_as(&mut h, "an", None, b"");
    let out = h.send(anon, subscribe(1, &[("#", QoS::Level0)]));
    let got: Vec<String> = publishes(&out, anon).into_iter().map(|p| p.0).collect();
    assert_eq!(got, ["public/alice"]);
    assert_eq!(h.core.stats().acl_denied_read, 1);
    let bob = connect_as(&mut h, "bo", Some("bob"), b"p@ss:w0rd");
    let out = h.send(bob, subscribe(1, &[("#", QoS::Level0)]));
    assert_eq!(publishes(&out, bob).len(), 2);

    // Wills: the CONNECT is accepted either way; the will is checked for write when published.
    for (topic, published) in [("alice/will", true), ("forbidden/will", false)] {
        let mut c = login(&format!("w-{published}"), Some("alice"), Some(b"secret"));
        c.last_will = Some(LastWill::new(QoS::Level0, tn(topic), Bytes::from_static(b"bye")));
        let (w, out) = h.connect_with(c);
        assert_eq!(packets(&out, w), vec![Packet::connack(false, ConnectReasonCode::Success)]);
        let out = h.lost(w);
        assert_eq!(publishes(&out, bob).len(), usize::from(published), "{topic}");
    }
    assert_eq!(h.core.stats().acl_denied_will, 1);
    assert_eq!(h.core.stats().wills_published, 1);
}

#[test]
fn anything_before_connect_and_second_connect_close() {
    let mut h = H::new();
    let conn = h.open();
    let out = h.send(conn, Packet::Pingreq);
    assert!(matches!(close_of(&out, conn), Some(CloseReason::Violation(_))), "§3.1.0-1");
    assert!(packets(&out, conn).is_empty());
    // Input after close is ignored.
    assert!(h.send(conn, Packet::connect(connect_packet("a", true, 0))).is_empty());

    let (conn, _, _) = h.connect("a", true);
    let out = h.send(conn, Packet::connect(connect_packet("a", true, 0)));
    assert!(matches!(close_of(&out, conn), Some(CloseReason::Violation(_))), "§3.1.0-2");
    let (conn, _, _) = h.connect("b", true);
    let out = h.send(conn, Packet::Pingresp);
    assert!(matches!(close_of(&out, conn), Some(CloseReason::Violation(_))));
    assert_eq!(h.core.stats().violations, 3);
}

#[test]
fn malformed_packet_closes_publishes_will_and_spares_others() {
    let mut h = H::new();
    let (watcher, _, _) = h.connect("watcher", true);
    h.send(watcher, subscribe(1, &[("will/#", QoS::Level1)]));
    let mut c = connect_packet("bad", true, 0);
    c.last_will = Some(LastWill::new(QoS::Level1, tn("will/bad"), Bytes::from_static(b"gone")));
    let (bad, _) = h.connect_with(c);
    let mut out = Vec::new();
    h.core.malformed(bad, CONTROL_CHANNEL, &CodecError::BadHeader(0x41), h.now, &mut out);
    assert!(matches!(close_of(&out, bad), Some(CloseReason::Violation(_))));
    // §3.1.2-8: the will of a connection closed for a protocol error is published.
    assert_eq!(publishes(&out, watcher), vec![("will/bad".into(), "gone".into(), 1, Some(1), false, false)]);
    // The watcher still works.
    let out = h.send(watcher, Packet::Pingreq);
    assert_eq!(packets(&out, watcher), vec![Packet::Pingresp]);
}

#[test]
fn qos0_qos1_qos2_flows_both_ways() {
    let mut h = H::new();
    let (sub, _, _) = h.connect("sub", true);
    let out = h.send(sub, subscribe(7, &[("t/#", QoS::Level2)]));
    assert_eq!(
        packets(&out, sub),
        vec![Packet::Suback(Suback::new(pid(7), vec![SubscribeReasonCode::GrantedQoS2]))],
        "§3.8.4-1"
    );
    let (publ, _, _) = h.connect("pub", true);

    // QoS 0: delivered, nothing back.
    let out = h.send(publ, publish("t/0", QoS::Level0, 0, "zero"));
    assert!(packets(&out, publ).is_empty());
    assert_eq!(publishes(&out, sub), vec![("t/0".into(), "zero".into(), 0, None, false, false)]);

    // QoS 1: PUBACK to the publisher, delivery with a broker-chosen id; PUBACK completes it.
    let out = h.send(publ, publish("t/1", QoS::Level1, 11, "one"));
    assert_eq!(packets(&out, publ), vec![Packet::puback(pid(11))]);
    let got = publishes(&out, sub);
    assert_eq!(got.len(), 1);
    let out_id = got[0].3.unwrap();
    assert_eq!(got[0].2, 1);
    assert_eq!(h.core.session_state("sub").unwrap().inflight, 1);
    h.send(sub, Packet::puback(pid(out_id)));
    assert_eq!(h.core.session_state("sub").unwrap().inflight, 0);

    // QoS 2 inbound, method B: PUBREC, nothing delivered until PUBREL.
    let out = h.send(publ, publish("t/2", QoS::Level2, 22, "two"));
    assert_eq!(packets(&out, publ), vec![Packet::pubrec(pid(22))]);
    assert!(publishes(&out, sub).is_empty(), "§4.3.3 method B: not forwarded before PUBREL");
    // A duplicate PUBLISH before PUBREL: PUBREC again, still stored once.
    let mut dup = publish("t/2", QoS::Level2, 22, "two");
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    let out = h.send(publ, dup);
    assert_eq!(packets(&out, publ), vec![Packet::pubrec(pid(22))]);
    assert_eq!(h.core.session_state("pub").unwrap().awaiting_rel, 1);
    let out = h.send(publ, Packet::pubrel(pid(22)));
    assert_eq!(packets(&out, publ), vec![Packet::pubcomp(pid(22))]);
    let got = publishes(&out, sub);
    assert_eq!(got.len(), 1, "exactly once");
    assert_eq!((got[0].0.as_str(), got[0].2), ("t/2", 2));
    let out_id = got[0].3.unwrap();
    // A PUBREL repeated (e.g. after a reconnect) gets PUBCOMP and no second delivery.
    let out = h.send(publ, Packet::pubrel(pid(22)));
    assert_eq!(packets(&out, publ), vec![Packet::pubcomp(pid(22))]);
    assert!(publishes(&out, sub).is_empty());

    // QoS 2 outbound: PUBREC → PUBREL; a repeated PUBREC → PUBREL again; PUBCOMP completes.
    let out = h.send(sub, Packet::pubrec(pid(out_id)));
    assert_eq!(packets(&out, sub), vec![Packet::pubrel(pid(out_id))]);
    let out = h.send(sub, Packet::pubrec(pid(out_id)));
    assert_eq!(packets(&out, sub), vec![Packet::pubrel(pid(out_id))]);
    assert_eq!(h.core.session_state("sub").unwrap().inflight, 1);
    h.send(sub, Packet::pubcomp(pid(out_id)));
    assert_eq!(h.core.session_state("sub").unwrap().inflight, 0);
}

#[test]
fn granted_and_delivered_qos() {
    let mut h = H::with(|c| c.max_qos = QoS::Level1);
    let (sub, _, _) = h.connect("sub", true);
    let out = h.send(sub, subscribe(1, &[("a", QoS::Level2), ("b", QoS::Level0)]));
    // §3.9.3: granted = min(requested, server maximum).
    assert_eq!(
        packets(&out, sub),
        vec![Packet::Suback(Suback::new(
            pid(1),
            vec![SubscribeReasonCode::GrantedQoS1, SubscribeReasonCode::GrantedQoS0]
        ))]
    );
    let (p, _, _) = h.connect("p", true);
    // §3.8.4: each delivery uses min(granted, message QoS).
    let out = h.send(p, publish("a", QoS::Level2, 1, "x"));
    assert!(publishes(&out, sub).is_empty()); // method B: on PUBREL
    let out = h.send(p, Packet::pubrel(pid(1)));
    assert_eq!(publishes(&out, sub)[0].2, 1);
    let out = h.send(p, publish("b", QoS::Level1, 2, "y"));
    assert_eq!(publishes(&out, sub)[0].2, 0);
    let out = h.send(p, publish("a", QoS::Level0, 0, "z"));
    assert_eq!(publishes(&out, sub)[0].2, 0);
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let mut h = H::new();
    let (sub, _, _) = h.connect("sub", true);
    h.send(sub, subscribe(1, &[("a/#", QoS::Level0), ("a/+", QoS::Level1), ("a/b", QoS::Level0), ("#", QoS::Level0)]));
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("a/b", QoS::Level2, 5, "m"));
    assert!(publishes(&out, sub).is_empty());
    let out = h.send(p, Packet::pubrel(pid(5)));
    let got = publishes(&out, sub);
    assert_eq!(got.len(), 1, "one delivery: {got:?}");
    assert_eq!(got[0].2, 1, "at the highest granted QoS");
}

#[test]
fn dollar_topics_and_wildcards() {
    let mut h = H::new();
    let (all, _, _) = h.connect("all", true);
    h.send(all, subscribe(1, &[("#", QoS::Level0), ("+/x", QoS::Level0)]));
    let (sys, _, _) = h.connect("sys", true);
    h.send(sys, subscribe(1, &[("$SYS/#", QoS::Level0)]));
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("$SYS/x", QoS::Level0, 0, "s"));
    assert!(publishes(&out, all).is_empty(), "§4.7.2-1");
    assert_eq!(publishes(&out, sys).len(), 1);
    let out = h.send(p, publish("q/x", QoS::Level0, 0, "s"));
    assert_eq!(publishes(&out, all).len(), 1);
    assert!(publishes(&out, sys).is_empty());
}

#[test]
fn retained_set_replace_clear_and_deliver_on_subscribe() {
    let mut h = H::new();
    let (p, _, _) = h.connect("p", true);
    let (live, _, _) = h.connect("live", true);
    h.send(live, subscribe(1, &[("r/#", QoS::Level1)]));
    let out = h.send(p, retained("r/a", QoS::Level1, 1, "first"));
    // §3.3.1-9: forwarded to an existing subscription with RETAIN 0.
    assert!(!publishes(&out, live)[0].4);
    h.send(p, retained("r/a", QoS::Level0, 0, "second")); // replaces (§3.3.1-7)
    h.send(p, retained("r/b", QoS::Level1, 2, "bee"));
    h.send(p, publish("r/c", QoS::Level1, 3, "not retained"));
    assert_eq!(h.core.stats().retained, 2);

    let (late, _, _) = h.connect("late", true);
    let out = h.send(late, subscribe(9, &[("r/+", QoS::Level1)]));
    let sent = packets(&out, late);
    assert!(matches!(sent[0], Packet::Suback(_)), "SUBACK first");
    let mut got = publishes(&out, late);
    got.sort();
    // §3.3.1-6: retained messages on subscribe, RETAIN 1, QoS min(granted, stored).
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0.as_str(), got[0].1.as_str(), got[0].2, got[0].4), ("r/a", "second", 0, true));
    assert_eq!((got[1].0.as_str(), got[1].1.as_str(), got[1].2, got[1].4), ("r/b", "bee", 1, true));

    // §3.3.1-10: an empty retained message clears the topic and is still forwarded.
    let out = h.send(p, retained("r/a", QoS::Level0, 0, ""));
    assert_eq!(publishes(&out, live).len(), 1);
    assert_eq!(h.core.stats().retained, 1);
    let (later, _, _) = h.connect("later", true);
    let out = h.send(later, subscribe(1, &[("r/#", QoS::Level0)]));
    assert_eq!(publishes(&out, later).iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), vec!["r/b"]);
    // Subscribing again to an identical filter re-sends the retained messages (§3.8.4-3).
    let out = h.send(later, subscribe(2, &[("r/#", QoS::Level0)]));
    assert_eq!(publishes(&out, later).len(), 1);
    assert_eq!(h.core.stats().subscriptions, 3);
}

#[test]
fn persistent_session_keeps_subscriptions_and_messages_while_offline() {
    let mut h = H::new();
    let (s, present, _) = h.connect("dev", false);
    assert!(!present);
    h.send(s, subscribe(1, &[("d/#", QoS::Level2)]));
    let out = h.send(s, Packet::disconnect(DisconnectReasonCode::NormalDisconnect));
    assert_eq!(close_of(&out, s), Some(CloseReason::Disconnect));
    h.lost(s);
    assert!(!h.core.session_state("dev").unwrap().online);

    let (p, _, _) = h.connect("p", true);
    h.send(p, publish("d/0", QoS::Level0, 0, "zero"));
    h.send(p, publish("d/1", QoS::Level1, 1, "one"));
    h.send(p, publish("d/2", QoS::Level2, 2, "two"));
    h.send(p, Packet::pubrel(pid(2)));
    assert_eq!(h.core.session_state("dev").unwrap().queued, 3);

    // §3.2.2-2: session present; queued messages follow the CONNACK in order.
    let (s2, present, out) = h.connect("dev", false);
    assert!(present);
    let got = publishes(&out, s2);
    assert_eq!(got.iter().map(|m| (m.0.as_str(), m.2)).collect::<Vec<_>>(), vec![("d/0", 0), ("d/1", 1), ("d/2", 2)]);
    let out = h.send(s2, Packet::Pingreq);
    assert_eq!(packets(&out, s2), vec![Packet::Pingresp]);
    h.lost(s2);

    // Clean session 1 discards it (§3.1.2-6).
    let (s3, present, _) = h.connect("dev", true);
    assert!(!present);
    let out = h.send(p, publish("d/x", QoS::Level1, 3, "x"));
    assert!(publishes(&out, s3).is_empty());
    h.lost(s3);
    assert!(h.core.session_state("dev").is_none(), "clean session ends with its connection");
}

#[test]
fn unacknowledged_messages_are_retransmitted_with_dup_on_reconnect() {
    let mut h = H::new();
    let (s, _, _) = h.connect("s", false);
    h.send(s, subscribe(1, &[("t", QoS::Level2)]));
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("t", QoS::Level1, 1, "q1"));
    let q1 = publishes(&out, s)[0].3.unwrap();
    h.send(p, publish("t", QoS::Level2, 2, "q2"));
    let out = h.send(p, Packet::pubrel(pid(2)));
    let q2 = publishes(&out, s)[0].3.unwrap();
    h.send(p, publish("t", QoS::Level2, 3, "q2b"));
    let out = h.send(p, Packet::pubrel(pid(3)));
    let q3 = publishes(&out, s)[0].3.unwrap();
    assert!(q1 != q2 && q2 != q3);
    // The subscriber acknowledges the second QoS 2 message's PUBLISH only (PUBREC).
    let out = h.send(s, Packet::pubrec(pid(q3)));
    assert_eq!(packets(&out, s), vec![Packet::pubrel(pid(q3))]);
    h.lost(s); // connection drops

    // §4.4: PUBLISH re-sent with DUP and the same ids, PUBREL re-sent, original order.
    let (s2, present, out) = h.connect("s", false);
    assert!(present);
    let sent = packets(&out, s2);
    assert!(matches!(sent[0], Packet::Connack(_)));
    let rest: Vec<_> = sent[1..]
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => {
                (format!("PUBLISH {}", String::from_utf8_lossy(&p.payload)), p.qos_pid.pid().unwrap().value(), p.dup)
            }
            Packet::Pubrel(r) => ("PUBREL".to_string(), r.pid.value(), false),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        rest,
        vec![("PUBLISH q1".into(), q1, true), ("PUBLISH q2".into(), q2, true), ("PUBREL".into(), q3, false)]
    );
    h.send(s2, Packet::puback(pid(q1)));
    h.send(s2, Packet::pubrec(pid(q2)));
    h.send(s2, Packet::pubcomp(pid(q2)));
    h.send(s2, Packet::pubcomp(pid(q3)));
    assert_eq!(h.core.session_state("s").unwrap().inflight, 0);
}

#[test]
fn inbound_qos2_state_survives_reconnect() {
    // The publisher's PUBLISH was PUBREC'd, then the connection dropped before PUBREL.
    let mut h = H::new();
    let (sub, _, _) = h.connect("sub", true);
    h.send(sub, subscribe(1, &[("t", QoS::Level2)]));
    let (p, _, _) = h.connect("p", false);
    h.send(p, publish("t", QoS::Level2, 9, "once"));
    h.lost(p);
    let (p2, present, _) = h.connect("p", false);
    assert!(present);
    // The client re-sends the PUBLISH (DUP) then PUBREL: one delivery.
    let mut dup = publish("t", QoS::Level2, 9, "once");
    if let Packet::Publish(x) = &mut dup {
        x.dup = true;
    }
    let out = h.send(p2, dup);
    assert!(publishes(&out, sub).is_empty());
    let out = h.send(p2, Packet::pubrel(pid(9)));
    assert_eq!(publishes(&out, sub).len(), 1);
}

#[test]
fn takeover_closes_the_first_connection() {
    let mut h = H::new();
    let (watch, _, _) = h.connect("watch", true);
    h.send(watch, subscribe(1, &[("w", QoS::Level0)]));
    let mut c = connect_packet("dup", false, 0);
    c.last_will = Some(LastWill::new(QoS::Level0, tn("w"), Bytes::from_static(b"old gone")));
    let (first, _) = h.connect_with(c);
    h.send(first, subscribe(1, &[("x", QoS::Level1)]));
    let (second, out) = h.connect_with(connect_packet("dup", false, 0));
    // §3.1.4-2: the first connection is closed; the session stays (clean 0) and is resumed.
    assert_eq!(close_of(&out, first), Some(CloseReason::TakenOver));
    assert_eq!(packets(&out, second), vec![Packet::connack(true, ConnectReasonCode::Success)]);
    assert_eq!(publishes(&out, watch).len(), 1, "the old connection's will");
    assert_eq!(h.core.stats().takeovers, 1);
    // The old connection's late input and loss do not touch the session.
    assert!(h.send(first, Packet::Pingreq).is_empty());
    h.lost(first);
    assert!(h.core.session_state("dup").unwrap().online);
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("x", QoS::Level1, 1, "to second"));
    assert_eq!(publishes(&out, second).len(), 1);
    assert!(publishes(&out, first).is_empty());
}

#[test]
fn will_on_abnormal_close_not_on_disconnect() {
    let mut h = H::new();
    let (watch, _, _) = h.connect("watch", true);
    h.send(watch, subscribe(1, &[("w/#", QoS::Level1)]));
    let will = |who: &str| {
        let mut c = connect_packet(who, true, 0);
        let mut w = LastWill::new(QoS::Level1, tn(&format!("w/{who}")), Bytes::from_static(b"bye"));
        w.retain = true;
        c.last_will = Some(w);
        c
    };
    let (a, _) = h.connect_with(will("a"));
    let out = h.lost(a);
    let got = publishes(&out, watch);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "w/a");
    assert_eq!(h.core.stats().retained, 1, "a retained will is retained");
    let (b, _) = h.connect_with(will("b"));
    h.send(b, Packet::disconnect(DisconnectReasonCode::NormalDisconnect));
    let out = h.lost(b);
    assert!(publishes(&out, watch).is_empty(), "§3.14.4-3");
    assert_eq!(h.core.stats().wills_published, 1);
}

#[test]
fn keepalive_expiry_at_one_and_a_half_times_publishes_the_will() {
    let mut h = H::new();
    let (watch, _, _) = h.connect("watch", true);
    h.send(watch, subscribe(1, &[("w", QoS::Level0)]));
    let mut c = connect_packet("k", true, 10);
    c.last_will = Some(LastWill::new(QoS::Level0, tn("w"), Bytes::from_static(b"timed out")));
    let (k, out) = h.connect_with(c);
    assert!(h.core.poll_timeout().is_some(), "a timer is armed");
    let _ = out;
    // Activity at 9 s pushes the deadline to 9 + 15 s.
    h.now += Duration::from_secs(9);
    h.send(k, Packet::Pingreq);
    let out = h.advance(Duration::from_secs(14)); // t = 23 s < 24 s
    assert!(close_of(&out, k).is_none());
    assert!(h.core.poll_timeout().is_some());
    let out = h.advance(Duration::from_millis(1001)); // t = 24.001 s
    assert_eq!(close_of(&out, k), Some(CloseReason::KeepaliveTimeout), "§3.1.2-24");
    assert_eq!(publishes(&out, watch), vec![("w".into(), "timed out".into(), 0, None, false, false)]);
    assert_eq!(h.core.stats().keepalive_timeouts, 1);
    // The watcher has keepalive 0: never expires.
    let out = h.advance(Duration::from_secs(3600));
    assert!(close_of(&out, watch).is_none());
}

#[test]
fn short_keepalive_is_not_masked_by_the_connect_deadline() {
    let mut h = H::new();
    let (k, _) = h.connect_with(connect_packet("k", true, 1));
    let out = h.advance(Duration::from_millis(1501));
    assert_eq!(close_of(&out, k), Some(CloseReason::KeepaliveTimeout));
}

#[test]
fn connect_timeout() {
    let mut h = H::new();
    let conn = h.open();
    assert!(close_of(&h.advance(Duration::from_secs(9)), conn).is_none());
    assert_eq!(close_of(&h.advance(Duration::from_secs(2)), conn), Some(CloseReason::ConnectTimeout));
}

#[test]
fn offline_cap_drops_oldest_qos0_then_refuses() {
    let mut h = H::with(|c| c.max_queued_messages = 3);
    let (s, _, _) = h.connect("s", false);
    h.send(s, subscribe(1, &[("t", QoS::Level1)]));
    h.lost(s);
    let (p, _, _) = h.connect("p", true);
    h.send(p, publish("t", QoS::Level0, 0, "a0"));
    h.send(p, publish("t", QoS::Level1, 1, "b1"));
    h.send(p, publish("t", QoS::Level0, 0, "c0"));
    assert_eq!(h.core.session_state("s").unwrap().queued, 3);
    h.send(p, publish("t", QoS::Level1, 2, "d1")); // drops a0
    h.send(p, publish("t", QoS::Level1, 3, "e1")); // drops c0
    h.send(p, publish("t", QoS::Level1, 4, "f1")); // no QoS 0 left: refused
    let info = h.core.session_state("s").unwrap();
    assert_eq!((info.queued, info.dropped), (3, 3));
    assert_eq!(h.core.stats().dropped_queue_full, 3);
    let (s2, _, out) = h.connect("s", false);
    let got: Vec<_> = publishes(&out, s2).into_iter().map(|m| m.1).collect();
    assert_eq!(got, vec!["b1", "d1", "e1"]);
}

#[test]
fn inflight_window_queues_and_pumps() {
    let mut h = H::with(|c| c.max_inflight = 2);
    let (s, _, _) = h.connect("s", true);
    h.send(s, subscribe(1, &[("t", QoS::Level1)]));
    let (p, _, _) = h.connect("p", true);
    let mut ids = Vec::new();
    for i in 1..=5 {
        let out = h.send(p, publish("t", QoS::Level1, i, &format!("m{i}")));
        ids.extend(publishes(&out, s).into_iter().map(|m| m.3.unwrap()));
    }
    assert_eq!(ids.len(), 2);
    assert_eq!(h.core.session_state("s").unwrap().queued, 3);
    // QoS 0 is not held behind the window.
    let out = h.send(p, publish("t", QoS::Level0, 0, "zero"));
    assert_eq!(publishes(&out, s).len(), 1);
    let out = h.send(s, Packet::puback(pid(ids[0])));
    let got = publishes(&out, s);
    assert_eq!(got.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(), vec!["m3"]);
}

#[test]
fn channels_scope_subscriptions_flows_and_ids() {
    let mut h = H::new();
    let (c, _, _) = h.connect("multi", true);
    // The same filter on two channels delivers once per channel, each on its own channel.
    let out = h.send_on(c, 1, subscribe(1, &[("t", QoS::Level1)]));
    assert_eq!(sends(&out, c)[0].0, 1, "SUBACK on the SUBSCRIBE's channel");
    h.send_on(c, 2, subscribe(1, &[("t", QoS::Level1)]));
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("t", QoS::Level1, 1, "x"));
    let mut got: Vec<(ChannelId, u16)> = sends(&out, c)
        .into_iter()
        .filter_map(|(ch, p)| match p {
            Packet::Publish(p) => Some((ch, p.qos_pid.pid().unwrap().value())),
            _ => None,
        })
        .collect();
    got.sort();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0, got[1].0), (1, 2));
    assert_ne!(got[0].1, got[1].1, "outbound ids unique across channels");

    // Inbound QoS 2 flows are keyed by (channel, id): id 5 on channels 1 and 2 are two flows.
    let (sink, _, _) = h.connect("sink", true);
    h.send(sink, subscribe(1, &[("q", QoS::Level2)]));
    let out = h.send_on(c, 1, publish("q", QoS::Level2, 5, "from 1"));
    assert_eq!(sends(&out, c), vec![(1, Packet::pubrec(pid(5)))], "ack on the PUBLISH's channel");
    h.send_on(c, 2, publish("q", QoS::Level2, 5, "from 2"));
    assert_eq!(h.core.session_state("multi").unwrap().awaiting_rel, 2);
    let out = h.send_on(c, 2, Packet::pubrel(pid(5)));
    assert_eq!(sends(&out, c), vec![(2, Packet::pubcomp(pid(5)))]);
    assert_eq!(publishes(&out, sink)[0].1, "from 2");

    // Closing channel 1 parks its subscription on the control channel, discards its inbound
    // flow, and moves its in-flight message to channel 2 (which matches "t"), re-sent with DUP
    // (docs/mqtt-over-quic.md §6.2-6.4).
    let out = h.end(c, 1, ChannelEnd::Finished);
    assert_eq!(publishes_on(&out, c), vec![(2, "x".into(), 1, Some(got[0].1), true)]);
    let info = h.core.session_state("multi").unwrap();
    assert_eq!((info.subscriptions, info.parked, info.awaiting_rel, info.inflight), (2, 1, 0, 2));
    assert_eq!((h.core.stats().moved_channel_closed, info.dropped), (1, 0));
    let out = h.send(p, publish("t", QoS::Level0, 0, "y"));
    assert_eq!(sends(&out, c).iter().map(|(ch, _)| *ch).collect::<Vec<_>>(), vec![0, 2]);
}

#[test]
fn unsubscribe_and_ping() {
    let mut h = H::new();
    let (s, _, _) = h.connect("s", true);
    h.send(s, subscribe(1, &[("a", QoS::Level0), ("b", QoS::Level0)]));
    let out = h.send(
        s,
        Packet::Unsubscribe(Unsubscribe::new(
            pid(2),
            vec![
                super::super::codec::TopicFilter::try_from("a").unwrap(),
                super::super::codec::TopicFilter::try_from("zzz").unwrap(),
            ],
        )),
    );
    assert_eq!(
        packets(&out, s),
        vec![Packet::Unsuback(crate::codec::Unsuback::new(pid(2), Vec::new()))],
        "§3.10.4-4, §3.10.4-5"
    );
    let (p, _, _) = h.connect("p", true);
    assert!(publishes(&h.send(p, publish("a", QoS::Level0, 0, "")), s).is_empty());
    assert_eq!(publishes(&h.send(p, publish("b", QoS::Level0, 0, "")), s).len(), 1);
    assert_eq!(packets(&h.send(s, Packet::Pingreq), s), vec![Packet::Pingresp]);
}

#[test]
fn too_many_awaiting_pubrel_disconnects() {
    let mut h = H::with(|c| c.max_awaiting_rel = 2);
    let (p, _, _) = h.connect("p", true);
    h.send(p, publish("t", QoS::Level2, 1, ""));
    h.send(p, publish("t", QoS::Level2, 2, ""));
    let out = h.send(p, publish("t", QoS::Level2, 3, ""));
    assert!(matches!(close_of(&out, p), Some(CloseReason::Violation(_))));
}

#[test]
fn clean_session_state_is_gone_after_close_and_memory_shrinks() {
    let mut h = H::new();
    let (s, _, _) = h.connect("s", true);
    h.send(s, subscribe(1, &[("a/b/c", QoS::Level0)]));
    h.lost(s);
    let st = h.core.stats();
    assert_eq!((st.connections, st.sessions, st.subscriptions), (0, 0, 0));
}

#[test]
fn control_packets_only_on_the_control_channel() {
    let mut h = H::new();
    let (c, _, _) = h.connect("c", true);
    assert_eq!(sends(&h.send_on(c, 3, Packet::Pingreq), c), vec![], "no PINGRESP on a data channel");
    assert!(h.send_on(c, 3, Packet::Pingreq).is_empty(), "the connection is closing");
    let (d, _, _) = h.connect("d", true);
    let out = h.send_on(d, 5, Packet::disconnect(DisconnectReasonCode::NormalDisconnect));
    assert!(matches!(close_of(&out, d), Some(CloseReason::Violation(_))));
    let (e, _, _) = h.connect("e", true);
    let out = h.send_on(e, 0, Packet::Pingreq);
    assert_eq!(sends(&out, e), vec![(0, Packet::Pingresp)]);
}

// ---- docs/mqtt-over-quic.md §6.1-6.5: a data stream that ends loses nothing acknowledged ----

/// One subscriber "m" with outbound flows on data channel 4 in every state, then channel 4 ends
/// with `end`. With `other`, live data channels 8 ("t/+", matching) and 12 ("t/#", matching,
/// higher id) and 16 ("zzz", not matching) exist; without, only the control channel is left.
fn outbound_flows_survive_the_end_of_their_channel(end: ChannelEnd, other: bool) {
    // A window of three per channel (§6.12): each subscribing channel's fourth message waits.
    let mut h = H::with(|c| c.max_inflight = 3);
    let (m, _, _) = h.connect("m", true);
    h.send_on(m, 4, subscribe(1, &[("t/#", QoS::Level2)]));
    if other {
        h.send_on(m, 8, subscribe(1, &[("t/+", QoS::Level2)]));
        h.send_on(m, 12, subscribe(1, &[("t/#", QoS::Level2)]));
        h.send_on(m, 16, subscribe(1, &[("zzz", QoS::Level2)]));
    }
    let (p, _, _) = h.connect("p", true);
    // On channel 4: m1 QoS 1 awaiting PUBACK, m2 QoS 2 awaiting PUBREC, m3 QoS 2 PUBREC'd
    // (awaiting PUBCOMP), m4 queued behind the window. Channel 8's own flights: `own8`.
    let mut own8 = Vec::new();
    let mut id_on4 = |out: &[Action]| {
        own8.extend(publishes_on(out, m).into_iter().filter(|x| x.0 == 8).filter_map(|x| x.3));
        publishes_on(out, m).into_iter().find(|x| x.0 == 4).and_then(|x| x.3).unwrap()
    };
    let i1 = id_on4(&h.send(p, publish("t/a", QoS::Level1, 1, "m1")));
    h.send(p, publish("t/b", QoS::Level2, 2, "m2"));
    let i2 = id_on4(&h.send(p, Packet::pubrel(pid(2))));
    h.send(p, publish("t/c", QoS::Level2, 3, "m3"));
    let i3 = id_on4(&h.send(p, Packet::pubrel(pid(3))));
    assert_eq!(own8.len(), if other { 3 } else { 0 });
    let out = h.send_on(m, 4, Packet::pubrec(pid(i3)));
    assert_eq!(sends(&out, m), vec![(4, Packet::pubrel(pid(i3)))]);
    let out = h.send(p, publish("t/d", QoS::Level1, 4, "m4"));
    assert!(publishes_on(&out, m).is_empty(), "window full: m4 queued");
    let before = h.core.session_state("m").unwrap();

    let out = h.end(m, 4, end);
    // §6.3: re-sent at once on the lowest live matching data channel (8), else on control; in
    // order of first transmission; PUBLISH with DUP and the same id; PUBREL for m3.
    let to = if other { 8 } else { CONTROL_CHANNEL };
    let expected = vec![
        (to, Packet::Publish(Publish { dup: true, ..publish_of("t/a", QoS::Level1, i1, "m1") })),
        (to, Packet::Publish(Publish { dup: true, ..publish_of("t/b", QoS::Level2, i2, "m2") })),
        (to, Packet::pubrel(pid(i3))),
    ];
    assert_eq!(sends(&out, m), expected, "{end:?}, other streams: {other}");
    // Nothing dropped, nothing lost: same flights, same queue, one parked subscription.
    let after = h.core.session_state("m").unwrap();
    assert_eq!((after.inflight, after.queued, after.dropped), (before.inflight, before.queued, 0));
    assert_eq!(after.parked, 1);
    let st = h.core.stats();
    assert_eq!((st.moved_channel_closed, st.dropped_queue_full), (4, 0));

    // The flows complete on the new channel; the queued m4 follows there once a slot of that
    // channel's window frees. On channel 8 the three moved flights count against its window of
    // three, beside its own three: m4 waits until fewer than three are in flight there (§6.12).
    let mut outs = Vec::new();
    outs.extend(h.send_on(m, to, Packet::puback(pid(i1))));
    let out = h.send_on(m, to, Packet::pubrec(pid(i2)));
    assert_eq!(sends(&out, m), vec![(to, Packet::pubrel(pid(i2)))]);
    outs.extend(h.send_on(m, to, Packet::pubcomp(pid(i2))));
    outs.extend(h.send_on(m, to, Packet::pubcomp(pid(i3))));
    let m4_of = |out: &[Action]| publishes_on(out, m).into_iter().filter(|x| x.1 == "m4").collect::<Vec<_>>();
    let m4 = if other {
        assert!(m4_of(&outs).is_empty(), "channel 8 still has its own three in flight");
        m4_of(&h.send_on(m, 8, Packet::puback(pid(own8[0]))))
    } else {
        m4_of(&outs)
    };
    assert_eq!(m4.len(), 1);
    assert_eq!((m4[0].0, m4[0].4), (to, false), "queued m4 moved to channel {to}");
    let out = h.send_on(m, to, Packet::puback(pid(m4[0].3.unwrap())));
    if other {
        // Channel 8's own m4 (queued after channel 4's, which arrived first) follows.
        assert_eq!(m4_of(&out).iter().map(|x| (x.0, x.4)).collect::<Vec<_>>(), vec![(8, false)]);
    }
    let info = h.core.session_state("m").unwrap();
    // Left: channel 8's own m2, m3, m4 and channel 12's three in flight, its m4 queued.
    let left = if other { (6, 1) } else { (0, 0) };
    assert_eq!((info.inflight, info.queued), left, "channel 4's flows are all complete");
    // Nothing is ever sent on channel 4 again; its parked subscription delivers on control.
    let out = h.send(p, publish("t/e", QoS::Level0, 0, "m5"));
    let chans: Vec<ChannelId> = publishes_on(&out, m).iter().map(|x| x.0).collect();
    assert_eq!(chans, if other { vec![0, 8, 12] } else { vec![0] });
}

/// A PUBLISH packet body (for building expected packets).
fn publish_of(topic: &str, qos: QoS, id: u16, payload: &str) -> Publish {
    match publish(topic, qos, id, payload) {
        Packet::Publish(p) => p,
        _ => unreachable!(),
    }
}

#[test]
fn data_channel_finished_mid_flows_loses_nothing() {
    outbound_flows_survive_the_end_of_their_channel(ChannelEnd::Finished, true);
    outbound_flows_survive_the_end_of_their_channel(ChannelEnd::Finished, false);
}

#[test]
fn data_channel_reset_mid_flows_loses_nothing() {
    outbound_flows_survive_the_end_of_their_channel(ChannelEnd::Reset, true);
    outbound_flows_survive_the_end_of_their_channel(ChannelEnd::Reset, false);
}

#[test]
fn data_channel_stop_sending_mid_flows_loses_nothing() {
    outbound_flows_survive_the_end_of_their_channel(ChannelEnd::StopSending, true);
    outbound_flows_survive_the_end_of_their_channel(ChannelEnd::StopSending, false);
}

#[test]
fn control_channel_end_is_not_a_channel_end() {
    let mut h = H::new();
    let (c, _, _) = h.connect("c", true);
    h.send(c, subscribe(1, &[("a", QoS::Level1)]));
    assert!(h.end(c, CONTROL_CHANNEL, ChannelEnd::Reset).is_empty(), "§3.1: the transport closes the connection");
    assert_eq!(h.core.session_state("c").unwrap().parked, 0);
}

#[test]
fn parked_subscription_delivers_on_control_until_a_data_stream_takes_it() {
    let mut h = H::new();
    let (c, _, _) = h.connect("c", true);
    h.send_on(c, 4, subscribe(1, &[("a/#", QoS::Level1)]));
    let (p, _, _) = h.connect("p", true);
    h.end(c, 4, ChannelEnd::Reset);
    let info = h.core.session_state("c").unwrap();
    assert_eq!((info.subscriptions, info.parked), (1, 1));
    // §6.2: delivered on the control channel at the subscription's QoS.
    let out = h.send(p, publish("a/x", QoS::Level1, 1, "one"));
    let got = publishes_on(&out, c);
    assert_eq!((got.len(), got[0].0, got[0].2), (1, 0, 1));
    h.send(c, Packet::puback(pid(got[0].3.unwrap())));
    // A SUBSCRIBE of the same filter on a data stream takes it: one delivery, on that stream.
    let out = h.send_on(c, 8, subscribe(2, &[("a/#", QoS::Level1)]));
    assert_eq!(sends(&out, c)[0].0, 8, "SUBACK on the new stream");
    assert_eq!(h.core.session_state("c").unwrap().parked, 0);
    let out = h.send(p, publish("a/y", QoS::Level0, 0, "two"));
    assert_eq!(publishes_on(&out, c), vec![(8, "two".into(), 0, None, false)], "no double delivery");
    assert_eq!(h.core.stats().subscriptions, 1);
}

#[test]
fn explicit_control_subscription_merges_with_a_parked_one_and_is_not_taken() {
    let mut h = H::new();
    let (c, _, _) = h.connect("c", true);
    h.send(c, subscribe(1, &[("a", QoS::Level0)]));
    h.send_on(c, 4, subscribe(1, &[("a", QoS::Level2)]));
    let (p, _, _) = h.connect("p", true);
    h.end(c, 4, ChannelEnd::StopSending);
    // §6.2: one route on the control channel, at the higher QoS.
    let out = h.send(p, publish("a", QoS::Level1, 1, "x"));
    let got = publishes_on(&out, c);
    assert_eq!(got.iter().map(|x| (x.0, x.2)).collect::<Vec<_>>(), vec![(0, 1)]);
    h.send(c, Packet::puback(pid(got[0].3.unwrap())));
    // A data stream takes the parked one; the client's own control subscription (QoS 0) stays.
    h.send_on(c, 8, subscribe(2, &[("a", QoS::Level1)]));
    let out = h.send(p, publish("a", QoS::Level1, 2, "y"));
    let got: Vec<_> = publishes_on(&out, c).iter().map(|x| (x.0, x.2)).collect();
    assert_eq!(got, vec![(0, 0), (8, 1)], "§2.5: control and stream 8 are two subscriptions");
    let info = h.core.session_state("c").unwrap();
    assert_eq!((info.subscriptions, info.parked), (2, 0));
}

#[test]
fn unsubscribe_on_any_stream_removes_a_parked_subscription() {
    let mut h = H::new();
    let (c, _, _) = h.connect("c", true);
    h.send_on(c, 4, subscribe(1, &[("a", QoS::Level1), ("b", QoS::Level1)]));
    h.end(c, 4, ChannelEnd::Finished);
    assert_eq!(h.core.session_state("c").unwrap().parked, 2);
    // On another data stream (which has no subscription of its own to "a").
    let out = h.send_on(c, 8, unsubscribe(3, &["a"]));
    assert_eq!(sends(&out, c), vec![(8, Packet::Unsuback(crate::codec::Unsuback::new(pid(3), Vec::new())))]);
    // On the control stream.
    h.send(c, unsubscribe(4, &["b"]));
    let info = h.core.session_state("c").unwrap();
    assert_eq!((info.subscriptions, info.parked), (0, 0));
    assert_eq!(h.core.stats().subscriptions, 0);
    let (p, _, _) = h.connect("p", true);
    assert!(publishes(&h.send(p, publish("a", QoS::Level0, 0, "")), c).is_empty());
    assert!(publishes(&h.send(p, publish("b", QoS::Level0, 0, "")), c).is_empty());
}

#[test]
fn ended_stream_inbound_qos2_is_discarded_and_a_dup_restart_delivers_once() {
    let mut h = H::new();
    let (sink, _, _) = h.connect("sink", true);
    h.send(sink, subscribe(1, &[("q", QoS::Level2)]));
    let (c, _, _) = h.connect("c", true);
    let out = h.send_on(c, 4, publish("q", QoS::Level2, 5, "once"));
    assert_eq!(sends(&out, c), vec![(4, Packet::pubrec(pid(5)))]);
    let out = h.end(c, 4, ChannelEnd::Reset);
    assert!(publishes(&out, sink).is_empty(), "§6.4: nothing delivered before PUBREL");
    assert_eq!(h.core.session_state("c").unwrap().awaiting_rel, 0);
    assert_eq!(h.core.stats().discarded_awaiting_rel, 1);
    // The client restarts the flow on a live stream: PUBLISH with DUP, then PUBREL.
    let out = h.send_on(c, 8, with_dup(publish("q", QoS::Level2, 5, "once")));
    assert_eq!(sends(&out, c), vec![(8, Packet::pubrec(pid(5)))]);
    assert!(publishes(&out, sink).is_empty());
    let out = h.send_on(c, 8, Packet::pubrel(pid(5)));
    assert_eq!(sends(&out, c), vec![(8, Packet::pubcomp(pid(5)))]);
    assert_eq!(publishes(&out, sink).len(), 1, "exactly once");
    let out = h.send_on(c, 8, Packet::pubrel(pid(5)));
    assert_eq!(sends(&out, c), vec![(8, Packet::pubcomp(pid(5)))]);
    assert!(publishes(&out, sink).is_empty(), "never twice");
}

#[test]
fn pubrel_for_a_discarded_flow_gets_pubcomp_and_delivers_nothing() {
    let mut h = H::new();
    let (sink, _, _) = h.connect("sink", true);
    h.send(sink, subscribe(1, &[("q", QoS::Level2)]));
    let (c, _, _) = h.connect("c", true);
    h.send_on(c, 4, publish("q", QoS::Level2, 5, "lost"));
    h.end(c, 4, ChannelEnd::Finished);
    // The client merely completes the flow elsewhere (MQTT 3.1.1 §4.3.3): the message is lost.
    let out = h.send_on(c, 8, Packet::pubrel(pid(5)));
    assert_eq!(sends(&out, c), vec![(8, Packet::pubcomp(pid(5)))]);
    assert!(publishes(&out, sink).is_empty());
    let out = h.send(c, Packet::pubrel(pid(5)));
    assert_eq!(sends(&out, c), vec![(0, Packet::pubcomp(pid(5)))]);
    assert!(publishes(&out, sink).is_empty());
}

// ---- §6.6: persistent sessions resume on the control stream ----

#[test]
fn resumed_persistent_session_delivers_on_control_until_resubscribed_on_a_data_stream() {
    let mut h = H::new();
    let (s, _, _) = h.connect("dev", false);
    h.send_on(s, 4, subscribe(1, &[("d/#", QoS::Level1)]));
    h.send(s, subscribe(2, &[("c", QoS::Level0)])); // an explicit control subscription
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("d/1", QoS::Level1, 1, "inflight"));
    let got = publishes_on(&out, s);
    assert_eq!(got[0].0, 4);
    let i1 = got[0].3.unwrap();
    // An inbound QoS 2 flow on stream 4 and one on the control stream, both awaiting PUBREL.
    h.send_on(s, 4, publish("x", QoS::Level2, 7, "on 4"));
    h.send(s, publish("x", QoS::Level2, 9, "on control"));
    h.lost(s);
    let info = h.core.session_state("dev").unwrap();
    assert_eq!((info.subscriptions, info.parked, info.awaiting_rel), (2, 2, 1), "stream 4's inbound flow discarded");
    h.send(p, publish("d/2", QoS::Level1, 2, "queued"));

    // §6.6: everything on the control stream: the in-flight one with DUP and its id, then the
    // queued one.
    let (s2, present, out) = h.connect("dev", false);
    assert!(present);
    assert_eq!(
        publishes_on(&out, s2),
        vec![(0, "inflight".into(), 1, Some(i1), true), (0, "queued".into(), 1, Some(i1 + 1), false)]
    );
    // A new stream that happens to have the old number does not inherit the old routes.
    h.send_on(s2, 4, subscribe(1, &[("other", QoS::Level0)]));
    let out = h.send(p, publish("d/3", QoS::Level0, 0, "on control"));
    assert_eq!(publishes_on(&out, s2), vec![(0, "on control".into(), 0, None, false)]);
    // Subscribing again on a data stream takes the parked subscription.
    h.send_on(s2, 8, subscribe(2, &[("d/#", QoS::Level1)]));
    let out = h.send(p, publish("d/4", QoS::Level0, 0, "on 8"));
    assert_eq!(publishes_on(&out, s2), vec![(8, "on 8".into(), 0, None, false)]);
    // The control stream's parked "c" still delivers there.
    let out = h.send(p, publish("c", QoS::Level0, 0, "c"));
    assert_eq!(publishes_on(&out, s2), vec![(0, "c".into(), 0, None, false)]);
    // The control stream's inbound QoS 2 flow survived; stream 4's did not (PUBCOMP anyway).
    let (sink, _, _) = h.connect("sink", true);
    h.send(sink, subscribe(1, &[("x", QoS::Level2)]));
    assert_eq!(publishes(&h.send(s2, Packet::pubrel(pid(9))), sink).len(), 1);
    let out = h.send_on(s2, 4, Packet::pubrel(pid(7)));
    assert_eq!((sends(&out, s2), publishes(&out, sink).len()), (vec![(4, Packet::pubcomp(pid(7)))], 0));
    h.send(s2, Packet::puback(pid(i1)));
    h.send(s2, Packet::puback(pid(i1 + 1)));
    assert_eq!(h.core.session_state("dev").unwrap().inflight, 0);
}

// ---- §6.7-6.11: early (0-RTT) connections ----

#[test]
fn early_clean_connect_for_an_unknown_id_subscribe_and_ping_act_at_once() {
    let mut h = H::new();
    let mut early = Vec::new();
    for id in ["fresh", ""] {
        let c = h.open_early();
        early.push(c);
        let out = h.send(c, Packet::connect(connect_packet(id, true, 0)));
        assert_eq!(packets(&out, c), vec![Packet::connack(false, ConnectReasonCode::Success)], "{id:?}");
        let out = h.send(c, subscribe(1, &[("a", QoS::Level1)]));
        assert_eq!(packets(&out, c), vec![Packet::Suback(Suback::new(pid(1), vec![SubscribeReasonCode::GrantedQoS1]))]);
        let out = h.send(c, unsubscribe(2, &["zzz"]));
        assert_eq!(packets(&out, c), vec![Packet::Unsuback(crate::codec::Unsuback::new(pid(2), Vec::new()))]);
        let out = h.send(c, Packet::Pingreq);
        assert_eq!(packets(&out, c), vec![Packet::Pingresp]);
        assert!(h.core.is_early(c));
    }
    let st = h.core.stats();
    assert_eq!((st.early_acted, st.early_held), (8, 0));
    // The early subscription already receives (its effects die with the connection).
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("a", QoS::Level0, 0, "m"));
    assert_eq!(early.iter().map(|c| publishes(&out, *c).len()).collect::<Vec<_>>(), vec![1, 1]);
}

#[test]
fn early_publish_at_any_qos_is_held_until_the_handshake_completes() {
    let mut h = H::new();
    let (watch, _, _) = h.connect("watch", true);
    h.send(watch, subscribe(1, &[("t", QoS::Level2)]));
    let c = h.open_early();
    h.send(c, Packet::connect(connect_packet("early", true, 0)));
    for (qos, id) in [(QoS::Level0, 0), (QoS::Level1, 1), (QoS::Level2, 2)] {
        let out = h.send(c, publish("t", qos, id, &format!("q{}", qos as u8)));
        assert!(out.is_empty(), "held: no ack, nothing routed ({qos:?})");
    }
    assert_eq!(h.core.stats().published, 0);
    assert_eq!(h.core.stats().early_held, 3);
    let out = h.complete(c);
    assert!(!h.core.is_early(c));
    assert_eq!(packets(&out, c), vec![Packet::puback(pid(1)), Packet::pubrec(pid(2))]);
    assert_eq!(publishes(&out, watch).iter().map(|m| m.1.as_str()).collect::<Vec<_>>(), vec!["q0", "q1"]);
    let out = h.send(c, Packet::pubrel(pid(2)));
    assert_eq!(publishes(&out, watch).iter().map(|m| m.1.as_str()).collect::<Vec<_>>(), vec!["q2"]);
}

#[test]
fn early_connect_with_clean_session_0_is_held() {
    let mut h = H::new();
    let c = h.open_early();
    assert!(h.send(c, Packet::connect(connect_packet("p", false, 0))).is_empty());
    assert!(h.core.session_state("p").is_none(), "no session created before the handshake completes");
    let out = h.complete(c);
    assert_eq!(packets(&out, c), vec![Packet::connack(false, ConnectReasonCode::Success)]);
    assert!(h.core.session_state("p").unwrap().online);
}

#[test]
fn early_takeover_is_held_and_the_live_session_is_not_kicked_until_complete() {
    let mut h = H::new();
    let (live, _, _) = h.connect("dup", true);
    let c = h.open_early();
    assert!(h.send(c, Packet::connect(connect_packet("dup", true, 0))).is_empty());
    assert_eq!(packets(&h.send(live, Packet::Pingreq), live), vec![Packet::Pingresp], "still served");
    assert_eq!(h.core.stats().takeovers, 0);
    let out = h.complete(c);
    assert_eq!(close_of(&out, live), Some(CloseReason::TakenOver));
    assert_eq!(packets(&out, c), vec![Packet::connack(false, ConnectReasonCode::Success)]);
}

#[test]
fn early_clean_connect_for_a_stored_session_is_held_and_does_not_wipe_it() {
    let mut h = H::new();
    let (s, _, _) = h.connect("dev", false);
    h.send(s, subscribe(1, &[("d", QoS::Level1)]));
    h.lost(s);
    let c = h.open_early();
    assert!(h.send(c, Packet::connect(connect_packet("dev", true, 0))).is_empty());
    let info = h.core.session_state("dev").unwrap();
    assert_eq!((info.clean, info.subscriptions), (false, 1), "stored session intact");
    let out = h.complete(c);
    assert_eq!(packets(&out, c), vec![Packet::connack(false, ConnectReasonCode::Success)]);
    let info = h.core.session_state("dev").unwrap();
    assert_eq!((info.clean, info.subscriptions), (true, 0), "§3.1.2-6: wiped on completion");
}

#[test]
fn after_a_held_packet_everything_is_held_in_order() {
    let mut h = H::new();
    let c = h.open_early();
    h.send(c, Packet::connect(connect_packet("e", true, 0)));
    assert!(h.send(c, publish("t", QoS::Level1, 1, "x")).is_empty());
    // Would act at once on their own; held behind the PUBLISH.
    assert!(h.send(c, Packet::Pingreq).is_empty());
    assert!(h.send_on(c, 4, subscribe(2, &[("s", QoS::Level1)])).is_empty());
    // A data channel that ends meanwhile ends after its held packets.
    assert!(h.end(c, 4, ChannelEnd::Reset).is_empty());
    assert!(h.send(c, Packet::disconnect(DisconnectReasonCode::NormalDisconnect)).is_empty());
    assert_eq!(h.core.stats().early_held, 4);
    let out = h.complete(c);
    assert_eq!(
        sends(&out, c),
        vec![
            (0, Packet::puback(pid(1))),
            (0, Packet::Pingresp),
            (4, Packet::Suback(Suback::new(pid(2), vec![SubscribeReasonCode::GrantedQoS1]))),
        ]
    );
    assert_eq!(close_of(&out, c), Some(CloseReason::Disconnect));
}

#[test]
fn early_disconnect_is_held() {
    let mut h = H::new();
    let c = h.open_early();
    h.send(c, Packet::connect(connect_packet("e", true, 0)));
    assert!(h.send(c, Packet::disconnect(DisconnectReasonCode::NormalDisconnect)).is_empty());
    assert_eq!(close_of(&h.complete(c), c), Some(CloseReason::Disconnect));
}

#[test]
fn close_while_early_drops_held_packets_publishes_no_will_and_keeps_the_stored_session() {
    let mut h = H::new();
    let (watch, _, _) = h.connect("watch", true);
    h.send(watch, subscribe(1, &[("#", QoS::Level1)]));
    let (s, _, _) = h.connect("dev", false);
    h.send(s, subscribe(1, &[("d", QoS::Level1)]));
    h.lost(s);
    let (p, _, _) = h.connect("p", true);
    h.send(p, publish("d", QoS::Level1, 1, "waiting"));
    assert_eq!(h.core.session_state("dev").unwrap().queued, 1);

    // A held resume with a will, and a held PUBLISH: the connection closes before completion.
    let c = h.open_early();
    let mut connect = connect_packet("dev", false, 0);
    connect.last_will = Some(LastWill::new(QoS::Level1, tn("will/dev"), Bytes::from_static(b"gone")));
    h.send(c, Packet::connect(connect));
    h.send(c, publish("x", QoS::Level1, 1, "never"));
    let out = h.lost(c);
    assert!(out.is_empty(), "nothing published, no will: {out:?}");
    let info = h.core.session_state("dev").unwrap();
    assert_eq!((info.online, info.queued, info.subscriptions), (false, 1, 1), "stored session intact");
    assert_eq!(h.core.stats().early_dropped, 2);

    // An early clean session acted on at once, with a will, closed early: no will either.
    let e = h.open_early();
    let mut connect = connect_packet("e", true, 0);
    connect.last_will = Some(LastWill::new(QoS::Level1, tn("will/e"), Bytes::from_static(b"gone")));
    assert_eq!(packets(&h.send(e, Packet::connect(connect)), e).len(), 1, "CONNACK at once");
    assert!(publishes(&h.lost(e), watch).is_empty());
    assert!(h.core.session_state("e").is_none(), "an early clean session ends with its connection");
    assert_eq!(h.core.stats().wills_published, 0);
}

#[test]
fn early_hold_bound_exceeded_closes_the_connection() {
    let mut h = H::with(|c| c.max_packet_size = 4096);
    let limit = h.core.early_hold_limit();
    let c = h.open_early();
    h.send(c, Packet::connect(connect_packet("big", false, 0)));
    let payload = "x".repeat(4000);
    let mut closed = None;
    for i in 1..=100u16 {
        let out = h.send(c, publish("t", QoS::Level1, i, &payload));
        if let Some(r) = close_of(&out, c) {
            closed = Some((i, r));
            break;
        }
        assert!(out.is_empty());
    }
    let (i, reason) = closed.expect("closed once the bound is exceeded");
    assert!(matches!(&reason, CloseReason::Violation(v) if v.contains("handshake")), "{reason:?}");
    assert!((i as usize) * 4000 > limit - 4096 && (i as usize) * 4000 < limit + 4096, "after about {limit} bytes: {i}");
    assert_eq!(h.core.stats().early_dropped, i as u64); // the CONNECT and i - 1 PUBLISHes
    assert!(h.core.session_state("big").is_none(), "nothing applied");
    assert!(h.complete(c).is_empty());
}

// ---- docs/mqtt-over-quic.md §6.12-6.13: head-of-line independence ----

/// (in flight, queued) on channel `ch` of `client`'s session, after checking the bookkeeping of
/// every session: lane counts add up to the session's totals, lanes are sorted and none idle.
fn lane_of(h: &H, client: &str, ch: ChannelId) -> (u32, usize) {
    for s in h.core.sessions.iter() {
        let f = s.fr();
        let flights = |c: ChannelId| f.inflight.values().filter(|x| x.channel == c).count() as u32;
        assert!(f.lanes.windows(2).all(|w| w[0].channel < w[1].channel), "lanes sorted");
        for l in &f.lanes {
            assert!(!l.is_idle(), "idle lane {} kept", l.channel);
            assert_eq!(l.inflight, flights(l.channel), "in flight on {}", l.channel);
            let qos0 = l.queue.iter().filter(|q| q.qos == QoS::Level0).count() as u32;
            assert_eq!(l.qos0, qos0);
            assert!(l.queue.iter().zip(l.queue.iter().skip(1)).all(|(a, b)| a.seq < b.seq), "queue in order");
        }
        assert_eq!(f.lanes.iter().map(|l| l.inflight as usize).sum::<usize>(), f.inflight.len());
        assert_eq!(f.lanes.iter().map(|l| l.queue.len()).sum::<usize>(), f.queued);
        assert_eq!(f.lanes.iter().map(|l| l.qos0 as usize).sum::<usize>(), f.queued_qos0);
    }
    let s = h.core.sessions.get(h.core.by_client[client]).unwrap();
    s.fr().lane(ch).map_or((0, 0), |l| (l.inflight, l.queue.len()))
}

/// Payloads of the PUBLISH packets sent on `ch` of `conn`, with their ids.
fn on_channel(out: &[Action], conn: ConnId, ch: ChannelId) -> Vec<(String, Option<u16>)> {
    publishes_on(out, conn).into_iter().filter(|x| x.0 == ch).map(|x| (x.1, x.3)).collect()
}

#[test]
fn hol_a_stalled_data_channel_does_not_hold_up_another() {
    let mut h = H::with(|c| c.max_inflight = 3);
    let (s, _, _) = h.connect("s", true);
    h.send_on(s, 4, subscribe(1, &[("a", QoS::Level1)]));
    h.send_on(s, 8, subscribe(1, &[("b", QoS::Level1)]));
    let (p, _, _) = h.connect("p", true);
    // The client never acknowledges on channel 4: its window of three fills, the rest waits.
    let mut a_ids = Vec::new();
    for i in 1..=5 {
        let out = h.send(p, publish("a", QoS::Level1, i, &format!("a{i}")));
        a_ids.extend(on_channel(&out, s, 4).into_iter().map(|x| x.1.unwrap()));
    }
    assert_eq!(a_ids.len(), 3);
    assert_eq!(lane_of(&h, "s", 4), (3, 2));
    // Channel 8's messages go out at once, none behind channel 4's; the client acknowledges
    // them there as they come.
    for i in 1..=10u16 {
        let out = h.send(p, publish("b", QoS::Level1, 100 + i, &format!("b{i}")));
        let got = on_channel(&out, s, 8);
        assert_eq!(got.len(), 1, "b{i} delivered at once on channel 8");
        assert_eq!(got[0].0, format!("b{i}"));
        assert!(on_channel(&out, s, 4).is_empty());
        h.send_on(s, 8, Packet::puback(pid(got[0].1.unwrap())));
        assert_eq!(lane_of(&h, "s", 8), (0, 0));
    }
    let info = h.core.session_state("s").unwrap();
    assert_eq!((info.inflight, info.queued, info.dropped), (3, 2, 0), "only channel 4's own wait");
    // Channel 4's acknowledgements release its own queue, in order; an acknowledgement counts
    // on any channel (§6.3), here the control channel.
    let out = h.send(s, Packet::puback(pid(a_ids[0])));
    assert_eq!(on_channel(&out, s, 4).iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["a4"]);
    let out = h.send_on(s, 4, Packet::puback(pid(a_ids[1])));
    assert_eq!(on_channel(&out, s, 4).iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["a5"]);
    assert_eq!(lane_of(&h, "s", 4), (3, 0));
    assert_eq!(h.core.stats().queued, 0);
}

#[test]
fn one_channel_keeps_the_window_then_queues_in_order() {
    // Over TCP (one channel) the per-channel window is the old per-session one: max_inflight in
    // flight, the rest queued in order and sent as acknowledgements free the window.
    let mut h = H::with(|c| c.max_inflight = 3);
    let (s, _, _) = h.connect("s", true);
    h.send(s, subscribe(1, &[("t/#", QoS::Level1)]));
    let (p, _, _) = h.connect("p", true);
    let mut got = Vec::new();
    for i in 1..=7u16 {
        let out = h.send(p, publish(&format!("t/{}", i % 3), QoS::Level1, i, &format!("m{i}")));
        got.extend(on_channel(&out, s, CONTROL_CHANNEL));
    }
    assert_eq!(got.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["m1", "m2", "m3"]);
    let info = h.core.session_state("s").unwrap();
    assert_eq!((info.inflight, info.queued), (3, 4));
    assert_eq!(lane_of(&h, "s", CONTROL_CHANNEL), (3, 4));
    // QoS 0 is not held behind the window.
    let out = h.send(p, publish("t/x", QoS::Level0, 0, "zero"));
    assert_eq!(on_channel(&out, s, CONTROL_CHANNEL), vec![("zero".into(), None)]);
    // Each acknowledgement lets exactly the next one go, in order.
    let mut k = 0;
    while k < got.len() {
        let out = h.send(s, Packet::puback(pid(got[k].1.unwrap())));
        let next = on_channel(&out, s, CONTROL_CHANNEL);
        assert!(next.len() <= 1);
        got.extend(next);
        k += 1;
    }
    let names: Vec<_> = got.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, vec!["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
    let mut ids: Vec<_> = got.iter().map(|x| x.1.unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7);
    let info = h.core.session_state("s").unwrap();
    assert_eq!((info.inflight, info.queued), (0, 0));
    assert_eq!(lane_of(&h, "s", CONTROL_CHANNEL), (0, 0));
    assert!(!h.core.sessions.get(h.core.by_client["s"]).unwrap().has_flows(), "flows freed when idle");
}

#[test]
fn per_topic_order_holds_with_per_channel_queues() {
    // Channel 4 ("t/#") is stalled, channel 8 ("t/b") is read slowly: both see each topic's
    // messages in publish order, QoS 1 and 2 mixed, whatever the other channel does.
    let mut h = H::with(|c| c.max_inflight = 2);
    let (s, _, _) = h.connect("s", true);
    h.send_on(s, 4, subscribe(1, &[("t/#", QoS::Level2)]));
    h.send_on(s, 8, subscribe(1, &[("t/b", QoS::Level2)]));
    let (p, _, _) = h.connect("p", true);
    let mut on4 = Vec::new();
    let mut on8 = Vec::new();
    let mut acked8 = 0;
    for i in 1..=12u16 {
        let topic = if i % 3 == 0 { "t/a" } else { "t/b" };
        let out = if i % 2 == 0 {
            h.send(p, publish(topic, QoS::Level2, i, &format!("{topic} {i}")));
            h.send(p, Packet::pubrel(pid(i)))
        } else {
            h.send(p, publish(topic, QoS::Level1, i, &format!("{topic} {i}")))
        };
        on4.extend(on_channel(&out, s, 4));
        on8.extend(on_channel(&out, s, 8));
        // Channel 8 completes one flow per two messages published (QoS 1: PUBACK; QoS 2:
        // PUBREC, PUBCOMP), so its own queue grows and drains.
        if i % 2 == 0 && acked8 < on8.len() {
            let id = pid(on8[acked8].1.unwrap());
            let mut out = h.send_on(s, 8, Packet::puback(id));
            out.extend(h.send_on(s, 8, Packet::pubrec(id)));
            out.extend(h.send_on(s, 8, Packet::pubcomp(id)));
            on8.extend(on_channel(&out, s, 8));
            on4.extend(on_channel(&out, s, 4));
            acked8 += 1;
        }
    }
    assert_eq!(on4.len(), 2, "channel 4: its window, nothing more");
    // Now channel 4 reads again: complete everything on both channels.
    let mut done4 = 0;
    while done4 < on4.len() || acked8 < on8.len() {
        let mut out = Vec::new();
        for (list, done, ch) in [(&on4, &mut done4, 4), (&on8, &mut acked8, 8)] {
            if *done < list.len() {
                let id = pid(list[*done].1.unwrap());
                out.extend(h.send_on(s, ch, Packet::puback(id)));
                out.extend(h.send_on(s, ch, Packet::pubrec(id)));
                out.extend(h.send_on(s, ch, Packet::pubcomp(id)));
                *done += 1;
            }
        }
        on4.extend(on_channel(&out, s, 4));
        on8.extend(on_channel(&out, s, 8));
    }
    let order = |v: &[(String, Option<u16>)], topic: &str| -> Vec<u16> {
        v.iter().filter_map(|(p, _)| p.strip_prefix(topic)?.trim().parse().ok()).collect()
    };
    let b: Vec<u16> = (1..=12).filter(|i| i % 3 != 0).collect();
    let a: Vec<u16> = (1..=12).filter(|i| i % 3 == 0).collect();
    assert_eq!(order(&on4, "t/b"), b);
    assert_eq!(order(&on4, "t/a"), a);
    assert_eq!(order(&on8, "t/b"), b);
    assert_eq!(on8.len(), b.len());
    let info = h.core.session_state("s").unwrap();
    assert_eq!((info.inflight, info.queued, info.dropped), (0, 0, 0));
}

#[test]
fn session_queue_bound_holds_across_channels_and_a_stalled_channel_gives_way() {
    // max_queued_messages is the session's total over all channels (§6.13). Window of one.
    let mut h = H::with(|c| {
        c.max_inflight = 1;
        c.max_queued_messages = 4;
    });
    let (s, _, _) = h.connect("s", false);
    h.send(s, subscribe(1, &[("c", QoS::Level1)]));
    h.lost(s);
    let (p, _, _) = h.connect("p", true);
    h.send(p, publish("c", QoS::Level1, 1, "c1"));
    h.send(p, publish("c", QoS::Level1, 2, "c2"));
    h.send(p, publish("c", QoS::Level0, 0, "z0"));
    // Back online: c1 in flight on control, c2 and the QoS 0 z0 behind it.
    let (s, _, out) = h.connect("s", false);
    let c1 = on_channel(&out, s, CONTROL_CHANNEL);
    assert_eq!(c1.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["c1"]);
    assert_eq!(lane_of(&h, "s", CONTROL_CHANNEL), (1, 2));
    h.send_on(s, 4, subscribe(1, &[("a", QoS::Level1)]));
    h.send_on(s, 8, subscribe(1, &[("b", QoS::Level1)]));
    let queued = |h: &H| h.core.session_state("s").unwrap().queued;
    let dropped = |h: &H| h.core.session_state("s").unwrap().dropped;
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut pubn = 10;
    macro_rules! publish_to {
        ($h:expr, $topic:expr, $name:expr) => {{
            pubn += 1;
            let out = $h.send(p, publish($topic, QoS::Level1, pubn, $name));
            a.extend(on_channel(&out, s, 4));
            b.extend(on_channel(&out, s, 8));
        }};
    }
    publish_to!(h, "a", "a1"); // in flight on 4
    publish_to!(h, "a", "a2");
    publish_to!(h, "a", "a3");
    assert_eq!((queued(&h), dropped(&h)), (4, 0), "full: c2, z0, a2, a3");
    // Full: the oldest QoS 0 of the whole session goes first, on whatever channel.
    publish_to!(h, "a", "a4");
    assert_eq!((queued(&h), dropped(&h)), (4, 1));
    assert_eq!(lane_of(&h, "s", CONTROL_CHANNEL), (1, 1), "z0 dropped");
    // No QoS 0 left, and channel 4 holds the longest queue: its new message is refused.
    publish_to!(h, "a", "a5");
    assert_eq!((queued(&h), dropped(&h)), (4, 2));
    assert_eq!(lane_of(&h, "s", 4), (1, 3));
    // Channel 8 has room in its window: delivered at once, nothing queued or dropped.
    publish_to!(h, "b", "b1");
    assert_eq!((queued(&h), dropped(&h), b.len()), (4, 2, 1));
    // Channel 8's window is full now: b2 must wait, and the stalled channel 4, holding the
    // longest queue, gives up its newest (a4) for it. Then b3 would make channel 8's queue as
    // long as channel 4's: refused.
    publish_to!(h, "b", "b2");
    assert_eq!((queued(&h), dropped(&h)), (4, 3));
    assert_eq!((lane_of(&h, "s", 4), lane_of(&h, "s", 8)), ((1, 2), (1, 1)));
    publish_to!(h, "b", "b3");
    assert_eq!((queued(&h), dropped(&h)), (4, 4));
    assert_eq!(h.core.stats().dropped_queue_full, 4);
    // Room again (c2 goes in flight): b4 is kept.
    h.send(s, Packet::puback(pid(c1[0].1.unwrap())));
    publish_to!(h, "b", "b4");
    assert_eq!((queued(&h), dropped(&h)), (4, 4));
    // What each channel gets once it reads: its kept messages, in order.
    for _ in 0..3 {
        let (x, y) = (a.last().unwrap().1.unwrap(), b.last().unwrap().1.unwrap());
        let out = h.send_on(s, 4, Packet::puback(pid(x)));
        a.extend(on_channel(&out, s, 4));
        let out = h.send_on(s, 8, Packet::puback(pid(y)));
        b.extend(on_channel(&out, s, 8));
    }
    assert_eq!(a.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["a1", "a2", "a3"]);
    assert_eq!(b.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["b1", "b2", "b4"]);
    assert_eq!(queued(&h), 0);
}

#[test]
fn ended_channel_queue_merges_into_the_target_channel_queue_in_order() {
    // Channels 4 and 8 both subscribe to "t"; window of two per channel; the client reads
    // neither. Five messages: each channel has 1, 2 in flight and 3, 4, 5 queued.
    let mut h = H::with(|c| c.max_inflight = 2);
    let (s, _, _) = h.connect("s", true);
    h.send_on(s, 4, subscribe(1, &[("t", QoS::Level1)]));
    h.send_on(s, 8, subscribe(1, &[("t", QoS::Level1)]));
    let (p, _, _) = h.connect("p", true);
    let mut on8 = Vec::new();
    for i in 1..=5u16 {
        let out = h.send(p, publish("t", QoS::Level1, i, &i.to_string()));
        on8.extend(on_channel(&out, s, 8));
    }
    assert_eq!((lane_of(&h, "s", 4), lane_of(&h, "s", 8)), ((2, 3), (2, 3)));
    // §6.3: channel 4 ends; its two flights are re-sent on channel 8 at once (beyond channel
    // 8's window), and its queue joins channel 8's, merged in order of arrival.
    let out = h.end(s, 4, ChannelEnd::Reset);
    let resent: Vec<_> = publishes_on(&out, s).into_iter().map(|x| (x.0, x.1, x.4)).collect();
    assert_eq!(resent, vec![(8, "1".into(), true), (8, "2".into(), true)]);
    assert_eq!((lane_of(&h, "s", 4), lane_of(&h, "s", 8)), ((0, 0), (4, 6)));
    let info = h.core.session_state("s").unwrap();
    assert_eq!((info.inflight, info.queued, info.dropped), (4, 6, 0));
    assert_eq!(h.core.stats().moved_channel_closed, 5);
    on8.extend(on_channel(&out, s, 8));
    // Channel 8 reads again: everything comes, each copy of the topic in order.
    let mut k = 0;
    while k < on8.len() {
        let out = h.send_on(s, 8, Packet::puback(pid(on8[k].1.unwrap())));
        on8.extend(on_channel(&out, s, 8));
        k += 1;
    }
    let got: Vec<&str> = on8.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(got, vec!["1", "2", "1", "2", "3", "3", "4", "4", "5", "5"]);
    assert_eq!(lane_of(&h, "s", 8), (0, 0));
}

#[test]
fn lost_connection_merges_every_channel_into_control_in_order() {
    // §6.6 with per-channel queues: the resumed session's flights are re-sent in order of first
    // transmission, then the queued ones follow in order of arrival, all on the control channel.
    let mut h = H::with(|c| c.max_inflight = 1);
    let (s, _, _) = h.connect("s", false);
    h.send_on(s, 4, subscribe(1, &[("a", QoS::Level1)]));
    h.send_on(s, 8, subscribe(1, &[("b", QoS::Level1)]));
    let (p, _, _) = h.connect("p", true);
    for (i, t) in ["a", "b", "a", "b", "b", "a"].iter().enumerate() {
        h.send(p, publish(t, QoS::Level1, i as u16 + 1, &format!("{t}{i}")));
    }
    assert_eq!((lane_of(&h, "s", 4), lane_of(&h, "s", 8)), ((1, 2), (1, 2)));
    h.lost(s);
    assert_eq!(lane_of(&h, "s", CONTROL_CHANNEL), (2, 4));
    let (s, _, out) = h.connect("s", false);
    let got: Vec<_> = publishes_on(&out, s).into_iter().map(|x| (x.0, x.1, x.4)).collect();
    // Both flights come back (the control channel's window is then over-full), nothing more.
    assert_eq!(got, vec![(0, "a0".into(), true), (0, "b1".into(), true)]);
    let mut all: Vec<_> = on_channel(&out, s, CONTROL_CHANNEL);
    let mut k = 0;
    while k < all.len() {
        let out = h.send(s, Packet::puback(pid(all[k].1.unwrap())));
        all.extend(on_channel(&out, s, CONTROL_CHANNEL));
        k += 1;
    }
    let names: Vec<_> = all.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, vec!["a0", "b1", "a2", "b3", "b4", "a5"]);
}

/// Issue 13: topic names and filters deeper than `max_topic_levels` close the client, whatever
/// carries them (SUBSCRIBE, PUBLISH, will); nothing of the packet is applied; others go on.
#[test]
fn topic_levels_limit_closes_the_client() {
    let mut h = H::with(|c| c.max_topic_levels = 4);
    let (sub, _, _) = h.connect("sub", true);
    h.send(sub, subscribe(1, &[("a/+/c/d", QoS::Level0)]));

    // The reproduction of the issue: an 8,300-level filter.
    let (evil, _, _) = h.connect("evil", false);
    let deep = "+/".repeat(8_300);
    let out = h.send(evil, subscribe(2, &[("ok", QoS::Level0), (&deep, QoS::Level1)]));
    assert!(packets(&out, evil).is_empty(), "no SUBACK: the SUBSCRIBE is refused whole");
    match close_of(&out, evil) {
        Some(CloseReason::Violation(v)) => assert!(v.contains("8301 levels (max_topic_levels 4)"), "{v}"),
        other => panic!("expected a violation, got {other:?}"),
    }
    assert_eq!(h.core.stats().subscriptions, 1, "nothing of it applied");
    assert_eq!(h.core.session_state("evil").map(|s| s.subscriptions), Some(0));

    // A PUBLISH with 5 levels; exactly 4 is fine.
    let (p, _, _) = h.connect("pub", true);
    let out = h.send(p, publish("a/b/c/d/e", QoS::Level1, 1, "x"));
    assert!(matches!(close_of(&out, p), Some(CloseReason::Violation(_))));
    assert!(!packets(&out, p).iter().any(|x| matches!(x, Packet::Puback(_))), "not acknowledged");
    let (p, _, _) = h.connect("pub", true);
    let out = h.send(p, publish("a/b/c/d", QoS::Level0, 0, "x"));
    assert_eq!(publishes(&out, sub).len(), 1);

    // A will topic too deep: the CONNECT is a violation (no CONNACK).
    let mut c = connect_packet("w", true, 0);
    c.last_will = Some(LastWill::new(QoS::Level0, tn("a/b/c/d/e"), Bytes::from_static(b"bye")));
    let (w, out) = h.connect_with(c);
    assert!(packets(&out, w).is_empty());
    assert!(matches!(close_of(&out, w), Some(CloseReason::Violation(_))));
    assert_eq!(h.core.stats().limit_topic_levels, 3);
}

/// Issue 13: a SUBSCRIBE that would take a session beyond `max_subscriptions` closes it with
/// nothing applied; re-subscribing held filters and repeats within a packet do not count.
#[test]
fn subscription_limit_per_session() {
    let mut h = H::with(|c| c.max_subscriptions = 3);
    let (c, _, _) = h.connect("c", false);
    let out = h.send(c, subscribe(1, &[("a", QoS::Level0), ("b", QoS::Level1), ("a", QoS::Level2)]));
    assert_eq!(
        packets(&out, c),
        vec![Packet::Suback(Suback::new(
            pid(1),
            vec![SubscribeReasonCode::GrantedQoS0, SubscribeReasonCode::GrantedQoS1, SubscribeReasonCode::GrantedQoS2]
        ))]
    );
    assert_eq!(h.core.session_state("c").map(|s| s.subscriptions), Some(2));
    // The later "a" replaced the earlier one: delivered once at QoS 2.
    let (p, _, _) = h.connect("p", true);
    let out = h.send(p, publish("a", QoS::Level2, 1, "x"));
    assert_eq!(publishes(&out, c).len(), 0, "QoS 2 from the publisher: delivered on PUBREL");
    let out = h.send(p, Packet::pubrel(pid(1)));
    assert_eq!(publishes(&out, c).iter().map(|x| x.2).collect::<Vec<_>>(), vec![2]);
    // Held filters again plus one new: 3, allowed.
    let out = h.send(c, subscribe(2, &[("a", QoS::Level0), ("b", QoS::Level0), ("c", QoS::Level0)]));
    assert!(matches!(packets(&out, c).first(), Some(Packet::Suback(_))));
    // One more: refused whole, the client closed, the session keeps its 3.
    let out = h.send(c, subscribe(3, &[("d", QoS::Level0)]));
    assert!(packets(&out, c).is_empty());
    match close_of(&out, c) {
        Some(CloseReason::Violation(v)) => assert!(v.contains("max_subscriptions 3"), "{v}"),
        other => panic!("expected a violation, got {other:?}"),
    }
    assert_eq!(h.core.session_state("c").map(|s| s.subscriptions), Some(3));
    assert_eq!(h.core.stats().limit_subscriptions, 1);
}

/// Issue 13: the retained store is bounded in bytes as well as topics; replacing and clearing
/// give the bytes back.
#[test]
fn retained_store_bounded_in_bytes() {
    let mut h = H::with(|c| c.max_retained_bytes = 10);
    let (p, _, _) = h.connect("p", true);
    h.send(p, retained("ab", QoS::Level0, 0, "123")); // 5 bytes
    h.send(p, retained("cd", QoS::Level0, 0, "1234567")); // 9 more: over, not kept
    assert_eq!((h.core.stats().retained, h.core.stats().retained_bytes, h.core.stats().dropped_retained), (1, 5, 1));
    h.send(p, retained("ab", QoS::Level0, 0, "12345678")); // replaces: 10 bytes, fits
    assert_eq!((h.core.stats().retained, h.core.stats().retained_bytes), (1, 10));
    h.send(p, retained("ab", QoS::Level0, 0, "")); // clears
    assert_eq!((h.core.stats().retained, h.core.stats().retained_bytes), (0, 0));
    h.send(p, retained("cd", QoS::Level0, 0, "1234567"));
    assert_eq!((h.core.stats().retained, h.core.stats().retained_bytes), (1, 9));
}

/// Issue 13: QoS 2 messages awaiting PUBREL are bounded in bytes per session, not only in
/// number.
#[test]
fn awaiting_rel_bounded_in_bytes() {
    let mut h = H::with(|c| c.max_awaiting_rel_bytes = 20);
    let (c, _, _) = h.connect("c", true);
    let out = h.send(c, publish("t", QoS::Level2, 1, "0123456789")); // 11 bytes
    assert_eq!(packets(&out, c), vec![Packet::pubrec(pid(1))]);
    let out = h.send(c, publish("t", QoS::Level2, 1, "0123456789")); // a duplicate: not counted twice
    assert_eq!(packets(&out, c), vec![Packet::pubrec(pid(1))]);
    let out = h.send(c, publish("t", QoS::Level2, 2, "0123456789")); // 22 in all: over
    match close_of(&out, c) {
        Some(CloseReason::Violation(v)) => assert!(v.contains("max_awaiting_rel_bytes"), "{v}"),
        other => panic!("expected a violation, got {other:?}"),
    }
    assert_eq!(h.core.stats().limit_awaiting_rel, 1);
}

/// Issue 13: with `require_certificate`, a connection without a verified certificate (what
/// reaches the core without one came over plain TCP) gets CONNACK 0x05; one with an identity
/// gets in.
#[test]
fn require_certificate_refuses_connections_without_one() {
    let mut h = H::with(|c| c.require_certificate = true);
    assert_eq!(h.refused(connect_packet("tcp", true, 0)), ConnectReasonCode::NotAuthorized);
    let conn = h.open();
    h.core.set_cert_identity(conn, Some("alice"));
    let out = h.send(conn, Packet::connect(connect_packet("tls", true, 0)));
    assert_eq!(packets(&out, conn), vec![Packet::connack(false, ConnectReasonCode::Success)]);
    assert_eq!(h.core.stats().auth_failures, 1);
}

// ----- Store ops (issue 18): what must survive a restart comes before what acknowledges it.

/// Where in `actions` the first Store op and the first Send to `conn` are.
fn store_then_send(actions: &[Action], conn: ConnId) -> (Option<usize>, Option<usize>) {
    let store = actions.iter().position(|a| matches!(a, Action::Store(_)));
    let send = actions.iter().position(|a| matches!(a, Action::Send { conn: c, .. } if *c == conn));
    (store, send)
}

fn stores(actions: &[Action]) -> Vec<StoreOp> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn without_a_data_dir_nothing_is_stored() {
    let mut h = H::new();
    let (c, _, out) = h.connect("p", false);
    let mut all = out;
    all.extend(h.send(c, subscribe(1, &[("a/#", QoS::Level1)])));
    all.extend(h.send(c, retained("a/b", QoS::Level1, 2, "x")));
    assert!(stores(&all).is_empty(), "{all:?}");
}

#[test]
fn store_ops_come_before_the_packets_that_acknowledge_them() {
    let mut h = H::with(|c| c.data_dir = Some("/nonexistent".into()));
    // A new persistent session is stored before its CONNACK.
    let (c, present, out) = h.connect("keeper", false);
    assert!(!present);
    let (store, send) = store_then_send(&out, c);
    assert!(store < send && store.is_some(), "{out:?}");
    assert!(
        matches!(&stores(&out)[..], [StoreOp::Session { client_id, subs, expiry: u32::MAX }] if &**client_id == "keeper" && subs.is_empty())
    );
    // SUBSCRIBE: the session with its subscriptions, then SUBACK.
    let out = h.send(c, subscribe(1, &[("a/#", QoS::Level1), ("b", QoS::Level0)]));
    let (store, send) = store_then_send(&out, c);
    assert!(store < send && store.is_some(), "{out:?}");
    match &stores(&out)[..] {
        [StoreOp::Session { subs, .. }] => {
            let mut f: Vec<(String, QoS)> = subs.iter().map(|s| (s.filter.to_string(), s.qos)).collect();
            f.sort();
            assert_eq!(f, vec![("a/#".to_string(), QoS::Level1), ("b".to_string(), QoS::Level0)]);
        }
        other => panic!("{other:?}"),
    }
    // A retained QoS 1 PUBLISH: Retain, then PUBACK (and the delivery).
    let out = h.send(c, retained("a/x", QoS::Level1, 2, "kept"));
    let (store, send) = store_then_send(&out, c);
    assert!(store < send && store.is_some(), "{out:?}");
    // It also matches the client's own a/# (QoS 1): its delivery is stored in flight.
    let delivered = match &stores(&out)[..] {
        [StoreOp::Retain(m), StoreOp::Outbound { seq, stage: OutStage::AwaitPuback(id), .. }] if &*m.topic == "a/x" => {
            (*seq, *id)
        }
        other => panic!("{other:?}"),
    };
    // Its PUBACK: the delivery is done.
    let out = h.send(c, Packet::puback(pid(delivered.1)));
    assert!(matches!(&stores(&out)[..], [StoreOp::OutboundDone { seq, .. }] if *seq == delivered.0), "{out:?}");
    // Clearing it: Unretain (and the empty message matches a/#: its delivery, at QoS 1).
    let out = h.send(c, retained("a/x", QoS::Level1, 3, ""));
    assert!(matches!(&stores(&out)[..], [StoreOp::Unretain(t), StoreOp::Outbound { .. }] if &**t == "a/x"), "{out:?}");
    // Inbound QoS 2: stored before PUBREC, done before PUBCOMP.
    let out = h.send(c, publish("q2/in", QoS::Level2, 9, "once"));
    let (store, send) = store_then_send(&out, c);
    assert!(store < send && store.is_some(), "{out:?}");
    assert!(matches!(&stores(&out)[..], [StoreOp::Inbound { pid: 9, .. }]), "{out:?}");
    let out = h.send(c, Packet::pubrel(pid(9)));
    let (store, send) = store_then_send(&out, c);
    assert!(store < send && store.is_some(), "{out:?}");
    assert!(matches!(&stores(&out)[..], [StoreOp::InboundDone { pid: 9, .. }]), "{out:?}");
    // A clean session's subscriptions are not stored.
    let (d, _, _) = h.connect("passer-by", true);
    assert!(stores(&h.send(d, subscribe(1, &[("z", QoS::Level1)]))).is_empty());
    // A clean-session CONNECT for the persistent client id drops the stored session.
    let (_, _, out) = h.connect("keeper", true);
    assert!(
        stores(&out).iter().any(|op| matches!(op, StoreOp::DropSession { client_id } if &**client_id == "keeper")),
        "{out:?}"
    );
}

#[test]
fn a_restored_session_is_present_and_receives_what_its_subscriptions_match() {
    let mut h = H::new();
    let filter = super::super::codec::TopicFilter::try_from("s/#").unwrap();
    let stored = StoredSession {
        client_id: "back".into(),
        expiry: u32::MAX,
        subs: vec![StoredSub::v3(filter, QoS::Level1)],
        ..Default::default()
    };
    assert!(h.core.restore_session(stored, h.now));
    let (p, _, _) = h.connect("pub", true);
    h.send(p, publish("s/1", QoS::Level1, 1, "while away"));
    let (c, present, out) = h.connect("back", false);
    assert!(present, "the restored session is present");
    let got = publishes(&out, c);
    assert_eq!(got.len(), 1, "{out:?}");
    assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("s/1", "while away"));
}

#[path = "broker_v5_tests.rs"]
mod v5;
