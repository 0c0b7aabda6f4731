//! IPv4 packets as the relay sees them, and the NAT that emulates a rebinding.
//!
//! The relay reads whole IP datagrams from the TUN devices (no link header, no offload
//! metadata). Only what the relay needs is parsed: the IPv4 header (RFC 791 §3.1) and the
//! TCP/UDP ports. A rebinding rewrites the client's source port or address and patches the IPv4,
//! TCP and UDP checksums incrementally (RFC 1624 eqn. 3), as a NAT does.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::Serialize;

/// IP protocol number of TCP (RFC 9293).
pub(crate) const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP (RFC 768).
pub(crate) const PROTO_UDP: u8 = 17;

/// The facts of an IPv4 packet the relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Header length in bytes.
    pub header_len: usize,
    /// The datagram's total length field.
    pub total_len: usize,
    /// Protocol number.
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Whether this is the first (or only) fragment, which carries the transport header.
    pub first_fragment: bool,
}

impl Ipv4Info {
    /// Parse the IPv4 header of `pkt`; `None` for anything that is not a well-formed IPv4
    /// datagram (IPv6, truncated, bad header length).
    pub fn parse(pkt: &[u8]) -> Option<Ipv4Info> {
        if pkt.len() < 20 || pkt[0] >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(pkt[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
        if header_len < 20 || total_len < header_len || total_len > pkt.len() {
            return None;
        }
        let frag_offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff; // RFC 791: 13-bit offset
        Some(Ipv4Info {
            header_len,
            total_len,
            proto: pkt[9],
            src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
            dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
            first_fragment: frag_offset == 0,
        })
    }

    /// Offset of the transport checksum field when the transport header is present in full.
    fn l4_checksum_offset(&self, pkt: &[u8]) -> Option<usize> {
        if !self.first_fragment {
            return None;
        }
        let (off, min_len) = match self.proto {
            PROTO_TCP => (16, 20),
            PROTO_UDP => (6, 8),
            _ => return None,
        };
        (self.total_len >= self.header_len + min_len && pkt.len() >= self.header_len + min_len)
            .then_some(self.header_len + off)
    }

    /// `(source port, destination port)` of a TCP or UDP first fragment.
    pub fn ports(&self, pkt: &[u8]) -> Option<(u16, u16)> {
        self.l4_checksum_offset(pkt)?;
        let h = self.header_len;
        Some((u16::from_be_bytes([pkt[h], pkt[h + 1]]), u16::from_be_bytes([pkt[h + 2], pkt[h + 3]])))
    }
}

/// RFC 1624 eqn. 3: the new one's-complement checksum after a 16-bit word of the covered data
/// changed from `old` to `new`: HC' = ~(~HC + ~m + m').
fn csum_replace(hc: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

fn get16(pkt: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([pkt[at], pkt[at + 1]])
}

fn put16(pkt: &mut [u8], at: usize, v: u16) {
    pkt[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Patch the transport checksum at `at` for a changed word; a UDP checksum of zero means "none"
/// and stays zero, and a computed zero is sent as all ones (RFC 768).
fn patch_l4(pkt: &mut [u8], at: Option<usize>, udp: bool, old: u16, new: u16) {
    let Some(at) = at else { return };
    let c = get16(pkt, at);
    if udp && c == 0 {
        return;
    }
    let mut n = csum_replace(c, old, new);
    if udp && n == 0 {
        n = 0xffff;
    }
    put16(pkt, at, n);
}

/// Which address field to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// The source address/port.
    Source,
    /// The destination address/port.
    Destination,
}

/// Replace the source or destination address of `pkt`, fixing the IPv4 header checksum and the
/// TCP/UDP checksum, whose pseudo-header covers the addresses (RFC 9293 §3.1, RFC 768).
pub(crate) fn rewrite_addr(pkt: &mut [u8], info: &Ipv4Info, field: Field, new: Ipv4Addr) {
    let at = match field {
        Field::Source => 12,
        Field::Destination => 16,
    };
    let l4 = info.l4_checksum_offset(pkt);
    let udp = info.proto == PROTO_UDP;
    let new = new.octets();
    for i in [0, 2] {
        let old_w = get16(pkt, at + i);
        let new_w = u16::from_be_bytes([new[i], new[i + 1]]);
        let hc = csum_replace(get16(pkt, 10), old_w, new_w);
        put16(pkt, 10, hc);
        patch_l4(pkt, l4, udp, old_w, new_w);
        put16(pkt, at + i, new_w);
    }
}

/// Replace the source or destination port of a TCP/UDP first fragment, fixing its checksum.
/// Returns false (and changes nothing) for packets without ports.
pub(crate) fn rewrite_port(pkt: &mut [u8], info: &Ipv4Info, field: Field, new: u16) -> bool {
    let Some(l4) = info.l4_checksum_offset(pkt) else { return false };
    let at = info.header_len + if field == Field::Source { 0 } else { 2 };
    let old = get16(pkt, at);
    patch_l4(pkt, Some(l4), info.proto == PROTO_UDP, old, new);
    put16(pkt, at, new);
    true
}

/// The full one's-complement checksum of `data` (RFC 1071), for tests and for building probes.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a rebinding changes about the client as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RebindMode {
    /// A new source port per flow (a NAT that lost its mapping): the interop runner's
    /// `rebind-port`.
    #[default]
    Port,
    /// A new source address for every flow (`rebind-addr`).
    Address,
}

impl std::str::FromStr for RebindMode {
    type Err = crate::config::BadValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "port" => Ok(RebindMode::Port),
            "address" | "addr" => Ok(RebindMode::Address),
            _ => Err(crate::config::BadValue::new("a rebinding mode", s, "port, address")),
        }
    }
}

/// What the NAT decided about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatVerdict {
    /// Forward (possibly rewritten).
    Forward,
    /// Addressed to a mapping that no longer exists: a real NAT drops it.
    Stale,
}

