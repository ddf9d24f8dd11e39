//! Verdicts: documented rules over the probe records, each alert carrying its
//! evidence and ranked remedies.
//!
//! | rule | fires when | threshold |
//! |---|---|---|
//! | `vanishing` | the back-propagated signal RMS (dL/dh) at the first main-path layer is below [`VANISHING_RATIO`] of the last one, or falls faster than [`ATTENUATION_DB`] dB per layer toward the input (in nets of at least [`MIN_SLOPE_LAYERS`] layers), or the first layer's grad:weight ratio is below [`VANISHING_RATIO`] of the last one's | in at least [`SUSTAIN`] of a window of [`WINDOW`] consecutive probe steps |
//! | `exploding` | the signal grows toward the input by more than 1/[`VANISHING_RATIO`] (or [`ATTENUATION_DB`] dB per layer) **and** a value went non-finite or the loss rose above 1.5x its minimum; growth alone is only a note, since BatchNorm nets legitimately show first/last ratios of 10 to 500 | same window |
//! | `dead_relu` | more than [`UNIT_FRACTION`] of a ReLU layer's units output zero for every example of every batch over a window of [`WINDOW`] probe steps | once |
//! | `saturation` | more than [`UNIT_FRACTION`] of a sigmoid/tanh layer's outputs have f'(a) below 1% of its maximum | in [`SUSTAIN`] of a window |
//!
//! The weight-gradient ratio alone is never used: it can stay near 1 while the
//! signal vanishes (ReLU with Xavier at depth 30, tanh with a tiny init).

use gradscope_models::{Activation, PointKind, ProbePoint, Regime};

use crate::record::ProbeRecord;

/// First/last signal ratio below which gradients vanish.
pub const VANISHING_RATIO: f64 = 1e-3;
/// Per-layer attenuation (in dB of signal RMS) steeper than this is vanishing.
pub const ATTENUATION_DB: f64 = 6.0;
/// The dB-per-layer rule applies to profiles of at least this many layers.
pub const MIN_SLOPE_LAYERS: usize = 4;
/// Probe steps per window.
pub const WINDOW: usize = 10;
/// Fraction of a window's steps in which a condition must hold.
pub const SUSTAIN: f64 = 0.8;
/// Fraction of a layer's units that makes it dead or saturated.
pub const UNIT_FRACTION: f64 = 0.5;

/// One alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    pub rule: String,
    pub layers: Vec<String>,
    /// First and last probe step of the window where the rule held.
    pub steps: [u64; 2],
    pub measured: f64,
    pub threshold: f64,
    pub evidence: String,
    pub remedies: Vec<String>,
}

/// Step-0 audit of one main-path layer transition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditRow {
    pub layer: String,
    /// Predicted signal gain from this layer to the one before it (toward the
    /// input): `sqrt(fan_out Var(W)) * f'_typ`, from the measured weights and the
    /// activation's typical derivative; `None` where a BatchNorm or skip sits.
    pub predicted_gain: Option<f64>,
    /// Measured ratio of signal RMS (this layer's input side / output side).
    pub measured_gain: Option<f64>,
}

/// Everything the probe concludes about a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdicts {
    /// `vanishing`, `exploding`, `unhealthy` (dead or saturated units only) or `healthy`.
    pub verdict: String,
    pub alerts: Vec<Alert>,
    pub notes: Vec<String>,
    pub audit: Vec<AuditRow>,
    /// Loss at the first probe step beside ln(classes), its value for uniform predictions.
    pub initial_loss: Option<f64>,
    pub uniform_loss: f64,
}

/// Points whose signal forms the depth profile: main path, not the head.
pub fn profile_points(points: &[ProbePoint]) -> Vec<usize> {
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.main_path && p.kind != PointKind::Head)
        .map(|(i, _)| i)
        .collect()
}

/// dB per layer of signal change from the last profile point to the first
/// (negative: it shrinks toward the input).
fn db_per_layer(first: f64, last: f64, layers: usize) -> f64 {
    20.0 * (first / last).log10() / (layers.max(2) - 1) as f64
}

