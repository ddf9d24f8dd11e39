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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum ModelChoice {
    Preset { preset: String },
    Config(ModelConfig),
}

impl<'de> serde::Deserialize<'de> for ModelChoice {
    /// `{ preset = "..." }` alone, or a full [`ModelConfig`] (`arch = ...`),
    /// whose own error (an unknown key, a bad value) is passed on as it is.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        if let Some(preset) = table.get("preset") {
            if let Some(other) = table.keys().find(|k| *k != "preset") {
                return Err(D::Error::custom(format!(
                    "`{other}` cannot stand beside `preset`: give either a preset name or a full model table (`arch = \"mlp\"` or `\"resnet\"`, ...)"
                )));
            }
            let preset = preset
                .as_str()
                .ok_or_else(|| D::Error::custom(format!("preset: expected a preset name; found {preset}")))?;
            return Ok(ModelChoice::Preset {
                preset: preset.to_owned(),
            });
        }
        if !table.contains_key("arch") {
            return Err(D::Error::custom(
                "expected `preset = \"NAME\"` or a model table with `arch = \"mlp\"` or `\"resnet\"`",
            ));
        }
        ModelConfig::deserialize(serde_json::Value::Object(table))
            .map(ModelChoice::Config)
            .map_err(D::Error::custom)
    }
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
///
/// Unknown keys inside its tables are refused ([`TrainConfig::from_toml`]);
/// unknown top-level keys are kept in [`TrainConfig::others`] for the
/// components that own them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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
    /// Top-level keys of the run's other components, saved beside the
    /// training's in `config.toml` and kept on resume (the probe's: see
    /// `gradscope_probe::RunConfig`). Training does not read them; the
    /// component that owns them refuses a key it does not know.
    #[serde(flatten)]
    pub others: toml::Table,
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
            others: toml::Table::new(),
        }
    }
}

/// A value of a run configuration that cannot be used, named by its key in
/// a config file (`optimizer.momentum`); the CLI maps keys to flags.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {found}: expected {expected}")]
pub struct Invalid {
    pub key: &'static str,
    pub found: String,
    pub expected: &'static str,
}