/// One translation the NAT set up: a client flow's original port and the port the server sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NatMapping {
    /// The rebinding generation the mapping belongs to (1 = after the first rebinding).
    pub generation: u32,
    /// `"tcp"` or `"udp"`.
    pub proto: &'static str,
    /// The client's own port.
    pub client_port: u16,
    /// The port the server sees.
    pub wire_port: u16,
    /// The address the server sees.
    pub wire_addr: Ipv4Addr,
}

/// First port handed out for rebound flows. Ports 20000–32767 sit below Linux's ephemeral range
/// (32768–60999), so a rebound flow never takes the 4-tuple of a flow that was not rebound.
const NAT_PORT_FIRST: u16 = 20_000;
const NAT_PORT_LAST: u16 = 32_767;
/// Most mappings kept in the log (the table itself has no such limit).
const NAT_LOG_MAX: usize = 1_000;

/// A NAT in front of the client, idle (pass-through) until the first rebinding.
///
/// After rebinding `g`, every client flow gets a fresh mapping on its next packet: in
/// [`RebindMode::Port`] a new source port from a range no client socket uses, in
/// [`RebindMode::Address`] the source address `client + g`. Packets from the server to a mapping
/// of an earlier generation (or to the client's own address once rebinding started) are stale
/// and dropped, as a real NAT does once its old mapping is gone. ICMP passes untranslated in port
/// mode; in address mode its IP addresses are translated but not the header quoted inside an
/// ICMP error.
#[derive(Debug)]
pub(crate) struct Nat {
    mode: RebindMode,
    client: Ipv4Addr,
    generation: u32,
    forward: HashMap<(u8, u16), u16>,
    reverse: HashMap<(u8, u16), u16>,
    next_port: u16,
    log: Vec<NatMapping>,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "other",
    }
}

impl Nat {
    /// A NAT for the client at `client`.
    pub fn new(mode: RebindMode, client: Ipv4Addr) -> Nat {
        Nat {
            mode,
            client,
            generation: 0,
            forward: HashMap::new(),
            reverse: HashMap::new(),
            next_port: NAT_PORT_FIRST,
            log: Vec::new(),
        }
    }

    /// The current generation (0 = never rebound).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The mappings set up so far (the first 1,000).
    pub fn mappings(&self) -> &[NatMapping] {
        &self.log
    }

    /// The client address the server sees in the current generation.
    pub fn wire_addr(&self) -> Ipv4Addr {
        match self.mode {
            RebindMode::Port => self.client,
            RebindMode::Address => Ipv4Addr::from(u32::from(self.client).wrapping_add(self.generation)),
        }
    }

    /// Rebind: forget every mapping; the next packet of each flow gets a new one.
    pub fn rebind(&mut self) {
        self.generation += 1;
        self.forward.clear();
        self.reverse.clear();
    }

    fn alloc_port(&mut self, proto: u8) -> u16 {
        // The range holds 12,768 ports per protocol; a run with more live rebound flows than that
        // reuses the oldest numbers, which then collide.
        for _ in 0..=(NAT_PORT_LAST - NAT_PORT_FIRST) {
            let p = self.next_port;
            self.next_port = if p >= NAT_PORT_LAST { NAT_PORT_FIRST } else { p + 1 };
            if !self.reverse.contains_key(&(proto, p)) {
                return p;
            }
        }
        self.next_port
    }

