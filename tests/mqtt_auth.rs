//! Authentication and ACLs (docs/mqtt.md, "Authentication and authorization") are the core's,
//! so every transport gives the same outcomes: one table of users and ACL rows run over TCP,
//! TLS, QUIC with a single stream and QUIC with a stream per topic, with quiclab's own client,
//! asserting the same CONNACK codes, SUBACK codes and deliveries on each.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::TestServer;
use quiclab::mqtt::acl::AclFile;
use quiclab::mqtt::auth::PasswordFile;
use quiclab::mqtt::client::{Client, ClientOptions, MqttUrl, StreamMode};
use quiclab::mqtt::codec::{QoS, SubscribeReasonCode, TopicName};
use quiclab::mqtt::{Message, MqttError};
use quiclab::tls::Trust;

/// Made with Debian's `mosquitto_passwd` 2.0.11: alice/secret, bob/"p@ss:w0rd".
const PASSWORDS: &str = "\
alice:$7$101$MuO2Fm6HrzkAJjvy$TaGs0vf11YIWmwYTi7IP5Z2KW8Wt8UtLx1hjT85qbFiTmADu71nxXZ8ZrX/4wey9BwMqRo7tS7mk6rMCkNmhnw==
bob:$7$101$zU1B8nBHC9PWLC5R$8+30DMmqC2R1WwdNwC2CZLZXUrhH0suFHMGDlZWY6XONNB0w7qwluAUrzxKxVDT+wnp0mry0vigAEMOPrSysRg==
";

const ACL: &str = "\
# anonymous clients
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

async fn server(allow_anonymous: Option<bool>) -> TestServer {
    TestServer::start_with(|c| {
        c.mqtt.password_file = Some(Arc::new(PasswordFile::parse(Path::new("pw"), PASSWORDS).unwrap()));
        c.mqtt.acl = Some(Arc::new(AclFile::parse(Path::new("acl"), ACL).unwrap()));
        c.mqtt.allow_anonymous = allow_anonymous;
    })
    .await
}

#[derive(Debug, Clone, Copy)]
enum Via {
    Tcp,
    Tls,
    Quic(StreamMode),
}

const VIAS: [Via; 4] = [Via::Tcp, Via::Tls, Via::Quic(StreamMode::Single), Via::Quic(StreamMode::PerTopic)];

fn url(ts: &TestServer, via: Via) -> MqttUrl {
    match via {
        Via::Tcp => ts.mqtt_tcp_url(),
        Via::Tls => ts.mqtt_tls_url(),
        Via::Quic(_) => ts.mqtt_quic_url(),
    }
}

fn opts(ts: &TestServer, via: Via, id: &str, user: Option<(&str, Option<&str>)>) -> ClientOptions {
    ClientOptions {
        client_id: id.into(),
        username: user.map(|(u, _)| u.to_string()),
        password: user.and_then(|(_, p)| p.map(str::to_string)),
        trust: Trust::CaFile(ts.ca()),
        streams: match via {
            Via::Quic(m) => m,
            _ => StreamMode::Single,
        },
        ..ClientOptions::default()
    }
}

/// CONNACK 0x00, or the refusal code.
async fn connect_code(ts: &TestServer, via: Via, id: &str, user: Option<(&str, Option<&str>)>) -> u8 {
    match Client::connect(&url(ts, via), &opts(ts, via, id, user)).await {
        Ok(c) => {
            c.disconnect().await.unwrap();
            0
        }
        Err(MqttError::Refused(code)) => quiclab::mqtt::codec::v3_return_code(code),
        Err(e) => panic!("{via:?} {id}: {e}"),
    }
}

async fn login(ts: &TestServer, via: Via, id: &str, user: Option<(&str, Option<&str>)>) -> Client {
    Client::connect(&url(ts, via), &opts(ts, via, id, user)).await.unwrap_or_else(|e| panic!("{via:?} {id}: {e}"))
}

fn codes(v: &[SubscribeReasonCode]) -> Vec<u8> {
    v.iter().map(|c| if *c == SubscribeReasonCode::NotAuthorized { 0x80 } else { *c as u8 }).collect()
}

