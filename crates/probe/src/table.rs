//! The per-layer table printed at the end of training and by `gradscope inspect`.

use std::path::Path;

use gradscope_models::{PointKind, ProbePoint, Regime};

use crate::metric::Metric;
use crate::record::{ProbeRecord, read_probe_csv};
use crate::verdict::Verdicts;

/// Why a run's probe files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{dir} is not a gradscope run (no config.toml, no points.json)")]
    NotARun { dir: String },
    #[error("{dir}: no probe data (was the run trained with --probe off?)")]
    NoProbe { dir: String },
}

/// The probe's view of a finished (or interrupted) run.
pub struct Inspection {
    pub points: Vec<ProbePoint>,
    pub records: Vec<ProbeRecord>,
    pub verdicts: Option<Verdicts>,
}

/// Reads `points.json`, `probe.csv` and (if present) `verdicts.json` of a run.
pub fn inspect(dir: &Path) -> Result<Inspection, InspectError> {
    let file_err = |p: &Path, reason: String| InspectError::File {
        path: p.display().to_string(),
        reason,
    };
    let points_path = dir.join(gradscope_train::run_dir::POINTS_FILE);
    // A run of `gradscope train` has a config.toml; one of a `ModelProbe` in
    // a loop of the user's own has only the probe's files.
    if !dir.join(gradscope_train::run_dir::CONFIG_FILE).exists() && !points_path.exists() {
        return Err(InspectError::NotARun {
            dir: dir.display().to_string(),
        });
    }
    if !points_path.exists() {
        return Err(InspectError::NoProbe {
            dir: dir.display().to_string(),
        });
    }
    let text = std::fs::read_to_string(&points_path).map_err(|e| file_err(&points_path, e.to_string()))?;
    let points: Vec<ProbePoint> = serde_json::from_str(&text).map_err(|e| file_err(&points_path, e.to_string()))?;
    let records = read_probe_csv(&dir.join(gradscope_train::run_dir::PROBE_FILE), &points).map_err(|reason| {
        InspectError::File {
            path: dir.join("probe.csv").display().to_string(),
            reason,
        }
    })?;
    let vpath = dir.join(gradscope_train::run_dir::VERDICTS_FILE);
    let verdicts = match std::fs::read_to_string(&vpath) {
        Ok(t) => Some(serde_json::from_str(&t).map_err(|e| file_err(&vpath, e.to_string()))?),
        Err(_) => None,
    };
    Ok(Inspection {
        points,
        records,
        verdicts,
    })
}

/// A factor with three significant digits, in scientific notation when tiny or huge.
fn ratio(x: f64) -> String {
    if (1e-3..1e3).contains(&x.abs()) {
        format!("{x:.3}").trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        format!("{x:.1e}")
    }
}

fn sci(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2e}"))
}

/// Renders the per-layer table: signal and weight-gradient norms at the first
/// and last probe step, saturated or dead units at the end, and the alerts.
pub fn render(ins: &Inspection) -> String {
    let (Some(first), Some(last)) = (ins.records.first(), ins.records.last()) else {
        return "no probe records\n".into();
    };
    let mut out = format!(
        "{:<24} {:>11} {:>11} {:>9} {:>11} {:>11} {:>12}  alerts\n",
        "layer",
        format!("dL/dh@{}", first.step),
        format!("dL/dh@{}", last.step),
        "x/layer",
        format!("|gW|@{}", first.step),
        format!("|gW|@{}", last.step),
        "sat/dead %"
    );
    for (i, p) in ins.points.iter().enumerate() {
        let regime = p.activation.map(|a| a.regime());
        let units = match regime {
            Some(Regime::Saturating) => last
                .get(i, Metric::SaturatedFrac)
                .map(|v| format!("sat {:.0}", v * 100.0)),
            Some(Regime::Rectifying) => last.get(i, Metric::DeadFrac).map(|v| format!("dead {:.0}", v * 100.0)),
            _ => None,
        };
        let alerts: Vec<&str> = ins
            .verdicts
            .iter()
            .flat_map(|v| &v.alerts)
            .filter(|a| a.layers.contains(&p.name) && (a.layers.len() == 1 || i == first_layer(ins, a)))
            .map(|a| a.rule.as_str())
            .collect();
        let name = if p.kind == PointKind::Block {
            format!("{} (+skip)", p.name)
        } else {
            p.name.clone()
        };
        // How the signal changes on its way down from the next main-path
        // layer toward the output to this one, at the first probed step.
        let next = ins.points[i + 1..].iter().position(|q| q.main_path).map(|k| i + 1 + k);
        let factor = match (
            p.main_path,
            first.get(i, Metric::SignalRms),
            next.and_then(|n| first.get(n, Metric::SignalRms)),
        ) {
            (true, Some(here), Some(above)) if above > 0.0 => format!("x{}", ratio(here / above)),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<24} {:>11} {:>11} {:>9} {:>11} {:>11} {:>12}  {}\n",
            name,
            sci(first.get(i, Metric::SignalRms)),
            sci(last.get(i, Metric::SignalRms)),
            factor,
            sci(first.get(i, Metric::GradL2)),
            sci(last.get(i, Metric::GradL2)),
            units.unwrap_or_else(|| "-".into()),
            alerts.join(", ")
        ));
    }
    out.push_str(&format!(
        "(dL/dh@S: RMS of the back-propagated signal at step S, the first and last probed step; x/layer: dL/dh here over \
         dL/dh at the next layer toward the output, at step {} (below 1: the signal shrinks on its way to the input); \
         |gW|@S: L2 norm of the layer's weight gradient; sat/dead %: units saturated (sigmoid/tanh) or dead (ReLU: zero for every example) at \
         step {}; +skip: a residual block's output; alerts: the rules that fired on the layer)\n",
        first.step,
        last.step
    ));
    if let Some(v) = &ins.verdicts {
        out.push_str(&format!("\nverdict: {}\n", v.verdict));
        for a in &v.alerts {
            out.push_str(&format!(
                "- {} (steps {}-{}): {}\n",
                a.rule, a.steps[0], a.steps[1], a.evidence
            ));
            let shown = v
                .alerts
                .iter()
                .take_while(|b| !std::ptr::eq(*b, a))
                .any(|b| b.remedies == a.remedies);
            if shown && !a.remedies.is_empty() {
                out.push_str("    (remedies as above)\n");
                continue;
            }
            for (k, r) in a.remedies.iter().enumerate() {
                out.push_str(&format!("    {}. {r}\n", k + 1));
            }
        }
        for n in &v.notes {
            out.push_str(&format!("- note: {n}\n"));
        }
        if let Some(a) = &v.attenuation {
            out.push_str(&a.describe());
            out.push('\n');
        }
        if let Some(l) = v.initial_loss {
            out.push_str(&format!(
                "initial loss {l:.4} (uniform prediction: ln {} = {:.4})\n",
                (v.uniform_loss.exp()).round(),
                v.uniform_loss
            ));
        }
    }
    out
}

fn first_layer(ins: &Inspection, a: &crate::verdict::Alert) -> usize {
    a.layers
        .first()
        .and_then(|n| ins.points.iter().position(|p| &p.name == n))
        .unwrap_or(usize::MAX)
}
