//! The relay's in-memory tap: every datagram it handled during a measurement, forwarded or
//! dropped, with when and why, for analyses that need the packets themselves (the per-stream
//! stall analysis of `lab hol`) rather than the counters of [`super::LinkStats`].
//!
//! `Link::start_tap(limit)` begins a tap and `Link::take_tap()` ends it and returns a [`Tap`];
//! the relay never blocks on it, and datagrams past the byte limit are counted, not kept.

use serde::Serialize;

use super::impair::Direction;

/// What the relay did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Written into the destination namespace.
    Forwarded,
    /// Dropped by the loss model (random or Gilbert–Elliott).
    DroppedLoss,
    /// Dropped at the bottleneck's full queue (tail drop).
    DroppedQueue,
    /// Dropped for a NAT mapping a rebinding removed.
    DroppedStaleNat,
}

/// One datagram.
#[derive(Debug, Clone)]
pub struct TapPacket {
    /// Nanoseconds since the link started: when the delay line wrote it into the destination
    /// namespace (forwarded), or when the relay read it (dropped).
    pub at_ns: u64,
    /// Up (client → server) or down.
    pub direction: Direction,
    /// What happened to it.
    pub fate: Fate,
    /// The whole IPv4 datagram, as forwarded (after the NAT) or as read (dropped).
    pub data: Vec<u8>,
}

/// What a tap recorded.
#[derive(Debug, Clone, Default)]
pub struct Tap {
    /// Datagrams in the order the tap saw them (forwarded ones by release, dropped ones by
    /// arrival, so sort by `at_ns` for one time line).
    pub packets: Vec<TapPacket>,
    /// Datagrams not kept because the tap's byte limit was reached.
    pub overflow: u64,
}
