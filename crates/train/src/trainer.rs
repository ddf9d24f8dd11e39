//! The training loop: a [`Trainer`] over any [`Network`], with [`Observer`]s
//! called after each backward pass and each optimiser step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use gradscope_data::{MnistBatch, MnistBatcher, Split, batches_per_epoch, epoch_batches, epoch_order};
use gradscope_models::{GradSlot, Network, ProbePoint, Taps, Trace};

use crate::TrainError;
use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::files::{FileError, LineLog, write_atomic};
use crate::metrics::{Divergence, MetricsRow, Status, StepTimes, Summary};
use crate::optim::build_optimizer;
use crate::run_dir::{EVENTS_FILE, METRICS_FILE, RunDir, SUMMARY_FILE, event};

/// Where the loop is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// 0-based index of the optimiser step being taken.
    pub step: u64,
    /// 0-based epoch.
    pub epoch: u64,
    pub lr: f64,
    pub batch_size: usize,
}

/// Gradients of the taps: `dL/dh` at each probe point (and at each BatchNorm input).
#[derive(Debug, Clone)]
pub struct TapGrads {
    pub out: Vec<Option<Tensor<2>>>,
    pub norm_in: Vec<Option<Tensor<2>>>,
}

impl TapGrads {
    /// Takes the gradients a backward pass left in the taps.
    pub fn take(taps: &Taps) -> Self {
        Self {
            out: taps.out.iter().map(GradSlot::take).collect(),
            norm_in: taps
                .norm_in
                .iter()
                .map(|x| x.as_ref().and_then(GradSlot::take))
                .collect(),
        }
    }
}

/// What an observer sees right after a backward pass, before the optimiser step.
pub struct BackwardView<'a, M> {
    pub info: &'a StepInfo,
    pub model: &'a M,
    pub loss: &'a Tensor<1>,
    pub grads: &'a GradientsParams,
    /// Present on tapped steps ([`Observer::wants_taps`]).
    pub taps: Option<&'a TapGrads>,
    /// Present on tapped steps ([`Observer::wants_taps`]).
    pub traces: Option<&'a [Trace]>,
}

/// Facts about the run an observer may need.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dir: PathBuf,
    pub points: Vec<ProbePoint>,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    pub resumed_at: Option<u64>,
}

/// An observer's verdict after a backward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    Continue,
    /// Stop the run as diverged, for this reason.
    Diverged(String),
    /// The observer cannot go on (e.g. it could not write its records): stop
    /// the run with this error, as `interrupted` if a checkpoint exists.
    Failed(String),
}

/// Hooks into the loop. Every method has a do-nothing default.
pub trait Observer<M> {
    fn on_start(&mut self, _run: &RunInfo) -> Result<(), TrainError> {
        Ok(())
    }
    /// Whether step `step` should run the forward pass with taps at the
    /// model's probe points, so that [`BackwardView`] carries `dL/dh` and the
    /// activations there (a step any observer asks for is tapped for all).
    fn wants_taps(&mut self, _step: u64) -> bool {
        false
    }
    fn after_backward(&mut self, _view: &BackwardView<'_, M>) -> Control {
        Control::Continue
    }
    /// Called after the optimiser step with the updated model. (The model
    /// before the step is not offered: holding it would share every parameter
    /// and make the optimiser copy them instead of updating in place; an
    /// observer that needs old values keeps what it needs in `after_backward`.)
    fn after_step(&mut self, _info: &StepInfo, _after: &M) -> Control {
        Control::Continue
    }
    fn on_log(&mut self, _row: &MetricsRow) {}
    /// Called before a checkpoint is saved: an observer that writes files
    /// asynchronously finishes what belongs to the steps before it, so that a
    /// resume from this checkpoint finds them complete.
    fn before_checkpoint(&mut self) -> Control {
        Control::Continue
    }
    /// Called once at the end, whatever the status; may add fields to the summary.
    fn on_finish(&mut self, _summary: &mut Summary) -> Result<(), TrainError> {
        Ok(())
    }
}

/// Training data, ready to batch.
pub struct Data {
    pub train: Split,
    pub test: Split,
    pub batcher: MnistBatcher,
}

/// Steps accumulated since the last metrics row, kept on the device.
struct Window {
    losses: Vec<Tensor<1>>,
    correct: Vec<Tensor<1>>,
    samples: usize,
    first_step: u64,
    started: Instant,
}

