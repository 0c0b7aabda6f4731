//! Packet captures of the link's relay, in the classic libpcap format.
//!
//! [`super::Link::start_capture`] makes the relay hand every packet it forwards, in both
//! directions, to a `Capture`: a dedicated writer thread fed by a bounded channel that writes
//! through a `BufWriter`. The relay never waits for it: when the channel is full the record is
//! dropped and counted ([`CaptureSummary::overflow`]).
//!
//! What is recorded: each datagram **as it leaves the relay towards its destination** — after the
//! NAT (so a rebinding shows the new address or port), after the loss model and the bottleneck,
//! stamped with the time the delay line wrote it into the other namespace. The main file thus
//! holds exactly what the receiving kernel saw. Datagrams the relay drops (loss model, full
//! queue, stale NAT mapping) go to a second file beside it, `NAME.dropped.pcap`, stamped with the
//! time the relay read them; pcap has no per-packet marks, so they are kept apart rather than
//! mixed in.
//!
//! Format: the libpcap file format (draft-ietf-opsawg-pcap), nanosecond timestamps (magic
//! `0xa1b23c4d`), link type `LINKTYPE_RAW` (101, a bare IPv4 datagram: the TUN devices carry no
//! link-layer header), snap length 65535 so every packet is kept whole. [`read`] parses such
//! files back (either timestamp resolution).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

/// pcap magic for microsecond timestamps, as written in the file's byte order.
pub(crate) const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// pcap magic for nanosecond timestamps.
pub(crate) const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// `LINKTYPE_RAW`: the packet begins with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// Snap length written in the header: larger than any datagram the link carries (MTU ≤ 9000).
pub(crate) const SNAPLEN: u32 = 65_535;
/// Records the channel to the writer holds before the relay starts dropping capture records.
/// 16384 full-size packets are ~24 MB: several seconds of a 10 Mbit/s link, far more than the
/// writer ever lags behind.
pub(crate) const CHANNEL_RECORDS: usize = 16_384;
/// The writer flushes its buffer after this long without a record, so a file being read while
/// the capture runs (or after a crash) is at most this stale.
const IDLE_FLUSH: Duration = Duration::from_millis(250);

/// The 24-byte global header (RFC draft-ietf-opsawg-pcap §4), little endian, nanoseconds.
pub(crate) fn global_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&MAGIC_NANOS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes()); // version 2.4
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone and sigfigs stay 0.
    h[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
    h
}

