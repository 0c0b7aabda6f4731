//! The MQTT broker's store: what survives a restart, in one redb file (`DIR/mqtt.redb`).
//!
//! The core stays sans-IO: it says what changed as [`StoreOp`]s among its actions, the driver
//! hands them here ([`Pending::put`]) and holds back every packet the core emitted after them
//! until they are durable (`driver.rs`). One thread owns the database and commits in groups:
//! once a write is pending it waits `GATHER` (2 ms) for more, then takes everything pending,
//! writes it in one transaction and commits it with redb's default
//! durability (`Immediate`: one `fsync` per commit, checksummed commit slots), then reports the
//! ticket it reached. So the more arrives while a commit runs, the more the next one carries,
//! and throughput does not depend on an `fsync` per message. With a sync interval
//! (`MqttConfig::sync_interval`, `--sync 1s`) commits are non-durable (kept in this process's
//! memory by redb) and reported at once; one is made durable when the interval has passed,
//! with or without new writes, and at a clean stop.
//!
//! Pending writes are kept in order, one per key, latest wins (a retained topic set twice
//! before a commit is written once; a message queued and acknowledged before a commit is
//! written as a delete only): what waits is bounded by the broker's own state
//! (`max_retained` topics, sessions' queues), not by how fast peers publish.
//!
//! Why redb, and not a file of our own: an embedded B-tree with checksummed, atomic commits
//! and one dependency (libc). A probe on this machine (docs/mqtt.md "Persistence") had it keep
//! every acknowledged commit through 20 `kill -9`s, reuse its space under queue churn, and refuse
//! damaged files with an error; fjall lost records silently from a damaged journal.
//!
//! A file that is not redb's, or a redb database that is not this store (no `meta` table
//! naming [`FORMAT`]), is refused with an error naming the file: never wiped.
//!
//! What is stored: retained messages; persistent sessions with their subscriptions, their
//! QoS 1/2 messages queued or in flight, and their inbound QoS 2 messages awaiting PUBREL
//! (control channel). Not stored: QoS 0 messages queued for an offline session.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::codec::TopicFilter;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::broker::{OutStage, StoreOp, StoredOutbound, StoredSub};
use super::codec::MessageProps;
use super::codec::{QoS, TopicName};
use super::session::Message;

/// How long the commit thread waits, once a write is pending, before it takes what is pending
/// and commits: writes made meanwhile join the commit (fewer, larger commits: fewer fsyncs and
/// wake-ups), and a delivery to a persistent session acknowledged within the window is never
/// written at all (its put and delete cancel in `Pending`). It adds up to this much to the
/// acknowledgements the commit holds back. Measured in docs/BENCHMARKS.md "Issue 18" (the
/// 2 ms gather).
const GATHER: Duration = Duration::from_millis(2);

/// The store's file inside the data directory.
pub const FILE_NAME: &str = "mqtt.redb";
/// What `meta["format"]` says in a store this version reads and writes. Format 2 adds the MQTT 5
/// extras (see [`EXT`]) to format 1's records, which it reads unchanged: a format 1 store is
/// upgraded (its marker rewritten) when opened, and an older binary then refuses it by name
/// instead of tripping over a record it cannot read.
pub const FORMAT: &str = "quiclab-mqtt-store/2";
/// The format before MQTT 5.
const FORMAT_1: &str = "quiclab-mqtt-store/1";

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Topic → [QoS byte][payload], or with MQTT 5 extras [QoS | 0x80][extras][payload].
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// Client id of a persistent session → its subscriptions: per filter [QoS byte][u16 BE
/// length][filter] (3.1.1 sessions, which never expire); or [0xFF][u32 BE Session Expiry
/// Interval] then per filter [options byte][u32 BE Subscription Identifier][u16 BE
/// length][filter], the options byte laid out as MQTT 5's (QoS, No Local, Retain As Published).
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// [u16 BE length][client id][u64 BE seq] → [stage][u16 BE packet id][QoS][retain][u16 BE
/// topic length][topic][payload]. Stage: 0 queued, 1 awaiting PUBACK, 2 PUBREC, 3 PUBCOMP.
/// With MQTT 5 extras: [QoS | 0x80][retain][extras] before the topic.
const OUTBOUND: TableDefinition<&[u8], &[u8]> = TableDefinition::new("outbound");
/// [u16 BE length][client id][u16 BE packet id] → [QoS][retain][u16 BE topic length][topic]
/// [payload], with extras as in `OUTBOUND`.
const INBOUND: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inbound");

// MQTT 5 extras of a message record (its QoS byte has 0x80 set): [flags], then [u64 BE expiry,
// Unix milliseconds] if flags & 1, then [u32 BE length][properties] if flags & 2, the
// properties as an MQTT 5 PUBLISH property list (`MessageProps::to_bytes`). Records without
// them are byte for byte those of earlier versions, so one format name covers both.
const EXT: u8 = 0x80;
const EXT_EXPIRY: u8 = 1;
const EXT_PROPS: u8 = 2;
/// The first byte of a subscription list with an expiry and MQTT 5 options.
const SUBS_V5: u8 = 0xff;

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {} (give another --data-dir, or --no-persist)", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the MQTT store {} is open in another process (another quiclab with the same --data-dir?); give this one its own --data-dir, or --no-persist", .path.display())]
    InUse { path: PathBuf },
    #[error("cannot open the MQTT store {} (not a redb file, or damaged); it was left as it is", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("{} is not a quiclab MQTT store ({found}); refusing to use it (move it away or pick another --data-dir)", .path.display())]
    Foreign { path: PathBuf, found: String },
    #[error("the MQTT store {} holds a record that cannot be read ({what}); it was left as it is", .path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("MQTT store {}: {source}", .path.display())]
    Redb {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
}

