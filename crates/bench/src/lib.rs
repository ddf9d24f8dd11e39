//! gradscope-bench owns measurement: the real training loop's throughput per
//! preset, backend and thread count (each in a child process, so the thread
//! count is fixed before any pool starts and peak memory is the row's own),
//! the probe's overhead in alternating blocks of probed and unprobed steps
//! ([`blocks`]), Burn's matmul rate and the fp32 roof ([`child`]), IDX load
//! time and peak memory ([`system`]), and the PyTorch reference that trains the
//! same networks in the same loop ([`pytorch`], `bench/pytorch/bench.py`). It
//! knows nothing of command lines or tables: `gradscope bench` runs it and prints.

pub mod blocks;
pub mod child;
pub mod pytorch;
pub mod system;

use std::path::PathBuf;
use std::process::Command;

use gradscope_probe::Reductions;

pub use blocks::{BLOCK, Mode};
pub use child::{ChildJob, MATMUL_SHAPES, Measured, Roof, burn_matmul, burn_peak, run_child, serve};
pub use pytorch::{PyTorch, Reference};

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Train(#[from] gradscope_train::TrainError),
    #[error(transparent)]
    Data(#[from] gradscope_data::DataError),
    #[error(transparent)]
    Model(#[from] gradscope_models::ModelError),
    #[error(transparent)]
    Backend(#[from] gradscope_train::BackendError),
    #[error(transparent)]
    Idx(#[from] gradscope_data::idx::IdxError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// What every measured run shares.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Steps per repetition (one more repetition runs first as warm-up).
    pub steps: u64,
    /// Timed repetitions.
    pub reps: u64,
    pub batch_size: usize,
    /// Where the probe reduces in the overhead runs.
    pub probe_reductions: Reductions,
}

/// How to start a child process that measures one configuration: a program
/// and the arguments before the child's spec (`gradscope bench --child`),
/// which hands the spec back to [`child::serve`].
#[derive(Debug, Clone)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Launcher {
    fn command(&self, spec: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).arg(spec);
        cmd
    }
}

/// The median, NaN when there is nothing to take it of.
fn median(v: &mut [f64]) -> f64 {
    gradscope_train::median(v).unwrap_or(f64::NAN)
}
