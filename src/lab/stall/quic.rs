//! QUIC wire parsing for the stall analysis: variable-length integers, long headers (to skip
//! them inside coalesced datagrams), short-header protection removal, packet number recovery
//! (RFC 9000 §17.1 and Appendix A.3) and a walk over every frame of a decrypted 1-RTT payload.

use super::crypto::{HpKey, QuicKeys};

/// Read a variable-length integer (RFC 9000 §16) at `*pos`.
pub(crate) fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *b.get(*pos)?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(*pos..pos.checked_add(len)?)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    *pos += len;
    Some(v)
}

/// A long-header packet's destination connection ID and its total length within the datagram
/// (`None` for the length: it runs to the end, or the packet is not parseable).
pub(crate) struct LongHeader<'a> {
    pub(crate) dcid: &'a [u8],
    pub(crate) len: Option<usize>,
}

/// Parse the long header at the start of `b` (which must have the form bit set).
pub(crate) fn long_header(b: &[u8]) -> Option<LongHeader<'_>> {
    let first = *b.first()?;
    let version = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
    let mut pos = 5;
    let dl = usize::from(*b.get(pos)?);
    let dcid = b.get(pos + 1..pos + 1 + dl)?;
    pos += 1 + dl;
    let sl = usize::from(*b.get(pos)?);
    pos += 1 + sl;
    if version == 0 {
        return Some(LongHeader { dcid, len: None }); // version negotiation
    }
    match (first >> 4) & 3 {
        0 => {
            let tl = usize::try_from(varint(b, &mut pos)?).ok()?;
            pos = pos.checked_add(tl)?;
        }
        3 => return Some(LongHeader { dcid, len: None }), // Retry: no Length field
        _ => {}
    }
    let len = usize::try_from(varint(b, &mut pos)?).ok()?;
    let end = pos.checked_add(len)?;
    Some(LongHeader { dcid, len: (end <= b.len()).then_some(end) })
}

/// RFC 9000 Appendix A.3.
pub(crate) fn decode_pn(largest: Option<u64>, truncated: u64, pn_len: usize) -> u64 {
    let expected = largest.map_or(0, |l| l.saturating_add(1));
    let bits = 8 * pn_len as u32;
    let win = 1u64 << bits;
    let hwin = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | truncated;
    if candidate.saturating_add(hwin) <= expected && candidate < (1u64 << 62) - win {
        candidate + win
    } else if candidate > expected.saturating_add(hwin) && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

/// A short-header packet after header protection is removed.
pub(crate) struct Unprotected {
    /// The unprotected header (the AEAD's associated data).
    pub(crate) header: Vec<u8>,
    pub(crate) key_phase: bool,
    pub(crate) truncated_pn: u64,
    pub(crate) pn_len: usize,
}

/// Remove header protection from the short-header packet `pkt` with a DCID of `dcid_len` bytes.
pub(crate) fn unprotect(pkt: &[u8], dcid_len: usize, hp: &HpKey) -> Option<Unprotected> {
    let pn_off = 1 + dcid_len;
    let sample = pkt.get(pn_off + 4..pn_off + 20)?;
    let mask = hp.mask(sample)?;
    let first = pkt.first()? ^ (mask[0] & 0x1f);
    let pn_len = usize::from(first & 3) + 1;
    let mut header = pkt.get(..pn_off + pn_len)?.to_vec();
    header[0] = first;
    let mut truncated_pn = 0u64;
    for (i, m) in mask[1..=pn_len].iter().enumerate() {
        header[pn_off + i] ^= m;
        truncated_pn = (truncated_pn << 8) | u64::from(header[pn_off + i]);
    }
    Some(Unprotected { header, key_phase: first & 0x04 != 0, truncated_pn, pn_len })
}

/// Decrypt `pkt`'s payload with `keys` as packet number `pn`; the plaintext on success.
pub(crate) fn open(pkt: &[u8], u: &Unprotected, keys: &QuicKeys, pn: u64) -> Option<Vec<u8>> {
    let mut payload = pkt.get(u.header.len()..)?.to_vec();
    let n = keys.aead.open(pn, &u.header, &mut payload)?;
    payload.truncate(n);
    Some(payload)
}

/// A STREAM frame's coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamFrame {
    pub(crate) id: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) fin: bool,
}