/// Write one record (16-byte header + data) with a timestamp in nanoseconds since the Unix epoch.
pub(crate) fn write_record(w: &mut impl Write, ts_ns: u64, data: &[u8]) -> io::Result<()> {
    let caplen = data.len().min(SNAPLEN as usize);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&((ts_ns % 1_000_000_000) as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(caplen as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
    w.write_all(&h)?;
    w.write_all(&data[..caplen])
}

/// One packet read back from a pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapRecord {
    /// Timestamp in nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The packet's length on the wire (`orig_len`).
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// A whole pcap file read back.
#[derive(Debug, Clone)]
pub struct PcapFile {
    /// Whether timestamps were in nanoseconds (else microseconds).
    pub nanos: bool,
    /// The link type.
    pub linktype: u32,
    /// The snap length.
    pub snaplen: u32,
    /// The records, in file order.
    pub records: Vec<PcapRecord>,
}

/// Why [`read`] refused a file.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Not a pcap file, or a damaged one.
    #[error("not a valid pcap file: {0}")]
    Format(String),
}

/// Parse a classic pcap file (either byte order, micro- or nanosecond timestamps).
pub fn parse(bytes: &[u8]) -> Result<PcapFile, PcapError> {
    let bad = |m: String| PcapError::Format(m);
    if bytes.len() < 24 {
        return Err(bad(format!("{} bytes, shorter than the 24-byte global header", bytes.len())));
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let (big_endian, nanos) = match (magic, magic.swap_bytes()) {
        (MAGIC_MICROS, _) => (false, false),
        (MAGIC_NANOS, _) => (false, true),
        (_, MAGIC_MICROS) => (true, false),
        (_, MAGIC_NANOS) => (true, true),
        (m, _) => return Err(bad(format!("unknown magic {m:#010x}"))),
    };
    let u32_at = |b: &[u8]| {
        let b: [u8; 4] = b.try_into().unwrap();
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let snaplen = u32_at(&bytes[16..20]);
    let linktype = u32_at(&bytes[20..24]) & 0x0fff_ffff; // the top bits carry FCS information
    let mut records = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let h = bytes.get(at..at + 16).ok_or_else(|| bad(format!("truncated record header at byte {at}")))?;
        let (sec, frac, caplen, orig_len) = (u32_at(&h[0..4]), u32_at(&h[4..8]), u32_at(&h[8..12]), u32_at(&h[12..16]));
        if caplen > snaplen.max(262_144) {
            return Err(bad(format!("record at byte {at}: caplen {caplen} above snaplen {snaplen}")));
        }
        let start = at + 16;
        let data = bytes
            .get(start..start + caplen as usize)
            .ok_or_else(|| bad(format!("record at byte {at}: {caplen} bytes announced, file ends first")))?;
        let frac_ns = if nanos { frac as u64 } else { frac as u64 * 1000 };
        records.push(PcapRecord { ts_ns: sec as u64 * 1_000_000_000 + frac_ns, orig_len, data: data.to_vec() });
        at = start + caplen as usize;
    }
    Ok(PcapFile { nanos, linktype, snaplen, records })
}

/// Read and parse a pcap file.
pub fn read(path: &Path) -> Result<PcapFile, PcapError> {
    parse(&std::fs::read(path)?)
}

/// The file of dropped packets that goes with the capture `path`: `run.pcap` →
/// `run.dropped.pcap`.
pub fn dropped_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "capture".into());
    path.with_file_name(format!("{stem}.dropped.pcap"))
}

/// Which file a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Packets the relay forwarded.
    Forwarded,
    /// Packets the relay dropped.
    Dropped,
}

struct Record {
    stream: Stream,
    /// Nanoseconds since the link's epoch.
    at_ns: u64,
    data: Vec<u8>,
}

/// What a finished capture wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureSummary {
    /// The capture of forwarded packets.
    pub path: PathBuf,
    /// The capture of dropped packets.
    pub dropped_path: PathBuf,
    /// Records written to `path`.
    pub packets: u64,
    /// Their bytes (IP datagram lengths).
    pub bytes: u64,
    /// Records written to `dropped_path`.
    pub dropped_packets: u64,
    /// Records the relay could not hand to the writer because its channel was full: packets
    /// missing from the files (the relay itself was not slowed).
    pub overflow: u64,
    /// The first write error, if any (the files stop there).
    pub error: Option<String>,
}

impl CaptureSummary {
    /// One line for reports: `capture run.pcap: 1234 packets (5 dropped by the link in
    /// run.dropped.pcap), 0 records lost`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "capture {}: {} packets, {} bytes ({} dropped by the link in {}), {} records lost to a full channel",
            self.path.display(),
            self.packets,
            self.bytes,
            self.dropped_packets,
            self.dropped_path.display(),
            self.overflow
        );
        if let Some(e) = &self.error {
            s.push_str(&format!(", write error: {e}"));
        }
        s
    }
}

/// A running capture: the relay's end of the channel and the writer thread.
pub(crate) struct Capture {
    tx: SyncSender<Record>,
    overflow: AtomicU64,
    thread: JoinHandle<CaptureSummary>,
}

fn create(path: &Path) -> io::Result<BufWriter<File>> {
    let mut w = BufWriter::with_capacity(256 * 1024, File::create(path)?);
    w.write_all(&global_header())?;
    Ok(w)
}