const HELD: &str = "the trainer holds its model outside the optimiser step";

/// The training loop over a model `M`.
pub struct Trainer<M: Network + 'static> {
    pub config: TrainConfig,
    device: Device,
    /// Always `Some`, except during the optimiser step, which takes the model
    /// by value: were the trainer to keep a clone meanwhile, every parameter
    /// buffer would be shared and flex would copy it instead of updating it in
    /// place.
    model: Option<M>,
    optim: ModuleOptimizer,
    data: Arc<Data>,
    run: RunDir,
    state: TrainState,
    observers: Vec<Box<dyn Observer<M>>>,
    stop: Arc<AtomicBool>,
    metrics: LineLog,
    events: LineLog,
    summary: Summary,
    resumed_at: Option<u64>,
    /// The step of the newest checkpoint, once there is one.
    checkpointed: Option<u64>,
    /// Newer checkpoints passed over on resume, and why.
    resume_notes: Vec<String>,
    step_times: StepTimes,
}

impl<M: Network + 'static> Trainer<M> {
    /// A trainer for `model` (already on `device`, which must have autodiff) that
    /// writes into the fresh run directory `run`.
    pub fn new(
        config: TrainConfig,
        model: M,
        data: Data,
        device: Device,
        run: RunDir,
        label: &str,
    ) -> Result<Self, TrainError> {
        let optim = build_optimizer(&config);
        let metrics_path = run.path(METRICS_FILE);
        let fresh = !metrics_path.exists();
        let mut metrics = LineLog::append(&metrics_path)?;
        if fresh {
            metrics.line(MetricsRow::HEADER)?;
        }
        let events = LineLog::append(&run.path(EVENTS_FILE))?;
        let summary = Summary {
            status: Status::Running,
            model: label.to_owned(),
            dataset: config.dataset.clone(),
            backend: config.backend.to_string(),
            seed: config.seed,
            steps: 0,
            epochs: 0.0,
            wall_s: 0.0,
            samples_per_s: None,
            final_train_loss: None,
            final_test_loss: None,
            final_test_acc: None,
            best_test_acc: None,
            best_test_acc_step: None,
            initial_test_loss: None,
            diverged: None,
            error: None,
            gradscope_version: env!("CARGO_PKG_VERSION").into(),
            burn_version: env!("GRADSCOPE_BURN_VERSION").into(),
            git_commit: Some(env!("GRADSCOPE_GIT_COMMIT").to_owned()).filter(|c| !c.is_empty()),
            step_seconds: Default::default(),
            extra: Default::default(),
        };
        Ok(Self {
            config,
            device,
            model: Some(model),
            optim,
            data: Arc::new(data),
            run,
            // metrics.csv starts with its header line.
            state: TrainState {
                metrics_lines: 1,
                ..TrainState::default()
            },
            observers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            metrics,
            events,
            summary,
            resumed_at: None,
            checkpointed: None,
            resume_notes: Vec::new(),
            step_times: StepTimes::default(),
        })
    }

    /// Continues from the run directory's latest intact checkpoint: model,
    /// optimiser state and data position are restored, and every log is cut
    /// back to the checkpoint (rows the killed run wrote after it would
    /// otherwise appear twice).
    pub fn resume(mut self) -> Result<Self, TrainError> {
        let found = checkpoint::latest(self.run.dir())?;
        let (dir, state) = (found.dir, found.state);
        let model_path = dir.join(checkpoint::MODEL_FILE);
        let model = self.model.take().expect(HELD).try_load_file(&model_path);
        self.model = Some(model.map_err(|e| TrainError::Checkpoint {
            path: model_path.clone(),
            reason: e.to_string(),
        })?);
        let optim_path = dir.join(checkpoint::OPTIM_FILE);
        self.optim = self.optim.load(&optim_path).map_err(|e| TrainError::Checkpoint {
            path: optim_path.clone(),
            reason: e.to_string(),
        })?;
        self.run.rewind(state.step, state.metrics_lines)?;
        self.metrics = LineLog::append(&self.run.path(METRICS_FILE))?;
        self.summary.best_test_acc = state.best_test_acc;
        self.summary.best_test_acc_step = state.best_test_acc_step;
        self.summary.initial_test_loss = state.initial_test_loss;
        self.resumed_at = Some(state.step);
        self.checkpointed = Some(state.step);
        for note in &found.rejected {
            self.log_event("checkpoint_rejected", serde_json::json!({ "reason": note }))?;
        }
        self.resume_notes = found.rejected;
        self.events.line(&event(
            "resume",
            serde_json::json!({ "step": state.step, "checkpoint": dir.display().to_string() }),
        ))?;
        self.state = state;
        Ok(self)
    }

    /// Newer checkpoints that [`Self::resume`] passed over because they were
    /// damaged, with the reason for each (also in `events.jsonl`).
    pub fn resume_notes(&self) -> &[String] {
        &self.resume_notes
    }

    /// Appends an event to the run's `events.jsonl`.
    pub fn log_event(&mut self, name: &str, fields: serde_json::Value) -> Result<(), TrainError> {
        Ok(self.events.line(&event(name, fields))?)
    }

    /// Optimiser steps taken so far (the checkpoint's, after a resume).
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Adds an observer.
    pub fn observe(&mut self, observer: Box<dyn Observer<M>>) {
        self.observers.push(observer);
    }

    /// A flag that, once set (e.g. by a Ctrl-C handler), makes the loop save a
    /// checkpoint and stop as `interrupted` after the current step.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    fn model(&self) -> &M {
        self.model.as_ref().expect(HELD)
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        self.run.dir()
    }

    fn steps_per_epoch(&self) -> u64 {
        batches_per_epoch(self.data.train.len(), self.config.batch_size) as u64
    }

    fn total_steps(&self) -> u64 {
        self.config.total_steps(self.steps_per_epoch())
    }

    /// Runs to the end (or to divergence or interruption) and returns the summary,
    /// which is also written to `summary.json`.
    pub fn run(mut self) -> Result<(Summary, M), TrainError> {
        let run_info = RunInfo {
            dir: self.run.dir().to_owned(),
            points: self.model().probe_points().to_vec(),
            steps_per_epoch: self.steps_per_epoch(),
            total_steps: self.total_steps(),
            resumed_at: self.resumed_at,
        };
        for o in &mut self.observers {
            o.on_start(&run_info)?;
        }
        if self.resumed_at.is_none() {
            self.events.line(&event(
                "start",
                serde_json::json!({ "total_steps": run_info.total_steps }),
            ))?;
            // Step 0: the untrained network, so every curve starts at the beginning.
            self.log_row(None, true)?;
        }
        let status = match self.train_loop(&run_info) {
            Ok(status) => status,
            Err(e) => {
                // Resumable only from a checkpoint; the disk may be full, so
                // the summary is written if it can be.
                self.summary.status = if self.checkpointed.is_some() {
                    Status::Interrupted
                } else {
                    Status::Failed
                };
                self.summary.error = Some(e.to_string());
                let _ = self.finish();
                return Err(e);
            }
        };
        self.summary.status = status;
        self.finish()?;
        let model = self.model.take().expect(HELD);
        Ok((self.summary, model))
    }

    fn train_loop(&mut self, run: &RunInfo) -> Result<Status, TrainError> {
        let spe = run.steps_per_epoch;
        let started = Instant::now();
        let wall_offset = self.state.wall_s;
        let device = self.device.clone();
        while self.state.epoch < self.config.epochs {
            let order = epoch_order(
                self.data.train.len(),
                self.config.seed,
                self.state.epoch,
                self.config.shuffle,
            );
            let start = self.state.batch_in_epoch as usize;
            let mut window = self.new_window();
            let data = Arc::clone(&self.data);
            for batch in epoch_batches(
                &data.train,
                &data.batcher,
                &order,
                self.config.batch_size,
                start,
                &device,
            ) {
                if self.state.step >= run.total_steps {
                    break;
                }
                if self.stop.load(Ordering::SeqCst) {
                    self.state.wall_s = wall_offset + started.elapsed().as_secs_f64();
                    // Steps since the last row, if any (else that row already says it all).
                    if !window.losses.is_empty()
                        && let Some((at, cause)) = self.flush(&mut window, false)?
                    {
                        return self.diverge(at, cause);
                    }
                    if let Some((at, cause)) = self.save_checkpoint()? {
                        return self.diverge(at, cause);
                    }
                    self.events
                        .line(&event("interrupted", serde_json::json!({ "step": self.state.step })))?;
                    return Ok(Status::Interrupted);
                }
                if let Some(cause) = self.train_step(batch, &mut window)? {
                    return self.diverge(self.state.step, cause);
                }
                self.state.step += 1;
                self.state.batch_in_epoch += 1;
                self.state.wall_s = wall_offset + started.elapsed().as_secs_f64();
                let step = self.state.step;
                let end_of_epoch = self.state.batch_in_epoch == spe;
                let last = step == run.total_steps;
                let eval = end_of_epoch || last || self.config.eval_every.is_some_and(|n| step.is_multiple_of(n));
                if eval || step.is_multiple_of(self.config.log_every.max(1)) {
                    if let Some((at, cause)) = self.flush(&mut window, eval)? {
                        return self.diverge(at, cause);
                    }
                    self.state.wall_s = wall_offset + started.elapsed().as_secs_f64();
                }
            }
            if self.state.batch_in_epoch == spe {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
                if let Some((at, cause)) = self.save_checkpoint()? {
                    return self.diverge(at, cause);
                }
            }
            if self.state.step >= run.total_steps {
                break;
            }
        }
        // The final state (also after 0 steps: the initial weights) can be
        // exported or extended.
        if self.checkpointed != Some(self.state.step)
            && let Some((at, cause)) = self.save_checkpoint()?
        {
            return self.diverge(at, cause);
        }
        Ok(Status::Completed)
    }

    fn new_window(&self) -> Window {
        Window {
            losses: Vec::new(),
            correct: Vec::new(),
            samples: 0,
            first_step: self.state.step,
            started: Instant::now(),
        }
    }

    /// One optimiser step. Returns a divergence cause if an observer saw one.
    fn train_step(&mut self, batch: MnistBatch, window: &mut Window) -> Result<Option<String>, TrainError> {
        let started = Instant::now();
        let total = self.total_steps();
        let info = StepInfo {
            step: self.state.step,
            epoch: self.state.epoch,
            lr: self.config.lr_at(self.state.step, total),
            batch_size: batch.targets.dims()[0],
        };
        let probe = self
            .observers
            .iter_mut()
            .fold(false, |any, o| o.wants_taps(info.step) | any); // ask every observer
        let model = self.model.as_ref().expect(HELD);
        let head = model.head();
        let taps = probe.then(|| Taps::new(model.probe_points()));
        let (logits, traces) = if probe {
            let p = model.forward_probed(batch.images, taps.as_ref());
            (p.logits, Some(p.traces))
        } else {
            (model.forward(batch.images), None)
        };
        let loss = head.loss(logits.clone(), batch.targets.clone());
        let correct = head
            .predict(logits.inner())
            .equal(batch.targets.inner())
            .int()
            .sum()
            .float();
        let raw = loss.backward();
        let tap_grads = taps.map(|t| TapGrads::take(&t));
        let mut grads = GradientsParams::from_grads(raw, model);
        if let Some(max_norm) = self.config.clip_grad_norm {
            grads = clip_global_norm(model, grads, max_norm);
        }
        let mut diverged = None;
        let mut failed = None;
        {
            let view = BackwardView {
                info: &info,
                model,
                loss: &loss,
                grads: &grads,
                taps: tap_grads.as_ref(),
                traces: traces.as_deref(),
            };
            for o in &mut self.observers {
                match o.after_backward(&view) {
                    Control::Continue => {}
                    Control::Diverged(cause) => {
                        diverged.get_or_insert(cause);
                    }
                    Control::Failed(error) => {
                        failed.get_or_insert(error);
                    }
                }
            }
        }
        if diverged.is_some() {
            return Ok(diverged);
        }
        if let Some(error) = failed {
            return Err(TrainError::Observer(error));
        }
        let model = self.model.take().expect(HELD);
        let model = self.model.insert(self.optim.step(info.lr, model, grads));
        for o in &mut self.observers {
            match o.after_step(&info, model) {
                Control::Continue => {}
                Control::Diverged(cause) => {
                    diverged.get_or_insert(cause);
                }
                Control::Failed(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        if let Some(error) = failed {
            return Err(TrainError::Observer(error));
        }
        window.losses.push(loss.inner().reshape([1]));
        window.correct.push(correct.reshape([1]));
        window.samples += info.batch_size;
        self.step_times.record(probe, started.elapsed().as_secs_f64());
        Ok(diverged)
    }

    /// Writes a metrics row for the window (one device read), evaluating first if
    /// asked. Returns the step and cause of the first non-finite loss, if any.
    fn flush(&mut self, window: &mut Window, eval: bool) -> Result<Option<(u64, String)>, TrainError> {
        let elapsed = window.started.elapsed().as_secs_f64();
        let mut train = None;
        if !window.losses.is_empty() {
            let losses: Vec<f32> = Tensor::cat(std::mem::take(&mut window.losses), 0)
                .to_data()
                .convert::<f32>()
                .try_to_vec()
                .expect("f32 losses");
            let correct: f32 = Tensor::cat(std::mem::take(&mut window.correct), 0).sum().into_scalar();
            if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
                return Ok(Some((
                    window.first_step + i as u64,
                    format!(
                        "training loss is {} at step {}",
                        losses[i],
                        window.first_step + i as u64
                    ),
                )));
            }
            let mean = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
            train = Some((
                mean,
                correct as f64 / window.samples as f64,
                window.samples as f64 / elapsed.max(1e-9),
            ));
        }
        *window = self.new_window();
        self.log_row(train, eval)?;
        Ok(None)
    }

    fn log_row(&mut self, train: Option<(f64, f64, f64)>, eval: bool) -> Result<(), TrainError> {
        let step = self.state.step;
        let test = if eval { Some(self.evaluate()) } else { None };
        if let Some((loss, acc)) = test {
            if step == 0 {
                self.summary.initial_test_loss = Some(loss);
            }
            if self.summary.best_test_acc.is_none_or(|b| acc > b) {
                self.summary.best_test_acc = Some(acc);
                self.summary.best_test_acc_step = Some(step);
            }
            self.summary.final_test_loss = Some(loss);
            self.summary.final_test_acc = Some(acc);
            self.events.line(&event(
                "evaluation",
                serde_json::json!({ "step": step, "test_loss": loss, "test_acc": acc }),
            ))?;
        }
        if let Some((loss, _, sps)) = train {
            self.summary.final_train_loss = Some(loss);
            self.summary.samples_per_s = Some(sps);
        }
        let row = MetricsRow {
            step,
            epoch: step as f64 / self.steps_per_epoch() as f64,
            wall_s: self.state.wall_s,
            lr: self.config.lr_at(step.saturating_sub(1), self.total_steps()),
            train_loss: train.map(|t| t.0),
            train_acc: train.map(|t| t.1),
            test_loss: test.map(|t| t.0),
            test_acc: test.map(|t| t.1),
            samples_per_s: train.map(|t| t.2),
        };
        self.metrics.line(&row.to_csv())?;
        self.state.metrics_lines += 1;
        for o in &mut self.observers {
            o.on_log(&row);
        }
        Ok(())
    }

    /// Test loss and accuracy with the model in evaluation mode (BatchNorm uses
    /// running statistics), in one device read.
    pub fn evaluate(&self) -> (f64, f64) {
        evaluate(
            self.model(),
            &self.data.test,
            &self.data.batcher,
            &self.device.clone().inner(),
        )
    }

    /// Saves a checkpoint once every observer has finished with the steps
    /// before it; returns instead the step and cause of a divergence that an
    /// observer found while finishing.
    fn save_checkpoint(&mut self) -> Result<Option<(u64, String)>, TrainError> {
        let last = self.state.step.saturating_sub(1);
        for o in &mut self.observers {
            match o.before_checkpoint() {
                Control::Continue => {}
                Control::Diverged(cause) => return Ok(Some((last, cause))),
                Control::Failed(error) => return Err(TrainError::Observer(error)),
            }
        }
        let dir = checkpoint::save(&self.run, self.model(), &self.optim, &self.state, &self.summary)?;
        self.checkpointed = Some(self.state.step);
        self.events.line(&event(
            "checkpoint",
            serde_json::json!({ "step": self.state.step, "dir": dir.display().to_string() }),
        ))?;
        Ok(None)
    }

    fn diverge(&mut self, step: u64, cause: String) -> Result<Status, TrainError> {
        self.summary.diverged = Some(Divergence {
            step,
            cause: cause.clone(),
        });
        self.events
            .line(&event("diverged", serde_json::json!({ "step": step, "cause": cause })))?;
        Ok(Status::Diverged)
    }

    fn finish(&mut self) -> Result<(), TrainError> {
        self.summary.steps = self.state.step;
        self.summary.epochs = self.state.step as f64 / self.steps_per_epoch() as f64;
        self.summary.wall_s = self.state.wall_s;
        self.summary.step_seconds = self.step_times.seconds();
        for o in &mut self.observers {
            o.on_finish(&mut self.summary)?;
        }
        let json = serde_json::to_string_pretty(&self.summary).expect("summary serialises");
        write_atomic(&self.run.path(SUMMARY_FILE), json.as_bytes())?;
        self.events.line(&event(
            "end",
            serde_json::json!({ "status": self.summary.status, "step": self.state.step }),
        ))?;
        Ok(())
    }
}

/// Test loss and accuracy of `model` (evaluation mode) on `split`.
pub fn evaluate<M: Network>(model: &M, split: &Split, batcher: &MnistBatcher, device: &Device) -> (f64, f64) {
    let model = model.valid();
    let head = model.head();
    let order: Vec<usize> = (0..split.len()).collect();
    let mut loss_sum = Vec::new();
    let mut correct = Vec::new();
    for batch in epoch_batches(split, batcher, &order, 500, 0, device) {
        let n = batch.targets.dims()[0] as f64;
        let logits = model.forward(batch.images);
        loss_sum.push((head.loss(logits.clone(), batch.targets.clone()) * n).reshape([1]));
        correct.push(
            head.predict(logits)
                .equal(batch.targets)
                .int()
                .sum()
                .float()
                .reshape([1]),
        );
    }
    let both: Vec<f32> = Tensor::cat(
        vec![
            Tensor::cat(loss_sum, 0).sum().reshape([1]),
            Tensor::cat(correct, 0).sum().reshape([1]),
        ],
        0,
    )
    .to_data()
    .convert::<f32>()
    .try_to_vec()
    .expect("f32");
    let n = split.len() as f64;
    (both[0] as f64 / n, both[1] as f64 / n)
}

/// Scales every gradient by `min(1, max_norm / ||g||)`, with `||g||` the norm
/// of all gradients together (PyTorch's `clip_grad_norm_`), without a host sync.
fn clip_global_norm<M: Module>(model: &M, mut grads: GradientsParams, max_norm: f64) -> GradientsParams {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        sq: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.sq.push(g.powf_scalar(2.0).sum());
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: Tensor<1>,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let f = self.factor.clone().reshape([1; D]);
                self.grads.register::<D>(param.id, g * f);
            }
        }
    }
    let mut sums = SumSquares {
        grads: &grads,
        sq: Vec::new(),
    };
    model.visit(&mut sums);
    if sums.sq.is_empty() {
        return grads;
    }
    let norm = Tensor::cat(sums.sq, 0).sum().sqrt();
    let factor = (norm + 1e-6).recip().mul_scalar(max_norm).clamp_max(1.0);
    model.visit(&mut Scale {
        grads: &mut grads,
        factor,
    });
    grads
}

