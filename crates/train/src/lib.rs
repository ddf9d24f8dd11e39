//! gradscope-train owns training: the run configuration, the choice of compute
//! backend at run time, the autodiff loop with observer hooks (after each
//! backward pass and each optimiser step), run directories with crash-safe
//! metrics, events, summaries and checkpoints, and exact resume. It uses the
//! data and models crates but knows nothing about what observers measure (the
//! probe) or how results are drawn (reports).

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod files;
pub mod metrics;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod trainer;

use std::path::{Path, PathBuf};

use gradscope_data::{DataError, MnistLike, Split};
use gradscope_models::{Head, Model, ModelConfig, ModelError};

pub use backend::BackendError;
pub use config::{Backend, ModelChoice, Optimizer, Schedule, TrainConfig};
pub use files::FileError;
pub use metrics::{MetricsRow, Status, StepTimes, Summary, median};
pub use run_dir::RunDir;
pub use schedule::ProbeSchedule;
pub use trainer::{BackwardView, Control, Data, Observer, RunInfo, StepInfo, TapGrads, Trainer, evaluate};

/// Why a run could not start, continue or finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    File(FileError),
    #[error("{dir} is not empty; choose a new --out directory, or pass --resume to continue the run in it")]
    RunDirNotEmpty { dir: PathBuf },
    #[error("{dir} is not a gradscope run (no config.toml)")]
    NotARun { dir: PathBuf },
    #[error("{dir} has no complete checkpoint to resume from")]
    NoCheckpoint { dir: PathBuf },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: invalid configuration: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("--classes {found:?}: {reason}")]
    Classes { found: Vec<u8>, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// The model configuration a run trains: the chosen model, seeded with the
/// run's seed, with its head fitted to the class selection.
pub fn model_config(config: &TrainConfig) -> Result<ModelConfig, TrainError> {
    let mut model = config.model.resolve()?.with_seed(config.seed);
    if let Some(classes) = &config.classes {
        let head = match model.head() {
            Head::Binary if classes.len() != 2 => {
                return Err(TrainError::Classes {
                    found: classes.clone(),
                    reason: "a binary head needs exactly two classes".into(),
                });
            }
            Head::Binary => Head::Binary,
            Head::Softmax { .. } => Head::Softmax { classes: classes.len() },
        };
        model = model.with_head(head);
    }
    Ok(model)
}

/// Keeps the examples of `classes` and relabels them `0..classes.len()` in the
/// given order (so `[3, 5]` makes 3 -> 0 and 5 -> 1).
pub fn select_classes(split: &Split, classes: &[u8]) -> Split {
    let keep: Vec<usize> = (0..split.len())
        .filter(|&i| classes.contains(&split.labels[i]))
        .collect();
    let len = split.images.image_len();
    let mut pixels = Vec::with_capacity(keep.len() * len);
    for &i in &keep {
        pixels.extend_from_slice(split.images.image(i));
    }
    let labels = keep
        .iter()
        .map(|&i| classes.iter().position(|&c| c == split.labels[i]).expect("kept") as u8)
        .collect();
    let mut images = split.images.clone();
    images.count = keep.len();
    images.pixels = pixels;
    Split { images, labels }
}

/// Loads the run's dataset and builds its batcher.
pub fn prepare_data(config: &TrainConfig) -> Result<Data, TrainError> {
    let dataset = MnistLike::load(&config.dataset, config.data_dir.as_deref())?;
    let (mut train, mut test) = (dataset.train, dataset.test);
    if let Some(classes) = &config.classes {
        let mut seen = classes.clone();
        seen.sort();
        seen.dedup();
        if classes.len() < 2 || seen.len() != classes.len() || classes.iter().any(|&c| c >= 10) {
            return Err(TrainError::Classes {
                found: classes.clone(),
                reason: "expected two or more distinct classes in 0..10".into(),
            });
        }
        train = select_classes(&train, classes);
        test = select_classes(&test, classes);
    }
    if config.batch_size == 0 {
        return Err(TrainError::Invalid("--batch-size must be at least 1; found 0".into()));
    }
    if config.probe_update_every == 0 {
        return Err(TrainError::Invalid(
            "--probe-update-every (probe_update_every) must be at least 1; found 0".into(),
        ));
    }
    let batcher = gradscope_data::MnistBatcher::fitted(&train, config.normalization);
    Ok(Data { train, test, batcher })
}

/// Starts a new run in `dir` (which must not exist or be empty).
pub fn start(config: TrainConfig, dir: &Path) -> Result<Trainer<Model>, TrainError> {
    let data = prepare_data(&config)?;
    let model_cfg = model_config(&config)?;
    let device = config.backend.device()?.autodiff();
    let model = model_cfg.init(&device)?;
    let label = config.model.label();
    let run = RunDir::create(dir, &config)?;
    Trainer::new(config, model, data, device, run, &label)
}

/// Reopens the run in `dir` and continues it from its latest checkpoint.
pub fn resume(dir: &Path) -> Result<Trainer<Model>, TrainError> {
    let (run, config) = RunDir::open(dir)?;
    let data = prepare_data(&config)?;
    let device = config.backend.device()?.autodiff();
    let model = model_config(&config)?.init(&device)?;
    let label = config.model.label();
    Trainer::new(config, model, data, device, run, &label)?.resume()
}
