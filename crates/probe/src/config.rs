//! What the probe is told: which steps it measures ([`ProbeSchedule`]), how
//! often a probed step also reads the weights, and where it reduces
//! ([`Reductions`]). In a run's `config.toml` these keys sit at the top level
//! beside the training's (`probe`, `probe_update_every`, `probe_reductions`);
//! [`RunConfig`] composes the two, so files written before the probe owned its
//! keys still load.

use std::fmt;
use std::str::FromStr;

use gradscope_train::{ConfigError, Invalid, TrainConfig};

/// Which optimiser steps are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProbeSchedule {
    /// Every step for the first 100 steps, then every 10th: dense where things
    /// change fast, cheap afterwards.
    #[default]
    Default,
    /// Every `n`th step (and step 0).
    Every { n: u64 },
    /// Never.
    Off,
}

impl ProbeSchedule {
    /// Whether step `step` (0-based) is probed.
    pub fn probes(&self, step: u64) -> bool {
        match *self {
            ProbeSchedule::Default => step < 100 || step.is_multiple_of(10),
            ProbeSchedule::Every { n } => step.is_multiple_of(n.max(1)),
            ProbeSchedule::Off => false,
        }
    }
}

impl fmt::Display for ProbeSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeSchedule::Default => write!(f, "default"),
            ProbeSchedule::Every { n } => write!(f, "{n}"),
            ProbeSchedule::Off => write!(f, "off"),
        }
    }
}

/// A schedule that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid probe schedule `{0}`; expected `default`, `off`, or a step interval such as `10`")]
pub struct ParseScheduleError(String);

impl FromStr for ProbeSchedule {
    type Err = ParseScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(ProbeSchedule::Default),
            "off" => Ok(ProbeSchedule::Off),
            n => n
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| ProbeSchedule::Every { n })
                .ok_or_else(|| ParseScheduleError(s.to_owned())),
        }
    }
}

/// Where a probe step's statistics are computed.
///
/// Host reads are free on flex (a borrow) and one copy on ndarray; on a GPU
/// they cost what the step's tensors weigh (the transfer itself is waited for
/// on the probe's own thread), while device reductions cost about 40 small
/// kernels per probe point whatever the size, plus one synchronous transfer
/// of the statistics (BENCHMARKS.md, "Probe overhead", has the measurements
/// behind `Auto`'s rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reductions {
    /// Host on CPU backends; on a GPU, host while a probe step reads at most
    /// [`Reductions::HOST_MAX_PER_POINT`] values per probe point, device above.
    /// Decided at the first probe step.
    #[default]
    Auto,
    /// As Burn reductions on the device (about 40 small ops per layer), read
    /// back in one transfer per probe step. The independent cross-check of
    /// the host path (test `host_and_device_reductions_agree`).
    Device,
    /// Every tensor the step needs read to the host ([`crate::host::Gather`]:
    /// in place on flex, one transaction elsewhere) and reduced there.
    Host,
}

impl Reductions {
    /// [`Reductions::Auto`]'s bound on a GPU: activation values a probe step reads per
    /// probe point (each point's output, its activation's input and `dL/dh`).
    /// Measured on an H100, host costs ~1.4 ns per value read and device ~1 ms
    /// per point: they break even near 0.7 M values per point. The bound sits
    /// between the MLPs (~0.1 M) and ResNet-20 at batch 128 (~3 M).
    pub const HOST_MAX_PER_POINT: usize = 1 << 20;
}

impl fmt::Display for Reductions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reductions::Auto => "auto",
            Reductions::Device => "device",
            Reductions::Host => "host",
        })
    }
}

impl FromStr for Reductions {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Reductions::Auto),
            "device" => Ok(Reductions::Device),
            "host" => Ok(Reductions::Host),
            _ => Err(format!("unknown reductions `{s}`; expected auto, device or host")),
        }
    }
}

/// Settings of the probe. Serialised, its fields are the top-level keys
/// `probe`, `probe_update_every` and `probe_reductions` of a run's `config.toml`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Which optimiser steps are probed (`default`, `off`, or every N).
    #[serde(rename = "probe")]
    pub schedule: ProbeSchedule,
    /// Update steps: every `update_every`th probed step (and the first) also
    /// takes the histograms of |g|, the weights' norms and the update sizes.
    ///
    /// Every other probed step measures the rest of the set, and its
    /// `grad_weight_ratio` divides by the latest weight norm. Why not at every
    /// step: the weights are the largest thing the probe reads besides the
    /// gradients, read while the next step trains, for numbers that move
    /// slowly: between two reads a weight's norm moves by at most the sum of
    /// the update:weight ratios in between (a common target is 1e-3 per step),
    /// which bounds the ratio's relative error. Set 1 for exact ratios.
    #[serde(rename = "probe_update_every")]
    pub update_every: u64,
    /// Where the statistics are reduced.
    #[serde(rename = "probe_reductions")]
    pub reductions: Reductions,
    /// Number of classes, for the initial-loss audit. Not a `config.toml`
    /// key: a gradscope run takes it from its model's head
    /// ([`crate::GradientProbe::for_run`]); a [`crate::ModelProbe`] user sets it.
    #[serde(skip)]
    pub classes: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            schedule: ProbeSchedule::Default,
            update_every: 10,
            reductions: Reductions::Auto,
            classes: 10,
        }
    }
}

