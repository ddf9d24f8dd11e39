//! Verdicts: documented rules over the probe records, each alert carrying its
//! evidence and ranked remedies.
//!
//! | rule | fires when | threshold |
//! |---|---|---|
//! | `diverged` | the run stopped on a non-finite loss or probe value | outranks every other verdict |
//! | `forward_explosion` | the forward activations' RMS grows from the first main-path layer to the last by more than [`FORWARD_GROWTH`] at the first probe step | once |
//! | `initial_loss` | the loss at the first probe step is above [`INITIAL_LOSS_FACTOR`] x ln(classes), the loss of uniform predictions | once |
//! | `vanishing` | the back-propagated signal RMS (dL/dh) at the first main-path layer is below [`VANISHING_RATIO`] of the last one, or falls faster than [`ATTENUATION_DB`] dB per layer toward the input (in nets of at least [`MIN_SLOPE_LAYERS`] layers), or the first layer's grad:weight ratio is below [`VANISHING_RATIO`] of the last one's | in at least [`SUSTAIN`] of a window of [`WINDOW`] consecutive probe steps |
//! | `exploding` | the signal grows toward the input by more than 1/[`VANISHING_RATIO`] (or [`ATTENUATION_DB`] dB per layer) **and** a value went non-finite or the loss rose above 1.5x its minimum; growth alone is only a note, since BatchNorm nets legitimately show first/last ratios of 10 to 500 | same window |
//! | `dead_relu` | more than [`UNIT_FRACTION`] of a ReLU layer's units output zero for every example of every batch over a window of [`WINDOW`] probe steps | once |
//! | `saturation` | more than [`UNIT_FRACTION`] of a sigmoid/tanh layer's outputs have f'(a) below 1% of its maximum | in [`SUSTAIN`] of a window |
//!
//! The weight-gradient ratio alone is never used: it can stay near 1 while the
//! signal vanishes (ReLU with Xavier at depth 30, tanh with a tiny init).

use gradscope_models::{Activation, PointKind, ProbePoint, Regime};
use gradscope_train::files::json_float;
use gradscope_train::metrics::Divergence;

use crate::metric::{Metric, Scope};
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
/// Growth of the forward activations' RMS from the first main-path layer to
/// the last (40 dB) above which the net starts out exploding: a
/// variance-preserving net keeps it near 1 (He for ReLU) or below (sigmoid).
pub const FORWARD_GROWTH: f64 = 100.0;
/// Initial loss, in multiples of ln(classes), above which the outputs start
/// far too large (a well-initialised classifier starts near 1x).
pub const INITIAL_LOSS_FACTOR: f64 = 4.0;

/// What a rule looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Diverged,
    ForwardExplosion,
    InitialLoss,
    Vanishing,
    Exploding,
    DeadRelu,
    Saturation,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Diverged => "diverged",
            Rule::ForwardExplosion => "forward_explosion",
            Rule::InitialLoss => "initial_loss",
            Rule::Vanishing => "vanishing",
            Rule::Exploding => "exploding",
            Rule::DeadRelu => "dead_relu",
            Rule::Saturation => "saturation",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's overall verdict, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The run stopped on non-finite values.
    Diverged,
    Vanishing,
    /// Gradients or forward activations blow up.
    Exploding,
    /// Dead or saturated units only.
    Unhealthy,
    Healthy,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Diverged => "diverged",
            Verdict::Vanishing => "vanishing",
            Verdict::Exploding => "exploding",
            Verdict::Unhealthy => "unhealthy",
            Verdict::Healthy => "healthy",
        }
    }

    /// The verdict that a set of alerts gives.
    pub fn of(alerts: &[Alert]) -> Self {
        alerts
            .iter()
            .map(|a| match a.rule {
                Rule::Diverged => Verdict::Diverged,
                Rule::Vanishing => Verdict::Vanishing,
                Rule::Exploding | Rule::ForwardExplosion | Rule::InitialLoss => Verdict::Exploding,
                Rule::DeadRelu | Rule::Saturation => Verdict::Unhealthy,
            })
            .min()
            .unwrap_or(Verdict::Healthy)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    pub rule: Rule,
    pub layers: Vec<String>,
    /// First and last probe step of the window where the rule held.
    pub steps: [u64; 2],
    /// Non-finite values are written as the strings "inf", "-inf", "nan".
    #[serde(with = "json_float")]
    pub measured: f64,
    #[serde(with = "json_float")]
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
    #[serde(default, with = "json_float::option")]
    pub predicted_gain: Option<f64>,
    /// Measured ratio of signal RMS (this layer's input side / output side).
    #[serde(default, with = "json_float::option")]
    pub measured_gain: Option<f64>,
}

