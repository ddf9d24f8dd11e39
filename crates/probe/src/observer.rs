//! The probe as a training observer: it measures on probed steps, writes
//! `probe.csv`, `probe_hist.csv`, `points.json`, `verdicts.json` (and
//! `forensics.json` on divergence) into the run directory, and reports its own
//! cost in the run summary. A probed step's tensors are read in
//! `after_backward`; their statistics and record are made on the probe's own
//! thread (the `worker` module) and collected at the next step's `after_backward`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::module::{Module, ParamId};
use burn::tensor::Tensor;
use gradscope_models::{Network, ProbePoint, named_params};
use gradscope_train::files::write_atomic;
use gradscope_train::{BackwardView, Control, Observer, RunInfo, StepInfo, Summary, TrainError};

use crate::config::{ProbeConfig, ProbeSchedule, Reductions, RunConfig};
use crate::device::{device_step, finish_device_step, param_values};
use crate::host::{HostJob, Reading};
use crate::metric::{Metric, Scope};
use crate::record::{ProbeRecord, read_probe_csv};
use crate::step::{StepStats, StepView};
use crate::verdict::{WINDOW, judge};
use crate::worker::{Job, Meta, Worker, Writer};
use gradscope_train::run_dir::{FORENSICS_FILE, POINTS_FILE, PROBE_FILE, VERDICTS_FILE};

/// Probe records kept for NaN forensics.
pub const FORENSICS_DEPTH: usize = 20;

/// How a run's probe steps are reduced: [`Reductions`] with `Auto` decided
/// (and, for host reductions, how the tensors reach the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reducer {
    Host(Reading),
    Device,
}

impl Reducer {
    /// The reducer for a run whose probe steps look like `view`.
    fn resolve(choice: Reductions, view: &StepView<'_>) -> Self {
        let reading = Reading::of(view.loss.as_ref().expect("the trainer gives every probed step's loss"));
        match choice {
            Reductions::Host => Reducer::Host(reading),
            Reductions::Device => Reducer::Device,
            Reductions::Auto => {
                let per_point = view
                    .traces
                    .iter()
                    .flatten()
                    .map(|t| 3 * t.post.shape().num_elements())
                    .sum::<usize>()
                    / view.traces.len().max(1);
                Self::auto(reading, per_point)
            }
        }
    }

    /// [`Reductions::Auto`]'s rule.
    fn auto(reading: Reading, values_per_point: usize) -> Self {
        if reading == Reading::Local || values_per_point <= Reductions::HOST_MAX_PER_POINT {
            Reducer::Host(reading)
        } else {
            Reducer::Device
        }
    }

    /// The name `summary.json` reports.
    fn name(self) -> &'static str {
        match self {
            Reducer::Host(_) => "host",
            Reducer::Device => "device",
        }
    }
}

/// Each probe point's main weight and bias in a model, as `(id, rank)`.
pub(crate) struct Ids {
    pub weight: Vec<Option<(ParamId, usize)>>,
    pub bias: Vec<Option<(ParamId, usize)>>,
    /// `weight`'s ids alone, for [`param_values`].
    pub weight_ids: Vec<Option<ParamId>>,
}

impl Ids {
    /// Finds the points' parameters in `model` (once per run: ids are fixed for it).
    pub fn of<M: Module>(points: &[ProbePoint], model: &M) -> Self {
        let named = named_params(model);
        let find = |path: Option<&String>| {
            let path = path?;
            named.iter().find(|n| &n.path == path).map(|n| (n.id, n.shape.len()))
        };
        let weight: Vec<_> = points.iter().map(|p| find(p.weight.as_ref())).collect();
        Self {
            weight_ids: weight.iter().map(|w| w.map(|(id, _)| id)).collect(),
            weight,
            bias: points
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
    }
}

/// A probe step measured in `after_backward`, handed to the worker in `after_step`.
enum Pending {
    /// Host path: the step's tensors, read.
    Host(Meta, HostJob),
    /// Device path: reductions queued on the device, and on update steps the
    /// points' main weights before the step.
    Device(Meta, StepStats, Vec<Option<Tensor<1>>>),
}

/// The latest probed step in brief, for a live display ([`GradientProbe::live`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Live {
    pub step: u64,
    /// RMS of dL/dh at the first main-path layer over that at the last: how
    /// much of the signal reaches the input side (1: all of it).
    pub signal_ratio: Option<f64>,
    /// Mean share of dead (ReLU) or saturated (sigmoid/tanh) units over the main path.
    pub stuck_units: Option<f64>,
}

