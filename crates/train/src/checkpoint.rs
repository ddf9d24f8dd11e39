//! Checkpoints: model, optimiser state and loop position, written so that a
//! crash at any moment leaves the previous checkpoint intact.
//!
//! Layout: `checkpoints/step-00000063/{model.bpk, optim.bpk, state.json}` plus
//! `checkpoints/latest`, a one-line file naming the newest complete checkpoint.
//! A checkpoint is written into `*.partial`, renamed when complete, and only
//! then named in `latest`; older checkpoints are removed after that.

use std::path::PathBuf;

use burn::module::Module;
use burn::optim::ModuleOptimizer;

use crate::TrainError;
use crate::files::{at, write_atomic};
use crate::metrics::Summary;
use crate::run_dir::RunDir;

pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIM_FILE: &str = "optim.bpk";
pub const STATE_FILE: &str = "state.json";

/// The loop's position and running numbers: everything besides model and
/// optimiser needed to continue exactly. The data order of an epoch derives
/// from `(seed, epoch)`, so `(epoch, batch_in_epoch)` is the whole data state.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub epoch: u64,
    pub batch_in_epoch: u64,
    pub wall_s: f64,
    /// Lines of `metrics.csv`, header included, at this checkpoint.
    pub metrics_lines: usize,
    pub best_test_acc: Option<f64>,
    pub best_test_acc_step: Option<u64>,
    pub initial_test_loss: Option<f64>,
}

/// Saves a checkpoint and returns its directory.
pub fn save<M: Module>(
    run: &RunDir,
    model: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
    summary: &Summary,
) -> Result<PathBuf, TrainError> {
    let root = run.path("checkpoints");
    std::fs::create_dir_all(&root).map_err(at(&root))?;
    let name = format!("step-{:08}", state.step);
    let partial = root.join(format!("{name}.partial"));
    let done = root.join(&name);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(at(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(at(&partial))?;
    let fail = |path: PathBuf, e: burn::store::RecordError| TrainError::Checkpoint {
        path,
        reason: e.to_string(),
    };
    model
        .clone()
        .save_file(partial.join(MODEL_FILE))
        .map_err(|e| fail(partial.join(MODEL_FILE), e))?;
    optim
        .save(partial.join(OPTIM_FILE))
        .map_err(|e| fail(partial.join(OPTIM_FILE), e))?;
    let mut state = state.clone();
    state.best_test_acc = summary.best_test_acc;
    state.best_test_acc_step = summary.best_test_acc_step;
    state.initial_test_loss = summary.initial_test_loss;
    let json = serde_json::to_string_pretty(&state).expect("state serialises");
    write_atomic(&partial.join(STATE_FILE), json.as_bytes())?;
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(at(&done))?;
    }
    std::fs::rename(&partial, &done).map_err(at(&done))?;
    write_atomic(&root.join("latest"), format!("{name}\n").as_bytes())?;
    for entry in std::fs::read_dir(&root).map_err(at(&root))? {
        let path = entry.map_err(at(&root))?.path();
        if path.is_dir() && path != done {
            std::fs::remove_dir_all(&path).map_err(at(&path))?;
        }
    }
    Ok(done)
}

/// The newest complete checkpoint of a run: its directory and loop state.
pub fn latest(run: &RunDir) -> Result<(PathBuf, TrainState), TrainError> {
    let root = run.path("checkpoints");
    let pointer = root.join("latest");
    let name = std::fs::read_to_string(&pointer).map_err(|_| TrainError::NoCheckpoint {
        dir: run.dir().to_owned(),
    })?;
    let dir = root.join(name.trim());
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(at(&state_path))?;
    let state = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: state_path,
        reason: e.to_string(),
    })?;
    Ok((dir, state))
}
