//! Issue 18: kill -9 under load. Publishers over TCP and QUIC at QoS 1 and 2 and persistent
//! subscribers over TCP and QUIC run against `quiclab mqtt broker --data-dir` while the test
//! kills the broker with SIGKILL at seeded random moments (50 times by default) and starts it
//! again on the same store. At the end every acknowledged message must have reached every
//! subscriber: at least once at QoS 1, exactly once at QoS 2, in order per topic; and each
//! retained topic must hold its last acknowledged message (or a later one whose
//! acknowledgement the kill cut off).
//!
//! `QUICLAB_CHAOS_SEED` and `QUICLAB_CHAOS_KILLS` change the seed (default 18) and the number of
//! kills. The assertions do not depend on timing; the run's length does (about a minute), so
//! it lives in a timing binary of its own.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::broker::{PersistentBroker, Raw};
use common::rng::Rng;
use quiclab::mqtt::client::{Client, ClientOptions, MqttUrl};
use quiclab::mqtt::codec::{Packet, Pid, QoS, QosPid, Subscribe, TopicFilter};
use quiclab::tls::Trust;
use tokio::sync::watch;

/// Where the broker listens now (`None` while it is down): TCP, QUIC.
type Addr = watch::Receiver<Option<(MqttUrl, MqttUrl)>>;

/// One publisher's record: what it sent and what the broker acknowledged.
#[derive(Default)]
struct Published {
    acked: Vec<u64>,
    last_attempted: u64,
}

struct PubSpec {
    name: &'static str,
    quic: bool,
    qos: QoS,
    retain: bool,
}

const PUBLISHERS: [PubSpec; 4] = [
    PubSpec { name: "tcp1", quic: false, qos: QoS::Level1, retain: true },
    PubSpec { name: "tcp2", quic: false, qos: QoS::Level2, retain: false },
    PubSpec { name: "quic1", quic: true, qos: QoS::Level1, retain: false },
    PubSpec { name: "quic2", quic: true, qos: QoS::Level2, retain: true },
];

/// Most messages one publisher sends in a run (a bound on the load, whatever the timing).
const MAX_PER_PUBLISHER: u64 = 50_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The broker's address once it is up (waits while it is down).
async fn up(addr: &mut Addr, quic: bool) -> Option<MqttUrl> {
    let urls = addr.wait_for(|a| a.is_some()).await.ok()?.clone()?;
    Some(if quic { urls.1 } else { urls.0 })
}

/// Publish 1, 2, 3, ... on `chaos/NAME`, reconnecting after every kill. A message counts as
/// acknowledged when `publish` returned (PUBACK; PUBCOMP for QoS 2); one cut off by a kill is
/// not sent again (MQTT allows that for a new connection), the next number follows.
async fn publisher(
    spec: &'static PubSpec,
    mut addr: Addr,
    trust: Trust,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Published>>,
) {
    let topic = format!("chaos/{}", spec.name);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && seq < MAX_PER_PUBLISHER {
        let Some(url) = up(&mut addr, spec.quic).await else { return };
        let opts =
            ClientOptions { client_id: format!("pub-{}", spec.name), trust: trust.clone(), ..Default::default() };
        let mut client = tokio::select! {
            c = Client::connect(&url, &opts) => match c {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = addr.changed() => continue,
        };
        while !stop.load(Ordering::Relaxed) && seq < MAX_PER_PUBLISHER {
            seq += 1;
            if let Ok(mut p) = out.lock() {
                p.last_attempted = seq;
            }
            let sent = tokio::select! {
                r = client.publish(&topic, spec.qos, spec.retain, seq.to_string()) => r.is_ok(),
                // The broker was killed: a QUIC connection would only notice at its idle timeout.
                _ = addr.changed() => false,
            };
            if !sent {
                break;
            }
            if let Ok(mut p) = out.lock() {
                p.acked.push(seq);
            }
        }
    }
}

/// What one subscriber received: per topic, the sequence numbers in arrival order.
type Received = HashMap<String, Vec<u64>>;

/// What the subscribers share with the test.
struct Shared {
    /// The run is over: stop.
    done: AtomicBool,
    /// What went wrong that is not a missing message (a session lost on restart).
    errors: Mutex<Vec<String>>,
    /// A permit per subscriber once it has subscribed.
    subscribed: tokio::sync::Semaphore,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared { done: AtomicBool::new(false), errors: Mutex::default(), subscribed: tokio::sync::Semaphore::new(0) }
    }
}