/// Why a TOML run configuration cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Syntax(String),
    #[error("unknown key `{0}` (a typo? `gradscope train --help` and README list the keys)")]
    UnknownKey(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Keys of `given` that `parsed` (the same table after a round trip through
/// the config type) does not have: serde drops unknown keys of nested tables
/// silently, so a typo like `momentun` would otherwise train with the default.
fn unknown_keys(given: &toml::Table, parsed: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in given {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (v, parsed.get(k)) {
            (_, None) => out.push(key),
            (toml::Value::Table(g), Some(toml::Value::Table(p))) => unknown_keys(g, p, &key, out),
            (toml::Value::Array(g), Some(toml::Value::Array(p))) => {
                for (i, (g, p)) in g.iter().zip(p).enumerate() {
                    if let (toml::Value::Table(g), toml::Value::Table(p)) = (g, p) {
                        unknown_keys(g, p, &format!("{key}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

impl TrainConfig {
    /// Reads a TOML run configuration: keys left out take their defaults; an
    /// unknown key inside a table and any unusable value are refused; an
    /// unknown top-level key is kept in [`TrainConfig::others`] for the
    /// component that owns it (`gradscope_probe::RunConfig` refuses the ones
    /// nobody owns).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: TrainConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let given: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let parsed = toml::Table::try_from(&config).expect("a config serialises to a TOML table");
        let mut unknown = Vec::new();
        unknown_keys(&given, &parsed, "", &mut unknown);
        if let Some(key) = unknown.into_iter().next() {
            return Err(ConfigError::UnknownKey(key));
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every numeric field (flags and files share this check).
    pub fn validate(&self) -> Result<(), Invalid> {
        fn check(
            ok: bool,
            key: &'static str,
            found: impl std::fmt::Display,
            expected: &'static str,
        ) -> Result<(), Invalid> {
            if ok {
                Ok(())
            } else {
                Err(Invalid {
                    key,
                    found: found.to_string(),
                    expected,
                })
            }
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        let fraction = |x: f64| x.is_finite() && (0.0..1.0).contains(&x);
        check(positive(self.lr), "lr", self.lr, "a positive finite number")?;
        match self.optimizer {
            Optimizer::Sgd { momentum, nesterov, .. } => {
                check(fraction(momentum), "optimizer.momentum", momentum, "a number in [0, 1)")?;
                check(
                    !nesterov || momentum > 0.0,
                    "optimizer.nesterov",
                    nesterov,
                    "false unless momentum > 0 (as in PyTorch)",
                )?;
            }
            Optimizer::Adam {
                beta1, beta2, epsilon, ..
            }
            | Optimizer::Adamw {
                beta1, beta2, epsilon, ..
            } => {
                check(fraction(beta1), "optimizer.beta1", beta1, "a number in [0, 1)")?;
                check(fraction(beta2), "optimizer.beta2", beta2, "a number in [0, 1)")?;
                check(
                    positive(epsilon),
                    "optimizer.epsilon",
                    epsilon,
                    "a positive finite number",
                )?;
            }
        }
        let (Optimizer::Sgd { weight_decay, .. }
        | Optimizer::Adam { weight_decay, .. }
        | Optimizer::Adamw { weight_decay, .. }) = self.optimizer;
        check(
            non_negative(weight_decay),
            "optimizer.weight_decay",
            weight_decay,
            "a finite number >= 0",
        )?;
        match self.schedule {
            Schedule::Constant => {}
            Schedule::Step { every, gamma } => {
                check(every >= 1, "schedule.every", every, "at least 1")?;
                check(positive(gamma), "schedule.gamma", gamma, "a positive finite number")?;
            }
            Schedule::Cosine { min_lr } => {
                check(
                    non_negative(min_lr) && min_lr <= self.lr,
                    "schedule.min_lr",
                    min_lr,
                    "a finite number in [0, lr]",
                )?;
            }
        }
        if let Some(c) = self.clip_grad_norm {
            check(positive(c), "clip_grad_norm", c, "a positive finite number")?;
        }
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")?;
        check(self.epochs >= 1, "epochs", self.epochs, "at least 1")?;
        if let Some(n) = self.eval_every {
            check(n >= 1, "eval_every", n, "at least 1")?;
        }
        check(self.log_every >= 1, "log_every", self.log_every, "at least 1")?;
        if let Some(classes) = &self.classes {
            let mut seen = classes.clone();
            seen.sort_unstable();
            seen.dedup();
            check(
                classes.len() >= 2 && seen.len() == classes.len() && classes.iter().all(|&c| c < 10),
                "classes",
                format!("{classes:?}"),
                "two or more distinct classes in 0..10",
            )?;
        }
        Ok(())
    }

    /// Optimiser steps the run takes, with `steps_per_epoch` batches an epoch.
    pub fn total_steps(&self, steps_per_epoch: u64) -> u64 {
        let full = steps_per_epoch * self.epochs;
        self.max_steps.map_or(full, |m| m.min(full))
    }

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
    fn unknown_top_level_keys_are_kept_for_their_owners() {
        let cfg = TrainConfig::from_toml("learning_rate = 0.1\n[optimizer]\nkind = \"sgd\"\n").unwrap();
        assert_eq!(cfg.others["learning_rate"].as_float(), Some(0.1));
        assert_eq!(cfg.lr, TrainConfig::default().lr);
        let text = toml::to_string_pretty(&cfg).unwrap();
        assert_eq!(TrainConfig::from_toml(&text).unwrap(), cfg);
    }

    #[test]
    fn typos_in_nested_tables_are_named() {
        for (text, key) in [
            ("[optimizer]\nkind = \"sgd\"\nmomentun = 0.9\n", "optimizer.momentun"),
            (
                "[schedule]\nkind = \"cosine\"\nmin_lr = 0.0\nmni_lr = 1\n",
                "schedule.mni_lr",
            ),
            (
                "[model]\narch = \"mlp\"\nactivation = { kind = \"leaky_relu\", slop = 0.2 }\n",
                "model.activation.slop",
            ),
            (
                "[model]\narch = \"mlp\"\ninit = { kind = \"he_normal\", gian = 2.0 }\n",
                "model.init.gian",
            ),
        ] {
            let err = TrainConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(&format!("unknown key `{key}`")), "{text}: {err}");
        }
        // A typo at the model table's top level names the key, not an untagged enum.
        let err = TrainConfig::from_toml("[model]\narch = \"mlp\"\ndepht = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("depht") && !err.contains("untagged"), "{err}");
        let err = TrainConfig::from_toml("[model]\npreset = \"mlp-relu-2x16\"\ndepth = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`depth` cannot stand beside `preset`"), "{err}");
        // Well-formed files still load, defaults and all.
        let ok = TrainConfig::from_toml(
            "lr = 0.05\n[optimizer]\nkind = \"sgd\"\nmomentum = 0.9\n[model]\narch = \"mlp\"\ndepth = 3\nactivation = { kind = \"leaky_relu\", slope = 0.2 }\n",
        )
        .unwrap();
        assert_eq!(ok.lr, 0.05);
        assert_eq!(TrainConfig::from_toml(&toml::to_string(&ok).unwrap()).unwrap(), ok);
    }

    #[test]
    fn invalid_values_are_refused_with_their_key() {
        let bad = |edit: fn(&mut TrainConfig)| {
            let mut c = TrainConfig::default();
            edit(&mut c);
            c.validate().unwrap_err().key
        };
        assert_eq!(bad(|c| c.lr = 0.0), "lr");
        assert_eq!(bad(|c| c.lr = f64::NAN), "lr");
        assert_eq!(bad(|c| c.clip_grad_norm = Some(-1.0)), "clip_grad_norm");
        assert_eq!(bad(|c| c.clip_grad_norm = Some(0.0)), "clip_grad_norm");
        let sgd = |momentum: f64, weight_decay: f64| Optimizer::Sgd {
            momentum,
            nesterov: false,
            weight_decay,
        };
        assert_eq!(
            bad(|c| c.optimizer = Optimizer::Sgd {
                momentum: -5.0,
                nesterov: false,
                weight_decay: 0.0
            }),
            "optimizer.momentum"
        );
        assert_eq!(
            bad(|c| c.optimizer = Optimizer::Sgd {
                momentum: f64::NAN,
                nesterov: false,
                weight_decay: 0.0
            }),
            "optimizer.momentum"
        );
        assert_eq!(
            bad(|c| c.optimizer = Optimizer::Sgd {
                momentum: 0.0,
                nesterov: false,
                weight_decay: f64::NAN
            }),
            "optimizer.weight_decay"
        );
        assert_eq!(
            bad(|c| c.optimizer = Optimizer::Sgd {
                momentum: 0.0,
                nesterov: true,
                weight_decay: 0.0
            }),
            "optimizer.nesterov"
        );
        assert_eq!(
            bad(|c| c.schedule = Schedule::Step { every: 0, gamma: 0.5 }),
            "schedule.every"
        );
        assert_eq!(bad(|c| c.batch_size = 0), "batch_size");
        assert_eq!(bad(|c| c.log_every = 0), "log_every");
        assert_eq!(bad(|c| c.classes = Some(vec![3, 3])), "classes");
        // The boundaries that are allowed.
        for c in [
            TrainConfig {
                optimizer: sgd(0.0, 0.0),
                ..Default::default()
            },
            TrainConfig {
                optimizer: sgd(0.99, 5e-4),
                clip_grad_norm: Some(1e-6),
                ..Default::default()
            },
            TrainConfig {
                max_steps: Some(0),
                ..Default::default()
            },
        ] {
            c.validate().unwrap();
        }
        let err = TrainConfig::from_toml("[optimizer]\nkind = \"sgd\"\nmomentum = -5.0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "optimizer.momentum = -5: expected a number in [0, 1)");
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
