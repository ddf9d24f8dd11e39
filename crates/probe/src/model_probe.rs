//! The probe in a training loop gradscope does not drive: burn-train's
//! `Learner` (through `TrainStep`) or a loop of your own, for any Burn module.
//!
//! ```text
//! let probe = ModelProbe::create("runs/my-cnn", ProbeConfig::default())?; // 1. a run directory
//! // 2. in `forward`, where you want dL/dh (the name of a layer joins its parameters):
//! let h = self.probe.activate("conv1", Activation::Relu, self.conv1.forward(x));
//! // 3. in `TrainStep::step`, after computing the loss:
//! self.probe.loss(&loss);
//! // 4. `TrainStep::optimize` becomes:
//! self.probe.clone().optimize(self, optim, lr, grads)
//! // 5. after training:
//! probe.finish()?; // verdicts.json; then `gradscope compare runs/my-cnn`
//! ```
//!
//! On each probed step ([`ProbeConfig::schedule`]) the probe measures every
//! layer of the module, a layer being the parameters under one module path
//! with a weight of rank 2 or more (`conv1.weight`, `conv1.bias`); a
//! normalisation layer's parameters (rank 1 only) belong to the layer before
//! it. Marks add the back-propagated signal dL/dh and the activation
//! statistics at the tensor marked. Points are in module order (the order of
//! the model's fields, which is usually the order `forward` takes): a mark
//! named after a layer's path (`conv1`) joins that layer; one named after a
//! module holding layers (`block1`) is that module's output, placed after its
//! layers; any other name (`logits`) is placed after every layer. The last
//! layer with a weight, and the marks after it, are the output.
//! The run directory gets what `gradscope train` writes for the probe
//! (`points.json`, `probe.csv`, `probe_hist.csv`, `verdicts.json`,
//! `forensics.json` on a non-finite value) and a `metrics.csv` with each
//! probed step's loss; it has no `config.toml`, as gradscope did not build
//! the model.
//!
//! The statistics are device reductions read back in one transfer per probed
//! step ([`crate::device`]), on the training thread: no assumption about the
//! backend or the module (so [`ProbeConfig::reductions`] does not apply). A mark costs nothing on steps that are not probed
//! and in validation passes (no autodiff). With gradient accumulation the
//! marks of a step's last batch are the ones measured; `optimize_multi`
//! (multi-device training) is not probed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use gradscope_models::{Activation, GradSlot, NamedParam, PointKind, ProbePoint, Trace, capture, is_tracked};
use gradscope_train::files::{LineLog, write_atomic};
use gradscope_train::metrics::Divergence;
use gradscope_train::run_dir::{METRICS_FILE, POINTS_FILE, RunDir};
use gradscope_train::{MetricsRow, TapGrads, TrainError};

use crate::config::ProbeConfig;
use crate::device::{device_step, finish_device_step, param_values};
use crate::metric::Metric;
use crate::observer::{Ids, write_forensics, write_verdicts};
use crate::record::ProbeRecord;
use crate::step::{StepStats, StepView};
use crate::verdict::{Verdicts, WINDOW};
use crate::worker::{Meta, Writer};

/// A gradient probe for any Burn module, shared by cloning (keep one in your
/// model as a `#[module(skip)]` field). [`ModelProbe::default`] is off: every
/// call passes its tensors through and `optimize` only steps the optimiser.
#[derive(Clone, Default)]
pub struct ModelProbe(Option<Arc<Mutex<State>>>);

impl std::fmt::Debug for ModelProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("ModelProbe(off)"),
            Some(state) => match state.lock() {
                Ok(s) => write!(f, "ModelProbe({}, step {})", s.run.dir().display(), s.step),
                Err(_) => f.write_str("ModelProbe(poisoned)"),
            },
        }
    }
}

/// A tensor marked in this step's forward pass.
struct Mark {
    name: String,
    activation: Option<Activation>,
    shape: Vec<usize>,
    trace: Trace,
    slot: GradSlot,
}

/// The probe points, fixed at the first probed step, and their parameters.
struct Layout {
    points: Vec<ProbePoint>,
    ids: Ids,
    writer: Writer,
}

