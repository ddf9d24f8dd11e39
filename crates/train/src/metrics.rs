//! The rows of `metrics.csv` and the run's `summary.json`.

use std::collections::BTreeMap;

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
    Interrupted,
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
    pub samples_per_s: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub final_test_loss: Option<f64>,
    pub final_test_acc: Option<f64>,
    pub best_test_acc: Option<f64>,
    pub best_test_acc_step: Option<u64>,
    pub initial_test_loss: Option<f64>,
    pub diverged: Option<Divergence>,
    pub gradscope_version: String,
    pub burn_version: String,
    pub git_commit: Option<String>,
    /// Fields contributed by observers (e.g. the probe's measured overhead).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