/// Every message arriving until 400 ms pass without one: "topic=payload" (retained marked).
async fn drain(c: &mut Client) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    while let Some(m) = c.recv_timeout(Duration::from_millis(400)).await.unwrap() {
        let r = if m.retain { " (retained)" } else { "" };
        got.insert(format!("{}={}{r}", &*m.topic, String::from_utf8_lossy(&m.payload)));
    }
    got
}

/// What one transport showed; must be the same for all.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    connect: Vec<(&'static str, u8)>,
    suback: Vec<(&'static str, Vec<u8>)>,
    received: Vec<(&'static str, BTreeSet<String>)>,
}

async fn run(ts: &TestServer, strict: &TestServer, via: Via) -> Outcome {
    const ALICE: Option<(&str, Option<&str>)> = Some(("alice", Some("secret")));
    const BOB: Option<(&str, Option<&str>)> = Some(("bob", Some("p@ss:w0rd")));
    let mut connect = Vec::new();
    for (row, user) in [
        ("alice", ALICE),
        ("bob", BOB),
        ("alice wrong password", Some(("alice", Some("nope")))),
        ("alice no password", Some(("alice", None))),
        ("unknown user", Some(("mallory", Some("secret")))),
        ("anonymous, allowed", None),
    ] {
        connect.push((row, connect_code(ts, via, "probe", user).await));
    }
    // Default allow_anonymous with a password file: no.
    connect.push(("anonymous, default", connect_code(strict, via, "probe", None).await));
    connect.push(("alice, default", connect_code(strict, via, "probe", ALICE).await));

    let mut alice = login(ts, via, "al", ALICE).await;
    let mut bob = login(ts, via, "bo", BOB).await;
    let mut anon = login(ts, via, "an", None).await;
    let mut suback = Vec::new();
    suback.push(("bob", codes(&bob.subscribe(&[("#", QoS::Level1)]).await.unwrap())));
    suback.push(("anon", codes(&anon.subscribe(&[("#", QoS::Level1), ("alice/#", QoS::Level1)]).await.unwrap())));
    suback.push((
        "alice",
        codes(
            &alice
                .subscribe(&[("alice/#", QoS::Level1), ("alice/secret/#", QoS::Level1), ("nope", QoS::Level0)])
                .await
                .unwrap(),
        ),
    ));
    // Each PUBLISH completes its QoS flow whether the ACL lets it through or not.
    for (topic, qos, retain) in [
        ("alice/x", QoS::Level1, false),
        ("alice/secret/x", QoS::Level1, false),
        ("public/x", QoS::Level2, false),
        ("public/alice", QoS::Level0, false),
        ("alice/r", QoS::Level1, true),
        ("clients/al/x", QoS::Level2, false),
        ("clients/bo/x", QoS::Level1, false),
    ] {
        alice.publish(topic, qos, retain, "from alice").await.unwrap_or_else(|e| panic!("{via:?} {topic}: {e}"));
    }
    anon.publish("anon/in", QoS::Level1, false, "from anon").await.unwrap();
    anon.publish("public/x", QoS::Level1, false, "from anon").await.unwrap();
    // Wills: the first connection of an id is taken over, which publishes its will.
    for (id, topic) in [("w1", "alice/will"), ("w2", "forbidden/will")] {
        let mut o = opts(ts, via, id, ALICE);
        o.will =
            Some(Message::new(TopicName::try_from(topic).unwrap(), Bytes::from_static(b"gone"), QoS::Level1, false));
        let first = Client::connect(&url(ts, via), &o).await.unwrap();
        let second = login(ts, via, id, ALICE).await;
        second.disconnect().await.unwrap();
        first.abort();
    }
    let mut received =
        vec![("alice", drain(&mut alice).await), ("bob", drain(&mut bob).await), ("anon", drain(&mut anon).await)];
    // The retained message reaches a later subscriber only if it may read it.
    let mut late_anon = login(ts, via, "an2", None).await;
    late_anon.subscribe(&[("#", QoS::Level1)]).await.unwrap();
    received.push(("late anon", drain(&mut late_anon).await));
    let mut late_bob = login(ts, via, "bo2", BOB).await;
    late_bob.subscribe(&[("alice/#", QoS::Level1)]).await.unwrap();
    received.push(("late bob", drain(&mut late_bob).await));
    // Leave nothing retained for the next transport.
    alice.publish("alice/r", QoS::Level1, true, Bytes::new()).await.unwrap();
    for c in [alice, bob, anon, late_anon, late_bob] {
        c.disconnect().await.unwrap();
    }
    Outcome { connect, suback, received }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_users_and_acl_same_outcomes_on_every_transport() {
    let ts = server(Some(true)).await;
    let strict = server(None).await;
    let expected = Outcome {
        connect: vec![
            ("alice", 0),
            ("bob", 0),
            ("alice wrong password", 5),
            ("alice no password", 5),
            ("unknown user", 5),
            ("anonymous, allowed", 0),
            ("anonymous, default", 5),
            ("alice, default", 0),
        ],
        suback: vec![("bob", vec![1]), ("anon", vec![1, 0x80]), ("alice", vec![1, 0x80, 0x80])],
        received: vec![
            // alice/# (not alice/secret/#), granted at QoS 1.
            ("alice", set(&["alice/x=from alice", "alice/r=from alice", "alice/will=gone"])),
            (
                "bob",
                set(&[
                    "alice/x=from alice",
                    "public/alice=from alice",
                    "alice/r=from alice",
                    "clients/al/x=from alice",
                    "anon/in=from anon",
                    "alice/will=gone",
                ]),
            ),
            ("anon", set(&["public/alice=from alice"])),
            ("late anon", set(&[])),
            ("late bob", set(&["alice/r=from alice (retained)"])),
        ],
    };
    for via in VIAS {
        let got = run(&ts, &strict, via).await;
        assert_eq!(got, expected, "{via:?}");
    }
    let st = ts.server.mqtt_broker().unwrap().stats();
    assert!(st.core.auth_failures >= 3 * VIAS.len() as u64, "{st:?}");
    assert_eq!(st.core.acl_denied_subscribe, 3 * VIAS.len() as u64);
    assert_eq!(st.core.acl_denied_will, VIAS.len() as u64);
    strict.stop().await;
    ts.stop().await;
}

/// MQTT 5 enhanced authentication (docs/mqtt.md "MQTT 5"): SCRAM-SHA-512 over the same
/// password file, on every transport. The right password connects (and the client checks the
/// broker's signature); a wrong one gets CONNACK 0x87; the ACL applies to the SCRAM user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_on_every_transport() {
    let file = Arc::new(PasswordFile::parse(Path::new("pw"), PASSWORDS).unwrap());
    let ts = TestServer::start_with(|c| {
        c.mqtt.password_file = Some(file.clone());
        c.mqtt.acl = Some(Arc::new(AclFile::parse(Path::new("acl"), ACL).unwrap()));
        c.mqtt.auth_methods = vec![Arc::new(quiclab::mqtt::scram::ScramSha512::new(file.clone()))];
    })
    .await;
    for via in VIAS {
        let scram = |password: &str| {
            let mut o = opts(&ts, via, "", Some(("alice", Some(password))));
            o.version = quiclab::mqtt::codec::Version::V5;
            o.scram = true;
            o
        };
        let mut c = Client::connect(&url(&ts, via), &scram("secret")).await.unwrap_or_else(|e| panic!("{via:?}: {e}"));
        let ack = c.connack().expect("a CONNACK");
        assert_eq!(ack.properties.auth_method.as_deref(), Some("SCRAM-SHA-512"), "{via:?}");
        // The ACL sees alice: alice/# is hers, alice/secret/# is not.
        let codes = c.subscribe(&[("alice/x", QoS::Level1), ("alice/secret/x", QoS::Level1)]).await.unwrap();
        assert_eq!(codes, vec![SubscribeReasonCode::GrantedQoS1, SubscribeReasonCode::NotAuthorized], "{via:?}");
        c.disconnect().await.unwrap();
        match Client::connect(&url(&ts, via), &scram("wrong")).await {
            Err(MqttError::Refused(code)) => assert_eq!(code as u8, 0x87, "{via:?}"),
            Err(e) => panic!("{via:?}: {e}"),
            Ok(_) => panic!("{via:?}: a wrong password was accepted"),
        }
    }
    assert!(ts.server.mqtt_broker().unwrap().stats().core.auth_failures >= 4);
    ts.stop().await;
}
