//! The probe as a training observer: it measures on probed steps, writes
//! `probe.csv`, `probe_hist.csv`, `points.json`, `verdicts.json` (and
//! `forensics.json` on divergence) into the run directory, and reports its own
//! cost in the run summary.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::module::ParamId;
use burn::tensor::Tensor;
use gradscope_models::{Network, ProbePoint, named_params};
use gradscope_train::files::{LineLog, write_atomic};
use gradscope_train::{BackwardView, Control, Observer, RunInfo, StepInfo, Summary, TrainConfig, TrainError};

use crate::fused::{self, Gather, host_step};
use crate::measure::{StepStats, StepView, VectorKind, device_step, l2, param_values};
use crate::record::{HIST_HEADER, PROBE_HEADER, ProbeRecord, hist_lines};
use crate::verdict::{WINDOW, judge};
use gradscope_train::ProbeSchedule;

/// Probe records kept for NaN forensics.
pub const FORENSICS_DEPTH: usize = 20;

/// Settings of the probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeConfig {
    pub schedule: ProbeSchedule,
    /// Histograms of |g| and update sizes on every `hist_every`th probed step
    /// (and the first). Update sizes need a copy of every weight kept across
    /// the optimiser step and a second pass over both: on flex that was a third
    /// of the probe's time at every step, for a ratio that moves slowly.
    pub hist_every: u64,
    /// Number of classes (for the initial-loss audit).
    pub classes: usize,
    /// Where the statistics are reduced.
    pub reductions: Reductions,
}

/// Where a probe step's statistics are computed.
///
/// Host is the default on every backend. Measured per probed step of
/// `mlp-sigmoid-8x256` (`gradscope bench --probe`, each path forced with
/// `GRADSCOPE_PROBE_REDUCTIONS`): flex +1.9 ms host; wgpu on an H100 +9.8 ms
/// host (one gathered transfer) against +15.2 ms device; ndarray +7.1 ms host
/// against +15.6 ms device. CUDA could not be built here: it runs the same
/// CubeCL runtime as wgpu, where per-operation latency decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reductions {
    /// As Burn reductions on the device (about 40 small ops per layer), read
    /// back in one transfer per probe step. The independent cross-check of
    /// the host path (test `host_and_device_reductions_agree`).
    Device,
    /// Every tensor the step needs read to the host ([`crate::fused::Gather`]:
    /// in place on flex, one concatenated transfer elsewhere) and reduced there
    /// by vectorised loops ([`crate::fused`]).
    #[default]
    Host,
}

impl Reductions {
    /// Environment variable that overrides the default in
    /// [`GradientProbe::for_run`]: `device` or `host`. For measuring one against
    /// the other (`GRADSCOPE_PROBE_REDUCTIONS=device gradscope bench --probe ...`).
    pub const ENV: &'static str = "GRADSCOPE_PROBE_REDUCTIONS";

    /// The default, unless [`Self::ENV`] says otherwise.
    pub fn from_env() -> Result<Self, TrainError> {
        match std::env::var(Self::ENV).as_deref() {
            Err(_) => Ok(Self::default()),
            Ok("device") => Ok(Reductions::Device),
            Ok("host") => Ok(Reductions::Host),
            Ok(other) => Err(TrainError::Invalid(format!(
                "{} must be `device` or `host`; found `{other}`",
                Self::ENV
            ))),
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            schedule: ProbeSchedule::Default,
            hist_every: 10,
            classes: 10,
            reductions: Reductions::default(),
        }
    }
}

struct Ids {
    weight: Vec<Option<(ParamId, usize)>>,
    bias: Vec<Option<(ParamId, usize)>>,
}

struct Pending {
    step: u64,
    stats: StepStats,
    hist: bool,
    /// This probe step closes a dead-unit window.
    window_end: bool,
    /// The points' main weights, by parameter id.
    weight_ids: Vec<Option<ParamId>>,
    /// Their values before the step (device path; the host path keeps copies in
    /// [`GradientProbe::before`]).
    weights: Vec<Option<Tensor<1>>>,
}

