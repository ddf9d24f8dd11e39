//! `gradscope train`: flags or a TOML file in, a run directory out.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use gradscope_data::Normalization;
use gradscope_probe::GradientProbe;
use gradscope_train::{Backend, ModelChoice, Optimizer, ProbeSchedule, Schedule, Status, TrainConfig};

use crate::progress::Progress;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerName {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleName {
    Constant,
    Step,
    Cosine,
}

/// Every flag overrides the matching field of `--config`; the resolved
/// configuration is saved as `config.toml` in the run directory.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// A TOML file with any TrainConfig fields (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model preset (`gradscope models list`).
    #[arg(long)]
    pub preset: Option<String>,
    /// Dataset: mnist-sample (bundled), mnist, fashion-mnist, kmnist.
    #[arg(long)]
    pub dataset: Option<String>,
    /// A directory with the four IDX files, or the download cache root.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Train on these classes only, e.g. `3,5` (with a binary head: exactly two).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<u8>>,
    /// Pixel normalisation.
    #[arg(long, value_parser = parse_normalization)]
    pub normalization: Option<Normalization>,
    /// Compute backend.
    #[arg(long, value_parser = parse_backend)]
    pub backend: Option<Backend>,
    /// Optimiser (PyTorch semantics).
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerName>,
    /// SGD momentum (dampening 0, as in PyTorch).
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleName>,
    /// Step schedule: decay every N steps.
    #[arg(long, default_value_t = 1000)]
    pub step_every: u64,
    /// Step schedule: decay factor.
    #[arg(long, default_value_t = 0.1)]
    pub step_gamma: f64,
    /// Cosine schedule: final learning rate.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Linear warm-up steps.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop after this many optimiser steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Evaluate on the test split every N steps (always at each epoch's end).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Log a metrics row every N steps.
    #[arg(long)]
    pub log_every: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Visit training examples in file order (the first batch is the first N images).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Gradient probe schedule: `default` (every step for 100 steps, then every 10), `off`, or every N steps.
    #[arg(long = "probe", alias = "probe-every", value_parser = parse_probe)]
    pub probe: Option<ProbeSchedule>,
    /// Read the weights (norms, update sizes) and take |g| histograms on every
    /// Nth probed step; the steps between divide by the latest weight norm. 1: every probed step.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub probe_update_every: Option<u64>,
    /// Run directory (default: runs/<preset>-<timestamp>); must not exist or be empty.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with_all = ["config", "preset", "out"])]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_probe(s: &str) -> Result<ProbeSchedule, String> {
    s.parse()
        .map_err(|e: gradscope_train::schedule::ParseScheduleError| e.to_string())
}

pub fn parse_backend(s: &str) -> Result<Backend, String> {
    toml::Value::String(s.to_owned())
        .try_into()
        .map_err(|_| format!("unknown backend `{s}`; expected flex, ndarray, wgpu or cuda"))
}

fn parse_normalization(s: &str) -> Result<Normalization, String> {
    toml::Value::String(s.to_owned())
        .try_into()
        .map_err(|_| format!("unknown normalization `{s}`; expected raw, unit or standard"))
}