/// Why a frame walk stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalkError {
    /// A frame type this walker does not know (the rest of the packet is skipped).
    UnknownType,
    /// A frame runs past the payload or has an impossible field.
    Malformed,
}

/// Walk every frame of a 1-RTT payload: RFC 9000 §19 (all types), DATAGRAM (RFC 9221),
/// ACK_FREQUENCY and IMMEDIATE_ACK (draft-ietf-quic-ack-frequency, types 0xaf and 0x1f, as
/// quinn 0.11 sends them). STREAM frames are pushed to `out`.
pub(crate) fn walk_frames(p: &[u8], out: &mut Vec<StreamFrame>) -> Result<(), WalkError> {
    use WalkError::{Malformed, UnknownType};
    let mut pos = 0usize;
    let vi = |pos: &mut usize| varint(p, pos).ok_or(Malformed);
    let skip = |pos: &mut usize, n: u64| -> Result<(), WalkError> {
        let n = usize::try_from(n).map_err(|_| Malformed)?;
        let end = pos.checked_add(n).filter(|&e| e <= p.len()).ok_or(Malformed)?;
        *pos = end;
        Ok(())
    };
    while pos < p.len() {
        let ty = vi(&mut pos)?;
        match ty {
            0x00 | 0x01 | 0x1e | 0x1f => {}
            0x02 | 0x03 => {
                vi(&mut pos)?; // largest acknowledged
                vi(&mut pos)?; // ack delay
                let ranges = vi(&mut pos)?;
                vi(&mut pos)?; // first range
                for _ in 0..ranges {
                    vi(&mut pos)?;
                    vi(&mut pos)?;
                }
                if ty == 0x03 {
                    for _ in 0..3 {
                        vi(&mut pos)?;
                    }
                }
            }
            0x04 => {
                for _ in 0..3 {
                    vi(&mut pos)?;
                }
            }
            0x05 | 0x11 | 0x15 => {
                vi(&mut pos)?;
                vi(&mut pos)?;
            }
            0x06 => {
                vi(&mut pos)?;
                let n = vi(&mut pos)?;
                skip(&mut pos, n)?;
            }
            0x07 => {
                let n = vi(&mut pos)?;
                skip(&mut pos, n)?;
            }
            0x08..=0x0f => {
                let id = vi(&mut pos)?;
                let offset = if ty & 0x04 != 0 { vi(&mut pos)? } else { 0 };
                let len = if ty & 0x02 != 0 { vi(&mut pos)? } else { (p.len() - pos) as u64 };
                skip(&mut pos, len)?;
                if offset.checked_add(len).is_none_or(|e| e >= 1 << 62) {
                    return Err(Malformed);
                }
                out.push(StreamFrame { id, offset, len, fin: ty & 0x01 != 0 });
            }
            0x10 | 0x12 | 0x13 | 0x14 | 0x16 | 0x17 | 0x19 => {
                vi(&mut pos)?;
            }
            0x18 => {
                vi(&mut pos)?;
                vi(&mut pos)?;
                let l = *p.get(pos).ok_or(Malformed)?;
                pos += 1;
                skip(&mut pos, u64::from(l) + 16)?;
            }
            0x1a | 0x1b => skip(&mut pos, 8)?,
            0x1c | 0x1d => {
                vi(&mut pos)?;
                if ty == 0x1c {
                    vi(&mut pos)?;
                }
                let n = vi(&mut pos)?;
                skip(&mut pos, n)?;
            }
            0x30 => pos = p.len(),
            0x31 => {
                let n = vi(&mut pos)?;
                skip(&mut pos, n)?;
            }
            0xaf => {
                for _ in 0..4 {
                    vi(&mut pos)?;
                }
            }
            _ => return Err(UnknownType),
        }
    }
    Ok(())
}