/// The gradient probe. Add it to a trainer with `trainer.observe(Box::new(probe))`.
pub struct GradientProbe {
    config: ProbeConfig,
    dir: PathBuf,
    points: Vec<ProbePoint>,
    ids: Option<Ids>,
    pending: Option<Pending>,
    /// Host path: each point's weight before the step, in buffers reused from
    /// one probe step to the next. A copy rather than a second reference to the
    /// tensor, because a shared tensor makes the optimiser allocate a new one
    /// instead of updating in place.
    before: Vec<Vec<f32>>,
    /// Per unit, max |activation| over the probed batches of the current window.
    alive: Vec<Option<Vec<f32>>>,
    probes: u64,
    records: Vec<ProbeRecord>,
    recent: VecDeque<ProbeRecord>,
    csv: Option<LineLog>,
    hist_csv: Option<LineLog>,
    spent: Duration,
    started: Option<Instant>,
}

impl GradientProbe {
    pub fn new(config: ProbeConfig) -> Self {
        Self {
            config,
            dir: PathBuf::new(),
            points: Vec::new(),
            ids: None,
            pending: None,
            before: Vec::new(),
            alive: Vec::new(),
            probes: 0,
            records: Vec::new(),
            recent: VecDeque::new(),
            csv: None,
            hist_csv: None,
            spent: Duration::ZERO,
            started: None,
        }
    }

    /// The probe a run's configuration asks for: its `probe` schedule and its
    /// head's class count; `None` when the schedule is `off`.
    pub fn for_run(config: &TrainConfig) -> Result<Option<Self>, TrainError> {
        if config.probe == ProbeSchedule::Off {
            return Ok(None);
        }
        let classes = gradscope_train::model_config(config)?.head().outputs().max(2);
        Ok(Some(Self::new(ProbeConfig {
            schedule: config.probe,
            classes,
            reductions: Reductions::from_env()?,
            ..ProbeConfig::default()
        })))
    }

    /// The records measured so far.
    pub fn records(&self) -> &[ProbeRecord] {
        &self.records
    }

    fn ids_for<M: Network>(&mut self, model: &M) -> &Ids {
        self.ids.get_or_insert_with(|| {
            let named = named_params(model);
            let find = |path: Option<&String>| {
                let path = path?;
                named.iter().find(|n| &n.path == path).map(|n| (n.id, n.shape.len()))
            };
            Ids {
                weight: self.points.iter().map(|p| find(p.weight.as_ref())).collect(),
                bias: self
                    .points
                    .iter()
                    .map(|p| {
                        find(
                            p.params
                                .iter()
                                .find(|q| q.ends_with("bias") && Some(*q) != p.weight.as_ref()),
                        )
                    })
                    .collect(),
            }
        })
    }

    fn measure<M: Network>(&mut self, view: &BackwardView<'_, M>) -> Pending {
        let (Some(taps), Some(traces)) = (view.taps, view.traces) else {
            unreachable!("called on probed steps")
        };
        let hist = self.probes.is_multiple_of(self.config.hist_every.max(1));
        self.probes += 1;
        let window_end = self.probes.is_multiple_of(WINDOW as u64);
        let ids = self.ids_for(view.model);
        let (weight, bias) = (ids.weight.clone(), ids.bias.clone());
        let step = StepView {
            loss: view.loss.clone().inner(),
            points: &self.points,
            taps,
            traces,
            grads: view.grads,
            weight: &weight,
            bias: &bias,
            hist,
        };
        let mut stats = StepStats::default();
        match self.config.reductions {
            Reductions::Device => device_step(&step, &mut stats),
            Reductions::Host => host_step(&step, &mut stats),
        }
        // Weight norms now; on update steps (`hist`) also the weights themselves,
        // whose change across the optimiser step `finish_record` measures.
        let weight_ids: Vec<Option<ParamId>> = weight.iter().map(|w| w.map(|(id, _)| id)).collect();
        let mut weights = param_values(view.model, &weight_ids);
        match self.config.reductions {
            Reductions::Device => {
                for (i, w) in weights.iter_mut().enumerate() {
                    if let Some(t) = w {
                        stats.batch.push(Some(i), "weight_l2", l2(t));
                    }
                    if !hist {
                        *w = None;
                    }
                }
            }
            Reductions::Host => {
                let mut gather = Gather::default();
                let at: Vec<Option<usize>> = weights.iter_mut().map(|w| w.take().map(|t| gather.add(t))).collect();
                let values = gather.read();
                self.before.resize_with(at.len(), Vec::new);
                for (i, (before, k)) in self.before.iter_mut().zip(at).enumerate() {
                    before.clear();
                    let Some(k) = k else { continue };
                    if hist {
                        // Its norm comes with the update size.
                        before.extend_from_slice(&values[k]);
                    } else {
                        stats.values.push((Some(i), "weight_l2", fused::l2(&values[k])));
                    }
                }
            }
        }
        Pending {
            step: view.info.step,
            stats,
            hist,
            window_end,
            weight_ids,
            weights,
        }
    }

