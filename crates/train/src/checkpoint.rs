//! Checkpoints: model, optimiser state and loop position, written so that a
//! crash at any moment leaves the previous checkpoint intact, and checked on
//! resume so that a damaged file is never loaded.
//!
//! Layout: `checkpoints/step-00000063/{model.bpk, optim.bpk, state.json}` plus
//! `checkpoints/latest`, a one-line file naming the newest complete checkpoint.
//! A checkpoint is written into `*.partial`, renamed when complete, and only
//! then named in `latest`; the checkpoint before it is kept, older ones are
//! removed. `state.json` records the SHA-256 of the other two files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use sha2::{Digest, Sha256};

use crate::TrainError;
use crate::files::{at, write_atomic};
use crate::metrics::Summary;
use crate::run_dir::{CHECKPOINTS_DIR, RunDir};

pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIM_FILE: &str = "optim.bpk";
pub const STATE_FILE: &str = "state.json";
/// Names the newest complete checkpoint.
pub const LATEST_FILE: &str = "latest";

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
    /// SHA-256 (hex) of the checkpoint's other files, by file name. Empty in
    /// checkpoints written before checksums were kept (then nothing is checked).
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// The directory name of the checkpoint after `step` steps.
fn name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The step of a checkpoint directory name, if it is one.
fn step_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn sha256_of(path: &Path) -> Result<String, TrainError> {
    let bytes = std::fs::read(path).map_err(at(path))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Saves a checkpoint and returns its directory.
pub fn save<M: Module>(
    run: &RunDir,
    model: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
    summary: &Summary,
) -> Result<PathBuf, TrainError> {
    let root = run.path(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&root).map_err(at(&root))?;
    let name = name(state.step);
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
    state.sha256 = BTreeMap::new();
    for file in [MODEL_FILE, OPTIM_FILE] {
        state.sha256.insert(file.into(), sha256_of(&partial.join(file))?);
    }
    let json = serde_json::to_string_pretty(&state).expect("state serialises");
    write_atomic(&partial.join(STATE_FILE), json.as_bytes())?;
    let previous = std::fs::read_to_string(root.join(LATEST_FILE))
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| step_of(n).is_some() && *n != name);
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(at(&done))?;
    }
    std::fs::rename(&partial, &done).map_err(at(&done))?;
    write_atomic(&root.join(LATEST_FILE), format!("{name}\n").as_bytes())?;
    // Keep the new checkpoint and the one before it; a damaged newest one can
    // then still be resumed from its predecessor.
    for entry in std::fs::read_dir(&root).map_err(at(&root))? {
        let path = entry.map_err(at(&root))?.path();
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let keep = file_name.as_deref() == Some(name.as_str()) || file_name == previous;
        if path.is_dir() && !keep {
            std::fs::remove_dir_all(&path).map_err(at(&path))?;
        }
    }
    Ok(done)
}

/// A checkpoint to resume from.
#[derive(Debug)]
pub struct Found {
    pub dir: PathBuf,
    pub state: TrainState,
    /// Newer checkpoints that were passed over, and why.
    pub rejected: Vec<String>,
}

/// Reads a checkpoint's state and checks its files against their checksums.
fn verified(dir: &Path) -> Result<TrainState, TrainError> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(at(&state_path))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: state_path.clone(),
        reason: e.to_string(),
    })?;
    for (file, expected) in &state.sha256 {
        if file.contains(['/', '\\']) || file.starts_with('.') {
            return Err(TrainError::Checkpoint {
                path: state_path,
                reason: format!("names a file outside its checkpoint: `{file}`"),
            });
        }
        let path = dir.join(file);
        let found = sha256_of(&path)?;
        if &found != expected {
            return Err(TrainError::Checkpoint {
                path,
                reason: format!(
                    "SHA-256 {found} does not match the {expected} recorded when it was written: the file is damaged or was changed"
                ),
            });
        }
    }
    Ok(state)
}

/// The newest intact checkpoint of a run. `checkpoints/latest` must name a
/// checkpoint directory of this run (`step-NNNNNNNN`, nothing else); if that
/// checkpoint fails its checksums, the one before it is used and the newer
/// one is reported in [`Found::rejected`].
/// Reads only: no lock is needed (`gradscope models export` reads a run that
/// may still be training).
pub fn latest(run_dir: &Path) -> Result<Found, TrainError> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let pointer = root.join(LATEST_FILE);
    let text = std::fs::read_to_string(&pointer).map_err(|_| TrainError::NoCheckpoint {
        dir: run_dir.to_owned(),
    })?;
    let named = text.trim();
    let Some(newest) = step_of(named) else {
        return Err(TrainError::Checkpoint {
            path: pointer,
            reason: format!("expected the name of a checkpoint directory such as `step-00000063`; found `{named}`"),
        });
    };
    // Candidates: the named checkpoint, then older complete ones, newest first.
    let mut steps: Vec<u64> = std::fs::read_dir(&root)
        .map_err(at(&root))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| step_of(&e.file_name().to_string_lossy()))
        .filter(|&s| s < newest)
        .collect();
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps.insert(0, newest);
    let mut rejected = Vec::new();
    for step in steps {
        let dir = root.join(name(step));
        match verified(&dir) {
            Ok(state) if state.step == step => return Ok(Found { dir, state, rejected }),
            Ok(state) => rejected.push(format!(
                "{}: its state.json says step {}, not {step}",
                dir.display(),
                state.step
            )),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    Err(TrainError::Checkpoint {
        path: root,
        reason: format!("no intact checkpoint to resume from: {}", rejected.join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names() {
        assert_eq!(step_of(&name(63)), Some(63));
        for bad in [
            "../../x",
            "step-63",
            "step-0000006x",
            "/etc",
            "step-00000063/../../x",
            "",
        ] {
            assert_eq!(step_of(bad), None, "{bad}");
        }
    }
}
