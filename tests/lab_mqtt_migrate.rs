//! A NAT rebinding on the lab's link in the middle of a QoS 1 flow, MQTT over QUIC beside MQTT
//! over TCP (docs/mqtt-over-quic.md §6.14): the QUIC subscriber's session continues on the same
//! connection (the broker counts one path change) and gets every message in order; the TCP
//! subscriber's connection dies (its next segment from the new port meets a RST) and it must
//! reconnect, its persistent session handing over what it missed. Timing-sensitive: its own
//! test binary, one test.

#[path = "common/lab.rs"]
mod lab_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use quiclab::mqtt::client::{Client, ClientOptions, MqttUrl, StreamMode, Transport};
use quiclab::mqtt::codec::QoS;
use quiclab::tls::Trust;

const MESSAGES: usize = 300;
/// The rebinding happens once each subscriber has this many messages: in the middle of the flow.
const REBIND_AFTER: usize = 50;

#[test]
fn a_nat_rebinding_moves_mqtt_over_quic_and_kills_mqtt_over_tcp() {
    let link = lab_common::delay_link(Duration::from_millis(10), 11);
    let ip = link.server_ip();
    let server = lab_common::start_server(&link, |_| {});
    let mqtt = server.mqtt().expect("MQTT on").clone();
    let ca = server.ca.clone();
    let quic_url = MqttUrl { transport: Transport::Quic, host: "localhost".into(), port: server.quic_addr().port() };
    let tcp_url = MqttUrl::tcp(mqtt.tcp.expect("MQTT over TCP"));
    let opts = move |id: &str, keep_alive: u16| ClientOptions {
        client_id: id.into(),
        clean_session: false,
        keep_alive,
        trust: Trust::CaFile(ca.clone()),
        connect_to: Some(ip.into()),
        streams: StreamMode::PerTopic,
        ..ClientOptions::default()
    };
    let paths_before = mqtt.broker.stats().quic_path_changes;
    // Events from the subscribers: both subscribed; messages received so far on each.
    let (subscribed_tx, subscribed_rx) = mpsc::channel();
    let (quic_count, tcp_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Both subscribers in the client's namespace, behind the relay's NAT.
    let subscribers = {
        let (opts, quic_url, tcp_url) = (opts.clone(), quic_url.clone(), tcp_url.clone());
        let (quic_count, tcp_count) = (quic_count.clone(), tcp_count.clone());
        link.spawn_in_client_ns("mqtt-migrate-subs", move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut quic = Client::connect(&quic_url, &opts("quic-sub", 60)).await.unwrap();
                quic.subscribe(&[("flow/quic", QoS::Level1)]).await.unwrap();
                // TCP: keepalive 1 s, so a silent dead connection is noticed by its PINGREQ.
                let tcp_opts = ClientOptions { streams: StreamMode::Single, ..opts("tcp-sub", 1) };
                let mut tcp = Client::connect(&tcp_url, &tcp_opts).await.unwrap();
                tcp.subscribe(&[("flow/tcp", QoS::Level1)]).await.unwrap();
                subscribed_tx.send(()).unwrap();
                let quic_task = async {
                    let mut got = Vec::new();
                    while got.len() < MESSAGES {
                        match quic.recv_timeout(Duration::from_secs(10)).await {
                            Ok(Some(m)) => {
                                got.push(String::from_utf8(m.payload.to_vec()).unwrap());
                                quic_count.store(got.len(), Ordering::Relaxed);
                            }
                            other => panic!("MQTT over QUIC lost its session after {} messages: {other:?}", got.len()),
                        }
                    }
                    got
                };
                let tcp_task = async {
                    let mut got: Vec<String> = Vec::new();
                    let mut reconnects = 0;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while got.len() < MESSAGES && Instant::now() < deadline {
                        match tcp.recv_timeout(Duration::from_secs(5)).await {
                            Ok(Some(m)) => {
                                let p = String::from_utf8(m.payload.to_vec()).unwrap();
                                // QoS 1: a message re-sent after the reconnect may come twice.
                                if !got.contains(&p) {
                                    got.push(p);
                                    tcp_count.store(got.len(), Ordering::Relaxed);
                                }
                            }
                            Ok(None) | Err(_) => {
                                // Dead (or silent): reconnect; the persistent session resumes.
                                reconnects += 1;
                                tcp = Client::connect(&tcp_url, &tcp_opts).await.expect("reconnect over TCP");
                                assert!(tcp.session_present(), "the persistent session was kept");
                            }
                        }
                    }
                    (got, reconnects)
                };
                tokio::join!(quic_task, tcp_task)
            })
        })
        .unwrap()
    };
    // The publisher in the server's namespace (the NAT is on the client's side), once both
    // subscriptions are in place.
    subscribed_rx.recv_timeout(Duration::from_secs(30)).expect("both subscribers subscribed");
    let publisher = {
        let (quic_url, opts) = (quic_url.clone(), opts.clone());
        link.spawn_in_server_ns("mqtt-migrate-pub", move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut p = Client::connect(&quic_url, &ClientOptions { clean_session: true, ..opts("pub", 60) })
                    .await
                    .unwrap();
                for i in 0..MESSAGES {
                    p.publish("flow/quic", QoS::Level1, false, format!("{i}")).await.unwrap();
                    p.publish("flow/tcp", QoS::Level1, false, format!("{i}")).await.unwrap();
                    // Pacing (not synchronisation): spread the flow over time.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                p.disconnect().await.unwrap();
            })
        })
        .unwrap()
    };
    lab_common::wait_until("the first messages on both subscribers", Duration::from_secs(30), || {
        quic_count.load(Ordering::Relaxed) >= REBIND_AFTER && tcp_count.load(Ordering::Relaxed) >= REBIND_AFTER
    });
    link.schedule_rebind(Duration::ZERO);
    publisher.join();
    let (quic_got, (tcp_got, reconnects)) = subscribers.join();
    let want: Vec<String> = (0..MESSAGES).map(|i| i.to_string()).collect();
    assert_eq!(quic_got, want, "MQTT over QUIC: every message, in order, on the same connection");
    assert_eq!(mqtt.broker.stats().quic_path_changes - paths_before, 1, "the broker saw one path change");
    assert!(reconnects >= 1, "MQTT over TCP should not survive a new 4-tuple");
    let mut sorted = tcp_got.clone();
    sorted.sort_by_key(|s| s.parse::<usize>().unwrap());
    assert_eq!(sorted, want, "MQTT over TCP gets everything only after reconnecting (persistent session)");
    drop(server);
}
