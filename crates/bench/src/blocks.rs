//! The probe's overhead measured in blocks: [`BLOCK`] steps probed at every
//! step alternate with as many unprobed steps in one process, and each probed
//! block is compared with its two unprobed neighbours.

use std::collections::BTreeMap;

use gradscope_probe::GradientProbe;
use gradscope_train::{BackwardView, Control, Observer, RunInfo, StepInfo, Summary, TrainError};

use crate::Settings;

/// What a child process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Throughput without the probe: samples/s per repetition.
    Throughput,
    /// Probe overhead: blocks of [`BLOCK`] steps probed at every step alternate
    /// with blocks of as many unprobed steps in one process (free of the 10-20%
    /// drift between processes here), every step logged. The probe takes its
    /// statistics on its own thread while the next step trains, so a probed
    /// step's cost shows partly in the step after it: blocks, each drained of
    /// the probe's work before the next begins, account for all of it.
    ProbeBlocks,
}

/// Steps per block in [`Mode::ProbeBlocks`].
pub const BLOCK: u64 = 20;

/// Pairs of blocks (probed, unprobed) per repetition: `--steps` probed steps, rounded up to whole blocks.
pub fn block_pairs(settings: &Settings) -> u64 {
    settings.steps.div_ceil(BLOCK).max(1)
}

/// Whether block `b` (steps `b * BLOCK ..`) is probed: the even ones.
pub fn probed_block(b: u64) -> bool {
    b.is_multiple_of(2)
}

/// Whether `step` falls in a probed block.
fn in_probed_block(step: u64) -> bool {
    probed_block(step / BLOCK)
}

/// The probe on blocks of steps ([`Mode::ProbeBlocks`]).
///
/// A probed step's record is taken on the probe's thread while the next step
/// trains, and collected at that step's backward pass, as in a run probed at
/// every step; the last probed step of a block overlaps the first step of the
/// unprobed block after it in the same way: a block does not wait for its
/// last record, a wait that a run probed at every step never has. What the
/// overlap leaves in the unprobed neighbour is one step's sharing of memory
/// with the probe's thread per block.
pub struct ProbeInBlocks(pub GradientProbe);

impl<M: gradscope_models::Network> Observer<M> for ProbeInBlocks {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), TrainError> {
        Observer::<M>::on_start(&mut self.0, run)
    }
    fn wants_taps(&mut self, step: u64) -> bool {
        in_probed_block(step)
    }
    fn after_backward(&mut self, view: &BackwardView<'_, M>) -> Control {
        self.0.after_backward(view)
    }
    fn after_step(&mut self, info: &StepInfo, after: &M) -> Control {
        self.0.after_step(info, after)
    }
    fn on_finish(&mut self, summary: &mut Summary) -> Result<(), TrainError> {
        Observer::<M>::on_finish(&mut self.0, summary)
    }
}

/// Mean seconds per step of each whole block, by block index. The row at step
/// `s` timed step `s - 1`.
pub fn block_means(rows: &[(u64, f64)], batch_size: usize) -> BTreeMap<u64, f64> {
    let mut blocks: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (s, sps) in rows {
        blocks.entry((s - 1) / BLOCK).or_default().push(batch_size as f64 / sps);
    }
    blocks
        .into_iter()
        .filter(|(_, steps)| steps.len() as u64 == BLOCK)
        .map(|(b, steps)| (b, steps.iter().sum::<f64>() / BLOCK as f64))
        .collect()
}

/// Each probed block's mean step time against the mean of the unprobed
/// blocks on either side, minus 1. Comparing neighbours, 0.4 s apart, cancels
/// the slow drifts of a shared machine that a ratio of two medians over the
/// whole run keeps.
pub fn neighbour_ratios(blocks: &BTreeMap<u64, f64>) -> Vec<f64> {
    blocks
        .iter()
        .filter(|(b, _)| probed_block(**b))
        .filter_map(|(&b, &t)| {
            let (before, after) = (blocks.get(&b.checked_sub(1)?)?, blocks.get(&(b + 1))?);
            Some(t / ((before + after) / 2.0) - 1.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probed blocks 0 and 2 at 11 and 13.2 ms per step, unprobed blocks 1 and 3
    /// drifting from 10 to 14 ms: block 2 is 10% over its neighbours, where a
    /// ratio of the two medians says 12.1 / 12 - 1 = 0.8%.
    #[test]
    fn probed_blocks_are_compared_with_their_neighbours() {
        let ms = |b: u64| match b {
            0 => 11.0,
            1 => 10.0,
            2 => 13.2,
            3 => 14.0,
            _ => unreachable!(),
        };
        // Rows at steps 1..=80 time steps 0..80; batch 100 samples.
        let rows: Vec<(u64, f64)> = (1..=4 * BLOCK)
            .map(|s| (s, 100.0 / (ms((s - 1) / BLOCK) / 1e3)))
            .collect();
        let blocks = block_means(&rows, 100);
        assert_eq!(blocks.len(), 4);
        assert!((blocks[&2] - 13.2e-3).abs() < 1e-12);
        let ratios = neighbour_ratios(&blocks);
        // Block 0 has no unprobed block before it; block 2 sits between 10 and 14 ms.
        assert_eq!(ratios.len(), 1);
        assert!((ratios[0] - 0.1).abs() < 1e-9, "{ratios:?}");
    }
}