struct State {
    run: RunDir,
    config: ProbeConfig,
    /// Optimiser steps taken through [`ModelProbe::optimize`].
    step: u64,
    /// Probed steps so far (update steps and dead-unit windows follow it).
    probes: u64,
    started: Instant,
    marks: Vec<Mark>,
    loss: Option<Tensor<1>>,
    layout: Option<Layout>,
    metrics: LineLog,
    records: Vec<ProbeRecord>,
    diverged: Option<Divergence>,
    /// The first error writing the run's files; the probe stops at it.
    failed: Option<String>,
    /// Mark names not among the points, told once each.
    unknown: BTreeSet<String>,
    finished: bool,
}

impl ModelProbe {
    /// A probe writing into `dir`, which must not exist or be empty (nothing
    /// of yours is overwritten); it is locked against a second writer while
    /// the probe lives.
    pub fn create(dir: impl AsRef<Path>, config: ProbeConfig) -> Result<Self, TrainError> {
        let run = RunDir::claim(dir.as_ref())?;
        let mut metrics = LineLog::append(&run.path(METRICS_FILE))?;
        metrics.line(MetricsRow::HEADER)?;
        Ok(Self(Some(Arc::new(Mutex::new(State {
            run,
            config,
            step: 0,
            probes: 0,
            started: Instant::now(),
            marks: Vec::new(),
            loss: None,
            layout: None,
            metrics,
            records: Vec::new(),
            diverged: None,
            failed: None,
            unknown: BTreeSet::new(),
            finished: false,
        })))))
    }

    /// The state, when this step is probed.
    fn armed(&self) -> Option<MutexGuard<'_, State>> {
        let s = self.0.as_ref()?.lock().ok()?;
        (s.failed.is_none() && s.config.schedule.probes(s.step)).then_some(s)
    }

    /// `h` itself; on probed steps the probe also sees it and the gradient
    /// dL/dh that comes back through it. Give each mark of a forward pass its
    /// own name; the name of a layer's module path (`conv1`) joins the mark
    /// to that layer's parameters.
    pub fn mark<const D: usize>(&self, name: &str, h: Tensor<D>) -> Tensor<D> {
        self.record(name, None, None, h)
    }

    /// `act(a)`, marked as [`Self::mark`] does, with its activation known: the
    /// probe then also measures saturation (sigmoid, tanh) or dead units (ReLU).
    pub fn activate<const D: usize>(&self, name: &str, act: Activation, a: Tensor<D>) -> Tensor<D> {
        if self.armed().is_none() {
            return act.forward(a);
        }
        let pre = act.input_to_keep(&a);
        self.record(name, Some(act), pre, act.forward(a))
    }

    fn record<const D: usize>(
        &self,
        name: &str,
        activation: Option<Activation>,
        pre: Option<Tensor<D>>,
        post: Tensor<D>,
    ) -> Tensor<D> {
        let Some(mut s) = self.armed() else { return post };
        // Validation and inference passes have no gradient to capture.
        if !is_tracked(&post) {
            return post;
        }
        let slot = GradSlot::default();
        let mark = Mark {
            name: name.to_owned(),
            activation,
            shape: post.dims()[1..].to_vec(),
            trace: Trace::of(pre, &post),
            slot: slot.clone(),
        };
        // A step's last forward pass (gradient accumulation) is the one measured.
        match s.marks.iter_mut().find(|m| m.name == name) {
            Some(old) => *old = mark,
            None => s.marks.push(mark),
        }
        capture(post, &slot)
    }

    /// The loss of this step's batch: recorded in `probe.csv` and
    /// `metrics.csv`, and checked against ln(classes) at the first probed step.
    pub fn loss(&self, loss: &Tensor<1>) {
        if let Some(mut s) = self.armed()
            && is_tracked(loss)
        {
            s.loss = Some(loss.clone().inner());
        }
    }

    /// Steps the optimiser (what `TrainStep::optimize` does by default) and,
    /// on probed steps, measures the gradients before the step and the update
    /// after it. An error writing the run's files stops the probe (not the
    /// training) and is returned by [`Self::finish`].
    pub fn optimize<M: Module>(
        &self,
        model: M,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> M {
        let Some(mut s) = self.0.as_ref().and_then(|state| state.lock().ok()) else {
            return optim.step(lr, model, grads);
        };
        let step = s.step;
        s.step += 1;
        let marks = std::mem::take(&mut s.marks);
        let loss = s.loss.take();
        if s.failed.is_some() || !s.config.schedule.probes(step) {
            drop(s);
            return optim.step(lr, model, grads);
        }
        let (model, result) = s.probe_step(step, marks, loss, model, optim, lr, grads);
        if let Err(e) = result {
            eprintln!("gradscope probe: stopped at step {step}: {e}");
            s.failed = Some(e.to_string());
        }
        model
    }

    /// Judges the run and writes `verdicts.json`; call it after training.
    /// (When the last handle is dropped without it, the verdicts are still
    /// written.)
    pub fn finish(&self) -> Result<Verdicts, TrainError> {
        let state = self
            .0
            .as_ref()
            .ok_or_else(|| TrainError::Invalid("this ModelProbe is off: it has no run to judge".into()))?;
        let mut s = state
            .lock()
            .map_err(|_| TrainError::Invalid("the probe's state was poisoned by a panic".into()))?;
        s.finish()
    }

    /// The records written so far.
    pub fn records(&self) -> Vec<ProbeRecord> {
        self.0
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.records.clone()))
            .unwrap_or_default()
    }
}