    /// Adds the weight norms and update sizes (weights after the step minus those
    /// kept in [`Self::measure`]), reads the device batch back in one transfer,
    /// and writes the record.
    fn finish_record<M: Network>(&mut self, pending: Pending, after: &M) -> Result<ProbeRecord, TrainError> {
        let Pending {
            step,
            mut stats,
            hist,
            window_end,
            weight_ids,
            weights,
        } = pending;
        if hist {
            let new = param_values(after, &weight_ids);
            match self.config.reductions {
                Reductions::Device => {
                    for (i, (o, n)) in weights.into_iter().zip(new).enumerate() {
                        let (Some(o), Some(n)) = (o, n) else { continue };
                        stats.batch.push(Some(i), "update_l2", l2(&(n - o)));
                    }
                }
                Reductions::Host => {
                    let mut gather = Gather::default();
                    let at: Vec<Option<usize>> = new.into_iter().map(|n| n.map(|t| gather.add(t))).collect();
                    let values = gather.read();
                    for (i, k) in at.into_iter().enumerate() {
                        let (Some(k), Some(o)) = (k, self.before.get(i).filter(|b| !b.is_empty())) else {
                            continue;
                        };
                        let (update, weight) = fused::diff_l2(&values[k], o);
                        stats.values.push((Some(i), "weight_l2", weight));
                        stats.values.push((Some(i), "update_l2", update));
                    }
                }
            }
        }
        let read = std::mem::take(&mut stats.batch).read();
        stats.values.extend(read.values);
        stats.vectors.extend(read.vectors);
        let mut rec = ProbeRecord {
            step,
            model: BTreeMap::new(),
            layers: vec![BTreeMap::new(); self.points.len()],
        };
        for (p, m, v) in stats.values {
            match p {
                None => rec.model.insert(m.to_owned(), v),
                Some(i) => rec.layers[i].insert(m.to_owned(), v),
            };
        }
        let mut hists = Vec::new();
        for (i, kind, v) in stats.vectors {
            match kind {
                VectorKind::Histogram => hists.push((i, v.into_iter().map(f64::from).collect::<Vec<_>>())),
                VectorKind::UnitMaxAbs => {
                    // Units at zero for every sample of this batch.
                    rec.layers[i].insert("dead_frac".into(), dead_fraction(&v));
                    let acc = self.alive[i].get_or_insert_with(|| vec![0.0; v.len()]);
                    acc.iter_mut().zip(&v).for_each(|(a, b)| *a = a.max(*b));
                }
            }
        }
        if window_end {
            // Units that stayed at zero for every sample of every probed batch in the window.
            for (i, acc) in self.alive.iter_mut().enumerate() {
                if let Some(a) = acc.take() {
                    rec.layers[i].insert("dead_window_frac".into(), dead_fraction(&a));
                }
            }
        }
        for layer in &mut rec.layers {
            // Ratios to a zero weight (a zero-initialised layer) are undefined, not divergent.
            if let (Some(g), Some(w)) = (
                layer.get("grad_l2").copied(),
                layer.get("weight_l2").copied().filter(|w| *w != 0.0),
            ) {
                layer.insert("grad_weight_ratio".into(), g / w);
                if let Some(n) = layer.get("weight_numel").copied() {
                    layer.insert("grad_rms".into(), g / n.sqrt());
                }
                if let Some(u) = layer.remove("update_l2") {
                    layer.insert("update_weight_ratio".into(), u / w);
                }
            }
        }
        let csv = self.csv.as_mut().expect("started");
        let lines = rec.csv_lines(&self.points);
        csv.line(lines.trim_end_matches('\n'))?;
        if hist {
            let text: String = hists
                .iter()
                .map(|(i, counts)| hist_lines(rec.step, &self.points[*i], counts))
                .collect();
            if !text.is_empty() {
                self.hist_csv
                    .as_mut()
                    .expect("started")
                    .line(text.trim_end_matches('\n'))?;
            }
        }
        Ok(rec)
    }