/// What the store held when it was opened: the broker starts from it.
#[derive(Debug, Default)]
pub struct Recovered {
    pub retained: Vec<Message>,
    pub sessions: Vec<StoredSession>,
}

pub use super::broker::StoredSession;

/// An opened store, before the broker takes it ([`super::Broker::with_store`]).
pub struct OpenedStore {
    pub(crate) db: Database,
    pub(crate) path: PathBuf,
    pub recovered: Recovered,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore").field("path", &self.path).field("recovered", &self.recovered).finish()
    }
}

/// Open (or create) the store in `dir` and read what it holds.
pub fn open(dir: &Path) -> Result<OpenedStore, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { path: dir.to_path_buf(), source })?;
    let path = dir.join(FILE_NAME);
    let redb_err = |source: redb::Error| StoreError::Redb { path: path.clone(), source };
    // `create` opens an existing redb file, initialises a missing or empty one, and fails on
    // anything else.
    let db = Database::create(&path).map_err(|source| match source {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::InUse { path: path.clone() }
        }
        source => StoreError::Open { path: path.clone(), source },
    })?;
    // A new (empty) database gets the format marker; one with tables must carry it.
    {
        let rtx = db.begin_read().map_err(|e| redb_err(e.into()))?;
        let tables: Vec<String> =
            rtx.list_tables().map_err(|e| redb_err(e.into()))?.map(|t| t.name().to_string()).collect();
        let format = match rtx.open_table(META) {
            Ok(t) => t.get("format").map_err(|e| redb_err(e.into()))?.map(|v| v.value().to_string()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(redb_err(e.into())),
        };
        match format {
            Some(f) if f == FORMAT => {}
            Some(f) if f == FORMAT_1 => {
                let wtx = db.begin_write().map_err(|e| redb_err(e.into()))?;
                {
                    let mut meta = wtx.open_table(META).map_err(|e| redb_err(e.into()))?;
                    meta.insert("format", FORMAT).map_err(|e| redb_err(e.into()))?;
                }
                wtx.commit().map_err(|e| redb_err(e.into()))?;
                tracing::info!(path = %path.display(), "mqtt: store upgraded from {FORMAT_1} to {FORMAT}");
            }
            Some(f) => {
                return Err(StoreError::Foreign { path, found: format!("format {f:?}, this version reads {FORMAT:?}") })
            }
            None if tables.is_empty() => {
                let wtx = db.begin_write().map_err(|e| redb_err(e.into()))?;
                {
                    let mut meta = wtx.open_table(META).map_err(|e| redb_err(e.into()))?;
                    meta.insert("format", FORMAT).map_err(|e| redb_err(e.into()))?;
                    wtx.open_table(RETAINED).map_err(|e| redb_err(e.into()))?;
                    wtx.open_table(SESSIONS).map_err(|e| redb_err(e.into()))?;
                    wtx.open_table(OUTBOUND).map_err(|e| redb_err(e.into()))?;
                    wtx.open_table(INBOUND).map_err(|e| redb_err(e.into()))?;
                }
                wtx.commit().map_err(|e| redb_err(e.into()))?;
            }
            None => {
                return Err(StoreError::Foreign { path, found: format!("a redb database with tables {tables:?}") });
            }
        }
    }
    let recovered = read_all(&db, &path)?;
    Ok(OpenedStore { db, path, recovered })
}