    /// Translate a client → server packet.
    pub fn outbound(&mut self, pkt: &mut [u8], info: &Ipv4Info) -> NatVerdict {
        if self.generation == 0 || info.src != self.client {
            return NatVerdict::Forward;
        }
        match self.mode {
            RebindMode::Address => {
                let wire = self.wire_addr();
                rewrite_addr(pkt, info, Field::Source, wire);
                if let Some((sport, _)) = info.ports(pkt) {
                    let key = (info.proto, sport);
                    if self.forward.insert(key, sport).is_none() && self.log.len() < NAT_LOG_MAX {
                        self.log.push(NatMapping {
                            generation: self.generation,
                            proto: proto_name(info.proto),
                            client_port: sport,
                            wire_port: sport,
                            wire_addr: wire,
                        });
                    }
                }
            }
            RebindMode::Port => {
                let Some((sport, _)) = info.ports(pkt) else { return NatVerdict::Forward };
                let key = (info.proto, sport);
                let wire_port = match self.forward.get(&key) {
                    Some(&p) => p,
                    None => {
                        let p = self.alloc_port(info.proto);
                        self.forward.insert(key, p);
                        self.reverse.insert((info.proto, p), sport);
                        if self.log.len() < NAT_LOG_MAX {
                            self.log.push(NatMapping {
                                generation: self.generation,
                                proto: proto_name(info.proto),
                                client_port: sport,
                                wire_port: p,
                                wire_addr: self.client,
                            });
                        }
                        p
                    }
                };
                rewrite_port(pkt, info, Field::Source, wire_port);
            }
        }
        NatVerdict::Forward
    }

    /// Translate a server → client packet.
    pub fn inbound(&mut self, pkt: &mut [u8], info: &Ipv4Info) -> NatVerdict {
        if self.generation == 0 {
            return NatVerdict::Forward;
        }
        match self.mode {
            RebindMode::Address => {
                if info.dst == self.wire_addr() {
                    rewrite_addr(pkt, info, Field::Destination, self.client);
                    NatVerdict::Forward
                } else if self.is_client_alias(info.dst) {
                    NatVerdict::Stale
                } else {
                    NatVerdict::Forward
                }
            }
            RebindMode::Port => {
                if info.dst != self.client {
                    return NatVerdict::Forward;
                }
                let Some((_, dport)) = info.ports(pkt) else { return NatVerdict::Forward };
                match self.reverse.get(&(info.proto, dport)) {
                    Some(&orig) => {
                        rewrite_port(pkt, info, Field::Destination, orig);
                        NatVerdict::Forward
                    }
                    None => NatVerdict::Stale,
                }
            }
        }
    }