impl TrainArgs {
    /// The configuration: `--config` (or defaults), then every flag given.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading --config {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("--config {}: invalid run configuration", path.display()))?
            }
            None => TrainConfig::default(),
        };
        if let Some(p) = &self.preset {
            c.model = ModelChoice::Preset { preset: p.clone() };
        }
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = v.clone(); } )* };
        }
        set!(
            dataset,
            normalization,
            backend,
            lr,
            warmup_steps,
            batch_size,
            epochs,
            log_every,
            seed,
            probe,
            probe_update_every
        );
        if self.data_dir.is_some() {
            c.data_dir = self.data_dir.clone();
        }
        if self.classes.is_some() {
            c.classes = self.classes.clone();
        }
        if self.clip_grad_norm.is_some() {
            c.clip_grad_norm = self.clip_grad_norm;
        }
        if self.max_steps.is_some() {
            c.max_steps = self.max_steps;
        }
        if self.eval_every.is_some() {
            c.eval_every = self.eval_every;
        }
        if self.no_shuffle {
            c.shuffle = false;
        }
        if let Some(name) = self.optimizer {
            c.optimizer = match name {
                OptimizerName::Sgd => Optimizer::Sgd {
                    momentum: 0.0,
                    nesterov: false,
                    weight_decay: 0.0,
                },
                OptimizerName::Adam => Optimizer::Adam {
                    beta1: 0.9,
                    beta2: 0.999,
                    epsilon: 1e-8,
                    weight_decay: 0.0,
                },
                OptimizerName::Adamw => Optimizer::Adamw {
                    beta1: 0.9,
                    beta2: 0.999,
                    epsilon: 1e-8,
                    weight_decay: 0.01,
                },
            };
        }
        match &mut c.optimizer {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                if let Some(m) = self.momentum {
                    *momentum = m;
                }
                *nesterov |= self.nesterov;
                if let Some(w) = self.weight_decay {
                    *weight_decay = w;
                }
            }
            Optimizer::Adam { weight_decay, .. } | Optimizer::Adamw { weight_decay, .. } => {
                if self.momentum.is_some() || self.nesterov {
                    bail!("--momentum and --nesterov apply to --optimizer sgd only");
                }
                if let Some(w) = self.weight_decay {
                    *weight_decay = w;
                }
            }
        }
        if let Some(s) = self.schedule {
            c.schedule = match s {
                ScheduleName::Constant => Schedule::Constant,
                ScheduleName::Step => Schedule::Step {
                    every: self.step_every,
                    gamma: self.step_gamma,
                },
                ScheduleName::Cosine => Schedule::Cosine { min_lr: self.min_lr },
            };
        }
        if !(c.lr.is_finite() && c.lr > 0.0) {
            bail!("--lr must be a positive number; found {}", c.lr);
        }
        if c.epochs == 0 {
            bail!("--epochs must be at least 1; found 0");
        }
        Ok(c)
    }
}

/// Makes Burn's `Device::default()` (used by Burn when it loads optimiser state)
/// the chosen backend rather than wgpu.
pub fn pin_default_device(backend: Backend) {
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: called before any thread is spawned by this process.
        unsafe { std::env::set_var("BURN_DEVICE", backend.burn_device_name()) };
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (trainer, dir) = match &args.resume {
        Some(dir) => {
            let (_, config) = gradscope_train::RunDir::open(dir)?;
            pin_default_device(config.backend);
            (
                gradscope_train::resume(dir).with_context(|| format!("resuming {}", dir.display()))?,
                dir.clone(),
            )
        }
        None => {
            let config = args.resolve()?;
            pin_default_device(config.backend);
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| default_run_dir(&config.model.label()));
            (gradscope_train::start(config, &dir)?, dir)
        }
    };
    run_trainer(trainer, &dir, args.quiet)
}

/// `runs/<label>-<UTC timestamp>`.
pub fn default_run_dir(label: &str) -> PathBuf {
    Path::new("runs").join(format!("{label}-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")))
}

fn run_trainer(mut trainer: gradscope_train::Trainer<gradscope_models::Model>, dir: &Path, quiet: bool) -> Result<()> {
    let epochs = trainer.config.epochs;
    trainer.observe(Box::new(Progress::new(quiet, epochs)));
    let probed = match GradientProbe::for_run(&trainer.config)? {
        Some(probe) => {
            trainer.observe(Box::new(probe));
            true
        }
        None => false,
    };
    let stop = trainer.stop_flag();
    ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let (summary, _) = trainer.run()?;
    if probed && let Ok(ins) = gradscope_probe::inspect(dir) {
        println!("{}", gradscope_probe::render(&ins));
    }
    match gradscope_report::build(&[dir.to_path_buf()], gradscope_report::ReportOptions::default()) {
        Ok(report) => {
            report
                .write(&dir.join("report"))
                .with_context(|| format!("writing the report into {}", dir.display()))?;
        }
        Err(e) => eprintln!("warning: no report for {}: {e}", dir.display()),
    }
    let acc = summary
        .final_test_acc
        .map_or("n/a".into(), |a| format!("{:.2}%", a * 100.0));
    match summary.status {
        Status::Completed => println!(
            "test accuracy {acc} after {} steps in {:.1} s -> {}",
            summary.steps,
            summary.wall_s,
            dir.display()
        ),
        Status::Interrupted => println!(
            "interrupted at step {}; checkpoint saved; continue with: gradscope train --resume {}",
            summary.steps,
            dir.display()
        ),
        Status::Diverged => {
            let d = summary
                .diverged
                .as_ref()
                .map_or(String::new(), |d| format!(" at step {}: {}", d.step, d.cause));
            println!("diverged{d}; diagnosis saved in {}", dir.display());
            std::process::exit(2);
        }
        Status::Running => unreachable!("a finished run is not running"),
    }
    Ok(())
}