/// How much the back-propagated signal shrinks (or grows) per layer on its way
/// to the input: the measurement behind "each sigmoid layer multiplies the
/// gradient by sigmoid'(x) <= 0.25".
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attenuation {
    /// Main-path layers the factor spans (the head excluded).
    pub layers: usize,
    /// Geometric mean of the signal-RMS ratios of neighbouring layers (toward
    /// the input) at the first probe step: `(first / last)^(1 / (layers - 1))`.
    #[serde(with = "json_float")]
    pub per_layer: f64,
    /// The same factor, median over every probe step of the run.
    #[serde(with = "json_float")]
    pub per_layer_median: f64,
    /// The activations' own share at the first probe step: `||f'(a) * g|| / ||g||`
    /// at each layer, geometric mean over the layers.
    #[serde(default, with = "json_float::option")]
    pub through_activation: Option<f64>,
    /// The largest value f' takes (0.25 for sigmoid), which bounds `through_activation`.
    #[serde(default, with = "json_float::option")]
    pub derivative_bound: Option<f64>,
}

impl Attenuation {
    /// One line for people: the factor beside its bound.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "signal per layer toward the input: x{} at the first probe step, x{} median over the run ({} layers)",
            num(self.per_layer),
            num(self.per_layer_median),
            self.layers
        );
        if let Some(a) = self.through_activation {
            text.push_str(&format!("; through the activation alone x{}", num(a)));
            if let Some(b) = self.derivative_bound {
                text.push_str(&format!(" (bound: f' <= {})", num(b)));
            }
        }
        text
    }
}

/// The per-layer attenuation of `records` over the main path `profile`.
fn attenuation(points: &[ProbePoint], records: &[ProbeRecord], profile: &[usize]) -> Option<Attenuation> {
    let (&lo, &hi) = (profile.first()?, profile.last()?);
    if profile.len() < 2 {
        return None;
    }
    let per_layer = |r: &ProbeRecord| {
        let f = (r.get(lo, Metric::SignalRms)? / r.get(hi, Metric::SignalRms)?).powf(1.0 / (profile.len() - 1) as f64);
        f.is_finite().then_some(f)
    };
    let first = records.first()?;
    let mut all: Vec<f64> = records.iter().filter_map(per_layer).collect();
    all.sort_by(f64::total_cmp);
    let through: Vec<f64> = profile
        .iter()
        .filter_map(|&i| Some(first.get(i, Metric::PreactSignalL2)? / first.get(i, Metric::SignalL2)?))
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    let bound = profile
        .iter()
        .filter_map(|&i| points[i].activation.map(|a| a.max_derivative()))
        .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.max(b))));
    Some(Attenuation {
        layers: profile.len(),
        per_layer: per_layer(first)?,
        per_layer_median: *all.get(all.len() / 2)?,
        through_activation: (!through.is_empty())
            .then(|| (through.iter().map(|x| x.ln()).sum::<f64>() / through.len() as f64).exp()),
        derivative_bound: bound,
    })
}