/// Typical |f'| of an activation at initialisation (zero-mean pre-activations).
fn typical_derivative(act: Option<Activation>) -> Option<f64> {
    Some(match act? {
        Activation::Sigmoid => 0.25,
        Activation::Tanh | Activation::Identity => 1.0,
        Activation::Relu => 0.5f64.sqrt(),
        Activation::LeakyRelu { slope } => ((1.0 + slope * slope) / 2.0).sqrt(),
        _ => return None,
    })
}

/// Windows of `WINDOW` consecutive records where `cond` holds in at least
/// `SUSTAIN` of them; returns the first such window and the median measurement.
fn sustained(
    records: &[ProbeRecord],
    cond: impl Fn(&ProbeRecord) -> Option<f64>,
    holds: impl Fn(f64) -> bool,
) -> Option<([u64; 2], f64)> {
    let w = WINDOW.min(records.len());
    if w == 0 {
        return None;
    }
    for start in 0..=records.len() - w {
        let win = &records[start..start + w];
        let vals: Vec<f64> = win.iter().filter_map(&cond).collect();
        let hits = vals.iter().filter(|v| holds(**v)).count();
        if hits as f64 >= SUSTAIN * w as f64 {
            let mut sorted: Vec<f64> = vals.iter().copied().filter(|v| holds(*v)).collect();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            return Some(([win[0].step, win[w - 1].step], sorted[sorted.len() / 2]));
        }
    }
    None
}

/// Remedies for vanishing gradients, most supported by the evidence first.
fn vanishing_remedies(points: &[ProbePoint], records: &[ProbeRecord], profile: &[usize]) -> Vec<String> {
    let mut ranked: Vec<(u32, String)> = Vec::new();
    let acts: Vec<Activation> = profile.iter().filter_map(|&i| points[i].activation).collect();
    let saturating = acts.iter().any(|a| a.regime() == Regime::Saturating);
    let sat_frac = records.last().map_or(0.0, |r| {
        let v: Vec<f64> = profile.iter().filter_map(|&i| r.get(i, "saturated_frac")).collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    });
    if saturating {
        let why = if sat_frac > 0.2 {
            format!("{:.0}% of units are saturated", sat_frac * 100.0)
        } else {
            "sigmoid'/tanh' multiply the signal by at most 0.25/1 per layer".into()
        };
        ranked.push((
            3 + u32::from(sat_frac > 0.2),
            format!(
                "replace hidden sigmoid/tanh with ReLU or LeakyReLU, keeping sigmoid/softmax only at the output ({why})"
            ),
        ));
        if !points.iter().any(|p| p.has_norm) {
            ranked.push((
                2,
                "add BatchNorm before each activation to keep pre-activations out of saturation".into(),
            ));
        }
    }
    // Tiny initialisation: weight RMS well below Xavier's at the first probe.
    if let Some(r0) = records.first() {
        let small: Vec<String> = profile
            .iter()
            .filter_map(|&i| {
                let p = &points[i];
                let (fan_in, fan_out) = fans(p, r0.get(i, "weight_numel")?)?;
                let rms = r0.get(i, "weight_l2")? / r0.get(i, "weight_numel")?.sqrt();
                let xavier = (2.0 / (fan_in + fan_out)).sqrt();
                (rms < 0.5 * xavier).then(|| format!("{} (weight RMS {rms:.2e} vs Xavier {xavier:.2e})", p.name))
            })
            .collect();
        if !small.is_empty() {
            ranked.push((
                4,
                format!(
                    "initialise with Xavier (sigmoid/tanh) or He (ReLU): weights are too small in {}",
                    small.join(", ")
                ),
            ));
        }
    }
    let has_skips = points.iter().any(|p| p.kind == PointKind::Block);
    if !has_skips && profile.len() > 6 {
        ranked.push((
            1 + u32::from(profile.len() > 20),
            format!(
                "add residual (skip) connections: {} layers deep without an identity path",
                profile.len()
            ),
        ));
    }
    ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
    ranked.into_iter().map(|(_, r)| r).collect()
}

