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
pub mod trainer;

use std::path::{Path, PathBuf};

use gradscope_data::{DataError, MnistLike, Split};
use gradscope_models::{Head, Model, ModelConfig, ModelError};

pub use backend::BackendError;
pub use config::{Backend, ConfigError, Invalid, ModelChoice, Optimizer, Schedule, TrainConfig};
pub use files::FileError;
pub use metrics::{MetricsRow, Status, StepSeconds, StepTimes, Summary, median};
pub use run_dir::RunDir;
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
    #[error("{dir} is in use by {holder}, which is writing a run there; wait for it to finish, or stop it first")]
    Locked { dir: PathBuf, holder: String },
    #[error("{dir} is not a gradscope run (no config.toml)")]
    NotARun { dir: PathBuf },
    #[error("{dir} has no complete checkpoint to resume from")]
    NoCheckpoint { dir: PathBuf },
    #[error(
        "{dir} already completed its {steps} steps; to train it further, resume with a larger --epochs or --max-steps"
    )]
    AlreadyCompleted { dir: PathBuf, steps: u64 },
    #[error(
        "{dir} diverged at step {step}; resuming would repeat it from the same checkpoint: start a new run with a lower --lr or --clip-grad-norm"
    )]
    ResumeDiverged { dir: PathBuf, step: u64 },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: invalid configuration: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(transparent)]
    Value(#[from] Invalid),
    #[error(transparent)]
    Settings(#[from] ConfigError),
    #[error("--classes {found:?}: {reason}")]
    Classes { found: Vec<u8>, reason: String },
    #[error("{0}")]
    Invalid(String),
    /// An observer (the probe) could not do its work, e.g. write its records.
    #[error("{0}")]
    Observer(String),
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

/// [`model_config`] with its input fitted to the data's image size: a preset
/// or a model table that leaves the input size at its default (28x28) takes
/// the data's; a size the configuration sets explicitly must match the data.
/// Checked before a run directory is made, so a mismatch leaves nothing behind.
pub fn model_for_data(config: &TrainConfig, data: &Data) -> Result<ModelConfig, TrainError> {
    let mut model = model_config(config)?;
    let images = &data.train.images;
    let (rows, cols) = (images.rows, images.cols);
    let preset = matches!(config.model, ModelChoice::Preset { .. });
    let mismatch = |key: &str, found: usize, expected: String| {
        TrainError::Invalid(format!(
            "model.{key} = {found}, but the {} images are {rows}x{cols} (expected {expected}); leave model.{key} out to take it from the data",
            config.dataset
        ))
    };
    match &mut model {
        ModelConfig::Mlp(c) if c.input_size != rows * cols => {
            if !preset && c.input_size != gradscope_models::MlpConfig::new().input_size {
                return Err(mismatch("input_size", c.input_size, format!("{}", rows * cols)));
            }
            c.input_size = rows * cols;
        }
        ModelConfig::Resnet(c) if (c.image_size, c.image_size) != (rows, cols) => {
            if rows != cols {
                return Err(TrainError::Invalid(format!(
                    "the ResNets take square images; the {} images are {rows}x{cols}",
                    config.dataset
                )));
            }
            if !preset && c.image_size != gradscope_models::ResNetConfig::new().image_size {
                return Err(mismatch("image_size", c.image_size, format!("{rows}")));
            }
            c.image_size = rows;
        }
        _ => {}
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
    config.validate()?;
    let dataset = MnistLike::load(&config.dataset, config.data_dir.as_deref())?;
    let (mut train, mut test) = (dataset.train, dataset.test);
    if let Some(classes) = &config.classes {
        train = select_classes(&train, classes);
        test = select_classes(&test, classes);
    }
    let batcher = gradscope_data::MnistBatcher::fitted(&train, config.normalization);
    Ok(Data { train, test, batcher })
}

/// Starts a new run in `dir` (which must not exist or be empty). Everything
/// that can be checked (values, data, model) is checked before `dir` is made.
pub fn start(config: TrainConfig, dir: &Path) -> Result<Trainer<Model>, TrainError> {
    let data = prepare_data(&config)?;
    let model_cfg = model_for_data(&config, &data)?;
    let device = config.backend.device()?.autodiff();
    let model = model_cfg.init(&device)?;
    let label = config.model.label();
    let run = RunDir::create(dir, &config)?;
    Trainer::new(config, model, data, device, run, &label)
}

/// How a resumed run may differ from the run it continues: its length (in
/// epochs or steps), nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extend {
    pub epochs: Option<u64>,
    pub max_steps: Option<u64>,
}

/// Reopens the run in `dir` and continues it from its latest intact
/// checkpoint. A run that diverged is refused; a completed run only when
/// `extend` asks for more steps than it took (the new totals are saved in its
/// `config.toml` and logged as an `extend` event).
pub fn resume(dir: &Path, extend: Extend) -> Result<Trainer<Model>, TrainError> {
    let (run, mut config) = RunDir::open(dir)?;
    let ended = run_dir::read_summary(dir)?;
    if let Some(Summary {
        status: Status::Diverged,
        diverged,
        steps,
        ..
    }) = &ended
    {
        return Err(TrainError::ResumeDiverged {
            dir: dir.to_owned(),
            step: diverged.as_ref().map_or(*steps, |d| d.step),
        });
    }
    let data = prepare_data(&config)?;
    let spe = gradscope_data::batches_per_epoch(data.train.len(), config.batch_size) as u64;
    let before = config.total_steps(spe);
    let extended = extend != Extend::default();
    if let Some(e) = extend.epochs {
        config.epochs = e;
    }
    if extend.max_steps.is_some() {
        config.max_steps = extend.max_steps;
    }
    config.validate()?;
    let after = config.total_steps(spe);
    if let Some(Summary {
        status: Status::Completed,
        steps,
        ..
    }) = &ended
        && after <= *steps
    {
        return Err(TrainError::AlreadyCompleted {
            dir: dir.to_owned(),
            steps: *steps,
        });
    }
    let device = config.backend.device()?.autodiff();
    let model = model_for_data(&config, &data)?.init(&device)?;
    let label = config.model.label();
    let mut trainer = Trainer::new(config.clone(), model, data, device, run.clone(), &label)?.resume()?;
    if extended {
        let at = trainer.step();
        if after <= at {
            return Err(TrainError::Invalid(format!(
                "--epochs/--max-steps give {after} steps in all, but the run resumes after step {at}: nothing would be trained"
            )));
        }
        run.save_config(&config)?;
        trainer.log_event(
            "extend",
            serde_json::json!({ "total_steps_before": before, "total_steps": after }),
        )?;
    }
    Ok(trainer)
}
