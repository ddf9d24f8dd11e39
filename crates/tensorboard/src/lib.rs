//! gradscope-tensorboard owns the TensorBoard view of a run directory: it reads
//! what the train and probe crates wrote (through gradscope-report's loader) and
//! writes a TensorBoard event file into the run directory, so that
//! `tensorboard --logdir runs` shows gradscope runs, named after their
//! directories, beside any other. It never
//! trains, probes or judges, and it changes nothing else in a run directory.
//!
//! What a run becomes (TensorBoard groups tags by the part before `/`):
//! - `loss/train`, `loss/test`, `accuracy/train`, `accuracy/test`, `lr`,
//!   `samples_per_s` from `metrics.csv`;
//! - per probed layer, from `probe.csv`: `grad_norm/LAYER` (||dL/dW||),
//!   `signal_rms/LAYER` (RMS of the back-propagated signal dL/dh),
//!   `grad_to_weight/LAYER`, `update_to_weight/LAYER`, `dead_fraction/LAYER`,
//!   `saturated_fraction/LAYER`, `negative_fraction/LAYER`,
//!   `grad_zero_fraction/LAYER`, `skip_share/LAYER`, `activation_std/LAYER`;
//! - `grad_log10_abs/LAYER`: histograms of log10 |dL/dW| from `probe_hist.csv`
//!   (what `wandb.watch` shows; exact zeros are in `grad_zero_fraction`);
//! - from `verdicts.json`: `verdict/healthy` (1 or 0, at the last step) and
//!   `alert/RULE` (the measured value, at the step the alert starts).

pub mod event_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use event_file::{Event, Histogram, Summary, Value, write_record};
use gradscope_probe::Metric;
use gradscope_probe::step::HIST_WIDTH;
use gradscope_probe::verdict::Verdict;
use gradscope_probe::{GradHistogram, read_hist_csv};
use gradscope_report::{RunData, load_run};
use gradscope_train::run_dir::{PROBE_HIST_FILE, TENSORBOARD_PREFIX, read_start};

/// Why a run could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Run(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `probe.csv` metric -> TensorBoard tag group.
const LAYER_SCALARS: [(Metric, &str); 10] = [
    (Metric::GradL2, "grad_norm"),
    (Metric::SignalRms, "signal_rms"),
    (Metric::GradWeightRatio, "grad_to_weight"),
    (Metric::UpdateWeightRatio, "update_to_weight"),
    (Metric::DeadFrac, "dead_fraction"),
    (Metric::SaturatedFrac, "saturated_fraction"),
    (Metric::NegativeFrac, "negative_fraction"),
    (Metric::GradZeroFrac, "grad_zero_fraction"),
    (Metric::SkipShare, "skip_share"),
    (Metric::ActStd, "activation_std"),
];

/// The file name gradscope gives its event file.
fn file_name(start_unix: i64) -> String {
    format!("{TENSORBOARD_PREFIX}{start_unix}.gradscope")
}

/// Writes (or rewrites, after a resume) the run's TensorBoard event file and
/// returns its path. An earlier gradscope event file of the run is replaced;
/// event files other programs wrote there are left alone.
pub fn export(dir: &Path) -> Result<PathBuf, ExportError> {
    let mut warnings = Vec::new();
    let run = load_run(dir, &mut warnings).map_err(ExportError::Run)?;
    let hist_path = dir.join(PROBE_HIST_FILE);
    let hists = if hist_path.exists() {
        read_hist_csv(&hist_path).map_err(ExportError::Run)?
    } else {
        Vec::new()
    };
    let start = start_time(dir);
    let events = events(&run, &hists, start);
    let path = dir.join(file_name(start.floor() as i64));
    // Written aside and renamed, so a reader never sees half a file.
    let mut tmp = tempfile::Builder::new()
        .prefix(".events")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    for e in &events {
        write_record(&mut tmp, e).map_err(io(tmp.path()))?;
    }
    // Readable by others, as the run's other files are (not a temp file's 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(mode).map_err(io(tmp.path()))?;
    }
    tmp.persist(&path).map_err(|e| ExportError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TENSORBOARD_PREFIX) && name.ends_with(".gradscope") && entry.path() != path {
            std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    Ok(path)
}

/// Unix time at which the run started (its `start` event), else now.
fn start_time(dir: &Path) -> f64 {
    read_start(dir).map_or_else(|| chrono::Utc::now().timestamp_millis() as f64 / 1000.0, |s| s.unix_s)
}

