//! The order a sweep runs in: every (workload, loss point, run) block gets its own random stream
//! of the link (independent seeds per loss point and run, shared by the block's arms: the
//! pairing), the blocks run in a seeded random order that interleaves loss points and workloads,
//! and the arms inside a block run in a random order of their own. The order is recorded in
//! `results.json`, so a reader can check that no arm always ran first or last, and no loss
//! point ran at one time of the sweep.

use serde::Serialize;

use super::{Arm, Workload};
use crate::lab::impair::Rng;

/// The link phase of a block's untimed set-up (connections, subscriptions) is its timed phase
/// with this bit set: its own random stream, never one a timed part uses (the MQTT arms apply
/// the same bit themselves).
pub(crate) use crate::lab::hol_mqtt::SETUP_PHASE_BIT as SETUP_PHASE;

/// First phase a block uses (the self-check uses phases 1 and 2, and 0 is the idle link's).
const FIRST_PHASE: u32 = 16;

/// One block of the schedule: every arm of one workload at one loss point, one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Block {
    /// Position in the sweep (0 = ran first).
    pub order: usize,
    pub workload: Workload,
    /// Index into the sweep's loss points.
    pub loss_index: usize,
    /// The configured loss rate, per direction.
    pub loss: f64,
    /// Run number at this loss point, 0-based.
    pub run: usize,
    /// The link's random stream of the timed part (set-up: `phase | SETUP_PHASE`).
    pub phase: u32,
    /// The HTTP arms in the order they ran (empty for MQTT, whose arms are in `mqtt_arms`).
    pub arms: Vec<Arm>,
    /// The MQTT arms' order, as indices into `hol_mqtt::MqttArm::ALL`.
    pub mqtt_arms: Vec<usize>,
}

/// Fisher–Yates with the lab's seeded generator.
fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// The sweep's blocks in the order they run: `runs` blocks per workload and loss point,
/// shuffled with `seed` (stream 0x5C4E), arms shuffled inside each block.
pub(crate) fn plan(workloads: &[Workload], losses: &[f64], runs: usize, mqtt_arms: usize, seed: u64) -> Vec<Block> {
    let mut rng = Rng::new(seed, 0x5C4E);
    let mut blocks = Vec::with_capacity(workloads.len() * losses.len() * runs);
    for (wi, &workload) in workloads.iter().enumerate() {
        for (li, &loss) in losses.iter().enumerate() {
            for run in 0..runs {
                let index = (wi * losses.len() + li) * runs + run;
                let phase = FIRST_PHASE + u32::try_from(index).unwrap_or(SETUP_PHASE - FIRST_PHASE - 1);
                blocks.push(Block {
                    order: 0,
                    workload,
                    loss_index: li,
                    loss,
                    run,
                    phase: phase.min(SETUP_PHASE - 1),
                    arms: workload.arms().to_vec(),
                    mqtt_arms: if workload == Workload::Mqtt { (0..mqtt_arms).collect() } else { Vec::new() },
                });
            }
        }
    }
    shuffle(&mut blocks, &mut rng);
    for (i, b) in blocks.iter_mut().enumerate() {
        b.order = i;
        shuffle(&mut b.arms, &mut rng);
        shuffle(&mut b.mqtt_arms, &mut rng);
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_seeded_interleaved_and_pairs_arms_on_one_phase() {
        let w = [Workload::Small, Workload::Bulk];
        let losses = [0.0, 0.01, 0.02];
        let p = plan(&w, &losses, 10, 3, 7);
        assert_eq!(p.len(), 2 * 3 * 10);
        assert_eq!(p, plan(&w, &losses, 10, 3, 7), "seeded");
        assert_ne!(p, plan(&w, &losses, 10, 3, 8), "another seed, another order");
        // Every block has its own phase: independent seeds per (workload, loss, run).
        let mut phases: Vec<u32> = p.iter().map(|b| b.phase).collect();
        phases.sort_unstable();
        phases.dedup();
        assert_eq!(phases.len(), p.len());
        assert!(phases.iter().all(|ph| (FIRST_PHASE..SETUP_PHASE).contains(ph)));
        // Interleaved: the first ten blocks are not all one loss point or one workload.
        let first: Vec<&Block> = p.iter().take(10).collect();
        assert!(first.iter().any(|b| b.loss_index != first[0].loss_index));
        assert!(first.iter().any(|b| b.workload != first[0].workload));
        // Arm order varies: the bulk blocks do not all start with the same arm.
        let starts: std::collections::HashSet<Arm> =
            p.iter().filter(|b| b.workload == Workload::Bulk).map(|b| b.arms[0]).collect();
        assert!(starts.len() > 1, "{starts:?}");
        for b in &p {
            let mut a = b.arms.clone();
            a.sort_by_key(|x| *x as u8);
            let mut want = b.workload.arms().to_vec();
            want.sort_by_key(|x| *x as u8);
            assert_eq!(a, want, "each block runs every arm of its workload once");
        }
    }
}