impl ProbeConfig {
    /// The top-level `config.toml` keys the probe owns.
    pub const KEYS: [&'static str; 3] = ["probe", "probe_update_every", "probe_reductions"];

    /// Checks the numbers, naming the key of a bad one.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.update_every == 0 {
            return Err(Invalid {
                key: "probe_update_every",
                found: "0".into(),
                expected: "at least 1",
            });
        }
        if let ProbeSchedule::Every { n: 0 } = self.schedule {
            return Err(Invalid {
                key: "probe.n",
                found: "0".into(),
                expected: "at least 1",
            });
        }
        Ok(())
    }
}

/// A probed run's configuration: what the training does and what the probe
/// measures. `config.toml` holds both at its top level; the training keeps
/// the probe's keys among [`TrainConfig::others`] without reading them, and
/// this type is where they are told apart, so a key that neither owns is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// The training's settings (its `others` empty).
    pub train: TrainConfig,
    pub probe: ProbeConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self::new(TrainConfig::default(), ProbeConfig::default())
    }
}

impl RunConfig {
    /// Composes the two (any `others` of `train` are dropped).
    pub fn new(mut train: TrainConfig, probe: ProbeConfig) -> Self {
        train.others.clear();
        Self { train, probe }
    }

    /// Reads a `config.toml` (or a `--config` file): keys left out take their
    /// defaults; an unknown key at any depth and any unusable value are refused.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::split(TrainConfig::from_toml(text)?)
    }

    /// Takes the probe's keys out of a training configuration read from a
    /// file; any other key there belongs to no one and is refused.
    pub fn split(mut train: TrainConfig) -> Result<Self, ConfigError> {
        let others = std::mem::take(&mut train.others);
        if let Some(key) = others.keys().find(|k| !ProbeConfig::KEYS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey(key.clone()));
        }
        let probe: ProbeConfig = others
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.message().to_owned()))?;
        probe.validate()?;
        Ok(Self { train, probe })
    }

    /// The training configuration as a run directory saves it: the probe's
    /// keys among its `others`.
    pub fn joined(&self) -> TrainConfig {
        let mut train = self.train.clone();
        train.others = toml::Table::try_from(self.probe).expect("the probe's settings serialise to a table");
        train
    }

    /// Checks every value, naming its key.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.train.validate()?;
        self.probe.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_written_before_the_probe_owned_its_keys_load() {
        let old = "lr = 0.05\nprobe_update_every = 4\n\n[probe]\nkind = \"every\"\nn = 3\n\n[model]\npreset = \"mlp-relu-2x16\"\n";
        let run = RunConfig::from_toml(old).unwrap();
        assert_eq!(run.train.lr, 0.05);
        assert!(run.train.others.is_empty());
        assert_eq!(run.probe.schedule, ProbeSchedule::Every { n: 3 });
        assert_eq!(run.probe.update_every, 4);
        assert_eq!(run.probe.reductions, Reductions::Auto);
        // Saved and read back: the same configuration.
        let text = toml::to_string_pretty(&run.joined()).unwrap();
        assert!(text.contains("probe_reductions = \"auto\""), "{text}");
        assert_eq!(RunConfig::from_toml(&text).unwrap(), run);
        // Nothing given: both defaults.
        assert_eq!(RunConfig::from_toml("").unwrap(), RunConfig::default());
    }

    #[test]
    fn keys_nobody_owns_and_bad_probe_values_are_named() {
        let err = |text: &str| RunConfig::from_toml(text).unwrap_err().to_string();
        assert!(err("learning_rate = 0.1").contains("unknown key `learning_rate`"));
        assert!(err("[optimizer]\nkind = \"sgd\"\nmomentun = 0.9\n").contains("optimizer.momentun"));
        assert!(err("probe_update_every = 0").contains("probe_update_every = 0: expected at least 1"));
        assert!(err("probe = { kind = \"every\", n = 0 }").contains("probe.n"));
        let e = err("probe_reductions = \"gpu\"");
        assert!(e.contains("gpu") && e.contains("host"), "{e}");
        assert!(err("probe = { kind = \"often\" }").contains("often"));
    }

    #[test]
    fn reductions_parse_and_print() {
        for r in [Reductions::Auto, Reductions::Device, Reductions::Host] {
            assert_eq!(r.to_string().parse::<Reductions>().unwrap(), r);
        }
        assert!(
            "gpu"
                .parse::<Reductions>()
                .unwrap_err()
                .contains("auto, device or host")
        );
    }

    #[test]
    fn schedules() {
        let d = ProbeSchedule::Default;
        assert!(d.probes(0) && d.probes(99) && !d.probes(101) && d.probes(110));
        let e: ProbeSchedule = "7".parse().unwrap();
        assert!(e.probes(0) && e.probes(14) && !e.probes(15));
        assert!(!"off".parse::<ProbeSchedule>().unwrap().probes(0));
        assert!("0".parse::<ProbeSchedule>().is_err());
        assert!(
            "often"
                .parse::<ProbeSchedule>()
                .unwrap_err()
                .to_string()
                .contains("`often`")
        );
    }
}