fn read_all(db: &Database, path: &Path) -> Result<Recovered, StoreError> {
    let redb_err = |source: redb::Error| StoreError::Redb { path: path.to_path_buf(), source };
    let corrupt = |what: String| StoreError::Corrupt { path: path.to_path_buf(), what };
    let rtx = db.begin_read().map_err(|e| redb_err(e.into()))?;
    let table = rtx.open_table(RETAINED).map_err(|e| redb_err(e.into()))?;
    let mut retained = Vec::new();
    for entry in table.iter().map_err(|e| redb_err(e.into()))? {
        let (k, v) = entry.map_err(|e| redb_err(e.into()))?;
        let topic =
            TopicName::try_from(k.value()).map_err(|e| corrupt(format!("retained topic {:?}: {e}", k.value())))?;
        let mut m = decode_retained(v.value()).ok_or_else(|| corrupt(format!("retained message of {topic}")))?;
        m.topic = topic;
        retained.push(m);
    }
    let mut sessions = Vec::new();
    let table = match rtx.open_table(SESSIONS) {
        Ok(t) => Some(t),
        // A store of this format written before sessions were kept has no such table yet.
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(redb_err(e.into())),
    };
    if let Some(table) = table {
        for entry in table.iter().map_err(|e| redb_err(e.into()))? {
            let (k, v) = entry.map_err(|e| redb_err(e.into()))?;
            let (expiry, subs) =
                decode_subs(v.value()).ok_or_else(|| corrupt(format!("subscriptions of session {:?}", k.value())))?;
            sessions.push(StoredSession { client_id: Arc::from(k.value()), expiry, subs, ..Default::default() });
        }
    }
    // Messages, grouped by client id (keys sort by client, then by seq or packet id).
    let mut by_client: HashMap<Arc<str>, usize> =
        sessions.iter().enumerate().map(|(i, s)| (s.client_id.clone(), i)).collect();
    for (def, inbound) in [(OUTBOUND, false), (INBOUND, true)] {
        let table = match rtx.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(e) => return Err(redb_err(e.into())),
        };
        for entry in table.iter().map_err(|e| redb_err(e.into()))? {
            let (k, v) = entry.map_err(|e| redb_err(e.into()))?;
            let bad = || corrupt(format!("a {} message record", if inbound { "inbound" } else { "outbound" }));
            let (client, rest) = split_client(k.value()).ok_or_else(bad)?;
            // Messages of a session whose record is gone belong to nobody: skipped.
            let Some(&i) = by_client.get(client) else { continue };
            if inbound {
                let pid = u16::from_be_bytes(rest.try_into().map_err(|_| bad())?);
                let (_, _, msg) = decode_message(v.value(), false).ok_or_else(bad)?;
                sessions[i].inbound.push((pid, msg));
            } else {
                let seq = u64::from_be_bytes(rest.try_into().map_err(|_| bad())?);
                let (stage, retain, msg) = decode_message(v.value(), true).ok_or_else(bad)?;
                let stage = stage.ok_or_else(bad)?;
                sessions[i].outbound.push(StoredOutbound { seq, stage, retain, msg });
            }
        }
    }
    by_client.clear();
    Ok(Recovered { retained, sessions })
}

/// The key prefix of `client`'s message records: [u16 BE length][client id].
pub(crate) fn client_prefix(client: &str) -> Vec<u8> {
    let len = u16::try_from(client.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(2 + client.len() + 8);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&client.as_bytes()[..usize::from(len)]);
    k
}

pub(crate) fn split_client(key: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let client = std::str::from_utf8(rest.get(..len)?).ok()?;
    Some((client, &rest[len..]))
}

fn outbound_key(client: &str, seq: u64) -> Vec<u8> {
    let mut k = client_prefix(client);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn inbound_key(client: &str, pid: u16) -> Vec<u8> {
    let mut k = client_prefix(client);
    k.extend_from_slice(&pid.to_be_bytes());
    k
}

/// Unix milliseconds of `at`, an instant of this process's monotonic clock.
fn wall_ms(at: Instant) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let wall = match at.checked_duration_since(Instant::now()) {
        Some(ahead) => now.saturating_add(ahead),
        None => now.saturating_sub(Instant::now().saturating_duration_since(at)),
    };
    u64::try_from(wall.as_millis()).unwrap_or(u64::MAX)
}

/// The instant of Unix milliseconds `ms` (now, if it has passed).
fn instant_of(ms: u64) -> Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ahead = Duration::from_millis(ms).saturating_sub(now);
    Instant::now().checked_add(ahead).unwrap_or_else(Instant::now)
}

/// The MQTT 5 extras of `m` (see [`EXT`]), if it has any.
fn encode_ext(m: &Message, v: &mut Vec<u8>) {
    let props = m.props.as_deref().and_then(|p| p.to_bytes().ok());
    let flags = if m.expires_at.is_some() { EXT_EXPIRY } else { 0 } | if props.is_some() { EXT_PROPS } else { 0 };
    v.push(flags);
    if let Some(at) = m.expires_at {
        v.extend_from_slice(&wall_ms(at).to_be_bytes());
    }
    if let Some(p) = props {
        v.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
        v.extend_from_slice(&p);
    }
}

/// Read extras into `m`; returns the rest of the record.
fn decode_ext<'a>(v: &'a [u8], m: &mut Message) -> Option<&'a [u8]> {
    let (&flags, mut v) = v.split_first()?;
    if flags & !(EXT_EXPIRY | EXT_PROPS) != 0 {
        return None;
    }
    if flags & EXT_EXPIRY != 0 {
        let (ms, rest) = v.split_first_chunk::<8>()?;
        m.expires_at = Some(instant_of(u64::from_be_bytes(*ms)));
        v = rest;
    }
    if flags & EXT_PROPS != 0 {
        let (len, rest) = v.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        m.props = MessageProps::from_bytes(rest.get(..len)?).ok()?.shared();
        v = &rest[len..];
    }
    Some(v)
}

fn has_ext(m: &Message) -> bool {
    m.props.is_some() || m.expires_at.is_some()
}

