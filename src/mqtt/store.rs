//! The MQTT broker's store: what survives a restart, in one redb file (`DIR/mqtt.redb`).
//!
//! The core stays sans-IO: it says what changed as [`StoreOp`]s among its actions, the driver
//! hands them here ([`Pending::put`]) and holds back every packet the core emitted after them
//! until they are durable (`driver.rs`). One thread owns the database and commits in groups:
//! it takes everything pending, writes it in one transaction and commits it with redb's default
//! durability (`Immediate`: one `fsync` per commit, checksummed commit slots), then reports the
//! ticket it reached. So the more arrives while a commit runs, the more the next one carries,
//! and throughput does not depend on an `fsync` per message.
//!
//! Pending writes are kept per key, latest wins (a retained topic set twice before a commit
//! is written once): what waits is bounded by the broker's own state (`max_retained` topics),
//! not by how fast peers publish.
//!
//! Why redb, and not a file of our own: an embedded B-tree with checksummed, atomic commits
//! and one dependency (libc). A probe on this machine (docs/mqtt.md "Persistence") had it keep
//! every acknowledged commit through 20 `kill -9`s, reuse its space under queue churn, and refuse
//! damaged files with an error; fjall lost records silently from a damaged journal.
//!
//! A file that is not redb's, or a redb database that is not this store (no `meta` table
//! naming [`FORMAT`]), is refused with an error naming the file: never wiped.
//!
//! What is stored so far: retained messages. Persistent sessions (subscriptions, queued and
//! in-flight messages, QoS 2 state) are the next part of issue 18.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::broker::StoreOp;
use super::codec::{QoS, TopicName};
use super::session::Message;

/// The store's file inside the data directory.
pub const FILE_NAME: &str = "mqtt.redb";
/// What `meta["format"]` says in a store this version reads and writes.
pub const FORMAT: &str = "quiclab-mqtt-store/1";

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Topic → [QoS byte][payload].
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the MQTT store {} (not a redb file, damaged, or in use by another process); it was left as it is", .path.display())]
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
}

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
    let db = Database::create(&path).map_err(|source| StoreError::Open { path: path.clone(), source })?;
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
            Some(f) => {
                return Err(StoreError::Foreign { path, found: format!("format {f:?}, this version reads {FORMAT:?}") })
            }
            None if tables.is_empty() => {
                let wtx = db.begin_write().map_err(|e| redb_err(e.into()))?;
                {
                    let mut meta = wtx.open_table(META).map_err(|e| redb_err(e.into()))?;
                    meta.insert("format", FORMAT).map_err(|e| redb_err(e.into()))?;
                    wtx.open_table(RETAINED).map_err(|e| redb_err(e.into()))?;
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
        let (qos, payload) =
            decode_retained(v.value()).ok_or_else(|| corrupt(format!("retained message of {topic}")))?;
        retained.push(Message { topic, payload, qos, retain: true });
    }
    Ok(Recovered { retained })
}

fn encode_retained(m: &Message) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + m.payload.len());
    v.push(m.qos as u8);
    v.extend_from_slice(&m.payload);
    v
}

fn decode_retained(v: &[u8]) -> Option<(QoS, Bytes)> {
    let (&q, payload) = v.split_first()?;
    let qos = QoS::from_u8(q).ok()?;
    Some((qos, Bytes::copy_from_slice(payload)))
}

/// A write waiting for the next commit. Keyed, so a later write of the same key replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Retained(TopicName),
}

/// The writes not yet committed, and the ticket they will reach. Shared by the driver (under
/// the broker's lock, which it takes first) and the store's thread.
#[derive(Default)]
pub(crate) struct Pending {
    writes: HashMap<Key, Option<Vec<u8>>>,
    /// The ticket of the last [`Pending::put`]: once a commit that took it is done, everything
    /// put up to it is durable.
    ticket: u64,
    /// The broker is gone: the thread commits what is left and ends.
    closed: bool,
}

impl Pending {
    /// Queue `op` for the next commit; returns the ticket that commit will reach.
    pub(crate) fn put(&mut self, op: StoreOp) -> u64 {
        match op {
            StoreOp::Retain(m) => {
                let v = encode_retained(&m);
                self.writes.insert(Key::Retained(m.topic), Some(v));
            }
            StoreOp::Unretain(topic) => {
                self.writes.insert(Key::Retained(topic), None);
            }
        }
        self.ticket += 1;
        self.ticket
    }
}

/// The store's side of the broker: pending writes and the thread that commits them.
pub(crate) struct Writer {
    pub(crate) pending: Arc<(Mutex<Pending>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Start the commit thread. `durable(t)` is called after each commit with the ticket it
    /// reached (from that thread).
    pub(crate) fn start(store: OpenedStore, durable: impl Fn(u64) + Send + 'static) -> std::io::Result<Writer> {
        let pending: Arc<(Mutex<Pending>, Condvar)> = Arc::default();
        let shared = pending.clone();
        let thread = std::thread::Builder::new()
            .name("mqtt-store".into())
            .spawn(move || commit_loop(store.db, store.path, &shared, durable))?;
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
    /// Commit what is pending, then let the thread end (the file is closed with it).
    fn drop(&mut self) {
        self.lock().closed = true;
        self.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn commit_loop(db: Database, path: PathBuf, shared: &(Mutex<Pending>, Condvar), durable: impl Fn(u64)) {
    let (lock, cv) = shared;
    let mut failures = 0u32;
    loop {
        let (writes, mut ticket, closing) = {
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            while p.writes.is_empty() && !p.closed {
                p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            (std::mem::take(&mut p.writes), p.ticket, p.closed)
        };
        if !writes.is_empty() {
            // A failed commit is retried with the same writes (and whatever came meanwhile,
            // which is newer and wins): nothing is reported durable until it is.
            let mut writes = writes;
            loop {
                match commit(&db, &writes) {
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
                        for (k, v) in std::mem::take(&mut p.writes) {
                            writes.insert(k, v);
                        }
                        ticket = p.ticket;
                        if p.closed && failures >= 3 {
                            tracing::error!(path = %path.display(), "mqtt store: shutting down with writes not committed");
                            return;
                        }
                    }
                }
            }
            durable(ticket);
        }
        if closing {
            return;
        }
    }
}

fn commit(db: &Database, writes: &HashMap<Key, Option<Vec<u8>>>) -> Result<(), redb::Error> {
    let wtx = db.begin_write()?;
    {
        let mut retained = wtx.open_table(RETAINED)?;
        for (k, v) in writes {
            match (k, v) {
                (Key::Retained(t), Some(v)) => {
                    retained.insert(&**t, v.as_slice())?;
                }
                (Key::Retained(t), None) => {
                    retained.remove(&**t)?;
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
        Message {
            topic: TopicName::try_from(topic).unwrap(),
            payload: Bytes::from_static(payload),
            qos: QoS::Level1,
            retain: true,
        }
    }

    #[test]
    fn retained_messages_survive_a_reopen_and_latest_write_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).unwrap();
        assert!(store.recovered.retained.is_empty());
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Writer::start(store, move |t| {
            let _ = tx.send(t);
        })
        .unwrap();
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
}