/// Seconds into the run at `step`, interpolated between logged rows.
fn seconds_at(run: &RunData, step: u64) -> f64 {
    let rows = &run.metrics;
    match rows.iter().position(|m| m.step >= step) {
        Some(0) | None if rows.is_empty() => 0.0,
        Some(0) => rows[0].wall_s,
        None => rows.last().map_or(0.0, |m| m.wall_s),
        Some(k) => {
            let (a, b) = (&rows[k - 1], &rows[k]);
            let f = (step - a.step) as f64 / (b.step - a.step).max(1) as f64;
            a.wall_s + f * (b.wall_s - a.wall_s)
        }
    }
}

fn scalar(tag: String, v: f64) -> Option<Value> {
    v.is_finite().then_some(Value {
        tag,
        simple_value: Some(v as f32),
        histo: None,
    })
}

/// A histogram of log10 |g| with every bin from the first non-empty one to the
/// last (TensorBoard reads a bucket as reaching down to the previous limit, so
/// empty bins in between must be present).
fn histogram(h: &GradHistogram) -> Option<Histogram> {
    let lo = h.bins.iter().map(|b| b.0).fold(f64::INFINITY, f64::min);
    let hi = h.bins.iter().map(|b| b.0).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return None;
    }
    let n = ((hi - lo) / HIST_WIDTH).round() as usize + 1;
    let mut bucket = vec![0.0; n];
    for &(edge, count) in &h.bins {
        bucket[((edge - lo) / HIST_WIDTH).round() as usize] += count;
    }
    let centre = |i: usize| lo + (i as f64 + 0.5) * HIST_WIDTH;
    Some(Histogram {
        min: lo,
        max: hi + HIST_WIDTH,
        num: bucket.iter().sum(),
        sum: bucket.iter().enumerate().map(|(i, c)| c * centre(i)).sum(),
        sum_squares: bucket.iter().enumerate().map(|(i, c)| c * centre(i).powi(2)).sum(),
        bucket_limit: (0..n).map(|i| lo + (i + 1) as f64 * HIST_WIDTH).collect(),
        bucket,
    })
}

/// Every event of a run, one per step, after the file-version header.
fn events(run: &RunData, hists: &[GradHistogram], start: f64) -> Vec<Event> {
    let mut by_step: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for m in &run.metrics {
        let values = by_step.entry(m.step).or_default();
        for (tag, v) in [
            ("loss/train", m.train_loss),
            ("loss/test", m.test_loss),
            ("accuracy/train", m.train_acc),
            ("accuracy/test", m.test_acc),
            ("samples_per_s", m.samples_per_s),
        ] {
            values.extend(v.and_then(|v| scalar(tag.into(), v)));
        }
        values.extend(scalar("lr".into(), m.lr));
    }
    for rec in &run.probe {
        let values = by_step.entry(rec.step).or_default();
        for (i, point) in run.points.iter().enumerate() {
            for (metric, group) in LAYER_SCALARS {
                if let Some(v) = rec.get(i, metric) {
                    values.extend(scalar(format!("{group}/{}", point.name), v));
                }
            }
        }
    }
    for h in hists {
        if let Some(histo) = histogram(h) {
            by_step.entry(h.step).or_default().push(Value {
                tag: format!("grad_log10_abs/{}", h.layer),
                simple_value: None,
                histo: Some(histo),
            });
        }
    }
    if let Some(verdicts) = &run.verdicts {
        let last = by_step.keys().next_back().copied().unwrap_or(0);
        let healthy = if verdicts.verdict == Verdict::Healthy { 1.0 } else { 0.0 };
        by_step
            .entry(last)
            .or_default()
            .extend(scalar("verdict/healthy".into(), healthy));
        for alert in &verdicts.alerts {
            let rule = alert.rule.as_str();
            by_step
                .entry(alert.steps[0])
                .or_default()
                .extend(scalar(format!("alert/{rule}"), alert.measured));
        }
    }
    let mut events = vec![Event {
        wall_time: start,
        step: 0,
        file_version: Some("brain.Event:2".into()),
        summary: None,
    }];
    events.extend(
        by_step
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(step, value)| Event {
                wall_time: start + seconds_at(run, step),
                step: step as i64,
                file_version: None,
                summary: Some(Summary { value }),
            }),
    );
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_fills_empty_bins_between() {
        let h = GradHistogram {
            step: 3,
            layer: "hidden.0".into(),
            bins: vec![(-3.0, 2.0), (-1.5, 1.0)],
            zeros: 4.0,
        };
        let p = histogram(&h).unwrap();
        assert_eq!(p.bucket, vec![2.0, 0.0, 0.0, 1.0]);
        assert_eq!(p.bucket_limit, vec![-2.5, -2.0, -1.5, -1.0]);
        assert_eq!((p.min, p.max, p.num), (-3.0, -1.0, 3.0));
        assert!((p.sum - (2.0 * -2.75 + -1.25)).abs() < 1e-12);
        let empty = GradHistogram { bins: vec![], ..h };
        assert_eq!(histogram(&empty), None, "only zeros: no histogram");
    }
}