/// [stage][u16 BE packet id] (outbound records only), then [QoS][retain][u16 BE topic
/// length][topic][payload]; a message with MQTT 5 properties or an expiry has [QoS | 0x80]
/// and its extras after the retain byte.
pub(crate) fn encode_message(stage: Option<OutStage>, retain: bool, m: &Message) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + m.topic.len() + m.payload.len());
    if let Some(stage) = stage {
        let (tag, pid) = match stage {
            OutStage::Queued(_) => (0u8, 0u16),
            OutStage::AwaitPuback(id) => (1, id),
            OutStage::AwaitPubrec(id) => (2, id),
            OutStage::AwaitPubcomp(id) => (3, id),
        };
        v.push(tag);
        v.extend_from_slice(&pid.to_be_bytes());
    }
    let qos = match stage {
        Some(OutStage::Queued(q)) => q,
        _ => m.qos,
    };
    let ext = has_ext(m);
    v.push(qos as u8 | if ext { EXT } else { 0 });
    v.push(u8::from(retain));
    if ext {
        encode_ext(m, &mut v);
    }
    let len = u16::try_from(m.topic.len()).unwrap_or(u16::MAX);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&m.topic.as_bytes()[..usize::from(len)]);
    v.extend_from_slice(&m.payload);
    v
}

/// The inverse of [`encode_message`]; `staged`: the record has a stage (outbound).
pub(crate) fn decode_message(v: &[u8], staged: bool) -> Option<(Option<OutStage>, bool, Message)> {
    let (stage_tag, pid, v) = if staged {
        let (&tag, rest) = v.split_first()?;
        let (pid, rest) = rest.split_first_chunk::<2>()?;
        (Some(tag), u16::from_be_bytes(*pid), rest)
    } else {
        (None, 0, v)
    };
    let (&q, v) = v.split_first()?;
    let qos = QoS::from_u8(q & !EXT).ok()?;
    let (&r, v) = v.split_first()?;
    let mut m = Message::new(TopicName::try_from("").ok()?, Bytes::new(), qos, r == 1);
    let v = if q & EXT != 0 { decode_ext(v, &mut m)? } else { v };
    let (len, v) = v.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    m.topic = TopicName::try_from(std::str::from_utf8(v.get(..len)?).ok()?).ok()?;
    m.payload = Bytes::copy_from_slice(&v[len..]);
    let stage = match stage_tag {
        None => None,
        Some(0) => Some(OutStage::Queued(qos)),
        Some(1) => Some(OutStage::AwaitPuback(pid)),
        Some(2) => Some(OutStage::AwaitPubrec(pid)),
        Some(3) => Some(OutStage::AwaitPubcomp(pid)),
        Some(_) => return None,
    };
    Some((stage, r == 1, m))
}

/// A session's expiry and subscriptions: 3.1.1's layout when the session never expires and
/// its subscriptions have no MQTT 5 option, else the MQTT 5 one (see [`SESSIONS`]).
pub(crate) fn encode_subs(expiry: u32, subs: &[StoredSub]) -> Vec<u8> {
    let v5 = expiry != u32::MAX || subs.iter().any(|s| s.no_local || s.retain_as_published || s.id != 0);
    let mut v = Vec::new();
    if v5 {
        v.push(SUBS_V5);
        v.extend_from_slice(&expiry.to_be_bytes());
    }
    for s in subs {
        // A filter is at most 65,535 bytes (MQTT's string length).
        let len = u16::try_from(s.filter.len()).unwrap_or(u16::MAX);
        v.push(s.options_byte());
        if v5 {
            v.extend_from_slice(&s.id.to_be_bytes());
        }
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&s.filter.as_bytes()[..usize::from(len)]);
    }
    v
}

/// The inverse of [`encode_subs`]: (expiry, subscriptions).
pub(crate) fn decode_subs(v: &[u8]) -> Option<(u32, Vec<StoredSub>)> {
    let (expiry, mut v, v5) = match v.split_first() {
        Some((&SUBS_V5, rest)) => {
            let (e, rest) = rest.split_first_chunk::<4>()?;
            (u32::from_be_bytes(*e), rest, true)
        }
        _ => (u32::MAX, v, false),
    };
    let mut out = Vec::new();
    while let Some((&o, rest)) = v.split_first() {
        // A 3.1.1 record has the QoS alone (checked with the rest of the byte below).
        if !v5 && o > 2 {
            return None;
        }
        let (id, rest) = if v5 {
            let (id, rest) = rest.split_first_chunk::<4>()?;
            (u32::from_be_bytes(*id), rest)
        } else {
            (0, rest)
        };
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let f = std::str::from_utf8(rest.get(..len)?).ok()?;
        out.push(StoredSub::from_options_byte(TopicFilter::try_from(f).ok()?, o, id)?);
        v = &rest[len..];
    }
    Some((expiry, out))
}

/// [QoS][payload], or [QoS | 0x80][extras][payload] (see [`EXT`]).
pub(crate) fn encode_retained(m: &Message) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + m.payload.len());
    let ext = has_ext(m);
    v.push(m.qos as u8 | if ext { EXT } else { 0 });
    if ext {
        encode_ext(m, &mut v);
    }
    v.extend_from_slice(&m.payload);
    v
}

/// The inverse of [`encode_retained`]: the message with an empty topic (the key is the topic).
pub(crate) fn decode_retained(v: &[u8]) -> Option<Message> {
    let (&q, v) = v.split_first()?;
    let qos = QoS::from_u8(q & !EXT).ok()?;
    let mut m = Message::new(TopicName::try_from("").ok()?, Bytes::new(), qos, true);
    let payload = if q & EXT != 0 { decode_ext(v, &mut m)? } else { v };
    m.payload = Bytes::copy_from_slice(payload);
    Some(m)
}

