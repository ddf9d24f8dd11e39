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

use crate::measure::{Batch, GradPrefix, activation_stats, grad_flat, grad_stats, l2, log_histogram, param_values};
use crate::record::{HIST_HEADER, PROBE_HEADER, ProbeRecord, hist_lines};
use crate::verdict::{WINDOW, judge};
use gradscope_train::ProbeSchedule;

/// Probe records kept for NaN forensics.
pub const FORENSICS_DEPTH: usize = 20;

/// Settings of the probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeConfig {
    pub schedule: ProbeSchedule,
    /// Histograms of |g| on every `hist_every`th probed step (and the first).
    pub hist_every: u64,
    /// Number of classes (for the initial-loss audit).
    pub classes: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            schedule: ProbeSchedule::Default,
            hist_every: 10,
            classes: 10,
        }
    }
}

struct Ids {
    weight: Vec<Option<(ParamId, usize)>>,
    bias: Vec<Option<(ParamId, usize)>>,
}

struct Pending {
    step: u64,
    batch: Batch,
    host: Vec<(usize, &'static str, f64)>,
    hist: bool,
    /// The points' main weights, by parameter id, and their values before the step.
    weight_ids: Vec<Option<ParamId>>,
    weights: Vec<Option<Tensor<1>>>,
}

/// The gradient probe. Add it to a trainer with `trainer.observe(Box::new(probe))`.
pub struct GradientProbe {
    config: ProbeConfig,
    dir: PathBuf,
    points: Vec<ProbePoint>,
    ids: Option<Ids>,
    pending: Option<Pending>,
    alive: Vec<Option<Tensor<1>>>,
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
        let mut batch = Batch::new();
        let mut host = Vec::new();
        batch.push(None, "loss", view.loss.clone().inner());
        let ids_weight: Vec<_> = self.ids_for(view.model).weight.clone();
        let ids_bias: Vec<_> = self.ids.as_ref().expect("ids set").bias.clone();
        for (i, p) in self.points.iter().enumerate() {
            if let Some(g) = &taps.out[i] {
                let flat = g.clone().flatten::<1>(0, 1);
                batch.push(Some(i), "signal_l2", l2(&flat));
                batch.push(Some(i), "signal_rms", flat.clone().powf_scalar(2.0).mean().sqrt());
                if let Some(act) = p.activation {
                    let pre = traces[i].pre.clone().inner();
                    batch.push(
                        Some(i),
                        "preact_signal_l2",
                        l2(&(act.derivative(pre) * g.clone()).flatten::<1>(0, 1)),
                    );
                }
            }
            if let Some(g) = &taps.norm_in[i] {
                batch.push(Some(i), "bn_in_signal_l2", l2(&g.clone().flatten::<1>(0, 1)));
            }
            if let Some((id, rank)) = ids_weight[i]
                && let Some(g) = grad_flat(view.grads, id, rank)
            {
                grad_stats(&mut batch, i, &g, GradPrefix::Weight);
                host.push((i, "weight_numel", g.dims()[0] as f64));
                if hist {
                    batch.push_hist(i, log_histogram(&g));
                }
            }
            if let Some((id, rank)) = ids_bias[i]
                && let Some(g) = grad_flat(view.grads, id, rank)
            {
                grad_stats(&mut batch, i, &g, GradPrefix::Bias);
            }
            let (pre, post) = (traces[i].pre.clone().inner(), traces[i].post.clone().inner());
            if let Some(alive) = activation_stats(&mut batch, i, p.activation, &pre, &post) {
                let acc = match self.alive[i].take() {
                    Some(a) => a.max_pair(alive),
                    None => alive,
                };
                self.alive[i] = Some(acc);
            }
            if let Some(links) = p.block.as_ref().filter(|b| b.identity_skip)
                && let (Some(total), Some(skip)) = (&taps.out[links.input], &taps.out[links.branch])
            {
                let skip = skip.clone().flatten::<1>(0, 1);
                let branch = total.clone().flatten::<1>(0, 1) - skip.clone();
                let (s, b) = (l2(&skip), l2(&branch));
                batch.push(Some(i), "skip_share", s.clone() / (s + b + 1e-30));
            }
        }
        self.probes += 1;
        if self.probes.is_multiple_of(WINDOW as u64) {
            for (i, acc) in self.alive.iter_mut().enumerate() {
                if let Some(a) = acc.take() {
                    batch.push(Some(i), "dead_window_frac", a.equal_elem(0.0).float().mean());
                }
            }
        }
        // Weights before the step: their norms now, their change after the step.
        let weight_ids: Vec<Option<ParamId>> = ids_weight.iter().map(|w| w.map(|(id, _)| id)).collect();
        let weights = param_values(view.model, &weight_ids);
        for (i, w) in weights.iter().enumerate() {
            if let Some(w) = w {
                batch.push(Some(i), "weight_l2", l2(w));
            }
        }
        Pending {
            step: view.info.step,
            batch,
            host,
            hist,
            weight_ids,
            weights,
        }
    }

    /// Adds the update sizes (weights after the step minus those read in
    /// [`Self::measure`]), reads everything back in one transfer, and writes the record.
    fn finish_record<M: Network>(&mut self, mut pending: Pending, after: &M) -> Result<ProbeRecord, TrainError> {
        let new = param_values(after, &pending.weight_ids);
        for (i, (o, n)) in std::mem::take(&mut pending.weights).into_iter().zip(new).enumerate() {
            if let (Some(o), Some(n)) = (o, n) {
                pending.batch.push(Some(i), "update_l2", l2(&(n - o)));
            }
        }
        let read = pending.batch.read();
        let mut rec = ProbeRecord {
            step: pending.step,
            model: BTreeMap::new(),
            layers: vec![BTreeMap::new(); self.points.len()],
        };
        for (p, m, v) in read.values {
            match p {
                None => {
                    rec.model.insert(m.to_owned(), v);
                }
                Some(i) => {
                    rec.layers[i].insert(m.to_owned(), v);
                }
            }
        }
        for (i, m, v) in pending.host {
            rec.layers[i].insert(m.to_owned(), v);
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
        if pending.hist {
            let text: String = read
                .hists
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

    fn after_step(&mut self, _info: &StepInfo, _before: Option<&M>, after: &M) -> Control {
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
        summary.extra.insert(
            "probe".into(),
            serde_json::json!({
                "schedule": self.config.schedule.to_string(),
                "probed_steps": self.records.len(),
                "seconds_in_probe": spent,
                "overhead_fraction": if total > spent { spent / (total - spent) } else { 0.0 },
                "overhead_note": "time in the probe's own reductions, transfer and writes; excludes the taps' share of forward/backward",
                "verdict": verdicts.verdict,
            }),
        );
        Ok(())
    }
}