impl State {
    #[allow(clippy::too_many_arguments)]
    fn probe_step<M: Module>(
        &mut self,
        step: u64,
        marks: Vec<Mark>,
        loss: Option<Tensor<1>>,
        model: M,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> (M, Result<(), TrainError>) {
        if self.layout.is_none() {
            match self.lay_out(&model, &marks) {
                Ok(layout) => self.layout = Some(layout),
                Err(e) => return (optim.step(lr, model, grads), Err(e)),
            }
        }
        let layout = self.layout.as_mut().expect("laid out");
        let n = layout.points.len();
        let mut taps = TapGrads {
            out: vec![None; n],
            norm_in: vec![None; n],
        };
        let mut traces = vec![None; n];
        for mark in marks {
            match layout.points.iter().position(|p| p.name == mark.name) {
                Some(i) => {
                    taps.out[i] = mark.slot.take();
                    traces[i] = Some(mark.trace);
                }
                None => {
                    if self.unknown.insert(mark.name.clone()) {
                        eprintln!(
                            "gradscope probe: mark `{}` first seen at step {step}, after the points were fixed at the first probed step; not measured",
                            mark.name
                        );
                    }
                }
            }
        }
        let update = self.probes.is_multiple_of(self.config.update_every.max(1));
        self.probes += 1;
        let meta = Meta {
            step,
            update,
            window_end: self.probes.is_multiple_of(WINDOW as u64),
        };
        let mut stats = StepStats::default();
        device_step(
            &StepView {
                loss,
                points: &layout.points,
                taps: &taps,
                traces: &traces,
                grads: &grads,
                weight: &layout.ids.weight,
                bias: &layout.ids.bias,
                update,
            },
            &mut stats,
        );
        let weights = |m: &M| {
            if update {
                param_values(m, &layout.ids.weight_ids)
            } else {
                Vec::new()
            }
        };
        let before = weights(&model);
        let lr_base = lr.base();
        let model = optim.step(lr, model, grads);
        finish_device_step(&mut stats, &before, &weights(&model));
        let result = self.keep(meta, stats, lr_base);
        (model, result)
    }

    /// The probe points of `model` with this step's marks, written to `points.json`.
    fn lay_out<M: Module>(&self, model: &M, marks: &[Mark]) -> Result<Layout, TrainError> {
        let marked: Vec<Marked> = marks
            .iter()
            .map(|m| Marked {
                name: m.name.clone(),
                activation: m.activation,
                shape: m.shape.clone(),
            })
            .collect();
        let points = layout_points(&gradscope_models::named_params(model), &marked);
        if points.is_empty() {
            return Err(TrainError::Invalid(
                "the model has no parameters and no marks: nothing to probe".into(),
            ));
        }
        let text = serde_json::to_string_pretty(&points).expect("points serialise");
        write_atomic(&self.run.path(POINTS_FILE), text.as_bytes())?;
        Ok(Layout {
            ids: Ids::of(&points, model),
            writer: Writer::open(self.run.dir(), &points)?,
            points,
        })
    }

    /// Writes a probed step's record and its `metrics.csv` row.
    fn keep(&mut self, meta: Meta, stats: StepStats, lr: f64) -> Result<(), TrainError> {
        let layout = self.layout.as_mut().expect("laid out");
        let rec = layout.writer.write(meta, stats)?;
        let row = MetricsRow {
            step: rec.step,
            // burn-train's epochs are not visible from `optimize`.
            epoch: f64::NAN,
            wall_s: self.started.elapsed().as_secs_f64(),
            lr,
            train_loss: rec.model.get(&Metric::Loss).copied(),
            train_acc: None,
            test_loss: None,
            test_acc: None,
            samples_per_s: None,
        };
        self.metrics.line(&row.to_csv())?;
        let nonfinite = rec.first_nonfinite().is_some();
        self.records.push(rec);
        if nonfinite && self.diverged.is_none() {
            let cause = write_forensics(self.run.dir(), &layout.points, &self.records)?;
            eprintln!("gradscope probe: {cause}");
            self.diverged = Some(Divergence { step: meta.step, cause });
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Verdicts, TrainError> {
        if let Some(e) = &self.failed {
            return Err(TrainError::Invalid(format!("the probe stopped early: {e}")));
        }
        let Some(layout) = &self.layout else {
            return Err(TrainError::Invalid(format!(
                "no step was probed (steps taken through ModelProbe::optimize: {}; schedule: {})",
                self.step, self.config.schedule
            )));
        };
        let verdicts = write_verdicts(
            self.run.dir(),
            &layout.points,
            &self.records,
            self.config.classes,
            self.diverged.as_ref(),
        )?;
        self.finished = true;
        Ok(verdicts)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if !self.finished && self.layout.is_some() && self.failed.is_none() {
            let _ = self.finish();
        }
    }
}

/// What the probe knows of a mark when it lays out the points.
#[derive(Debug, Clone, PartialEq)]
struct Marked {
    name: String,
    activation: Option<Activation>,
    shape: Vec<usize>,
}

/// A layer: the parameters under one module path with a weight of rank >= 2.
struct Layer {
    path: String,
    params: Vec<String>,
    weight: String,
    rank: usize,
}

/// The module path a parameter belongs to (`conv1` for `conv1.weight`).
fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(p, _)| p)
}

/// The layers of a module in visit order; parameters of rank 1 alone under
/// their path (a norm's gamma and beta) join the layer before them, or the
/// first layer when none comes before.
fn layers(named: &[NamedParam]) -> Vec<Layer> {
    let mut paths: Vec<&str> = Vec::new();
    for p in named {
        if !paths.contains(&parent(&p.path)) {
            paths.push(parent(&p.path));
        }
    }
    let mut layers: Vec<Layer> = Vec::new();
    let mut orphans: Vec<String> = Vec::new();
    for path in paths {
        let params: Vec<&NamedParam> = named.iter().filter(|p| parent(&p.path) == path).collect();
        let weight = params
            .iter()
            .find(|p| p.shape.len() >= 2 && p.path.ends_with("weight"))
            .or_else(|| params.iter().find(|p| p.shape.len() >= 2));
        let names = params.iter().map(|p| p.path.clone());
        match (weight, layers.last_mut()) {
            (Some(w), _) => layers.push(Layer {
                path: path.to_owned(),
                params: orphans.drain(..).chain(names).collect(),
                weight: w.path.clone(),
                rank: w.shape.len(),
            }),
            (None, Some(prev)) => prev.params.extend(names),
            (None, None) => orphans.extend(names),
        }
    }
    layers
}

/// The probe points of a module with parameters `named` and marks `marked`
/// (in the order `forward` reached them); see the module docs for the rules.
fn layout_points(named: &[NamedParam], marked: &[Marked]) -> Vec<ProbePoint> {
    let layers = layers(named);
    let point = |name: &str, activation, shape: Vec<usize>, layer: Option<&Layer>| {
        let kind = match layer.map_or(shape.len(), |l| l.rank) {
            n if n >= 3 => PointKind::Conv,
            _ => PointKind::Dense,
        };
        ProbePoint {
            name: name.to_owned(),
            kind,
            depth: 0,
            activation,
            params: layer.map_or_else(Vec::new, |l| l.params.clone()),
            weight: layer.map(|l| l.weight.clone()),
            shape,
            has_norm: false,
            block: None,
            main_path: true,
        }
    };
    // Each point's place in module order: a layer's index; a module's output
    // just after its last layer; any other mark after every layer.
    let mut placed: Vec<(f64, ProbePoint)> = layers
        .iter()
        .enumerate()
        .map(|(k, l)| (k as f64, point(&l.path, None, Vec::new(), Some(l))))
        .collect();
    for m in marked {
        if let Some(k) = layers.iter().position(|l| l.path == m.name) {
            placed[k].1.activation = m.activation;
            placed[k].1.shape = m.shape.clone();
        } else {
            let module = format!("{}.", m.name);
            let after = layers
                .iter()
                .rposition(|l| l.path.starts_with(&module))
                .map_or(f64::INFINITY, |k| k as f64 + 0.5);
            placed.push((after, point(&m.name, m.activation, m.shape.clone(), None)));
        }
    }
    // Stable: marks at one place keep the order `forward` reached them in.
    placed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut points: Vec<ProbePoint> = placed.into_iter().map(|(_, p)| p).collect();
    // The output layer: the last with a weight, and any mark after it.
    if let Some(last) = points.iter().rposition(|p| p.weight.is_some()) {
        points[last..].iter_mut().for_each(|p| p.kind = PointKind::Head);
    }
    for (depth, p) in points.iter_mut().enumerate() {
        p.depth = depth;
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ParamId;

    fn param(path: &str, shape: &[usize]) -> NamedParam {
        NamedParam {
            path: path.into(),
            id: ParamId::new(),
            shape: shape.to_vec(),
        }
    }

    fn mark(name: &str, act: Option<Activation>, shape: &[usize]) -> Marked {
        Marked {
            name: name.into(),
            activation: act,
            shape: shape.to_vec(),
        }
    }

    /// A CNN: conv1, its BatchNorm, a block of two convolutions, fc. A mark
    /// named after a layer joins it, one named after a module (`block`) is its
    /// output, after its layers; unmarked layers keep their place; the last
    /// layer is the head.
    #[test]
    fn layers_and_marks_make_points_in_module_order() {
        let named = [
            param("conv1.weight", &[8, 1, 3, 3]),
            param("conv1.bias", &[8]),
            param("bn1.gamma", &[8]),
            param("bn1.beta", &[8]),
            param("block.conv_a.weight", &[8, 8, 3, 3]),
            param("block.conv_b.weight", &[8, 8, 3, 3]),
            param("fc.weight", &[392, 10]),
            param("fc.bias", &[10]),
        ];
        let relu = Some(Activation::Relu);
        let marked = [mark("conv1", relu, &[8, 28, 28]), mark("block", None, &[8, 7, 7])];
        let points = layout_points(&named, &marked);
        let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["conv1", "block.conv_a", "block.conv_b", "block", "fc"]);
        let conv1 = &points[0];
        assert_eq!(conv1.params, ["conv1.weight", "conv1.bias", "bn1.gamma", "bn1.beta"]);
        assert_eq!(conv1.weight.as_deref(), Some("conv1.weight"));
        assert_eq!((conv1.kind, conv1.activation, conv1.depth), (PointKind::Conv, relu, 0));
        assert_eq!(conv1.shape, [8, 28, 28]);
        assert_eq!((points[1].activation, points[1].shape.len()), (None, 0), "unmarked");
        let block = &points[3];
        assert_eq!(
            (block.weight.as_ref(), block.kind, block.depth),
            (None, PointKind::Conv, 3)
        );
        assert_eq!(points[4].kind, PointKind::Head);
        assert!(points.iter().all(|p| p.main_path && p.block.is_none()));
    }

    /// Without marks the points are the layers in module order; marks after
    /// the last layer belong to the output.
    #[test]
    fn layers_alone_and_marks_after_the_head() {
        let named = [
            param("scale", &[4]),
            param("layers.0.weight", &[4, 8]),
            param("layers.1.weight", &[8, 2]),
        ];
        let points = layout_points(&named, &[]);
        assert_eq!(points.len(), 2);
        assert_eq!(
            points[0].params,
            ["scale", "layers.0.weight"],
            "a leading rank-1 parameter joins the first layer"
        );
        assert_eq!((points[0].kind, points[1].kind), (PointKind::Dense, PointKind::Head));
        let points = layout_points(&named, &[mark("logits", None, &[2]), mark("probs", None, &[2])]);
        let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["layers.0", "layers.1", "logits", "probs"],
            "after every layer, in forward order"
        );
        assert!(points[1..].iter().all(|p| p.kind == PointKind::Head));
        assert!(layout_points(&[], &[]).is_empty());
    }
}