impl Live {
    fn of(rec: &ProbeRecord, points: &[ProbePoint]) -> Self {
        let profile = crate::verdict::profile_points(points);
        let signal = |i: Option<&usize>| i.and_then(|&i| rec.get(i, Metric::SignalRms));
        let signal_ratio = match (signal(profile.first()), signal(profile.last())) {
            (Some(first), Some(last)) if last > 0.0 => Some(first / last),
            _ => None,
        };
        let stuck: Vec<f64> = profile
            .iter()
            .filter_map(|&i| {
                rec.get(i, Metric::DeadFrac)
                    .or_else(|| rec.get(i, Metric::SaturatedFrac))
            })
            .collect();
        Self {
            step: rec.step,
            signal_ratio,
            stuck_units: (!stuck.is_empty()).then(|| stuck.iter().sum::<f64>() / stuck.len() as f64),
        }
    }
}

/// Where the probe leaves its latest [`Live`] summary.
pub type LiveHandle = std::sync::Arc<std::sync::Mutex<Option<Live>>>;

/// The gradient probe. Add it to a trainer with `trainer.observe(Box::new(probe))`.
pub struct GradientProbe {
    /// Shared with a display, when one asked ([`Self::live`]).
    live: Option<LiveHandle>,
    config: ProbeConfig,
    dir: PathBuf,
    points: Vec<ProbePoint>,
    ids: Option<Ids>,
    pending: Option<Pending>,
    /// `config.reductions`, resolved at the first probe step.
    reducer: Option<Reducer>,
    /// Takes the statistics and writes the records (started in `on_start`).
    worker: Option<Worker>,
    /// Whether the worker holds a step whose record is not back yet.
    in_flight: bool,
    /// Probed steps so far in the run (counted from its first step, also
    /// after a resume): update steps and dead-unit windows follow it.
    probes: u64,
    records: Vec<ProbeRecord>,
    /// Time the probe took on the training thread.
    spent: Duration,
    /// Time the worker spent taking statistics (off the training thread).
    worker_busy: Duration,
    /// Steps in the run: the last one is recorded before the run ends.
    total_steps: u64,
    started: Option<Instant>,
}

impl GradientProbe {
    pub fn new(config: ProbeConfig) -> Self {
        Self {
            config,
            live: None,
            dir: PathBuf::new(),
            points: Vec::new(),
            ids: None,
            pending: None,
            reducer: None,
            worker: None,
            in_flight: false,
            probes: 0,
            records: Vec::new(),
            spent: Duration::ZERO,
            worker_busy: Duration::ZERO,
            total_steps: u64::MAX,
            started: None,
        }
    }

    /// The probe a run's configuration asks for, with its head's class
    /// count; `None` when the schedule is `off`.
    pub fn for_run(config: &RunConfig) -> Result<Option<Self>, TrainError> {
        if config.probe.schedule == ProbeSchedule::Off {
            return Ok(None);
        }
        let classes = gradscope_train::model_config(&config.train)?.head().outputs().max(2);
        Ok(Some(Self::new(ProbeConfig {
            classes,
            ..config.probe
        })))
    }

    /// The records written so far. The latest probe step's record is written
    /// when the next step's backward pass is done, or by [`Self::drain`].
    pub fn records(&self) -> &[ProbeRecord] {
        &self.records
    }