    /// Whether `a` is the client's address or one of its earlier wire addresses.
    fn is_client_alias(&self, a: Ipv4Addr) -> bool {
        let base = u32::from(self.client);
        let a = u32::from(a);
        a >= base && a - base <= self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP or TCP packet with correct checksums.
    pub(crate) fn build(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
        let l4_len = if proto == PROTO_TCP { 20 } else { 8 } + payload.len();
        let total = 20 + l4_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.0.octets());
        p[16..20].copy_from_slice(&dst.0.octets());
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&src.1.to_be_bytes());
        p[22..24].copy_from_slice(&dst.1.to_be_bytes());
        if proto == PROTO_TCP {
            p[32] = 5 << 4;
            p[33] = 0x10; // ACK
        } else {
            p[24..26].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let hl = if proto == PROTO_TCP { 20 } else { 8 };
        p[20 + hl..].copy_from_slice(payload);
        let c = l4_checksum(&p);
        let at = if proto == PROTO_TCP { 36 } else { 26 };
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The transport checksum over pseudo-header + segment, with the checksum field zeroed.
    fn l4_checksum(p: &[u8]) -> u16 {
        let proto = p[9];
        let seg = &p[20..];
        let mut buf = Vec::new();
        buf.extend_from_slice(&p[12..20]);
        buf.push(0);
        buf.push(proto);
        buf.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        let mut s = seg.to_vec();
        let at = if proto == PROTO_TCP { 16 } else { 6 };
        s[at] = 0;
        s[at + 1] = 0;
        buf.extend_from_slice(&s);
        let c = checksum(&buf);
        if proto == PROTO_UDP && c == 0 {
            0xffff
        } else {
            c
        }
    }

    fn assert_valid(p: &[u8]) {
        assert_eq!(checksum(&p[..20]), 0, "IPv4 header checksum");
        let at = if p[9] == PROTO_TCP { 36 } else { 26 };
        let got = u16::from_be_bytes([p[at], p[at + 1]]);
        assert_eq!(got, l4_checksum(p), "transport checksum");
    }

    const C: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const S: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

    #[test]
    fn parse_rejects_junk() {
        assert!(Ipv4Info::parse(&[0x60; 40]).is_none());
        assert!(Ipv4Info::parse(&[0x45; 10]).is_none());
        let p = build(PROTO_UDP, (C, 40000), (S, 4433), b"hi");
        let i = Ipv4Info::parse(&p).unwrap();
        assert_eq!((i.src, i.dst, i.proto), (C, S, PROTO_UDP));
        assert_eq!(i.ports(&p), Some((40000, 4433)));
    }

    #[test]
    fn incremental_checksums_stay_valid() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            for payload in [&b""[..], b"x", b"hello, world", &[0xff; 333]] {
                let mut p = build(proto, (C, 40000), (S, 4433), payload);
                assert_valid(&p);
                let i = Ipv4Info::parse(&p).unwrap();
                rewrite_addr(&mut p, &i, Field::Source, Ipv4Addr::new(198, 18, 0, 2));
                assert_valid(&p);
                let i = Ipv4Info::parse(&p).unwrap();
                assert!(rewrite_port(&mut p, &i, Field::Source, 20001));
                assert_valid(&p);
                let i = Ipv4Info::parse(&p).unwrap();
                assert_eq!(i.src, Ipv4Addr::new(198, 18, 0, 2));
                assert_eq!(i.ports(&p), Some((20001, 4433)));
            }
        }
    }

    #[test]
    fn nat_port_rebinding() {
        let mut nat = Nat::new(RebindMode::Port, C);
        let mut up = build(PROTO_TCP, (C, 40000), (S, 4433), b"data");
        let i = Ipv4Info::parse(&up).unwrap();
        assert_eq!(nat.outbound(&mut up, &i), NatVerdict::Forward);
        assert_eq!(Ipv4Info::parse(&up).unwrap().ports(&up), Some((40000, 4433)), "idle before rebinding");
        nat.rebind();
        let i = Ipv4Info::parse(&up).unwrap();
        nat.outbound(&mut up, &i);
        assert_valid(&up);
        let wire = Ipv4Info::parse(&up).unwrap().ports(&up).unwrap().0;
        assert_ne!(wire, 40000);
        assert!((NAT_PORT_FIRST..=NAT_PORT_LAST).contains(&wire));
        // The reply to the new mapping reaches the client's own port.
        let mut down = build(PROTO_TCP, (S, 4433), (C, wire), b"rst");
        let i = Ipv4Info::parse(&down).unwrap();
        assert_eq!(nat.inbound(&mut down, &i), NatVerdict::Forward);
        assert_valid(&down);
        assert_eq!(Ipv4Info::parse(&down).unwrap().ports(&down), Some((4433, 40000)));
        // A reply to the old tuple is stale.
        let mut old = build(PROTO_TCP, (S, 4433), (C, 40000), b"late");
        let i = Ipv4Info::parse(&old).unwrap();
        assert_eq!(nat.inbound(&mut old, &i), NatVerdict::Stale);
        // UDP on the same port number is a different flow.
        let mut u = build(PROTO_UDP, (C, 40000), (S, 4433), b"q");
        let i = Ipv4Info::parse(&u).unwrap();
        nat.outbound(&mut u, &i);
        let uw = Ipv4Info::parse(&u).unwrap().ports(&u).unwrap().0;
        assert_ne!(uw, 40000);
        // A second rebinding moves the flow again.
        nat.rebind();
        let mut up2 = build(PROTO_TCP, (C, 40000), (S, 4433), b"data");
        let i = Ipv4Info::parse(&up2).unwrap();
        nat.outbound(&mut up2, &i);
        let wire2 = Ipv4Info::parse(&up2).unwrap().ports(&up2).unwrap().0;
        assert_ne!(wire2, wire);
        assert_eq!(nat.mappings().len(), 3);
    }

    #[test]
    fn nat_address_rebinding() {
        let mut nat = Nat::new(RebindMode::Address, C);
        nat.rebind();
        let mut up = build(PROTO_UDP, (C, 40000), (S, 4433), b"quic");
        let i = Ipv4Info::parse(&up).unwrap();
        nat.outbound(&mut up, &i);
        assert_valid(&up);
        let i = Ipv4Info::parse(&up).unwrap();
        assert_eq!(i.src, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(i.ports(&up), Some((40000, 4433)));
        let mut down = build(PROTO_UDP, (S, 4433), (Ipv4Addr::new(198, 18, 0, 2), 40000), b"r");
        let i = Ipv4Info::parse(&down).unwrap();
        assert_eq!(nat.inbound(&mut down, &i), NatVerdict::Forward);
        assert_valid(&down);
        assert_eq!(Ipv4Info::parse(&down).unwrap().dst, C);
        let mut stale = build(PROTO_UDP, (S, 4433), (C, 40000), b"r");
        let i = Ipv4Info::parse(&stale).unwrap();
        assert_eq!(nat.inbound(&mut stale, &i), NatVerdict::Stale);
    }
}
