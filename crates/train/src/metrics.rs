//! The rows of `metrics.csv` and the run's `summary.json`.

use std::collections::BTreeMap;

use crate::files::json_float;

/// One logged step. Train columns average the steps since the previous row;
/// test columns are empty where the step was not evaluated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    /// Fractional epochs completed (`step / steps_per_epoch`).
    pub epoch: f64,
    /// Seconds since the run started (resumed runs continue the count).
    pub wall_s: f64,
    pub lr: f64,
    pub train_loss: Option<f64>,
    pub train_acc: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_acc: Option<f64>,
    /// Training throughput over the steps since the previous row.
    pub samples_per_s: Option<f64>,
}

impl MetricsRow {
    /// The CSV header line.
    pub const HEADER: &'static str = "step,epoch,wall_s,lr,train_loss,train_acc,test_loss,test_acc,samples_per_s";

    /// The row as one CSV line (no newline).
    pub fn to_csv(&self) -> String {
        let opt = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
        format!(
            "{},{:.4},{:.3},{},{},{},{},{},{}",
            self.step,
            self.epoch,
            self.wall_s,
            self.lr,
            opt(self.train_loss),
            opt(self.train_acc),
            opt(self.test_loss),
            opt(self.test_acc),
            self.samples_per_s.map(|x| format!("{x:.1}")).unwrap_or_default()
        )
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Completed,
    Diverged,
    /// Stopped (Ctrl-C, SIGTERM, or an error such as a full disk) after a
    /// checkpoint: `gradscope train --resume` continues it.
    Interrupted,
    /// Stopped by an error before any checkpoint: nothing to resume.
    Failed,
}

/// Where and how a run diverged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Divergence {
    pub step: u64,
    pub cause: String,
}

/// Final and best numbers of a run, with what produced them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub status: Status,
    pub model: String,
    pub dataset: String,
    pub backend: String,
    pub seed: u64,
    pub steps: u64,
    pub epochs: f64,
    pub wall_s: f64,
    #[serde(default, with = "json_float::option")]
    pub samples_per_s: Option<f64>,
    #[serde(default, with = "json_float::option")]
    pub final_train_loss: Option<f64>,
    #[serde(default, with = "json_float::option")]
    pub final_test_loss: Option<f64>,
    #[serde(default, with = "json_float::option")]
    pub final_test_acc: Option<f64>,
    #[serde(default, with = "json_float::option")]
    pub best_test_acc: Option<f64>,
    pub best_test_acc_step: Option<u64>,
    #[serde(default, with = "json_float::option")]
    pub initial_test_loss: Option<f64>,
    pub diverged: Option<Divergence>,
    /// The error that stopped an `interrupted` or `failed` run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub gradscope_version: String,
    pub burn_version: String,
    pub git_commit: Option<String>,
    /// Median step times of this process, unprobed and probed.
    #[serde(default)]
    pub step_seconds: StepSeconds,
    /// Fields contributed by observers (e.g. the probe's measured overhead).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Wall time of every optimiser step of this process, split by whether an
/// observer probed it: the run's own paired measure of what probing costs,
/// taps and all. (On GPU backends a step's time is its submission plus any
/// wait it triggers; per-step splits there are indicative.)
#[derive(Debug, Clone, Default)]
pub struct StepTimes {
    plain: Vec<f64>,
    probed: Vec<f64>,
}

impl StepTimes {
    pub fn record(&mut self, probed: bool, seconds: f64) {
        if probed { &mut self.probed } else { &mut self.plain }.push(seconds);
    }

    /// Median seconds and count of the unprobed and of the probed steps.
    pub fn medians(&self) -> [Option<MedianTime>; 2] {
        let of = |v: &[f64]| {
            median(&mut v.to_vec()).map(|seconds| MedianTime {
                seconds,
                steps: v.len(),
            })
        };
        [of(&self.plain), of(&self.probed)]
    }

    /// For `summary.json`: medians and counts of both kinds of step.
    pub fn seconds(&self) -> StepSeconds {
        let [plain, probed] = self.medians();
        StepSeconds {
            plain_median_s: plain.map(|p| p.seconds),
            plain_steps: plain.map_or(0, |p| p.steps),
            probed_median_s: probed.map(|p| p.seconds),
            probed_steps: probed.map_or(0, |p| p.steps),
        }
    }
}

/// A run's [`StepTimes`] in brief, as `summary.json` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepSeconds {
    #[serde(default, with = "json_float::option")]
    pub plain_median_s: Option<f64>,
    #[serde(default)]
    pub plain_steps: usize,
    #[serde(default, with = "json_float::option")]
    pub probed_median_s: Option<f64>,
    #[serde(default)]
    pub probed_steps: usize,
}

impl StepSeconds {
    /// What a probed step costs over an unprobed one: the ratio of their
    /// medians minus 1; `None` without both kinds of step.
    pub fn probe_overhead(&self) -> Option<f64> {
        match (self.plain_median_s, self.probed_median_s) {
            (Some(plain), Some(probed)) if plain > 0.0 => Some(probed / plain - 1.0),
            _ => None,
        }
    }
}

/// The median of `v` (the upper one for an even count; NaN sorts last), or
/// `None` when it is empty. Sorts `v` in place.
pub fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The median duration of one kind of step, and how many there were.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianTime {
    pub seconds: f64,
    pub steps: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_times_split_by_probe() {
        let mut t = StepTimes::default();
        for (probed, s) in [(false, 1.0), (true, 3.0), (false, 2.0), (false, 9.0), (true, 4.0)] {
            t.record(probed, s);
        }
        let m = |seconds, steps| Some(MedianTime { seconds, steps });
        assert_eq!(t.medians(), [m(2.0, 3), m(4.0, 2)]);
        let s = t.seconds();
        assert_eq!((s.probed_steps, s.probed_median_s), (2, Some(4.0)));
        assert_eq!(s.probe_overhead(), Some(1.0));
        assert_eq!(StepTimes::default().medians(), [None, None]);
        assert_eq!(StepTimes::default().seconds().probe_overhead(), None);
    }

    #[test]
    fn csv_row_leaves_missing_values_empty() {
        let row = MetricsRow {
            step: 10,
            epoch: 0.15,
            wall_s: 1.23456,
            lr: 0.1,
            train_loss: Some(2.5),
            train_acc: Some(0.125),
            test_loss: None,
            test_acc: None,
            samples_per_s: Some(1234.56),
        };
        assert_eq!(row.to_csv(), "10,0.1500,1.235,0.1,2.5,0.125,,,1234.6");
        assert_eq!(MetricsRow::HEADER.split(',').count(), row.to_csv().split(',').count());
    }
}