    fn measure<M: Network>(&mut self, view: &BackwardView<'_, M>) -> Pending {
        let (Some(taps), Some(traces)) = (view.taps, view.traces) else {
            unreachable!("called on probed steps")
        };
        let update = self.probes.is_multiple_of(self.config.update_every.max(1));
        self.probes += 1;
        let meta = Meta {
            step: view.info.step,
            update,
            window_end: self.probes.is_multiple_of(WINDOW as u64),
        };
        let ids = self.ids.get_or_insert_with(|| Ids::of(&self.points, view.model));
        let traces: Vec<_> = traces.iter().cloned().map(Some).collect();
        let step = StepView {
            loss: Some(view.loss.clone().inner()),
            points: &self.points,
            taps,
            traces: &traces,
            grads: view.grads,
            weight: &ids.weight,
            bias: &ids.bias,
            update,
        };
        // Update steps keep the points' main weights from before the step;
        // `after_step` reads them after it and measures the update. (Only then: a
        // weight held across the optimiser step is copied, not updated in place.)
        let before = update.then_some((view.model, ids.weight_ids.as_slice()));
        match *self
            .reducer
            .get_or_insert_with(|| Reducer::resolve(self.config.reductions, &step))
        {
            Reducer::Host(reading) => Pending::Host(meta, HostJob::collect(&step, reading, before)),
            Reducer::Device => {
                let mut stats = StepStats::default();
                device_step(&step, &mut stats);
                let before = before.map_or_else(Vec::new, |(model, ids)| param_values(model, ids));
                Pending::Device(meta, stats, before)
            }
        }
    }

    /// Waits for the record the worker is writing, if any, and keeps it.
    ///
    /// A probe step's record comes back when the next step's backward pass is
    /// done (the worker takes its statistics meanwhile), or here: call it
    /// before reading [`Self::records`] in a loop of your own.
    pub fn drain(&mut self) -> Control {
        let Some(worker) = self.worker.as_mut().filter(|_| self.in_flight) else {
            return Control::Continue;
        };
        self.in_flight = false;
        let t = Instant::now();
        let written = worker.wait();
        self.worker_busy += written.busy;
        let control = match written.record {
            Ok(rec) => self.keep(rec, written.nonfinite),
            Err(e) => Control::Failed(format!("the probe could not write its records: {e}")),
        };
        self.spent += t.elapsed();
        control
    }

    /// A handle on the latest probed step in brief, updated as records are
    /// written: what a progress display shows about the gradients.
    pub fn live(&mut self) -> LiveHandle {
        self.live.get_or_insert_with(Default::default).clone()
    }

    /// Keeps a written record; diverged when it holds a non-finite value.
    fn keep(&mut self, rec: ProbeRecord, nonfinite: bool) -> Control {
        if let Some(live) = &self.live
            && let Ok(mut slot) = live.lock()
        {
            *slot = Some(Live::of(&rec, &self.points));
        }
        self.records.push(rec);
        if !nonfinite {
            return Control::Continue;
        }
        let rec = self.records.last().expect("just pushed");
        match write_forensics(&self.dir, &self.points, &self.records) {
            Ok(cause) => Control::Diverged(cause),
            Err(e) => Control::Diverged(format!(
                "non-finite values at step {} (forensics not written: {e})",
                rec.step
            )),
        }
    }
}

/// Judges a run's records and writes `verdicts.json` into `dir`.
pub(crate) fn write_verdicts(
    dir: &std::path::Path,
    points: &[ProbePoint],
    records: &[ProbeRecord],
    classes: usize,
    diverged: Option<&gradscope_train::metrics::Divergence>,
) -> Result<crate::verdict::Verdicts, TrainError> {
    let verdicts = judge(points, records, classes, diverged);
    let text = serde_json::to_string_pretty(&verdicts).expect("verdicts serialise");
    write_atomic(&dir.join(VERDICTS_FILE), text.as_bytes())?;
    Ok(verdicts)
}

