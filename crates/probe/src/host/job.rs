//! One probe step on the host: what it reads ([`HostJob::collect`]) and the
//! statistics it takes from the values ([`HostJob::compute`]).

use burn::module::{Module, ParamId};
use gradscope_models::{Activation, Regime};

use super::kernels::*;
use super::transfer::{Gather, HostValues, Reading, Transfer};
use crate::metric::Metric;
use crate::step::{GradPrefix, StepStats, StepView, VectorKind};

/// What [`HostJob::compute`] needs of a point, and where its tensors are among
/// the job's values.
struct At {
    activation: Option<Activation>,
    /// Identity-skip blocks: the points whose taps hold the block input's and
    /// the skip's gradients.
    skip: Option<(usize, usize)>,
    post: usize,
    /// Features per example of `post` (units, for dead-unit counts).
    features: usize,
    pre: Option<usize>,
    norm_in: Option<usize>,
    grads: [(Option<usize>, GradPrefix); 2],
    /// Update steps: the point's main weight before the optimiser step.
    before: Option<usize>,
}

/// A probe step read to the host: every tensor it needs ([`Gather`]: borrowed
/// in place on flex, else copied in one transfer) and where each one is.
///
/// Reads start on the training thread ([`Self::collect`],
/// [`Self::weights_after`]); the statistics ([`Self::compute`]) wait for them
/// and need nothing else, so they can be taken on another thread while
/// training goes on. The borrowed buffers stay valid meanwhile: flex writes in
/// place only into buffers nobody else holds and copies the rest.
pub struct HostJob {
    read: Transfer,
    loss: Option<usize>,
    /// Each tap is read once even when two points use it (skip shares).
    taps: Vec<Option<usize>>,
    at: Vec<At>,
    update: bool,
    /// The points' main weights after the optimiser step, and where each
    /// point's is among the read's values.
    after: Option<(Transfer, Vec<Option<usize>>)>,
    reading: Reading,
}

impl HostJob {
    /// Reads what `view` needs; on update steps (`before`: the model before the
    /// optimiser step, and each point's main weight id) also those weights.
    pub fn collect<M: Module>(view: &StepView<'_>, reading: Reading, before: Option<(&M, &[Option<ParamId>])>) -> Self {
        let mut gather = Gather::new(reading);
        let before = before.map_or_else(
            || vec![None; view.points.len()],
            |(model, ids)| gather.add_params(model, ids),
        );
        let loss = view.loss.clone().map(|l| gather.add(l));
        let taps: Vec<Option<usize>> = view.taps.out.iter().map(|t| t.clone().map(|t| gather.add(t))).collect();
        let at: Vec<At> = (0..view.points.len())
            .map(|i| {
                let mut grad = |id: Option<(ParamId, usize)>| id.and_then(|id| gather.add_grad(view.grads, id));
                let grads = [
                    (grad(view.weight[i]), GradPrefix::Weight),
                    (grad(view.bias[i]), GradPrefix::Bias),
                ];
                let p = &view.points[i];
                let trace = view.traces[i]
                    .as_ref()
                    .expect("the host path reads probe points that were traced");
                At {
                    activation: p.activation,
                    skip: p
                        .block
                        .as_ref()
                        .filter(|b| b.identity_skip)
                        .map(|b| (b.input, b.branch)),
                    post: gather.add(trace.post.clone()),
                    features: trace.post.dims()[1],
                    // The activation's input: read only where there is an activation.
                    pre: p.activation.and(trace.pre.clone()).map(|t| gather.add(t)),
                    norm_in: view.taps.norm_in[i].clone().map(|g| gather.add(g)),
                    grads,
                    before: before[i],
                }
            })
            .collect();
        Self {
            read: gather.start(),
            loss,
            taps,
            at,
            update: view.update,
            after: None,
            reading,
        }
    }

    /// Reads the points' main weights after the optimiser step: their norms,
    /// and where [`Self::collect`] read them before the step, the update's
    /// size. (The probe does this on update steps only.) Read after the step,
    /// not before, because a weight held across the step is copied rather than
    /// updated in place.
    pub fn weights_after<M: Module>(&mut self, model: &M, ids: &[Option<ParamId>]) {
        let mut gather = Gather::new(self.reading);
        let at = gather.add_params(model, ids);
        self.after = Some((gather.start(), at));
    }