/// `(fan_in, fan_out)` of a point's weight from its output shape and size.
fn fans(p: &ProbePoint, numel: f64) -> Option<(f64, f64)> {
    let out_channels = *p.shape.first()? as f64;
    let fan_in = numel / out_channels;
    let receptive = if p.shape.len() == 3 { 9.0 } else { 1.0 };
    Some((fan_in, out_channels * receptive))
}

/// Applies every rule to `records` (in step order) of a network with `points`.
pub fn judge(points: &[ProbePoint], records: &[ProbeRecord], classes: usize) -> Verdicts {
    let profile = profile_points(points);
    let mut alerts = Vec::new();
    let mut notes = Vec::new();
    let names = |idx: &[usize]| idx.iter().map(|&i| points[i].name.clone()).collect::<Vec<_>>();
    if profile.len() >= 2 {
        let (first, last) = (profile[0], profile[profile.len() - 1]);
        let ratio = |r: &ProbeRecord| Some(r.get(first, "signal_rms")? / r.get(last, "signal_rms")?);
        let db = |r: &ProbeRecord| ratio(r).map(|x| db_per_layer(x, 1.0, profile.len()));
        let gw = |r: &ProbeRecord| Some(r.get(first, "grad_weight_ratio")? / r.get(last, "grad_weight_ratio")?);
        let vanish = sustained(records, ratio, |x| x < VANISHING_RATIO)
            .map(|w| (w, "signal_ratio", VANISHING_RATIO))
            .or_else(|| {
                // The slope rule needs depth: one sigmoid layer alone attenuates by 12 dB and is fine.
                (profile.len() >= MIN_SLOPE_LAYERS)
                    .then(|| {
                        sustained(records, db, |x| x < -ATTENUATION_DB).map(|w| (w, "db_per_layer", -ATTENUATION_DB))
                    })
                    .flatten()
            })
            .or_else(|| {
                sustained(records, gw, |x| x < VANISHING_RATIO).map(|w| (w, "grad_weight_ratio", VANISHING_RATIO))
            });
        if let Some(((steps, measured), what, threshold)) = vanish {
            let evidence = match what {
                "signal_ratio" => format!(
                    "back-propagated signal RMS at {} is {measured:.2e} of that at {} (median over the window)",
                    points[first].name, points[last].name
                ),
                "db_per_layer" => format!(
                    "signal falls {:.1} dB per layer toward the input (threshold {ATTENUATION_DB} dB)",
                    -measured
                ),
                _ => format!(
                    "grad:weight ratio at {} is {measured:.2e} of that at {}",
                    points[first].name, points[last].name
                ),
            };
            alerts.push(Alert {
                rule: "vanishing".into(),
                layers: names(&profile),
                steps,
                measured,
                threshold,
                evidence,
                remedies: vanishing_remedies(points, records, &profile),
            });
        }
        let nonfinite = records.iter().any(|r| r.first_nonfinite().is_some());
        let losses: Vec<f64> = records.iter().filter_map(|r| r.model.get("loss").copied()).collect();
        let min_loss = losses.iter().copied().fold(f64::INFINITY, f64::min);
        let rising = losses.last().is_some_and(|l| *l > 1.5 * min_loss);
        if let Some((steps, measured)) = sustained(records, ratio, |x| x > 1.0 / VANISHING_RATIO)
            .or_else(|| sustained(records, db, |x| x > ATTENUATION_DB))
        {
            if nonfinite || rising {
                alerts.push(Alert {
                    rule: "exploding".into(),
                    layers: names(&profile),
                    steps,
                    measured,
                    threshold: 1.0 / VANISHING_RATIO,
                    evidence: format!(
                        "signal grows toward the input (first/last {measured:.2e}) and {}",
                        if nonfinite {
                            "values went non-finite"
                        } else {
                            "the loss rose above 1.5x its minimum"
                        }
                    ),
                    remedies: vec![
                        "lower the learning rate".into(),
                        "clip the global gradient norm (--clip-grad-norm 1.0)".into(),
                        "use a variance-preserving initialisation (Xavier/He) and BatchNorm".into(),
                    ],
                });
            } else {
                notes.push(format!(
                    "signal grows toward the input (first/last ratio {measured:.2e}, steps {}-{}) but stays finite and the loss does not rise: not an alarm (usual with BatchNorm)",
                    steps[0], steps[1]
                ));
            }
        }
    }
    for (i, p) in points.iter().enumerate() {
        let Some(act) = p.activation else { continue };
        match act.regime() {
            Regime::Rectifying => {
                let dead = records
                    .iter()
                    .filter_map(|r| r.get(i, "dead_window_frac").map(|v| (r.step, v)))
                    .find(|(_, v)| *v > UNIT_FRACTION);
                if let Some((step, v)) = dead {
                    alerts.push(Alert {
                        rule: "dead_relu".into(),
                        layers: vec![p.name.clone()],
                        steps: [step.saturating_sub(WINDOW as u64), step],
                        measured: v,
                        threshold: UNIT_FRACTION,
                        evidence: format!(
                            "{:.0}% of {}'s units output zero for every example over {WINDOW} probe steps",
                            v * 100.0,
                            p.name
                        ),
                        remedies: vec![
                            "use LeakyReLU".into(),
                            "lower the learning rate".into(),
                            "use He initialisation and zero (not negative) biases".into(),
                        ],
                    });
                }
            }
            Regime::Saturating => {
                if let Some((steps, measured)) =
                    sustained(records, |r| r.get(i, "saturated_frac"), |x| x > UNIT_FRACTION)
                {
                    alerts.push(Alert {
                        rule: "saturation".into(),
                        layers: vec![p.name.clone()],
                        steps,
                        measured,
                        threshold: UNIT_FRACTION,
                        evidence: format!(
                            "{:.0}% of {}'s outputs have f'(a) below 1% of its maximum",
                            measured * 100.0,
                            p.name
                        ),
                        remedies: vec!["see vanishing: ReLU/LeakyReLU hidden layers, BatchNorm, Xavier init".into()],
                    });
                }
            }
            _ => {}
        }
    }
    let verdict = if alerts.iter().any(|a| a.rule == "vanishing") {
        "vanishing"
    } else if alerts.iter().any(|a| a.rule == "exploding") {
        "exploding"
    } else if alerts.is_empty() {
        "healthy"
    } else {
        "unhealthy"
    };
    Verdicts {
        verdict: verdict.into(),
        alerts,
        notes,
        audit: audit(points, records.first(), &profile),
        initial_loss: records.first().and_then(|r| r.model.get("loss").copied()),
        uniform_loss: (classes.max(2) as f64).ln(),
    }
}

/// Predicted versus measured per-layer signal gain at the first probe step.
fn audit(points: &[ProbePoint], first: Option<&ProbeRecord>, profile: &[usize]) -> Vec<AuditRow> {
    let Some(r) = first else { return Vec::new() };
    profile
        .windows(2)
        .map(|w| {
            let (lo, hi) = (w[0], w[1]);
            let p = &points[hi];
            let measured_gain = r
                .get(lo, "signal_rms")
                .zip(r.get(hi, "signal_rms"))
                .map(|(a, b)| a / b)
                .filter(|g| g.is_finite());
            let predicted_gain = (p.kind == PointKind::Dense && !p.has_norm)
                .then(|| {
                    let numel = r.get(hi, "weight_numel")?;
                    let var = r.get(hi, "weight_l2")?.powi(2) / numel;
                    let fan_out = *p.shape.first()? as f64;
                    Some((fan_out * var).sqrt() * typical_derivative(p.activation)?)
                })
                .flatten();
            AuditRow {
                layer: p.name.clone(),
                predicted_gain,
                measured_gain,
            }
        })
        .collect()
}