/// Writes `forensics.json` for a run whose latest record holds a non-finite
/// value: where it is, and the records before it. Returns the cause in words.
pub(crate) fn write_forensics(
    dir: &std::path::Path,
    points: &[ProbePoint],
    records: &[ProbeRecord],
) -> Result<String, TrainError> {
    let rec = records.last().expect("called with the non-finite record last");
    let (point, metric, value) = rec.first_nonfinite().expect("called on a non-finite record");
    let layer = match point {
        Scope::Model => "model".to_owned(),
        Scope::Point(i) => points[i].name.clone(),
    };
    let cause = format!("{metric} of {layer} is {value} at step {}", rec.step);
    let json = serde_json::json!({
        "step": rec.step,
        "first_layer": layer,
        "first_quantity": metric,
        "value": value.to_string(),
        "cause": cause,
        "records": &records[records.len().saturating_sub(FORENSICS_DEPTH)..],
    });
    let text = serde_json::to_string_pretty(&json).expect("forensics serialise");
    write_atomic(&dir.join(FORENSICS_FILE), text.as_bytes())?;
    Ok(cause)
}

impl<M: Network> Observer<M> for GradientProbe {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), TrainError> {
        self.dir = run.dir.clone();
        self.points = run.points.clone();
        self.total_steps = run.total_steps;
        let points = serde_json::to_string_pretty(&self.points).expect("points serialise");
        write_atomic(&self.dir.join(POINTS_FILE), points.as_bytes())?;
        let csv_path = self.dir.join(PROBE_FILE);
        if let Some(at) = run.resumed_at {
            self.probes = (0..at).filter(|&s| self.config.schedule.probes(s)).count() as u64;
            if csv_path.exists() {
                // The records before the checkpoint (the trainer cut the rest), so
                // that verdicts judge the whole run, from its first step.
                self.records = read_probe_csv(&csv_path, &self.points).map_err(TrainError::Observer)?;
            }
        }
        let mut writer = Writer::open(&self.dir, &self.points)?;
        // Ratios divide by the latest weight norms: after a resume, those of
        // the last update step before the checkpoint, as the run had them.
        writer.weight_l2 = (0..self.points.len())
            .map(|i| self.records.iter().rev().find_map(|r| r.get(i, Metric::WeightL2)))
            .collect();
        self.worker = Some(Worker::start(writer));
        self.started = Some(Instant::now());
        Ok(())
    }

    fn wants_taps(&mut self, step: u64) -> bool {
        self.config.schedule.probes(step)
    }

    fn after_backward(&mut self, view: &BackwardView<'_, M>) -> Control {
        // The previous probe step's statistics were taken during this step's
        // forward and backward passes: record them before the optimiser moves on.
        if let Control::Diverged(cause) = self.drain() {
            return Control::Diverged(cause);
        }
        if view.taps.is_none() {
            return Control::Continue;
        }
        let t = Instant::now();
        self.pending = Some(self.measure(view));
        self.spent += t.elapsed();
        Control::Continue
    }

    fn after_step(&mut self, info: &StepInfo, after: &M) -> Control {
        let Some(pending) = self.pending.take() else {
            return Control::Continue;
        };
        let t = Instant::now();
        let ids = &self.ids.as_ref().expect("found in measure").weight_ids;
        let job = match pending {
            Pending::Host(meta, mut job) => {
                if meta.update {
                    job.weights_after(after, ids);
                }
                Job::Host(meta, job)
            }
            Pending::Device(meta, mut stats, before) => {
                let after = if meta.update {
                    param_values(after, ids)
                } else {
                    Vec::new()
                };
                // Read on the training thread: the form measured on an H100
                // (BENCHMARKS.md, GPU).
                finish_device_step(&mut stats, &before, &after);
                Job::Done(meta, stats)
            }
        };
        self.worker.as_mut().expect("started in on_start").submit(job);
        self.in_flight = true;
        self.spent += t.elapsed();
        if info.step + 1 >= self.total_steps {
            // No next step to overlap with: record it before the run ends.
            return self.drain();
        }
        Control::Continue
    }

    fn before_checkpoint(&mut self) -> Control {
        // The record of the step before the checkpoint belongs to it.
        self.drain()
    }

    fn on_finish(&mut self, summary: &mut Summary) -> Result<(), TrainError> {
        // A run stopped early can leave a step in flight; its record is written
        // (with forensics, if it is non-finite) although the run has ended.
        let _ = self.drain();
        let verdicts = write_verdicts(
            &self.dir,
            &self.points,
            &self.records,
            self.config.classes,
            summary.diverged.as_ref(),
        )?;
        let total = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let spent = self.spent.as_secs_f64();
        // The trainer's paired step times: probed steps (taps, probe, writes) against plain ones.
        let per_probed_step = summary.step_seconds.probe_overhead();
        summary.extra.insert(
            "probe".into(),
            serde_json::json!({
                "schedule": self.config.schedule.to_string(),
                // The path taken; the configured choice when no step was probed.
                "reductions": self.reducer.map_or_else(|| self.config.reductions.to_string(), |r| r.name().to_owned()),
                "probed_steps": self.records.len(),
                "seconds_in_probe": spent,
                "seconds_in_worker": self.worker_busy.as_secs_f64(),
                "probe_share_of_run": if total > 0.0 { spent / total } else { 0.0 },
                "overhead_per_probed_step": per_probed_step,
                "overhead_note": "overhead_per_probed_step: median probed step time / median unprobed step time - 1 \
                                  (gradient captures included; null without both kinds of step); seconds_in_probe: \
                                  the probe's own reads, transfers, waits and writes on the training thread; \
                                  seconds_in_worker: the host statistics, taken on the probe's own thread while \
                                  the next step trains",
                "verdict": verdicts.verdict,
            }),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use gradscope_models::PointKind;
    use gradscope_train::Backend;

    /// The live summary: input-side over output-side signal of the main path
    /// (the head left out), and the mean share of stuck units.
    #[test]
    fn live_summary_of_a_record() {
        let point = |name: &str, kind: PointKind, act| ProbePoint {
            name: name.into(),
            kind,
            depth: 0,
            activation: act,
            params: vec![],
            weight: None,
            shape: vec![4],
            has_norm: false,
            block: None,
            main_path: true,
        };
        let relu = Some(gradscope_models::Activation::Relu);
        let points = vec![
            point("h1", PointKind::Dense, relu),
            point("h2", PointKind::Dense, relu),
            point("head", PointKind::Head, None),
        ];
        let mut rec = ProbeRecord::new(7, 3);
        for (i, (signal, dead)) in [(0.01, 0.5), (1.0, 0.0), (9.0, 0.0)].into_iter().enumerate() {
            rec.layers[i].insert(Metric::SignalRms, signal);
            rec.layers[i].insert(Metric::DeadFrac, dead);
        }
        let live = Live::of(&rec, &points);
        assert_eq!(live.step, 7);
        assert_eq!(live.signal_ratio, Some(0.01));
        assert_eq!(live.stuck_units, Some(0.25));
        let mut probe = GradientProbe::new(ProbeConfig::default());
        let handle = probe.live();
        probe.points = points;
        assert_eq!(probe.keep(rec, false), Control::Continue);
        assert_eq!(*handle.lock().unwrap(), Some(live));
    }

    #[test]
    fn auto_reductions_know_the_cpu_backends() {
        let on = |b: Backend| {
            b.device()
                .map(|d| Reading::of(&Tensor::<1>::from_data(TensorData::new(vec![1f32], [1]), &d)) == Reading::Local)
        };
        assert!(on(Backend::Flex).unwrap());
        assert!(on(Backend::Ndarray).unwrap());
        if let Ok(wgpu) = on(Backend::Wgpu) {
            assert!(!wgpu, "wgpu is a GPU backend, even on llvmpipe");
        }
    }

    #[test]
    fn auto_reductions_read_small_steps_to_the_host() {
        // mlp-sigmoid-8x256 at batch 128: output, pre-activation and dL/dh of 128 x 256.
        let gpu = Reading::Transaction;
        assert_eq!(Reducer::auto(gpu, 3 * 128 * 256), Reducer::Host(gpu));
        // resnet20's first stage at batch 128: 16 channels of 28 x 28.
        assert_eq!(Reducer::auto(gpu, 3 * 128 * 16 * 28 * 28), Reducer::Device);
        let cpu = Reading::Local;
        assert_eq!(Reducer::auto(cpu, 3 * 128 * 16 * 28 * 28), Reducer::Host(cpu));
    }
}