/// Loads a module checkpoint from a file, for tools that inspect runs.
pub fn load_model<M: Module>(model: M, path: &Path) -> Result<M, TrainError> {
    model.try_load_file(path).map_err(|e| TrainError::Checkpoint {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl From<FileError> for TrainError {
    fn from(e: FileError) -> Self {
        TrainError::File(e)
    }
}

#[cfg(test)]
mod clip_tests {
    use super::*;
    use gradscope_models::{Network, preset};

    fn grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
        struct Sq<'a>(&'a GradientsParams, f64);
        impl ModuleVisitor for Sq<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if let Some(g) = self.0.get::<D>(p.id) {
                    self.1 += g.powf_scalar(2.0).sum().into_scalar::<f32>() as f64;
                }
            }
        }
        let mut s = Sq(grads, 0.0);
        model.visit(&mut s);
        s.1.sqrt()
    }

    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        let device = Device::flex().autodiff();
        let model = preset("mlp-relu-2x16").unwrap().init(&device).unwrap();
        let x = Tensor::<4>::ones([4, 1, 28, 28], &device) * 3.0;
        let loss = model.forward(x).powf_scalar(2.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let before = grad_norm(&model, &grads);
        assert!(before > 0.5, "{before}");
        let clipped = clip_global_norm(&model, grads, 0.5);
        assert!(
            (grad_norm(&model, &clipped) - 0.5).abs() < 1e-4,
            "{}",
            grad_norm(&model, &clipped)
        );
        // Below the threshold nothing changes.
        let loss = model
            .forward(Tensor::<4>::ones([4, 1, 28, 28], &device) * 3.0)
            .powf_scalar(2.0)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let unclipped = clip_global_norm(&model, grads, before * 2.0);
        assert!((grad_norm(&model, &unclipped) - before).abs() / before < 1e-5);
    }
}