impl Capture {
    /// Create both files and start the writer. `wall_epoch_ns` is the wall-clock time (ns since
    /// the Unix epoch) of the link's epoch, to which the records' times are relative.
    pub(crate) fn start(path: &Path, wall_epoch_ns: u64) -> io::Result<Capture> {
        let dropped = dropped_path(path);
        let mut main = create(path)?;
        let mut drop_w = create(&dropped)?;
        main.flush()?;
        drop_w.flush()?;
        let (tx, rx) = mpsc::sync_channel::<Record>(CHANNEL_RECORDS);
        let mut summary = CaptureSummary {
            path: path.to_path_buf(),
            dropped_path: dropped,
            packets: 0,
            bytes: 0,
            dropped_packets: 0,
            overflow: 0,
            error: None,
        };
        let thread = std::thread::Builder::new().name("relay-pcap".into()).spawn(move || {
            let mut dirty = false;
            loop {
                let rec = match rx.recv_timeout(IDLE_FLUSH) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        if dirty && summary.error.is_none() {
                            if let Err(e) = main.flush().and_then(|_| drop_w.flush()) {
                                summary.error = Some(e.to_string());
                            }
                        }
                        dirty = false;
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                if summary.error.is_some() {
                    continue; // keep draining so the relay never sees a full channel for this
                }
                let ts = wall_epoch_ns + rec.at_ns;
                let (w, n) = match rec.stream {
                    Stream::Forwarded => {
                        summary.bytes += rec.data.len() as u64;
                        (&mut main, &mut summary.packets)
                    }
                    Stream::Dropped => (&mut drop_w, &mut summary.dropped_packets),
                };
                match write_record(w, ts, &rec.data) {
                    Ok(()) => *n += 1,
                    Err(e) => summary.error = Some(e.to_string()),
                }
                dirty = true;
            }
            if summary.error.is_none() {
                if let Err(e) = main.flush().and_then(|_| drop_w.flush()) {
                    summary.error = Some(e.to_string());
                }
            }
            summary
        })?;
        Ok(Capture { tx, overflow: AtomicU64::new(0), thread })
    }

    /// Hand a packet to the writer without ever blocking; count it as overflow if the channel
    /// is full. `at_ns` is relative to the link's epoch.
    pub(crate) fn record(&self, stream: Stream, at_ns: u64, data: Vec<u8>) {
        match self.tx.try_send(Record { stream, at_ns, data }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Close the channel, let the writer drain and flush, and report.
    pub(crate) fn finish(self) -> CaptureSummary {
        let Capture { tx, overflow, thread } = self;
        drop(tx);
        let overflow = overflow.load(Ordering::Relaxed);
        let mut summary = thread.join().unwrap_or_else(|_| CaptureSummary {
            path: PathBuf::new(),
            dropped_path: PathBuf::new(),
            packets: 0,
            bytes: 0,
            dropped_packets: 0,
            overflow: 0,
            error: Some("capture writer panicked".into()),
        });
        summary.overflow = overflow;
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let mut buf = global_header().to_vec();
        write_record(&mut buf, 1_700_000_000_123_456_789, &[0x45, 0, 0, 20]).unwrap();
        write_record(&mut buf, 1_700_000_001_000_000_001, &[1, 2, 3]).unwrap();
        let f = parse(&buf).unwrap();
        assert!(f.nanos);
        assert_eq!(f.linktype, LINKTYPE_RAW);
        assert_eq!(f.snaplen, SNAPLEN);
        assert_eq!(f.records.len(), 2);
        assert_eq!(f.records[0].ts_ns, 1_700_000_000_123_456_789);
        assert_eq!(f.records[0].data, [0x45, 0, 0, 20]);
        assert_eq!(f.records[1].orig_len, 3);
        // Truncated record.
        assert!(parse(&buf[..buf.len() - 1]).is_err());
        assert!(parse(&[0u8; 24]).is_err());
    }

    #[test]
    fn reads_big_endian_microseconds() {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC_MICROS.to_be_bytes());
        b.extend_from_slice(&[0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&1500u32.to_be_bytes());
        b.extend_from_slice(&228u32.to_be_bytes());
        for v in [10u32, 5, 2, 2] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&[9, 9]);
        let f = parse(&b).unwrap();
        assert!(!f.nanos);
        assert_eq!(f.linktype, 228);
        assert_eq!(f.records[0].ts_ns, 10_000_005_000);
    }

    #[test]
    fn dropped_file_name() {
        assert_eq!(dropped_path(Path::new("/tmp/run.pcap")), Path::new("/tmp/run.dropped.pcap"));
        assert_eq!(dropped_path(Path::new("cap")), Path::new("cap.dropped.pcap"));
    }
}