/// A write waiting for the next commit. Keyed, so a later write of the same key replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Retained(TopicName),
    Session(Arc<str>),
    Outbound(Arc<str>, u64),
    Inbound(Arc<str>, u16),
}

impl Key {
    fn client(&self) -> Option<&str> {
        match self {
            Key::Retained(_) => None,
            Key::Session(c) | Key::Outbound(c, _) | Key::Inbound(c, _) => Some(c),
        }
    }
}

/// One pending write, in the order the broker made them.
#[derive(Debug)]
enum Write {
    /// Set `Key` to this value, or delete it (`None`). `fresh`: the key's first write here
    /// created it (a new message's sequence number or packet id), so the file cannot hold it
    /// yet and a delete cancels the write instead of being written.
    Key(Key, Option<Vec<u8>>, bool),
    /// Delete every record of this client's session.
    DropClient(Arc<str>),
    /// Replaced by a later write of the same key.
    Dead,
}

/// The writes not yet committed, and the ticket they will reach. Shared by the driver (under
/// the broker's lock, which it takes first) and the store's thread.
#[derive(Default)]
pub(crate) struct Pending {
    writes: Vec<Write>,
    /// Where in `writes` each key's latest write is.
    index: HashMap<Key, usize>,
    /// The ticket of the last [`Pending::put`]: once a commit that took it is done, everything
    /// put up to it is durable.
    ticket: u64,
    /// The broker is gone: the thread commits what is left and ends.
    closed: bool,
    /// The thread waits for writes: a put must wake it. While it commits it takes what came
    /// meanwhile without a wake-up (a futex wake and a context switch per packet otherwise).
    idle: bool,
}

impl Pending {
    /// Queue `op` for the next commit; returns the ticket that commit will reach.
    pub(crate) fn put(&mut self, op: StoreOp) -> u64 {
        match op {
            StoreOp::Retain(m) => {
                let v = encode_retained(&m);
                self.set(Key::Retained(m.topic), Some(v), false);
            }
            StoreOp::Unretain(topic) => self.set(Key::Retained(topic), None, false),
            StoreOp::Session { client_id, expiry, subs } => {
                self.set(Key::Session(client_id), Some(encode_subs(expiry, &subs)), false)
            }
            StoreOp::DropSession { client_id } => {
                // Everything pending for the client is moot: the drop deletes it all.
                for w in &mut self.writes {
                    if matches!(w, Write::Key(k, ..) if k.client() == Some(&*client_id)) {
                        *w = Write::Dead;
                    }
                }
                self.index.retain(|k, _| k.client() != Some(&*client_id));
                self.writes.push(Write::DropClient(client_id));
            }
            StoreOp::Outbound { client_id, seq, stage, retain, msg } => {
                let v = encode_message(Some(stage), retain, &msg);
                // Every stage but the PUBREC update starts a new sequence number.
                let fresh = !matches!(stage, OutStage::AwaitPubcomp(_));
                self.set(Key::Outbound(client_id, seq), Some(v), fresh);
            }
            StoreOp::OutboundDone { client_id, seq } => self.set(Key::Outbound(client_id, seq), None, false),
            StoreOp::Inbound { client_id, pid, msg } => {
                let v = encode_message(None, msg.retain, &msg);
                self.set(Key::Inbound(client_id, pid), Some(v), true);
            }
            StoreOp::InboundDone { client_id, pid } => self.set(Key::Inbound(client_id, pid), None, false),
        }
        self.ticket += 1;
        self.ticket
    }

    fn set(&mut self, key: Key, value: Option<Vec<u8>>, fresh: bool) {
        match self.index.get(&key).copied() {
            Some(i) => match self.writes.get_mut(i) {
                // Made and gone before any commit: nothing to write (a message acknowledged
                // while its first commit was running).
                Some(w @ Write::Key(_, _, true)) if value.is_none() => {
                    *w = Write::Dead;
                    self.index.remove(&key);
                }
                Some(Write::Key(_, v, _)) => *v = value,
                _ => {}
            },
            None => {
                self.index.insert(key.clone(), self.writes.len());
                self.writes.push(Write::Key(key, value, fresh));
            }
        }
    }

    /// Whether the thread must be woken ([`Writer::notify`]) for what was put.
    pub(crate) fn thread_idle(&self) -> bool {
        self.idle
    }

    /// Everything pending, in order; `Pending` is empty afterwards.
    fn take(&mut self) -> Vec<Write> {
        self.index.clear();
        std::mem::take(&mut self.writes)
    }
}

