//! Builders of synthetic packets (IPv4, TCP, UDP, sealed TLS records, protected QUIC 1-RTT
//! packets, HTTP/2 and STREAM frames), shared by the unit tests and the `lab_stall` fuzz target.

use std::net::Ipv4Addr;

use super::crypto::{HpKey, QuicKeys, TlsKeys};

pub(crate) fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    let total = (20 + payload.len()).min(65535) as u16;
    d[2..4].copy_from_slice(&total.to_be_bytes());
    d.extend_from_slice(&src.octets());
    d.extend_from_slice(&dst.octets());
    d.extend_from_slice(payload);
    d
}

pub(crate) fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

pub(crate) fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()).min(65535) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

pub(crate) fn key_line(label: &str, cr: &[u8; 32], secret: &[u8]) -> String {
    let h = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{label} {} {}\n", h(cr), h(secret))
}

/// A TLS 1.3 record: `inner` (content type `ty`) sealed with `k` as record `seq`.
pub(crate) fn tls_record(k: &TlsKeys, seq: u64, ty: u8, inner: &[u8]) -> Vec<u8> {
    let mut body = inner.to_vec();
    body.push(ty);
    let len = (body.len() + 16).min(65535) as u16;
    let mut rec = vec![23, 3, 3];
    rec.extend_from_slice(&len.to_be_bytes());
    k.aead.seal(seq, &rec[..5], &mut body);
    rec.extend_from_slice(&body);
    rec
}

pub(crate) fn h2_frame(ty: u8, stream: u32, payload_len: usize) -> Vec<u8> {
    let l = (payload_len.min(0xff_ffff) as u32).to_be_bytes();
    let mut f = vec![l[1], l[2], l[3], ty, 0];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend(std::iter::repeat_n(0x61, payload_len));
    f
}

pub(crate) fn vi(v: u64) -> Vec<u8> {
    match v {
        0..64 => vec![v as u8],
        64..16384 => (0x4000 | v as u16).to_be_bytes().to_vec(),
        16384..0x4000_0000 => (0x8000_0000 | v as u32).to_be_bytes().to_vec(),
        _ => ((0xc0u64 << 56) | (v & ((1 << 62) - 1))).to_be_bytes().to_vec(),
    }
}

pub(crate) fn stream_frame(id: u64, offset: u64, len: usize, fin: bool) -> Vec<u8> {
    let mut f = vec![0x0e | u8::from(fin)];
    f.extend(vi(id));
    f.extend(vi(offset));
    f.extend(vi(len as u64));
    f.extend(std::iter::repeat_n(0x62, len));
    f
}

/// A protected 1-RTT packet (2-byte packet number; the payload is padded to 20 bytes so there
/// is a sample).
pub(crate) fn quic_packet(keys: &QuicKeys, hp: &HpKey, dcid: &[u8], pn: u64, phase: bool, frames: &[u8]) -> Vec<u8> {
    let mut header = vec![0x40 | (u8::from(phase) << 2) | 1];
    header.extend_from_slice(dcid);
    header.extend_from_slice(&(pn as u16).to_be_bytes());
    let mut payload = frames.to_vec();
    payload.resize(payload.len().max(20), 0);
    keys.aead.seal(pn, &header, &mut payload);
    let mut p = header.clone();
    p.extend_from_slice(&payload);
    let pn_off = 1 + dcid.len();
    let Some(mask) = p.get(pn_off + 4..pn_off + 20).and_then(|sample| hp.mask(sample)) else { return p };
    p[0] ^= mask[0] & 0x1f;
    p[pn_off] ^= mask[1];
    p[pn_off + 1] ^= mask[2];
    p
}
