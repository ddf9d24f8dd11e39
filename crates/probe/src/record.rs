//! Probe records in memory and in the run directory's `probe.csv` (tidy long
//! format: `step,layer,depth,metric,value`) and `probe_hist.csv`.

use std::collections::BTreeMap;
use std::path::Path;

use gradscope_models::ProbePoint;

use crate::metric::{Metric, Scope};
use crate::step::{HIST_BINS, HIST_LO, HIST_WIDTH};

/// Everything measured at one probe step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeRecord {
    pub step: u64,
    /// Model-wide values (`loss`).
    pub model: BTreeMap<Metric, f64>,
    /// Per probe point (by index), metric -> value.
    pub layers: Vec<BTreeMap<Metric, f64>>,
}

impl ProbeRecord {
    /// An empty record for `points` probe points.
    pub fn new(step: u64, points: usize) -> Self {
        Self {
            step,
            model: BTreeMap::new(),
            layers: vec![BTreeMap::new(); points],
        }
    }

    /// `metric` at probe point `point`, where it was measured.
    pub fn get(&self, point: usize, metric: Metric) -> Option<f64> {
        self.layers.get(point).and_then(|m| m.get(&metric)).copied()
    }

    /// The first value that is non-finite (or counts non-finite entries), in
    /// forward order, the model-wide ones first.
    pub fn first_nonfinite(&self) -> Option<(Scope, Metric, f64)> {
        if let Some((k, v)) = self.model.iter().find(|(_, v)| !v.is_finite()) {
            return Some((Scope::Model, *k, *v));
        }
        for (i, m) in self.layers.iter().enumerate() {
            if let Some((k, v)) = m
                .iter()
                .find(|(k, v)| !v.is_finite() || (k.counts_nonfinite() && **v > 0.0))
            {
                return Some((Scope::Point(i), *k, *v));
            }
        }
        None
    }

    /// The record's lines of `probe.csv`.
    pub fn csv_lines(&self, points: &[ProbePoint]) -> String {
        let mut out = String::new();
        for (k, v) in &self.model {
            out.push_str(&format!("{},model,,{k},{v}\n", self.step));
        }
        for (i, m) in self.layers.iter().enumerate() {
            for (k, v) in m {
                out.push_str(&format!(
                    "{},{},{},{k},{v}\n",
                    self.step, points[i].name, points[i].depth
                ));
            }
        }
        out
    }
}

/// Header of `probe.csv`.
pub const PROBE_HEADER: &str = "step,layer,depth,metric,value";
/// Header of `probe_hist.csv`: one row per non-empty bin; `bin_lo_log10` is the
/// bin's lower edge in log10(|g|), `zero` for exact zeros.
pub const HIST_HEADER: &str = "step,layer,depth,bin_lo_log10,count";

/// Lines of `probe_hist.csv` for one histogram.
pub fn hist_lines(step: u64, point: &ProbePoint, counts: &[f64]) -> String {
    let mut out = String::new();
    for (b, &c) in counts.iter().enumerate().filter(|(_, c)| **c > 0.0) {
        let lo = if b == HIST_BINS {
            "zero".to_owned()
        } else {
            format!("{}", HIST_LO + b as f64 * HIST_WIDTH)
        };
        out.push_str(&format!("{step},{},{},{lo},{c}\n", point.name, point.depth));
    }
    out
}

/// One histogram of `probe_hist.csv`: |g| of a layer's weights at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct GradHistogram {
    pub step: u64,
    pub layer: String,
    /// `(lower edge in log10 |g|, count)` of each non-empty bin, in file order;
    /// every bin is [`HIST_WIDTH`] decades wide.
    pub bins: Vec<(f64, f64)>,
    /// Entries that were exactly zero.
    pub zeros: f64,
}

/// Reads `probe_hist.csv` back, one [`GradHistogram`] per (step, layer);
/// a malformed line is an error naming it.
pub fn read_hist_csv(path: &Path) -> Result<Vec<GradHistogram>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: Vec<GradHistogram> = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let bad = || format!("{}:{}: expected `{HIST_HEADER}`, found `{line}`", path.display(), n + 1);
        let cols: Vec<&str> = line.split(',').collect();
        let [step, layer, _depth, lo, count] = cols[..] else {
            return Err(bad());
        };
        let step: u64 = step.parse().map_err(|_| bad())?;
        let count: f64 = count.parse().map_err(|_| bad())?;
        if out.last().is_none_or(|h| h.step != step || h.layer != layer) {
            out.push(GradHistogram {
                step,
                layer: layer.to_owned(),
                bins: Vec::new(),
                zeros: 0.0,
            });
        }
        let h = out.last_mut().expect("just pushed");
        if lo == "zero" {
            h.zeros += count;
        } else {
            h.bins.push((lo.parse().map_err(|_| bad())?, count));
        }
    }
    Ok(out)
}

/// Reads `probe.csv` back into records (for `gradscope inspect` and reports).
/// `points` gives the layer order; unknown layers are an error naming the line.
pub fn read_probe_csv(path: &Path, points: &[ProbePoint]) -> Result<Vec<ProbeRecord>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records: Vec<ProbeRecord> = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let bad = || {
            format!(
                "{}:{}: expected `{PROBE_HEADER}`, found `{line}`",
                path.display(),
                n + 1
            )
        };
        if cols.len() != 5 {
            return Err(bad());
        }
        let step: u64 = cols[0].parse().map_err(|_| bad())?;
        let value: f64 = cols[4].parse().map_err(|_| bad())?;
        if records.last().is_none_or(|r| r.step != step) {
            records.push(ProbeRecord {
                step,
                model: BTreeMap::new(),
                layers: vec![BTreeMap::new(); points.len()],
            });
        }
        let rec = records.last_mut().expect("just pushed");
        let metric: Metric = cols[3]
            .parse()
            .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        if cols[1] == "model" {
            rec.model.insert(metric, value);
        } else {
            let i = points.iter().position(|p| p.name == cols[1]).ok_or_else(bad)?;
            rec.layers[i].insert(metric, value);
        }
    }
    Ok(records)
}