    /// Every statistic of the step, each tensor read once (see
    /// [`crate::device::device_step`] for the same metrics as device reductions).
    pub fn compute(self) -> StepStats {
        let mut out = StepStats::default();
        let values = &self.read.finish();
        let after: Vec<Option<HostValues>> = match self.after {
            Some((read, at)) => {
                let mut values: Vec<Option<HostValues>> = read.finish().into_iter().map(Some).collect();
                at.into_iter().map(|k| k.and_then(|k| values[k].take())).collect()
            }
            None => Vec::new(),
        };
        if let Some(loss) = self.loss {
            out.values.push((None, Metric::Loss, values[loss][0] as f64));
        }
        for (i, at) in self.at.iter().enumerate() {
            let g = self.taps[i].map(|k| &*values[k]);
            let pre = at.pre.map(|k| &*values[k]);
            point_stats(i, at.activation, &values[at.post], at.features, pre, g, &mut out);
            let mut push = |name: Metric, v: f64| out.values.push((Some(i), name, v));
            if let Some(k) = at.norm_in {
                push(Metric::BnInSignalL2, l2(&values[k]));
            }
            for &(k, prefix) in &at.grads {
                let Some(g) = k.map(|k| &values[k]) else { continue };
                let m = Moments::of(g);
                let [l2_name, max_name, zero_name, nonfinite_name] = prefix.names();
                push(l2_name, m.l2());
                push(max_name, m.max_abs_or_nan());
                push(zero_name, m.zero_frac());
                push(nonfinite_name, m.nonfinite as f64);
                if matches!(prefix, GradPrefix::Weight) {
                    push(Metric::WeightNumel, g.len() as f64);
                    if self.update {
                        let counts = log_histogram(g).into_iter().map(|c| c as f32).collect();
                        out.vectors.push((i, VectorKind::Histogram, counts));
                    }
                }
            }
            if let Some(after) = after.get(i).and_then(Option::as_ref) {
                match at.before.map(|k| &values[k]) {
                    // The norm comes out of the same pass as the update's size.
                    Some(before) => {
                        let (update, weight) = diff_l2(before, after);
                        push(Metric::WeightL2, weight);
                        push(Metric::UpdateL2, update);
                        push(Metric::WeightBeforeL2, l2(before));
                    }
                    None => push(Metric::WeightL2, l2(after)),
                }
            }
            if let Some((input, branch)) = at.skip
                && let (Some(total), Some(skip)) = (self.taps[input], self.taps[branch])
            {
                // ||total - skip|| is the branch's part; ||skip|| comes out of the same pass.
                let (b, s) = diff_l2(&values[total], &values[skip]);
                push(Metric::SkipShare, s / (s + b + 1e-30));
            }
        }
        out
    }
}

/// The statistics of probe point `i` that its output `post`, its activation's
/// input `pre` (where the trace kept it) and `g = dL/dh` give: the signal, its
/// part below the activation, the activation's regime and moments, and for
/// ReLU each unit's max |y| (dead units), from one pass ([`point_pass`]).
fn point_stats(
    i: usize,
    act: Option<Activation>,
    post: &[f32],
    features: usize,
    pre: Option<&[f32]>,
    g: Option<&[f32]>,
    out: &mut StepStats,
) {
    let threshold = act.map_or(0.0, |a| (0.01 * a.max_derivative()) as f32);
    let (pass, known) = point_pass(post, pre, g, act, threshold);
    let n = pass.n.max(1) as f64;
    let mut push = |name: Metric, v: f64| out.values.push((Some(i), name, v));
    if g.is_some() {
        let norm = pass.signal_sq.sqrt();
        push(Metric::SignalL2, norm);
        push(Metric::SignalRms, norm / n.sqrt());
    }
    if let Some(act) = act.filter(|_| known) {
        if g.is_some() {
            push(Metric::PreactSignalL2, pass.through_sq.sqrt());
        }
        let share = pass.in_regime as f64 / n;
        match act.regime() {
            Regime::Saturating => push(Metric::SaturatedFrac, share),
            Regime::LeakyNegative => push(Metric::NegativeFrac, share),
            // `dead_frac` is derived from the units' vector when the record is written.
            Regime::Rectifying => {
                push(Metric::ZeroFrac, share);
                out.vectors
                    .push((i, VectorKind::UnitMaxAbs, unit_max_abs(post, features)));
            }
            Regime::Linear => {}
        }
    }
    push(Metric::ActMean, pass.mean());
    push(Metric::ActStd, pass.std());
}
