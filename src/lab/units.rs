//! Parsers for the lab's command-line values: rates, loss probabilities, Gilbert–Elliott
//! parameters and queue limits.

use super::impair::{LossModel, QueueLimit};
use crate::config::BadValue;

/// Parse a rate in bits per second: `10mbit`, `10Mbit/s`, `500kbit`, `1.5gbit`, `64000bit`
/// (SI prefixes: k = 1000). tc's `kbps`/`mbps` (bytes per second) are refused as ambiguous.
pub fn parse_rate(s: &str) -> Result<u64, BadValue> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").unwrap_or(&t);
    if t.ends_with("bps") {
        return Err(BadValue::new(
            "an unambiguous rate",
            s,
            "write bits per second as e.g. 10mbit; tc's mbps means megabytes",
        ));
    }
    let units = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n, *m)))
        .ok_or_else(|| BadValue::new("a rate", s, "use e.g. 10mbit, 500kbit, 1gbit"))?;
    let v: f64 = num.trim().parse().map_err(|_| BadValue::new("a rate", s, "use e.g. 10mbit, 500kbit, 1gbit"))?;
    let bps = v * mult;
    if !(1.0..=1e12).contains(&bps) {
        return Err(BadValue::new("a rate from 1 bit/s to 1 Tbit/s", s, "use e.g. 10mbit"));
    }
    Ok(bps.round() as u64)
}

/// Parse a probability: `2%`, `0.5%`, or a fraction with a decimal point (`0.02`), or `0`.
pub fn parse_probability(s: &str) -> Result<f64, BadValue> {
    let t = s.trim();
    let bad = || BadValue::new("a probability", s, "use a percentage like 2% or a fraction like 0.02");
    let v = if let Some(p) = t.strip_suffix('%') {
        p.trim().parse::<f64>().map_err(|_| bad())? / 100.0
    } else if t == "0" || t.contains('.') {
        t.parse::<f64>().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    if !(0.0..=1.0).contains(&v) {
        return Err(BadValue::new("a probability within 0..100%", s, "use e.g. 2%"));
    }
    Ok(v)
}

/// Parse random loss: a probability (see [`parse_probability`]).
pub fn parse_loss(s: &str) -> Result<LossModel, BadValue> {
    let p = parse_probability(s)?;
    Ok(if p == 0.0 { LossModel::None } else { LossModel::Random { p } })
}

/// Parse Gilbert–Elliott parameters in netem's `gemodel` order: `P,R[,LOSS_BAD[,LOSS_GOOD]]`,
/// e.g. `1%,30%` (the simple Gilbert model: everything lost in Bad, nothing in Good) or
/// `1%,30%,80%,0.1%`.
pub fn parse_burst_loss(s: &str) -> Result<LossModel, BadValue> {
    let parts: Vec<&str> = s.split(',').collect();
    if !(2..=4).contains(&parts.len()) {
        return Err(BadValue::new("burst loss parameters", s, "expected P,R[,LOSS_BAD[,LOSS_GOOD]], e.g. 1%,30%"));
    }
    let p = parse_probability(parts[0])?;
    let r = parse_probability(parts[1])?;
    let loss_bad = parts.get(2).map(|v| parse_probability(v)).transpose()?.unwrap_or(1.0);
    let loss_good = parts.get(3).map(|v| parse_probability(v)).transpose()?.unwrap_or(0.0);
    if p > 0.0 && r == 0.0 {
        return Err(BadValue::new("a burst loss that leaves the Bad state", s, "R = 0 would stay in Bad forever"));
    }
    Ok(LossModel::GilbertElliott { p, r, loss_bad, loss_good })
}

/// Parse a queue limit: bytes with an optional k/M suffix (`64k`, powers of 1024), or packets
/// with a `p`, `pkt` or `packets` suffix (`100p`).
pub fn parse_queue(s: &str) -> Result<QueueLimit, BadValue> {
    let t = s.trim().to_ascii_lowercase();
    for suffix in ["packets", "pkts", "pkt", "p"] {
        if let Some(n) = t.strip_suffix(suffix) {
            let n: u64 = n.trim().parse().map_err(|_| BadValue::new("a packet count", s, "e.g. 100p"))?;
            return Ok(QueueLimit::Packets(n));
        }
    }
    crate::config::parse_size(&t)
        .map(QueueLimit::Bytes)
        .map_err(|_| BadValue::new("a queue limit", s, "bytes like 64k, or packets like 100p"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("10Mbit/s"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("640kbit"), Ok(640_000));
        assert!(parse_rate("10mbps").is_err());
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("0bit").is_err());
    }

    #[test]
    fn probabilities() {
        assert_eq!(parse_probability("2%"), Ok(0.02));
        assert_eq!(parse_probability("0.02"), Ok(0.02));
        assert_eq!(parse_probability("0"), Ok(0.0));
        assert!(parse_probability("2").is_err());
        assert!(parse_probability("120%").is_err());
        assert_eq!(parse_loss("0%"), Ok(LossModel::None));
        assert_eq!(
            parse_burst_loss("1%,30%"),
            Ok(LossModel::GilbertElliott { p: 0.01, r: 0.3, loss_bad: 1.0, loss_good: 0.0 })
        );
        assert_eq!(
            parse_burst_loss("1%,30%,80%,0.5%"),
            Ok(LossModel::GilbertElliott { p: 0.01, r: 0.3, loss_bad: 0.8, loss_good: 0.005 })
        );
        assert!(parse_burst_loss("1%").is_err());
        assert!(parse_burst_loss("1%,0%").is_err());
    }

    #[test]
    fn queues() {
        assert_eq!(parse_queue("64k"), Ok(QueueLimit::Bytes(65_536)));
        assert_eq!(parse_queue("100p"), Ok(QueueLimit::Packets(100)));
        assert_eq!(parse_queue("50 packets"), Ok(QueueLimit::Packets(50)));
        assert!(parse_queue("lots").is_err());
    }
}