/// Everything the probe concludes about a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdicts {
    pub verdict: Verdict,
    pub alerts: Vec<Alert>,
    pub notes: Vec<String>,
    pub audit: Vec<AuditRow>,
    /// Per-layer change of the back-propagated signal, beside its bound.
    #[serde(default)]
    pub attenuation: Option<Attenuation>,
    /// Loss at the first probe step beside ln(classes), its value for uniform predictions.
    #[serde(default, with = "json_float::option")]
    pub initial_loss: Option<f64>,
    #[serde(with = "json_float")]
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
        let v: Vec<f64> = profile
            .iter()
            .filter_map(|&i| r.get(i, Metric::SaturatedFrac))
            .collect();
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
            // Saturation is named only where the probe saw it: a deep sigmoid
            // net can vanish with every unit in the linear range.
            let why = if sat_frac > 0.2 {
                "to keep pre-activations out of saturation"
            } else {
                "to hold each layer's pre-activations at unit scale, so the gradient keeps its scale through depth"
            };
            ranked.push((2, format!("add BatchNorm before each activation {why}")));
        }
    }
    // Tiny initialisation: weight RMS well below Xavier's at the first probe.
    if let Some(r0) = records.first() {
        let small: Vec<String> = profile
            .iter()
            .filter_map(|&i| {
                let p = &points[i];
                let (fan_in, fan_out) = fans(p, r0.get(i, Metric::WeightNumel)?)?;
                let rms = r0.get(i, Metric::WeightL2)? / r0.get(i, Metric::WeightNumel)?.sqrt();
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

/// A number to three significant figures, in plain or scientific notation.
fn num(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-3..1e4).contains(&x.abs()) {
        return format!("{x:.2e}");
    }
    let digits = if x == 0.0 || !x.is_finite() {
        0
    } else {
        (2 - x.abs().log10().floor() as i32).max(0) as usize
    };
    format!("{x:.digits$}")
}

/// RMS of a point's forward output, from its mean and standard deviation.
fn act_rms(r: &ProbeRecord, point: usize) -> Option<f64> {
    let (m, s) = (r.get(point, Metric::ActMean)?, r.get(point, Metric::ActStd)?);
    Some((m * m + s * s).sqrt())
}

/// Forward growth at the first probe step: `(growth, first rms, last rms)`.
fn forward_growth(first: &ProbeRecord, profile: &[usize]) -> Option<(f64, f64, f64)> {
    let (&lo, &hi) = (profile.first()?, profile.last()?);
    let (a, b) = (act_rms(first, lo)?, act_rms(first, hi)?);
    (a > 0.0).then_some((b / a, a, b))
}

/// Remedies for a run that starts out too large or blows up, from its evidence.
fn explosion_remedies(points: &[ProbePoint], forward: bool, initial_loss: bool) -> Vec<String> {
    let mut remedies = Vec::new();
    let residual = points.iter().any(|p| p.kind == PointKind::Block);
    if forward || initial_loss {
        if residual {
            remedies.push(
                "scale down the last layer of each residual branch (zero-initialise it where no activation follows, as in ResNets) or add BatchNorm inside the blocks: without normalisation every block adds its variance to the residual stream".into(),
            );
        }
        remedies
            .push("use a variance-preserving initialisation (He for ReLU, Xavier for sigmoid/tanh) with gain 1".into());
        if !points.iter().any(|p| p.has_norm) {
            remedies.push("add BatchNorm, which rescales every layer's activations".into());
        }
    }
    remedies.push("lower the learning rate (e.g. by 10x)".into());
    remedies.push("clip the global gradient norm (--clip-grad-norm 1.0)".into());
    remedies
}

/// Applies every rule to `records` (in step order) of a network with
/// `points`; `diverged` is the trainer's account of a run that stopped on a
/// non-finite value (a loss can go non-finite between probe steps).
pub fn judge(
    points: &[ProbePoint],
    records: &[ProbeRecord],
    classes: usize,
    diverged: Option<&Divergence>,
) -> Verdicts {
    let profile = profile_points(points);
    let mut alerts = Vec::new();
    let mut notes = Vec::new();
    let uniform_loss = (classes.max(2) as f64).ln();
    let initial_loss = records.first().and_then(|r| r.model.get(&Metric::Loss).copied());
    let high_start = initial_loss
        .filter(|l| *l > INITIAL_LOSS_FACTOR * uniform_loss)
        .map(|l| (records[0].step, l));
    let growth = records
        .first()
        .and_then(|r| forward_growth(r, &profile).map(|g| (r.step, g)))
        .filter(|(_, (g, _, _))| *g > FORWARD_GROWTH);
    let nonfinite = records
        .iter()
        .find_map(|r| r.first_nonfinite().map(|(i, metric, v)| (r.step, i, metric, v)));
    // The step is the first probe record's with a non-finite value, where there
    // is one (the trainer stops a step later); the cause is the trainer's.
    let stopped = match (diverged, &nonfinite) {
        (Some(d), Some((step, ..))) => Some((*step, d.cause.clone())),
        (Some(d), None) => Some((d.step, d.cause.clone())),
        (None, Some((step, i, metric, v))) => {
            let layer = match i {
                Scope::Model => "the model",
                Scope::Point(i) => points[*i].name.as_str(),
            };
            Some((*step, format!("{metric} of {layer} is {v} at step {step}")))
        }
        (None, None) => None,
    };
    if let Some((step, cause)) = stopped {
        let mut evidence = format!("the run stopped on a non-finite value: {cause}");
        if let Some((_, l)) = high_start {
            evidence.push_str(&format!(
                "; its initial loss was {}, {:.0}x that of uniform predictions (ln {} = {uniform_loss:.3})",
                num(l),
                l / uniform_loss,
                classes.max(2)
            ));
        }
        if let Some((_, (g, a, b))) = growth {
            evidence.push_str(&format!(
                "; forward activations grew {}x from the first layer to the last at the start (RMS {} -> {})",
                num(g),
                num(a),
                num(b)
            ));
        }
        alerts.push(Alert {
            rule: Rule::Diverged,
            layers: Vec::new(),
            steps: [step, step],
            measured: step as f64,
            threshold: f64::INFINITY,
            evidence,
            remedies: explosion_remedies(points, growth.is_some(), high_start.is_some()),
        });
    }
    if let Some((step, (g, a, b))) = growth {
        alerts.push(Alert {
            rule: Rule::ForwardExplosion,
            layers: vec![
                points[profile[0]].name.clone(),
                points[profile[profile.len() - 1]].name.clone(),
            ],
            steps: [step, step],
            measured: g,
            threshold: FORWARD_GROWTH,
            evidence: format!(
                "forward activations' RMS grows {}x from {} ({}) to {} ({}) at step {step}",
                num(g),
                points[profile[0]].name,
                num(a),
                points[profile[profile.len() - 1]].name,
                num(b)
            ),
            remedies: explosion_remedies(points, true, false),
        });
    }
    if let Some((step, l)) = high_start {
        alerts.push(Alert {
            rule: Rule::InitialLoss,
            layers: Vec::new(),
            steps: [step, step],
            measured: l,
            threshold: INITIAL_LOSS_FACTOR * uniform_loss,
            evidence: format!(
                "the loss at step {step} is {}, {:.1}x ln({}) = {uniform_loss:.3} of uniform predictions: the outputs start far too large",
                num(l),
                l / uniform_loss,
                classes.max(2)
            ),
            remedies: explosion_remedies(points, growth.is_some(), true),
        });
    }
    let names = |idx: &[usize]| idx.iter().map(|&i| points[i].name.clone()).collect::<Vec<_>>();
    if profile.len() >= 2 {
        let (first, last) = (profile[0], profile[profile.len() - 1]);
        let ratio = |r: &ProbeRecord| Some(r.get(first, Metric::SignalRms)? / r.get(last, Metric::SignalRms)?);
        let db = |r: &ProbeRecord| ratio(r).map(|x| db_per_layer(x, 1.0, profile.len()));
        let gw = |r: &ProbeRecord| Some(r.get(first, Metric::GradWeightRatio)? / r.get(last, Metric::GradWeightRatio)?);
        // Which of the vanishing rule's three tests held.
        enum By {
            SignalRatio,
            DbPerLayer,
            GradWeightRatio,
        }
        let vanish = sustained(records, ratio, |x| x < VANISHING_RATIO)
            .map(|w| (w, By::SignalRatio, VANISHING_RATIO))
            .or_else(|| {
                // The slope rule needs depth: one sigmoid layer alone attenuates by 12 dB and is fine.
                (profile.len() >= MIN_SLOPE_LAYERS)
                    .then(|| {
                        sustained(records, db, |x| x < -ATTENUATION_DB).map(|w| (w, By::DbPerLayer, -ATTENUATION_DB))
                    })
                    .flatten()
            })
            .or_else(|| {
                sustained(records, gw, |x| x < VANISHING_RATIO).map(|w| (w, By::GradWeightRatio, VANISHING_RATIO))
            });
        if let Some(((steps, measured), what, threshold)) = vanish {
            let evidence = match what {
                By::SignalRatio => format!(
                    "back-propagated signal RMS at {} is {measured:.2e} of that at {} (median over the window)",
                    points[first].name, points[last].name
                ),
                By::DbPerLayer => format!(
                    "signal falls {:.1} dB per layer toward the input (threshold {ATTENUATION_DB} dB)",
                    -measured
                ),
                By::GradWeightRatio => format!(
                    "grad:weight ratio at {} is {measured:.2e} of that at {}",
                    points[first].name, points[last].name
                ),
            };
            alerts.push(Alert {
                rule: Rule::Vanishing,
                layers: names(&profile),
                steps,
                measured,
                threshold,
                evidence,
                remedies: vanishing_remedies(points, records, &profile),
            });
        }
        let nonfinite = records.iter().any(|r| r.first_nonfinite().is_some());
        let losses: Vec<f64> = records
            .iter()
            .filter_map(|r| r.model.get(&Metric::Loss).copied())
            .collect();
        let min_loss = losses.iter().copied().fold(f64::INFINITY, f64::min);
        let rising = losses.last().is_some_and(|l| *l > 1.5 * min_loss);
        if let Some((steps, measured)) = sustained(records, ratio, |x| x > 1.0 / VANISHING_RATIO)
            .or_else(|| sustained(records, db, |x| x > ATTENUATION_DB))
        {
            if nonfinite || rising {
                alerts.push(Alert {
                    rule: Rule::Exploding,
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
                    .filter_map(|r| r.get(i, Metric::DeadWindowFrac).map(|v| (r.step, v)))
                    .find(|(_, v)| *v > UNIT_FRACTION);
                if let Some((step, v)) = dead {
                    alerts.push(Alert {
                        rule: Rule::DeadRelu,
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
                    sustained(records, |r| r.get(i, Metric::SaturatedFrac), |x| x > UNIT_FRACTION)
                {
                    alerts.push(Alert {
                        rule: Rule::Saturation,
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
    Verdicts {
        verdict: Verdict::of(&alerts),
        alerts,
        notes,
        audit: audit(points, records.first(), &profile),
        attenuation: attenuation(points, records, &profile),
        initial_loss,
        uniform_loss,
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
                .get(lo, Metric::SignalRms)
                .zip(r.get(hi, Metric::SignalRms))
                .map(|(a, b)| a / b)
                .filter(|g| g.is_finite());
            let predicted_gain = (p.kind == PointKind::Dense && !p.has_norm)
                .then(|| {
                    let numel = r.get(hi, Metric::WeightNumel)?;
                    let var = r.get(hi, Metric::WeightL2)?.powi(2) / numel;
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

#[cfg(test)]
mod tests {
    //! Each rule on synthetic records: a case where it fires, one where it
    //! does not, and its boundary.
    use super::*;

    fn dense(name: &str, depth: usize, activation: Activation) -> ProbePoint {
        ProbePoint {
            name: name.into(),
            kind: PointKind::Dense,
            depth,
            activation: Some(activation),
            params: Vec::new(),
            weight: None,
            shape: vec![16],
            has_norm: false,
            block: None,
            main_path: true,
        }
    }

    /// `depth` hidden layers of `activation` and a head.
    fn net(depth: usize, activation: Activation) -> Vec<ProbePoint> {
        let mut points: Vec<ProbePoint> = (0..depth)
            .map(|i| dense(&format!("hidden.{i}"), i, activation))
            .collect();
        let mut head = dense("head", depth, Activation::Identity);
        head.kind = PointKind::Head;
        head.activation = None;
        points.push(head);
        points
    }

    /// `steps` records; `layer(step, point)` gives each point's metrics.
    fn records(
        points: &[ProbePoint],
        steps: u64,
        loss: impl Fn(u64) -> f64,
        layer: impl Fn(u64, usize) -> Vec<(Metric, f64)>,
    ) -> Vec<ProbeRecord> {
        (0..steps)
            .map(|step| {
                let mut r = ProbeRecord::new(step, points.len());
                r.model.insert(Metric::Loss, loss(step));
                for i in 0..points.len() {
                    for (k, v) in layer(step, i) {
                        r.layers[i].insert(k, v);
                    }
                }
                r
            })
            .collect()
    }

    fn rules(v: &Verdicts) -> Vec<Rule> {
        v.alerts.iter().map(|a| a.rule).collect()
    }

    /// A signal that changes by `gain` per layer toward the input.
    fn signal(gain: f64, depth: usize) -> impl Fn(u64, usize) -> Vec<(Metric, f64)> {
        move |_, i| vec![(Metric::SignalRms, gain.powi((depth - i) as i32))]
    }

    #[test]
    fn vanishing_fires_below_the_ratio_and_not_above() {
        let points = net(10, Activation::Sigmoid);
        // 0.25 per layer over 9 steps between first and last: ratio 3.8e-6.
        let v = judge(&points, &records(&points, 20, |_| 2.3, signal(0.25, 10)), 10, None);
        assert_eq!(v.verdict, Verdict::Vanishing);
        assert!(rules(&v).contains(&Rule::Vanishing));
        // 0.9 per layer: -0.9 dB per layer, ratio 0.39: healthy.
        let v = judge(&points, &records(&points, 20, |_| 2.3, signal(0.9, 10)), 10, None);
        assert_eq!(v.verdict, Verdict::Healthy, "{:?}", v.alerts);
        // Boundary of the dB rule (-6 dB per layer): just shallower does not fire; just steeper does.
        let g = 10f64.powf(-6.0 / 20.0);
        let at = judge(&points, &records(&points, 20, |_| 2.3, signal(g * 1.01, 10)), 10, None);
        let past = judge(&points, &records(&points, 20, |_| 2.3, signal(g * 0.99, 10)), 10, None);
        assert!(!rules(&at).contains(&Rule::Vanishing), "{:?}", at.alerts);
        assert!(rules(&past).contains(&Rule::Vanishing));
    }

    #[test]
    fn attenuation_is_the_geometric_mean_per_layer() {
        let points = net(10, Activation::Sigmoid);
        // 0.25 per layer in signal, the activation passing 0.2 of it at every layer.
        let recs = records(
            &points,
            5,
            |_| 2.3,
            |step, i| {
                let s = f64::powi(0.25 + 0.01 * step as f64, (10 - i) as i32);
                vec![
                    (Metric::SignalRms, s),
                    (Metric::SignalL2, 4.0 * s),
                    (Metric::PreactSignalL2, 0.8 * s),
                ]
            },
        );
        let a = judge(&points, &recs, 10, None).attenuation.unwrap();
        assert_eq!(a.layers, 10);
        assert!((a.per_layer - 0.25).abs() < 1e-12, "{}", a.per_layer);
        assert!((a.per_layer_median - 0.27).abs() < 1e-12, "{}", a.per_layer_median);
        assert!((a.through_activation.unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(a.derivative_bound, Some(0.25));
        assert!(a.describe().contains("x0.250 at the first probe step") && a.describe().contains("f' <= 0.250"));
        // One layer has no neighbour: no factor.
        let one = net(1, Activation::Relu);
        assert_eq!(
            judge(&one, &records(&one, 3, |_| 2.3, signal(0.5, 1)), 10, None).attenuation,
            None
        );
    }

    #[test]
    fn a_short_dip_is_not_sustained() {
        let points = net(10, Activation::Sigmoid);
        // Vanishing in 7 of every 10 steps: below SUSTAIN (0.8).
        let recs = records(
            &points,
            30,
            |_| 2.3,
            |step, i| {
                let gain = if step % 10 < 7 { 0.25 } else { 1.0 };
                vec![(Metric::SignalRms, f64::powi(gain, (10 - i) as i32))]
            },
        );
        assert!(!rules(&judge(&points, &recs, 10, None)).contains(&Rule::Vanishing));
    }

    #[test]
    fn exploding_needs_growth_and_trouble() {
        let points = net(10, Activation::Relu);
        // Growth 2x per layer toward the input, loss steady: only a note.
        let v = judge(&points, &records(&points, 20, |_| 2.3, signal(2.0, 10)), 10, None);
        assert_eq!(v.verdict, Verdict::Healthy);
        assert!(
            v.notes.iter().any(|n| n.contains("grows toward the input")),
            "{:?}",
            v.notes
        );
        // The same growth while the loss rises above 1.5x its minimum: exploding.
        let v = judge(
            &points,
            &records(&points, 20, |s| 2.0 + s as f64 * 0.2, signal(2.0, 10)),
            10,
            None,
        );
        assert_eq!(v.verdict, Verdict::Exploding);
        assert!(rules(&v).contains(&Rule::Exploding));
        // The measured value of an exploding verdict can be infinite; it reads back.
        let mut recs = records(&points, 20, |s| 2.0 + s as f64, signal(2.0, 10));
        for r in &mut recs {
            r.layers[0].insert(Metric::SignalRms, f64::INFINITY);
        }
        let v = judge(&points, &recs, 10, None);
        let a = v.alerts.iter().find(|a| a.rule == Rule::Exploding).unwrap();
        assert!(a.measured.is_infinite());
        let text = serde_json::to_string(&v).unwrap();
        let back: Verdicts = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verdict, v.verdict);
        assert!(
            back.alerts
                .iter()
                .find(|a| a.rule == Rule::Exploding)
                .unwrap()
                .measured
                .is_infinite()
        );
    }

    #[test]
    fn dead_relu_fires_above_half_the_units() {
        let points = net(3, Activation::Relu);
        let with = |frac: f64| {
            let recs = records(
                &points,
                12,
                |_| 2.3,
                move |_, i| {
                    let mut m = vec![(Metric::SignalRms, 1.0)];
                    if i == 1 {
                        m.push((Metric::DeadWindowFrac, frac));
                    }
                    m
                },
            );
            rules(&judge(&points, &recs, 10, None)).contains(&Rule::DeadRelu)
        };
        assert!(with(0.9));
        assert!(!with(0.1));
        assert!(!with(UNIT_FRACTION), "the boundary itself does not fire");
    }

    #[test]
    fn saturation_fires_when_sustained() {
        let points = net(3, Activation::Sigmoid);
        let with = |frac: f64| {
            let recs = records(
                &points,
                12,
                |_| 2.3,
                move |_, _| vec![(Metric::SignalRms, 1.0), (Metric::SaturatedFrac, frac)],
            );
            let v = judge(&points, &recs, 10, None);
            (rules(&v).contains(&Rule::Saturation), v.verdict)
        };
        assert_eq!(with(0.8), (true, Verdict::Unhealthy));
        assert_eq!(with(0.2), (false, Verdict::Healthy));
        assert!(!with(UNIT_FRACTION).0);
    }

    #[test]
    fn forward_explosion_and_a_huge_initial_loss() {
        let points = net(10, Activation::Relu);
        // The residual-stream case: activations grow 0.99 -> 211 over the net, loss 230.
        let act = |growth: f64| {
            move |_: u64, i: usize| {
                let rms = growth.powf(i as f64 / 9.0);
                vec![(Metric::SignalRms, 1.0), (Metric::ActMean, 0.0), (Metric::ActStd, rms)]
            }
        };
        let v = judge(&points, &records(&points, 12, |_| 230.0, act(213.0)), 10, None);
        assert!(rules(&v).contains(&Rule::ForwardExplosion));
        assert!(rules(&v).contains(&Rule::InitialLoss));
        assert_eq!(v.verdict, Verdict::Exploding);
        // A variance-preserving net: growth 1.5x, loss near ln 10.
        let v = judge(&points, &records(&points, 12, |_| 2.4, act(1.5)), 10, None);
        assert_eq!(v.verdict, Verdict::Healthy, "{:?}", v.alerts);
        // Boundaries: growth of exactly FORWARD_GROWTH and a loss of exactly
        // INITIAL_LOSS_FACTOR x ln(10) do not fire.
        let edge = INITIAL_LOSS_FACTOR * 10f64.ln();
        let v = judge(&points, &records(&points, 12, |_| edge, act(FORWARD_GROWTH)), 10, None);
        assert!(v.alerts.is_empty(), "{:?}", v.alerts);
        let v = judge(
            &points,
            &records(&points, 12, |_| edge * 1.01, act(FORWARD_GROWTH * 1.01)),
            10,
            None,
        );
        assert_eq!(rules(&v), vec![Rule::ForwardExplosion, Rule::InitialLoss]);
    }

    #[test]
    fn a_diverged_run_is_never_healthy() {
        let points = net(10, Activation::Relu);
        let healthy = records(&points, 3, |_| 2.3, signal(1.0, 10));
        assert_eq!(judge(&points, &healthy, 10, None).verdict, Verdict::Healthy);
        // The trainer saw a NaN loss between probe steps.
        let d = Divergence {
            step: 3,
            cause: "training loss is NaN at step 3".into(),
        };
        let v = judge(&points, &healthy, 10, Some(&d));
        assert_eq!(v.verdict, Verdict::Diverged);
        let a = &v.alerts[0];
        assert_eq!((a.rule, a.steps), (Rule::Diverged, [3, 3]));
        assert!(a.evidence.contains("training loss is NaN at step 3"), "{}", a.evidence);
        assert!(a.remedies.iter().any(|r| r.contains("learning rate")));
        // A non-finite probe value alone is enough, and outranks vanishing.
        let mut recs = records(&points, 12, |_| 2.3, signal(0.25, 10));
        recs[11].layers[2].insert(Metric::SignalRms, f64::NAN);
        let v = judge(&points, &recs, 10, None);
        assert_eq!(v.verdict, Verdict::Diverged);
        assert!(rules(&v).contains(&Rule::Vanishing));
        assert!(v.alerts[0].evidence.contains("hidden.2"), "{}", v.alerts[0].evidence);
        // With a huge initial loss, the evidence says so and the remedies start there.
        let recs = records(&points, 3, |_| 230.0, signal(1.0, 10));
        let v = judge(&points, &recs, 10, Some(&d));
        assert!(
            v.alerts[0].evidence.contains("initial loss was 230"),
            "{}",
            v.alerts[0].evidence
        );
        assert!(
            v.alerts[0].remedies[0].contains("initialisation"),
            "{:?}",
            v.alerts[0].remedies
        );
    }

    #[test]
    fn verdicts_rank_by_severity() {
        let alert = |rule| Alert {
            rule,
            layers: Vec::new(),
            steps: [0, 0],
            measured: 0.0,
            threshold: 0.0,
            evidence: String::new(),
            remedies: Vec::new(),
        };
        assert_eq!(Verdict::of(&[]), Verdict::Healthy);
        assert_eq!(Verdict::of(&[alert(Rule::DeadRelu)]), Verdict::Unhealthy);
        assert_eq!(
            Verdict::of(&[alert(Rule::DeadRelu), alert(Rule::Vanishing)]),
            Verdict::Vanishing
        );
        assert_eq!(
            Verdict::of(&[alert(Rule::Vanishing), alert(Rule::Diverged)]),
            Verdict::Diverged
        );
        assert_eq!(serde_json::to_string(&Verdict::Diverged).unwrap(), "\"diverged\"");
        assert_eq!(serde_json::to_string(&Rule::DeadRelu).unwrap(), "\"dead_relu\"");
    }
}