/// A persistent subscriber to `chaos/#` at QoS 2 that acknowledges as MQTT 3.1.1 §4.3.3 says
/// a receiver does (method B): a QoS 2 message is delivered when it first comes, and its
/// packet id is remembered until PUBREL, across reconnections, so a re-sent copy is not
/// delivered again. Every connection after the first must find the session present.
async fn subscriber(
    id: &'static str,
    quic: bool,
    mut addr: Addr,
    trust: Trust,
    shared: Arc<Shared>,
    got: Arc<Mutex<Received>>,
) {
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    let mut first = true;
    while !shared.done.load(Ordering::Relaxed) {
        let Some(url) = up(&mut addr, quic).await else { return };
        let connected = tokio::select! {
            c = Raw::connect(&url, &trust, id, false) => c,
            _ = addr.changed() => continue,
        };
        let Some((mut raw, present)) = connected else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if first {
            let filter = TopicFilter::try_from("chaos/#").expect("filter");
            let sub = Packet::Subscribe(Subscribe::new(
                Pid::try_from(1).expect("id"),
                vec![(filter, quiclab::mqtt::codec::v3_options(QoS::Level2))],
            ));
            if raw.send(sub).await.is_err()
                || !matches!(raw.next(Duration::from_secs(5)).await, Some(Packet::Suback(_)))
            {
                continue;
            }
            first = false;
            shared.subscribed.add_permits(1);
        } else if !present {
            if let Ok(mut e) = shared.errors.lock() {
                e.push(format!("{id}: the persistent session was gone after a restart"));
            }
        }
        loop {
            let p = tokio::select! {
                p = raw.next(Duration::from_millis(200)) => p,
                _ = addr.changed() => None,
            };
            let Some(p) = p else {
                if shared.done.load(Ordering::Relaxed) || addr.borrow().is_none() || raw_gone(&addr, &url) {
                    break;
                }
                continue;
            };
            let ack = match p {
                Packet::Publish(m) => {
                    let fresh = match m.qos_pid {
                        QosPid::Level2(pid) => awaiting_rel.insert(pid.value()),
                        _ => true,
                    };
                    if fresh {
                        let seq = std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                        if let Ok(mut g) = got.lock() {
                            g.entry(m.topic_name.to_string()).or_default().push(seq);
                        }
                    }
                    match m.qos_pid {
                        QosPid::Level1(pid) => Some(Packet::puback(pid)),
                        QosPid::Level2(pid) => Some(Packet::pubrec(pid)),
                        QosPid::Level0 => None,
                    }
                }
                Packet::Pubrel(pid) => {
                    awaiting_rel.remove(&pid.pid.value());
                    Some(Packet::pubcomp(pid.pid))
                }
                _ => None,
            };
            if let Some(ack) = ack {
                if raw.send(ack).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Whether the broker now listens elsewhere than `url` (it was restarted).
fn raw_gone(addr: &Addr, url: &MqttUrl) -> bool {
    match &*addr.borrow() {
        Some((tcp, quic)) => tcp.port != url.port && quic.port != url.port,
        None => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_seeded_kill_9_under_load() {
    let seed = env_or("QUICLAB_CHAOS_SEED", 18);
    let kills = env_or("QUICLAB_CHAOS_KILLS", 50);
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, certs): (PathBuf, PathBuf) = (dir.path().join("data"), dir.path().join("certs"));
    let trust = Trust::CaFile(certs.join("ca.pem"));
    let mut broker = PersistentBroker::start(&data, &certs).await;
    let (addr_tx, addr_rx) = watch::channel(Some((broker.tcp_url(), broker.quic_url())));

    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::default());
    let mut subs = Vec::new();
    for (id, quic) in [("sub-tcp", false), ("sub-quic", true)] {
        let got = Arc::new(Mutex::new(Received::new()));
        let task = tokio::spawn(subscriber(id, quic, addr_rx.clone(), trust.clone(), shared.clone(), got.clone()));
        subs.push((id, got, task));
    }
    let both = tokio::time::timeout(Duration::from_secs(20), shared.subscribed.acquire_many(2)).await;
    assert!(matches!(both, Ok(Ok(_))), "both subscribers subscribed within 20 s");
    let mut pubs = Vec::new();
    for spec in &PUBLISHERS {
        let out = Arc::new(Mutex::new(Published::default()));
        let task = tokio::spawn(publisher(spec, addr_rx.clone(), trust.clone(), stop.clone(), out.clone()));
        pubs.push((spec, out, task));
    }

    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
        addr_tx.send_replace(None);
        drop(broker); // SIGKILL
        tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
        broker = PersistentBroker::start(&data, &certs).await;
        addr_tx.send_replace(Some((broker.tcp_url(), broker.quic_url())));
    }
    stop.store(true, Ordering::Relaxed);
    for (spec, _, task) in &mut pubs {
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("publisher ends").unwrap_or_else(|e| {
            panic!("publisher {} failed: {e}", spec.name);
        });
    }
    // Wait until every subscriber has every acknowledged message (or 30 s).
    let acked: HashMap<String, Vec<u64>> = pubs
        .iter()
        .map(|(spec, out, _)| (format!("chaos/{}", spec.name), out.lock().map(|p| p.acked.clone()).unwrap_or_default()))
        .collect();
    let complete = || {
        subs.iter().all(|(_, got, _)| {
            let got = got.lock().expect("lock");
            acked.iter().all(|(t, seqs)| {
                let have: HashSet<u64> = got.get(t).map(|v| v.iter().copied().collect()).unwrap_or_default();
                seqs.iter().all(|s| have.contains(s))
            })
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !complete() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Copies re-sent after the last restart get half a second more to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.done.store(true, Ordering::Relaxed);

    let mut report = Vec::new();
    for (spec, out, _) in &pubs {
        let topic = format!("chaos/{}", spec.name);
        let (acked, last_attempted) = {
            let p = out.lock().expect("lock");
            (p.acked.clone(), p.last_attempted)
        };
        assert!(acked.len() > 100, "{topic}: only {} messages acknowledged; the load did not run", acked.len());
        for (id, got, _) in &subs {
            let got = got.lock().expect("lock").get(&topic).cloned().unwrap_or_default();
            let have: HashSet<u64> = got.iter().copied().collect();
            let missing: Vec<u64> = acked.iter().copied().filter(|s| !have.contains(s)).collect();
            assert!(missing.is_empty(), "{id} {topic}: acknowledged but never delivered: {missing:?}");
            let dups = got.len() - have.len();
            if spec.qos == QoS::Level2 {
                assert_eq!(dups, 0, "{id} {topic}: a QoS 2 message delivered twice");
            }
            // In order: the first copy of each message comes after the first copy of every
            // earlier one.
            let mut seen = HashSet::new();
            let firsts: Vec<u64> = got.iter().copied().filter(|s| seen.insert(*s)).collect();
            assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{id} {topic}: out of order");
            report.push(format!(
                "{id} {topic} QoS {}: {} acknowledged, {} delivered ({} duplicates), last attempted {last_attempted}",
                spec.qos as u8,
                acked.len(),
                got.len(),
                dups
            ));
        }
        // Retained: the last acknowledged message, or a later one whose acknowledgement a kill
        // cut off.
        if spec.retain {
            let url = if spec.quic { broker.quic_url() } else { broker.tcp_url() };
            let opts =
                ClientOptions { client_id: format!("check-{}", spec.name), trust: trust.clone(), ..Default::default() };
            let mut c = Client::connect(&url, &opts).await.expect("connect");
            c.subscribe(&[(&topic, QoS::Level0)]).await.expect("SUBSCRIBE");
            let m = c.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("the retained message");
            let seq: u64 = String::from_utf8_lossy(&m.payload).parse().expect("a sequence number");
            let last = acked.last().copied().unwrap_or(0);
            assert!(
                m.retain && (last..=last_attempted).contains(&seq),
                "{topic}: retained {seq}, last acknowledged {last}"
            );
        }
    }
    let errors = shared.errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "{errors:?}");
    println!("chaos: seed {seed}, {kills} kills");
    for line in report {
        println!("chaos: {line}");
    }
    for (_, _, task) in subs {
        task.abort();
    }
}

/// `--sync 1s`: an acknowledged change is on disk within about the interval even when
/// nothing else is written after it (the store's thread syncs when the fsync is due, not only
/// on the next write). A first publish starts the clock (the broker's start-up may take longer
/// than the interval, which would make the first commit durable at once); the checked one
/// comes right after it, so its commit is not durable; a SIGKILL 3 s later must not lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_sync_reaches_the_disk_without_further_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, certs) = (dir.path().join("data"), dir.path().join("certs"));
    let trust = Trust::CaFile(certs.join("ca.pem"));
    let opts = |id: &str| ClientOptions { client_id: id.into(), trust: trust.clone(), ..Default::default() };
    let broker = PersistentBroker::start_with(&data, &certs, &["--sync", "1s"]).await;
    let mut c = Client::connect(&broker.tcp_url(), &opts("pub")).await.expect("connect");
    c.publish("due/warm", QoS::Level1, true, "starts the clock").await.expect("PUBLISH");
    c.publish("due/one", QoS::Level1, true, "synced by the clock").await.expect("PUBLISH");
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(broker); // SIGKILL
    drop(c);
    let broker = PersistentBroker::start(&data, &certs).await;
    let mut s = Client::connect(&broker.tcp_url(), &opts("look")).await.expect("connect");
    s.subscribe(&[("due/one", QoS::Level1)]).await.expect("SUBSCRIBE");
    let m = s.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("the retained message after kill -9");
    assert_eq!(&m.payload[..], b"synced by the clock");
}
