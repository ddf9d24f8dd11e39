//! Backend parity: the same run on several backends, compared step by step.

use std::path::Path;

use crate::metric::Metric;
use crate::record::read_probe_csv;
use crate::table::inspect;

/// One backend's run, read back from its run directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendRun {
    pub backend: String,
    /// Training loss per step (from `metrics.csv` logged every step).
    pub losses: Vec<(u64, f64)>,
    pub samples_per_s: Option<f64>,
}

/// Where two backends first disagree beyond the tolerance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Divergence {
    pub step: u64,
    pub quantity: String,
    pub layer: Option<String>,
    pub reference: f64,
    pub other: f64,
    pub relative: f64,
}

/// The comparison of one backend against the reference.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParityRow {
    pub backend: String,
    pub max_loss_rel_diff: f64,
    pub max_grad_rel_diff: f64,
    pub first_divergence: Option<Divergence>,
    pub samples_per_s: Option<f64>,
}

fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs()).max(1e-30)
    }
}

/// Reads the per-step losses and throughput of a run directory.
pub fn read_run(dir: &Path, backend: &str) -> Result<BackendRun, String> {
    let path = dir.join("metrics.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut losses = Vec::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        if let (Some(step), Some(loss)) = (
            c.first().and_then(|s| s.parse().ok()),
            c.get(4).and_then(|s| s.parse().ok()),
        ) {
            losses.push((step, loss));
        }
    }
    let summary: serde_json::Value = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    Ok(BackendRun {
        backend: backend.to_owned(),
        losses,
        samples_per_s: summary["samples_per_s"].as_f64(),
    })
}

/// Compares each run against the first: per-step loss and per-layer weight
/// gradient norms (`grad_l2` in `probe.csv`), reporting the first step and layer
/// where the relative difference exceeds `tol`.
pub fn compare(dirs: &[(String, &Path)], tol: f64) -> Result<Vec<ParityRow>, String> {
    let (ref_name, ref_dir) = dirs.first().ok_or("no runs to compare")?;
    let reference = read_run(ref_dir, ref_name)?;
    let ref_probe = inspect(ref_dir).map_err(|e| e.to_string())?;
    let mut rows = vec![ParityRow {
        backend: ref_name.clone(),
        max_loss_rel_diff: 0.0,
        max_grad_rel_diff: 0.0,
        first_divergence: None,
        samples_per_s: reference.samples_per_s,
    }];
    for (name, dir) in &dirs[1..] {
        let run = read_run(dir, name)?;
        let other = read_probe_csv(&dir.join("probe.csv"), &ref_probe.points)?;
        let mut first: Option<Divergence> = None;
        let mut max_loss = 0.0f64;
        for ((step, a), (_, b)) in reference.losses.iter().zip(&run.losses) {
            let r = rel(*a, *b);
            max_loss = max_loss.max(r);
            if r > tol && first.as_ref().is_none_or(|f| f.step > *step) {
                first = Some(Divergence {
                    step: *step,
                    quantity: "train_loss".into(),
                    layer: None,
                    reference: *a,
                    other: *b,
                    relative: r,
                });
            }
        }
        let mut max_grad = 0.0f64;
        for (ra, rb) in ref_probe.records.iter().zip(&other) {
            for (i, p) in ref_probe.points.iter().enumerate() {
                if let (Some(a), Some(b)) = (ra.get(i, Metric::GradL2), rb.get(i, Metric::GradL2)) {
                    let r = rel(a, b);
                    max_grad = max_grad.max(r);
                    if r > tol && first.as_ref().is_none_or(|f| f.step > ra.step) {
                        first = Some(Divergence {
                            step: ra.step,
                            quantity: Metric::GradL2.name().into(),
                            layer: Some(p.name.clone()),
                            reference: a,
                            other: b,
                            relative: r,
                        });
                    }
                }
            }
        }
        rows.push(ParityRow {
            backend: name.clone(),
            max_loss_rel_diff: max_loss,
            max_grad_rel_diff: max_grad,
            first_divergence: first,
            samples_per_s: run.samples_per_s,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::rel;

    #[test]
    fn relative_difference() {
        assert_eq!(rel(1.0, 1.0), 0.0);
        assert!((rel(1.0, 1.0001) - 1e-4).abs() < 1e-8);
        assert_eq!(rel(0.0, 0.0), 0.0);
    }
}
