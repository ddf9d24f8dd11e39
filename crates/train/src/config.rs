//! The complete description of a training run, as one serde struct that a TOML
//! file, command-line flags, or code fill in. The resolved value is saved with
//! every run, so a run directory says exactly how it was made.

use gradscope_data::Normalization;
use gradscope_models::{ModelConfig, ModelError, preset};

/// Compute backend, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (SIMD + rayon). The default: fastest on CPU here.
    #[default]
    Flex,
    /// Burn's ndarray CPU backend (deprecated upstream, kept for parity checks).
    Ndarray,
    /// wgpu: Vulkan/Metal/DX12 GPUs, or Mesa's llvmpipe on a CPU-only machine.
    Wgpu,
    /// NVIDIA CUDA through CubeCL. Needs a build with the `cuda` cargo feature;
    /// the variant always exists so that a saved config reads the same in every build.
    Cuda,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        })
    }
}

/// The optimiser, with PyTorch's semantics and defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Optimizer {
    /// `v = mu v + g; p -= lr (g + mu v if nesterov else v)`; dampening 0 as in
    /// PyTorch (Burn's own default is 0.1). Weight decay is L2 added to `g`.
    Sgd {
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with PyTorch's epsilon 1e-8 (Burn's default is 1e-5); L2 weight decay.
    Adam {
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        epsilon: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// AdamW (decoupled weight decay, PyTorch default 0.01).
    Adamw {
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        epsilon: f64,
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}
fn adamw_decay() -> f64 {
    0.01
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

/// Learning-rate schedule over optimiser steps.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Schedule {
    #[default]
    Constant,
    /// Multiply by `gamma` every `every` steps.
    Step { every: u64, gamma: f64 },
    /// Cosine decay from the base rate to `min_lr` over the run's total steps.
    Cosine {
        #[serde(default)]
        min_lr: f64,
    },
}

/// Which model to train: a preset name, or a full configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum ModelChoice {
    Preset { preset: String },
    Config(ModelConfig),
}

impl ModelChoice {
    /// The model configuration this choice stands for.
    pub fn resolve(&self) -> Result<ModelConfig, ModelError> {
        match self {
            ModelChoice::Preset { preset: name } => preset(name),
            ModelChoice::Config(c) => Ok(c.clone()),
        }
    }

    /// A short label for directory names and legends.
    pub fn label(&self) -> String {
        match self {
            ModelChoice::Preset { preset } => preset.clone(),
            ModelChoice::Config(ModelConfig::Mlp(c)) => format!("mlp-{}-{}", c.activation, c.depth),
            ModelChoice::Config(ModelConfig::Resnet(c)) => {
                format!(
                    "resnet{}-{}",
                    c.layer_count(),
                    if c.skip { "residual" } else { "plain" }
                )
            }
        }
    }
}

/// A training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The network.
    pub model: ModelChoice,
    /// Dataset name (`mnist-sample`, `mnist`, `fashion-mnist`, `kmnist`).
    pub dataset: String,
    /// A directory holding the four IDX files, or the download cache root.
    pub data_dir: Option<std::path::PathBuf>,
    /// Keep only these classes (exactly two with a binary head, e.g. `[3, 5]`).
    pub classes: Option<Vec<u8>>,
    pub normalization: Normalization,
    pub backend: Backend,
    pub optimizer: Optimizer,
    pub lr: f64,
    pub schedule: Schedule,
    /// Linear warm-up from 0 over this many steps.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
    pub batch_size: usize,
    pub epochs: u64,
    /// Stop after this many optimiser steps, even mid-epoch.
    pub max_steps: Option<u64>,
    /// Also evaluate on the test split every N steps (always at each epoch's end).
    pub eval_every: Option<u64>,
    /// Log a metrics row every N steps.
    pub log_every: u64,
    pub seed: u64,
    /// Visit training examples in a seeded random order each epoch.
    pub shuffle: bool,
    /// Which steps the gradient probe measures (`default`, `off`, or every N).
    pub probe: crate::schedule::ProbeSchedule,
    /// Every Nth probed step (and the first) is an update step: it also reads
    /// the weights (their norms, the update's size) and takes |g| histograms.
    /// Steps in between divide by the latest weight norm; 1 reads the weights
    /// at every probed step, which costs more (BENCHMARKS.md, session 9).
    pub probe_update_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelChoice::Preset {
                preset: "mlp-sigmoid-10x128".into(),
            },
            dataset: gradscope_data::BUNDLED_NAME.into(),
            data_dir: None,
            classes: None,
            normalization: Normalization::Standard,
            backend: Backend::Flex,
            optimizer: Optimizer::default(),
            lr: 0.1,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            clip_grad_norm: None,
            batch_size: 128,
            epochs: 5,
            max_steps: None,
            eval_every: None,
            log_every: 10,
            seed: 0,
            shuffle: true,
            probe: crate::schedule::ProbeSchedule::Default,
            probe_update_every: 10,
        }
    }
}

impl TrainConfig {
    /// Learning rate at optimiser step `step` (0-based) of a run of `total` steps.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let base = match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Step { every, gamma } => self.lr * gamma.powi((step / every.max(1)) as i32),
            Schedule::Cosine { min_lr } => {
                let t = (step as f64 / total.max(1) as f64).min(1.0);
                min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        };
        if step < self.warmup_steps {
            base * (step + 1) as f64 / self.warmup_steps as f64
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_partial_files() {
        let cfg = TrainConfig::default();
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<TrainConfig>(&text).unwrap(), cfg);
        let partial: TrainConfig = toml::from_str("lr = 0.5\n[model]\npreset = \"resnet8-plain\"\n").unwrap();
        assert_eq!(partial.lr, 0.5);
        assert_eq!(partial.model.label(), "resnet8-plain");
        assert_eq!(partial.batch_size, 128);
    }

    #[test]
    fn full_model_config_in_toml() {
        let text = "[model]\narch = \"mlp\"\ndepth = 3\nwidth = [64, 32, 16]\nactivation = { kind = \"leaky_relu\", slope = 0.2 }\n";
        let cfg: TrainConfig = toml::from_str(text).unwrap();
        let ModelConfig::Mlp(m) = cfg.model.resolve().unwrap() else {
            panic!()
        };
        assert_eq!(m.depth, 3);
        assert_eq!(m.widths().unwrap(), vec![64, 32, 16]);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = toml::from_str::<TrainConfig>("learning_rate = 0.1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `learning_rate`"), "{err}");
    }

    #[test]
    fn schedules() {
        let mut c = TrainConfig {
            lr: 1.0,
            ..Default::default()
        };
        assert_eq!(c.lr_at(50, 100), 1.0);
        c.schedule = Schedule::Step { every: 10, gamma: 0.5 };
        assert_eq!(c.lr_at(25, 100), 0.25);
        c.schedule = Schedule::Cosine { min_lr: 0.0 };
        assert!((c.lr_at(50, 100) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(100, 100).abs() < 1e-12);
        c.warmup_steps = 4;
        assert!((c.lr_at(1, 100) - 0.5 * c.lr_at(1, 100) / 0.5).abs() < 1e-12);
        assert!((c.lr_at(0, 100) - 0.25).abs() < 1e-3);
    }
}