    fn write_forensics(&self, rec: &ProbeRecord) -> Result<String, TrainError> {
        let (point, metric, value) = rec.first_nonfinite().expect("called on a non-finite record");
        let layer = if point == usize::MAX {
            "model".to_owned()
        } else {
            self.points[point].name.clone()
        };
        let cause = format!("{metric} of {layer} is {value} at step {}", rec.step);
        let json = serde_json::json!({
            "step": rec.step,
            "first_layer": layer,
            "first_quantity": metric,
            "value": value.to_string(),
            "cause": cause,
            "records": self.recent,
        });
        let text = serde_json::to_string_pretty(&json).expect("forensics serialise");
        write_atomic(&self.dir.join("forensics.json"), text.as_bytes())?;
        Ok(cause)
    }
}

/// The fraction of units whose max |activation| is 0: dead on every sample seen.
fn dead_fraction(max_abs: &[f32]) -> f64 {
    max_abs.iter().filter(|&&a| a == 0.0).count() as f64 / max_abs.len().max(1) as f64
}

impl<M: Network> Observer<M> for GradientProbe {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), TrainError> {
        self.dir = run.dir.clone();
        self.points = run.points.clone();
        self.alive = vec![None; self.points.len()];
        let points = serde_json::to_string_pretty(&self.points).expect("points serialise");
        write_atomic(&self.dir.join("points.json"), points.as_bytes())?;
        let fresh = !self.dir.join("probe.csv").exists();
        let mut csv = LineLog::append(&self.dir.join("probe.csv"))?;
        let mut hist = LineLog::append(&self.dir.join("probe_hist.csv"))?;
        if fresh {
            csv.line(PROBE_HEADER)?;
            hist.line(HIST_HEADER)?;
        }
        self.csv = Some(csv);
        self.hist_csv = Some(hist);
        self.started = Some(Instant::now());
        Ok(())
    }

    fn wants_probe(&mut self, step: u64) -> bool {
        self.config.schedule.probes(step)
    }

    fn after_backward(&mut self, view: &BackwardView<'_, M>) -> Control {
        if view.taps.is_none() {
            return Control::Continue;
        }
        let t = Instant::now();
        self.pending = Some(self.measure(view));
        self.spent += t.elapsed();
        Control::Continue
    }

    fn after_step(&mut self, _info: &StepInfo, after: &M) -> Control {
        let Some(pending) = self.pending.take() else {
            return Control::Continue;
        };
        let t = Instant::now();
        let rec = match self.finish_record(pending, after) {
            Ok(r) => r,
            Err(e) => return Control::Diverged(format!("probe could not write its records: {e}")),
        };
        self.recent.push_back(rec.clone());
        if self.recent.len() > FORENSICS_DEPTH {
            self.recent.pop_front();
        }
        let nonfinite = rec.first_nonfinite().is_some();
        self.records.push(rec.clone());
        self.spent += t.elapsed();
        if nonfinite {
            return match self.write_forensics(&rec) {
                Ok(cause) => Control::Diverged(cause),
                Err(e) => Control::Diverged(format!(
                    "non-finite values at step {} (forensics not written: {e})",
                    rec.step
                )),
            };
        }
        Control::Continue
    }

    fn on_finish(&mut self, summary: &mut Summary) -> Result<(), TrainError> {
        let verdicts = judge(&self.points, &self.records, self.config.classes);
        let text = serde_json::to_string_pretty(&verdicts).expect("verdicts serialise");
        write_atomic(&self.dir.join("verdicts.json"), text.as_bytes())?;
        let total = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let spent = self.spent.as_secs_f64();
        // The trainer's paired step times: probed steps (taps, probe, writes) against plain ones.
        let times = &summary.extra.get("step_seconds");
        let median = |k: &str| times.and_then(|t| t[k].as_f64());
        let per_probed_step = match (median("plain_median_s"), median("probed_median_s")) {
            (Some(plain), Some(probed)) if plain > 0.0 => Some(probed / plain - 1.0),
            _ => None,
        };
        summary.extra.insert(
            "probe".into(),
            serde_json::json!({
                "schedule": self.config.schedule.to_string(),
                "reductions": format!("{:?}", self.config.reductions).to_lowercase(),
                "probed_steps": self.records.len(),
                "seconds_in_probe": spent,
                "probe_share_of_run": if total > 0.0 { spent / total } else { 0.0 },
                "overhead_per_probed_step": per_probed_step,
                "overhead_note": "overhead_per_probed_step: median probed step time / median unprobed step time - 1 \
                                  (taps included; null without both kinds of step); seconds_in_probe: the probe's \
                                  own reductions, transfers and writes",
                "verdict": verdicts.verdict,
            }),
        );
        Ok(())
    }
}