/// The store's side of the broker: pending writes and the thread that commits them.
pub(crate) struct Writer {
    pub(crate) pending: Arc<(Mutex<Pending>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Start the commit thread. `durable(t)` is called after each commit with the ticket it
    /// reached (from that thread). `sync`: [`MqttConfig::sync_interval`](super::MqttConfig).
    pub(crate) fn start(
        store: OpenedStore,
        sync: Option<Duration>,
        durable: impl Fn(u64) + Send + 'static,
    ) -> std::io::Result<Writer> {
        let pending: Arc<(Mutex<Pending>, Condvar)> = Arc::default();
        let shared = pending.clone();
        let thread = std::thread::Builder::new()
            .name("mqtt-store".into())
            .spawn(move || commit_loop(store.db, store.path, sync, &shared, durable))?;
        Ok(Writer { pending, thread: Some(thread) })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake the thread: something was put.
    pub(crate) fn notify(&self) {
        self.pending.1.notify_one();
    }
}

impl Drop for Writer {
    /// Commit what is pending, then let the thread end (the file is closed with it). If the
    /// last handle of the broker goes away on the store's own thread (inside the `durable`
    /// callback), the thread is not joined (it cannot join itself): it sees `closed` when the
    /// callback returns, commits what is left and ends.
    fn drop(&mut self) {
        self.lock().closed = true;
        self.notify();
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// When commits reach the disk: every commit (`sync` = `None`), or at most every interval.
struct SyncClock {
    every: Option<Duration>,
    /// The last fsynced commit.
    last: Instant,
    /// A commit since `last` was not fsynced.
    behind: bool,
}

impl SyncClock {
    /// How long the thread may wait for writes before an fsync is due (`None`: no limit).
    fn due_in(&self) -> Option<Duration> {
        match self.every {
            // An interval too long to add (e.g. `--sync 100000000h`) is never due.
            Some(every) if self.behind => {
                self.last.checked_add(every).map(|due| due.saturating_duration_since(Instant::now()))
            }
            _ => None,
        }
    }

    /// Whether the next commit must be fsynced. (At a clean stop redb would also make a
    /// pending non-durable commit durable when the database closes; this does not rely on it.)
    fn immediate(&self, closing: bool) -> bool {
        match self.every {
            None => true,
            Some(every) => closing || self.last.elapsed() >= every,
        }
    }

    fn committed(&mut self, immediate: bool) {
        if immediate {
            self.last = Instant::now();
        }
        self.behind = !immediate;
    }
}

fn commit_loop(
    db: Database,
    path: PathBuf,
    sync: Option<Duration>,
    shared: &(Mutex<Pending>, Condvar),
    durable: impl Fn(u64),
) {
    let (lock, cv) = shared;
    let mut failures = 0u32;
    let mut clock = SyncClock { every: sync, last: Instant::now(), behind: false };
    loop {
        let (mut writes, mut ticket, closing) = {
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            while p.writes.is_empty() && !p.closed {
                p.idle = true;
                match clock.due_in() {
                    None => p = cv.wait(p).unwrap_or_else(|e| e.into_inner()),
                    Some(left) if left.is_zero() => break,
                    Some(left) => p = cv.wait_timeout(p, left).unwrap_or_else(|e| e.into_inner()).0,
                }
            }
            p.idle = false;
            // Gather: what comes in the next moment joins this commit, and a delivery whose
            // acknowledgement comes within it is never written (put and delete cancel).
            if !p.closed && !p.writes.is_empty() {
                drop(p);
                std::thread::sleep(GATHER);
                p = lock.lock().unwrap_or_else(|e| e.into_inner());
            }
            (p.take(), p.ticket, p.closed)
        };
        let immediate = clock.immediate(closing);
        // Nothing to write: only an fsync that is due (an empty commit makes the last
        // non-durable ones durable).
        if writes.is_empty() && !(clock.behind && immediate) {
            if closing {
                return;
            }
            continue;
        }
        // A failed commit is retried with the same writes (and whatever came meanwhile,
        // which is newer and wins): nothing is reported durable until it is.
        loop {
            match commit(&db, &writes, immediate) {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(path = %path.display(), "mqtt store: commits work again");
                        failures = 0;
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::error!(path = %path.display(), error = %e, failures,
                            "mqtt store: commit failed; acknowledgements wait until it works");
                    }
                    std::thread::sleep(Duration::from_millis(100 * u64::from(failures.min(50))));
                    let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                    writes.extend(p.take());
                    ticket = p.ticket;
                    if p.closed && failures >= 3 {
                        tracing::error!(path = %path.display(), "mqtt store: shutting down with writes not committed");
                        return;
                    }
                }
            }
        }
        clock.committed(immediate);
        if !writes.is_empty() {
            durable(ticket);
        }
        if closing {
            return;
        }
    }
}

/// Write `writes` in one transaction; `immediate`: fsync it (redb's `Durability::Immediate`),
/// else it lives in this process's memory until the next fsynced commit.
fn commit(db: &Database, writes: &[Write], immediate: bool) -> Result<(), redb::Error> {
    let mut wtx = db.begin_write()?;
    if !immediate {
        wtx.set_durability(redb::Durability::None)?;
    }
    {
        let mut retained = wtx.open_table(RETAINED)?;
        let mut sessions = wtx.open_table(SESSIONS)?;
        let mut outbound = wtx.open_table(OUTBOUND)?;
        let mut inbound = wtx.open_table(INBOUND)?;
        for w in writes {
            match w {
                Write::Dead => {}
                Write::DropClient(c) => {
                    sessions.remove(&**c)?;
                    let from = client_prefix(c);
                    let mut to = from.clone();
                    to.extend_from_slice(&[0xff; 8]);
                    outbound.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)?;
                    inbound.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)?;
                }
                Write::Key(Key::Retained(t), v, _) => match v {
                    Some(v) => drop(retained.insert(&**t, v.as_slice())?),
                    None => drop(retained.remove(&**t)?),
                },
                Write::Key(Key::Session(c), v, _) => match v {
                    Some(v) => drop(sessions.insert(&**c, v.as_slice())?),
                    None => drop(sessions.remove(&**c)?),
                },
                Write::Key(Key::Outbound(c, seq), v, _) => {
                    let k = outbound_key(c, *seq);
                    match v {
                        Some(v) => drop(outbound.insert(k.as_slice(), v.as_slice())?),
                        None => drop(outbound.remove(k.as_slice())?),
                    }
                }
                Write::Key(Key::Inbound(c, pid), v, _) => {
                    let k = inbound_key(c, *pid);
                    match v {
                        Some(v) => drop(inbound.insert(k.as_slice(), v.as_slice())?),
                        None => drop(inbound.remove(k.as_slice())?),
                    }
                }
            }
        }
    }
    wtx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &'static [u8]) -> Message {
        Message::new(TopicName::try_from(topic).unwrap(), Bytes::from_static(payload), QoS::Level1, true)
    }

    #[test]
    fn retained_messages_survive_a_reopen_and_latest_write_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (w, rx) = started(dir.path(), None);
        let t = {
            let mut p = w.lock();
            p.put(StoreOp::Retain(msg("a/b", b"one")));
            p.put(StoreOp::Retain(msg("a/b", b"two")));
            p.put(StoreOp::Retain(msg("c", b"gone")));
            p.put(StoreOp::Unretain(TopicName::try_from("c").unwrap()))
        };
        w.notify();
        while rx.recv_timeout(Duration::from_secs(10)).expect("a commit within 10 s") < t {}
        drop(w);
        let again = open(dir.path()).unwrap();
        assert_eq!(again.recovered.retained, vec![msg("a/b", b"two")]);
    }

    #[test]
    fn mqtt5_extras_survive_a_reopen_and_3_1_1_records_keep_their_bytes() {
        use crate::mqtt::codec::UserProperty;
        // A 3.1.1 message record is byte for byte what earlier versions wrote.
        let plain = msg("a/b", b"x");
        assert_eq!(encode_message(None, true, &plain), [1, 1, 0, 3, b'a', b'/', b'b', b'x']);
        assert_eq!(
            encode_subs(u32::MAX, &[StoredSub::v3(TopicFilter::try_from("f").unwrap(), QoS::Level1)]),
            [1, 0, 1, b'f']
        );
        let dir = tempfile::tempdir().unwrap();
        let (w, rx) = started(dir.path(), None);
        let mut rich = msg("r/t", b"v5");
        rich.props = MessageProps {
            content_type: Some("text/plain".into()),
            user_properties: vec![UserProperty { name: "k".into(), value: "v".into() }],
            ..Default::default()
        }
        .shared();
        rich.expires_at = Some(Instant::now() + Duration::from_secs(3600));
        let sub = StoredSub {
            filter: TopicFilter::try_from("x/#").unwrap(),
            qos: QoS::Level1,
            no_local: true,
            retain_as_published: false,
            id: 9,
        };
        let id: Arc<str> = "v5".into();
        commit_all(
            &w,
            &rx,
            vec![
                StoreOp::Retain(rich.clone()),
                StoreOp::Session { client_id: id.clone(), expiry: 300, subs: vec![sub.clone()] },
                StoreOp::Outbound {
                    client_id: id.clone(),
                    seq: 1,
                    stage: OutStage::Queued(QoS::Level1),
                    retain: false,
                    msg: rich.clone(),
                },
            ],
        );
        drop(w);
        let r = open(dir.path()).unwrap().recovered;
        let back = &r.retained[0];
        assert_eq!((&back.props, &back.payload), (&rich.props, &rich.payload));
        let left = back.expires_at.unwrap().saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(3590), "the expiry survives ({left:?} left)");
        let s = &r.sessions[0];
        assert_eq!((s.expiry, &s.subs), (300, &vec![sub]));
        assert_eq!(s.outbound[0].msg.props, rich.props);
    }

    /// With a sync interval a commit is reported before any fsync (the hour never passes
    /// here), and a clean stop makes it durable. (That an unsynced commit is lost to a crash
    /// is checked with `kill -9` in tests/mqtt_persist.rs, that a due fsync comes without
    /// further writes in tests/timing_mqtt_chaos.rs. This test cannot tell our closing fsync
    /// from redb's: redb also makes a pending non-durable commit durable when it closes.)
    #[test]
    fn an_interval_sync_reports_commits_and_syncs_at_the_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (w, rx) = started(dir.path(), Some(Duration::from_secs(3600)));
        commit_all(&w, &rx, vec![StoreOp::Retain(msg("a", b"kept"))]);
        drop(w);
        assert_eq!(open(dir.path()).unwrap().recovered.retained, vec![msg("a", b"kept")]);
    }

    /// Commit everything put so far and wait for it.
    fn commit_all(w: &Writer, rx: &std::sync::mpsc::Receiver<u64>, ops: Vec<StoreOp>) {
        let t = {
            let mut p = w.lock();
            ops.into_iter().map(|op| p.put(op)).last().unwrap_or(0)
        };
        w.notify();
        while rx.recv_timeout(Duration::from_secs(10)).expect("a commit within 10 s") < t {}
    }

    fn started(dir: &Path, sync: Option<Duration>) -> (Writer, std::sync::mpsc::Receiver<u64>) {
        let store = open(dir).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Writer::start(store, sync, move |t| {
            let _ = tx.send(t);
        })
        .unwrap();
        (w, rx)
    }

    #[test]
    fn session_messages_round_trip_and_a_drop_removes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let (w, rx) = started(dir.path(), None);
        let id: Arc<str> = Arc::from("c1");
        let other: Arc<str> = Arc::from("c10"); // a longer id sharing the first bytes
        let sub = StoredSub::v3(TopicFilter::try_from("a/#").unwrap(), QoS::Level2);
        let out = |client_id: &Arc<str>, seq, stage| StoreOp::Outbound {
            client_id: client_id.clone(),
            seq,
            stage,
            retain: false,
            msg: msg("a/b", b"x"),
        };
        commit_all(
            &w,
            &rx,
            vec![
                StoreOp::Session { client_id: id.clone(), expiry: u32::MAX, subs: vec![sub.clone()] },
                StoreOp::Session { client_id: other.clone(), expiry: u32::MAX, subs: vec![] },
                out(&id, 1, OutStage::Queued(QoS::Level1)),
                out(&id, 2, OutStage::AwaitPubrec(7)),
                out(&id, 3, OutStage::Queued(QoS::Level2)),
                StoreOp::OutboundDone { client_id: id.clone(), seq: 1 },
                out(&other, 1, OutStage::AwaitPuback(9)),
                StoreOp::Inbound { client_id: id.clone(), pid: 4, msg: msg("in/q2", b"held") },
            ],
        );
        drop(w);
        let r = open(dir.path()).unwrap().recovered;
        let s = r.sessions.iter().find(|s| &*s.client_id == "c1").unwrap();
        assert_eq!(s.subs, vec![sub]);
        let stages: Vec<(u64, OutStage)> = s.outbound.iter().map(|o| (o.seq, o.stage)).collect();
        assert_eq!(stages, vec![(2, OutStage::AwaitPubrec(7)), (3, OutStage::Queued(QoS::Level2))]);
        assert_eq!(s.inbound.len(), 1);
        assert_eq!((s.inbound[0].0, &s.inbound[0].1.payload[..]), (4, &b"held"[..]));
        // Dropping c1 (then making it again, in the same commit) leaves c10 alone.
        let (w, rx) = started(dir.path(), None);
        commit_all(
            &w,
            &rx,
            vec![
                StoreOp::DropSession { client_id: id.clone() },
                StoreOp::Session { client_id: id.clone(), expiry: u32::MAX, subs: vec![] },
                out(&id, 5, OutStage::Queued(QoS::Level1)),
            ],
        );
        drop(w);
        let r = open(dir.path()).unwrap().recovered;
        let s = r.sessions.iter().find(|s| &*s.client_id == "c1").unwrap();
        assert!(s.subs.is_empty() && s.inbound.is_empty());
        assert_eq!(s.outbound.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![5]);
        let o = r.sessions.iter().find(|s| &*s.client_id == "c10").unwrap();
        assert_eq!(
            o.outbound.iter().map(|o| (o.seq, o.stage)).collect::<Vec<_>>(),
            vec![(1, OutStage::AwaitPuback(9))]
        );
    }

    #[test]
    fn a_foreign_file_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"not a database, and not to be wiped").unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert!(err.to_string().contains("left as it is"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a database, and not to be wiped");
    }

    #[test]
    fn another_redb_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let db = Database::create(&path).unwrap();
            let wtx = db.begin_write().unwrap();
            {
                let t: TableDefinition<&str, &str> = TableDefinition::new("someone-else");
                wtx.open_table(t).unwrap().insert("k", "v").unwrap();
            }
            wtx.commit().unwrap();
        }
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("someone-else"), "{err}");
    }

    #[test]
    fn a_format_1_store_is_read_and_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            // A store as the version before MQTT 5 wrote it: its marker and a 3.1.1 session.
            let db = Database::create(&path).unwrap();
            let wtx = db.begin_write().unwrap();
            {
                wtx.open_table(META).unwrap().insert("format", FORMAT_1).unwrap();
                wtx.open_table(RETAINED).unwrap().insert("r", &[1u8, b'x'][..]).unwrap();
                wtx.open_table(SESSIONS).unwrap().insert("old", &[1u8, 0, 1, b'f'][..]).unwrap();
                wtx.open_table(OUTBOUND).unwrap();
                wtx.open_table(INBOUND).unwrap();
            }
            wtx.commit().unwrap();
        }
        let opened = open(dir.path()).unwrap();
        let s = &opened.recovered.sessions[0];
        assert_eq!((&*s.client_id, s.expiry, s.subs.len()), ("old", u32::MAX, 1));
        assert_eq!(&opened.recovered.retained[0].payload[..], b"x");
        let rtx = opened.db.begin_read().unwrap();
        let format = rtx.open_table(META).unwrap().get("format").unwrap().map(|v| v.value().to_string());
        assert_eq!(format.as_deref(), Some(FORMAT), "upgraded");
    }
}
