//! Reading run directories back, tolerating missing or truncated files.

use std::path::{Path, PathBuf};

use gradscope_models::ProbePoint;
use gradscope_probe::{ProbeRecord, Verdicts};
use gradscope_train::{MetricsRow, Summary, TrainConfig};

/// Everything a report needs from one run.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    /// `None` for a run probed by a `ModelProbe` in a training loop of the
    /// user's own: gradscope did not configure it.
    pub config: Option<TrainConfig>,
    pub metrics: Vec<MetricsRow>,
    pub summary: Option<Summary>,
    pub points: Vec<ProbePoint>,
    pub probe: Vec<ProbeRecord>,
    pub verdicts: Option<Verdicts>,
    /// Legend label, set by [`crate::label::assign_labels`].
    pub label: String,
}

fn parse_opt(s: &str) -> Result<Option<f64>, ()> {
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some).map_err(|_| ())
    }
}

/// Parses `metrics.csv`; a torn or malformed line ends the data with a warning.
pub fn read_metrics(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<MetricsRow>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some(MetricsRow::HEADER) {
        return Err(format!(
            "{}: expected the header `{}`",
            path.display(),
            MetricsRow::HEADER
        ));
    }
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let c: Vec<&str> = line.split(',').collect();
        let row = (|| {
            if c.len() != 9 {
                return Err(());
            }
            Ok(MetricsRow {
                step: c[0].parse().map_err(|_| ())?,
                epoch: c[1].parse().map_err(|_| ())?,
                wall_s: c[2].parse().map_err(|_| ())?,
                lr: c[3].parse().map_err(|_| ())?,
                train_loss: parse_opt(c[4])?,
                train_acc: parse_opt(c[5])?,
                test_loss: parse_opt(c[6])?,
                test_acc: parse_opt(c[7])?,
                samples_per_s: parse_opt(c[8])?,
            })
        })();
        match row {
            Ok(r) => rows.push(r),
            Err(()) => {
                warnings.push(format!(
                    "{}:{}: malformed row `{line}`; using the {} rows before it",
                    path.display(),
                    n + 2,
                    rows.len()
                ));
                break;
            }
        }
    }
    Ok(rows)
}

impl RunData {
    /// The run's seed, where gradscope configured the run.
    pub fn seed(&self) -> Option<u64> {
        self.config.as_ref().map(|c| c.seed)
    }

    /// The model's name: its preset or configuration, or for a model of the
    /// user's own, the run directory's name.
    pub fn model_label(&self) -> String {
        match &self.config {
            Some(c) => c.model.label(),
            None => self
                .dir
                .file_name()
                .map_or_else(|| "own model".to_owned(), |n| n.to_string_lossy().into_owned()),
        }
    }
}

/// Loads a run directory. Missing probe files or summary give warnings; an
/// unusable `config.toml` or a missing or unusable `metrics.csv` is an error
/// for this run. A directory without `config.toml` but with the probe's
/// `points.json` is a run probed in a training loop of the user's own.
pub fn load_run(dir: &Path, warnings: &mut Vec<String>) -> Result<RunData, String> {
    let cfg_path = dir.join(gradscope_train::run_dir::CONFIG_FILE);
    let own_loop = !cfg_path.exists() && dir.join(gradscope_train::run_dir::POINTS_FILE).exists();
    let config = if own_loop {
        None
    } else {
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        Some(toml::from_str(&text).map_err(|e| format!("{}: {e}", cfg_path.display()))?)
    };
    let metrics = read_metrics(&dir.join("metrics.csv"), warnings)?;
    if metrics.is_empty() {
        return Err(format!("{}: no metrics rows", dir.join("metrics.csv").display()));
    }
    let summary = match std::fs::read_to_string(dir.join("summary.json")) {
        Ok(t) => match serde_json::from_str(&t) {
            Ok(s) => Some(s),
            Err(e) => {
                warnings.push(format!(
                    "{}: unreadable ({e}); summary columns left empty",
                    dir.join("summary.json").display()
                ));
                None
            }
        },
        // A user's own loop has no summary: gradscope did not run it.
        Err(_) if own_loop => None,
        Err(_) => {
            warnings.push(format!(
                "{}: missing (run still going, or killed)",
                dir.join("summary.json").display()
            ));
            None
        }
    };
    let (points, probe, verdicts) = match gradscope_probe::inspect(dir) {
        Ok(ins) => (ins.points, ins.records, ins.verdicts),
        Err(e) => {
            warnings.push(format!("{e}; gradient charts skip this run"));
            (Vec::new(), Vec::new(), None)
        }
    };
    Ok(RunData {
        dir: dir.to_owned(),
        config,
        metrics,
        summary,
        points,
        probe,
        verdicts,
        label: String::new(),
    })
}
