//! `gradscope train`: flags or a TOML file in, a run directory out.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use gradscope_data::Normalization;
use gradscope_probe::{ProbeSchedule, ProbedRun, Reductions, RunConfig};
use gradscope_train::{Backend, Extend, ModelChoice, Optimizer, Schedule, Status};

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
    /// Step schedule: decay every N steps [default: 1000].
    #[arg(long)]
    pub step_every: Option<u64>,
    /// Step schedule: decay factor [default: 0.1].
    #[arg(long)]
    pub step_gamma: Option<f64>,
    /// Cosine schedule: final learning rate [default: 0].
    #[arg(long)]
    pub min_lr: Option<f64>,
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
    /// Where the probe reduces: `auto` (host on CPU backends and small GPU
    /// steps, device above), `host` or `device`.
    #[arg(long, value_parser = parse_reductions)]
    pub probe_reductions: Option<Reductions>,
    /// Run directory (default: `runs/<preset>-<timestamp>`); must not exist or be empty.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint, with its
    /// saved configuration; only --epochs and --max-steps may extend it.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_probe(s: &str) -> Result<ProbeSchedule, String> {
    s.parse()
        .map_err(|e: gradscope_probe::config::ParseScheduleError| e.to_string())
}

fn parse_reductions(s: &str) -> Result<Reductions, String> {
    s.parse()
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
    /// The flags that set a field of the run's configuration, by name, and
    /// whether each was given. (`--epochs` and `--max-steps` come last: they
    /// are the ones a resumed run may change.)
    fn config_flags(&self) -> [(&'static str, bool); 31] {
        [
            ("--config", self.config.is_some()),
            ("--preset", self.preset.is_some()),
            ("--dataset", self.dataset.is_some()),
            ("--data-dir", self.data_dir.is_some()),
            ("--classes", self.classes.is_some()),
            ("--normalization", self.normalization.is_some()),
            ("--backend", self.backend.is_some()),
            ("--optimizer", self.optimizer.is_some()),
            ("--momentum", self.momentum.is_some()),
            ("--nesterov", self.nesterov),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--lr", self.lr.is_some()),
            ("--schedule", self.schedule.is_some()),
            ("--step-every", self.step_every.is_some()),
            ("--step-gamma", self.step_gamma.is_some()),
            ("--min-lr", self.min_lr.is_some()),
            ("--warmup-steps", self.warmup_steps.is_some()),
            ("--clip-grad-norm", self.clip_grad_norm.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--eval-every", self.eval_every.is_some()),
            ("--log-every", self.log_every.is_some()),
            ("--seed", self.seed.is_some()),
            ("--no-shuffle", self.no_shuffle),
            ("--probe", self.probe.is_some()),
            ("--probe-update-every", self.probe_update_every.is_some()),
            ("--probe-reductions", self.probe_reductions.is_some()),
            ("--out", self.out.is_some()),
            ("--resume", self.resume.is_some()),
            ("--quiet", self.quiet),
            ("--epochs", self.epochs.is_some()),
            ("--max-steps", self.max_steps.is_some()),
        ]
    }

    /// The flag that sets a configuration key, if it was given.
    fn flag_for(&self, key: &str) -> Option<&'static str> {
        let flag = match key {
            "lr" => "--lr",
            "optimizer.momentum" | "optimizer.nesterov" => "--momentum",
            "optimizer.weight_decay" => "--weight-decay",
            "schedule.every" => "--step-every",
            "schedule.gamma" => "--step-gamma",
            "schedule.min_lr" => "--min-lr",
            "clip_grad_norm" => "--clip-grad-norm",
            "batch_size" => "--batch-size",
            "epochs" => "--epochs",
            "eval_every" => "--eval-every",
            "log_every" => "--log-every",
            "probe_update_every" => "--probe-update-every",
            "classes" => "--classes",
            _ => return None,
        };
        let given = self.config_flags().iter().any(|(f, on)| *f == flag && *on)
            || (key == "optimizer.nesterov" && self.nesterov)
            || (key.starts_with("schedule.") && self.schedule.is_some());
        given.then_some(if key == "optimizer.nesterov" {
            "--nesterov"
        } else {
            flag
        })
    }

    /// The configuration: `--config` (or defaults), then every flag given.
    /// An unusable value is reported by the flag that gave it, or else by the
    /// config file and key.
    pub fn resolve(&self) -> Result<RunConfig> {
        let RunConfig {
            train: mut c,
            mut probe,
        } = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading --config {}", path.display()))?;
                RunConfig::from_toml(&text).map_err(|e| anyhow!("--config {}: {e}", path.display()))?
            }
            None => RunConfig::default(),
        };
        if let Some(s) = self.probe {
            probe.schedule = s;
        }
        if let Some(n) = self.probe_update_every {
            probe.update_every = n;
        }
        if let Some(r) = self.probe_reductions {
            probe.reductions = r;
        }
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
            seed
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
                OptimizerName::Sgd => Optimizer::default(),
                OptimizerName::Adam => toml::from_str("kind = \"adam\"").expect("Adam's defaults"),
                OptimizerName::Adamw => toml::from_str("kind = \"adamw\"").expect("AdamW's defaults"),
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
                    every: self.step_every.unwrap_or(1000),
                    gamma: self.step_gamma.unwrap_or(0.1),
                },
                ScheduleName::Cosine => Schedule::Cosine {
                    min_lr: self.min_lr.unwrap_or(0.0),
                },
            };
        } else if self.step_every.is_some() || self.step_gamma.is_some() || self.min_lr.is_some() {
            bail!("--step-every, --step-gamma and --min-lr need --schedule step or cosine");
        }
        let run = RunConfig::new(c, probe);
        if let Err(e) = run.validate() {
            match (self.flag_for(e.key), &self.config) {
                (Some(flag), _) => bail!("{flag}: found {}; expected {}", e.found, e.expected),
                (None, Some(path)) => bail!("--config {}: {e}", path.display()),
                (None, None) => bail!("{e}"),
            }
        }
        Ok(run)
    }

    /// What `--resume` may change: more epochs or steps. Any other
    /// configuration flag is refused rather than silently ignored.
    fn extension(&self) -> Result<Extend> {
        let flags = self.config_flags();
        let refused: Vec<&str> = flags[..flags.len() - 2]
            .iter()
            .filter(|(f, on)| *on && !matches!(*f, "--resume" | "--quiet"))
            .map(|(f, _)| *f)
            .collect();
        if !refused.is_empty() {
            bail!(
                "--resume continues a run with the configuration saved in its config.toml; {} cannot change it (only --epochs and --max-steps can extend it). To train differently, start a new run with --config RUN/config.toml and the new flags",
                refused.join(", ")
            );
        }
        Ok(Extend {
            epochs: self.epochs,
            max_steps: self.max_steps,
        })
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
    let (run, dir) = match &args.resume {
        Some(dir) => {
            let extend = args.extension()?;
            let config = gradscope_train::run_dir::read_config(dir)?;
            pin_default_device(config.backend);
            let run = ProbedRun::resume(dir, extend).with_context(|| format!("resuming {}", dir.display()))?;
            for note in run.trainer.resume_notes() {
                eprintln!("warning: checkpoint passed over: {note}");
            }
            (run, dir.clone())
        }
        None => {
            let config = args.resolve()?;
            pin_default_device(config.train.backend);
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| default_run_dir(&config.train.model.label()));
            (ProbedRun::start(&config, &dir)?, dir)
        }
    };
    run_probed(run, &dir, args.quiet)
}

/// `runs/<label>-<UTC timestamp>`.
pub fn default_run_dir(label: &str) -> PathBuf {
    Path::new("runs").join(format!("{label}-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")))
}

fn run_probed(mut run: ProbedRun, dir: &Path, quiet: bool) -> Result<()> {
    let trainer_lr = run.config.train.lr;
    let probed = run.probed();
    let live = run.live();
    run.observe(Box::new(Progress::new(quiet, live)));
    let stop = run.trainer.stop_flag();
    ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let summary = run.run()?;
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
    crate::tensorboard_cmd::export_after_run(dir);
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
        Status::Failed => unreachable!("a failed run returns its error"),
        Status::Diverged => {
            let d = summary
                .diverged
                .as_ref()
                .map_or(String::new(), |d| format!(" at step {}: {}", d.step, d.cause));
            println!("diverged{d}; diagnosis saved in {}", dir.display());
            if !probed {
                println!(
                    "remedies: lower the learning rate (e.g. --lr {}), clip the gradient norm (--clip-grad-norm 1.0); train with the probe on (--probe default) to see where it starts",
                    trainer_lr / 10.0
                );
            }
            std::process::exit(2);
        }
        Status::Running => unreachable!("a finished run is not running"),
    }
    Ok(())
}
