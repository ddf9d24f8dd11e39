//! The probe's device path: per-layer reductions computed on the device and
//! read back together (the cross-check of [`crate::host`]).
//!
//! Every statistic is a one-element tensor queued in a [`Batch`]; `Batch::read`
//! concatenates them and performs a single device-to-host transfer per probe
//! step, however many layers and metrics there are.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, s};
use gradscope_models::{Activation, Regime, Trace};

use crate::metric::Metric;
use crate::step::{GradPrefix, HIST_BINS, HIST_LO, HIST_WIDTH, StepStats, StepView, VectorKind};

/// A statistic waiting on the device: `(probe point index or None for the
/// whole model, metric name, value)`, plus per-point vectors (histograms,
/// per-unit activity).
pub struct Batch {
    keys: Vec<(Option<usize>, Metric)>,
    values: Vec<Tensor<1>>,
    vectors: Vec<(usize, VectorKind, usize, Tensor<1>)>,
}

/// Values read back from the device.
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub values: Vec<(Option<usize>, Metric, f64)>,
    pub vectors: Vec<(usize, VectorKind, Vec<f32>)>,
}

impl Batch {
    pub fn new() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            vectors: Vec::new(),
        }
    }

    /// Queues a scalar (any shape that sums to the value; it is reshaped to `[1]`).
    pub fn push(&mut self, point: Option<usize>, metric: Metric, value: Tensor<1>) {
        self.keys.push((point, metric));
        self.values.push(value.reshape([1]));
    }

    /// Queues a vector.
    pub fn push_vector(&mut self, point: usize, kind: VectorKind, v: Tensor<1>) {
        let n = v.dims()[0];
        self.vectors.push((point, kind, n, v));
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.vectors.is_empty()
    }

    /// Reads everything back in one transfer.
    pub fn read(self) -> Read {
        if self.is_empty() {
            return Read::default();
        }
        let n_scalars = self.values.len();
        let mut all = self.values;
        let layout: Vec<(usize, VectorKind, usize)> = self.vectors.iter().map(|(p, k, n, _)| (*p, *k, *n)).collect();
        all.extend(self.vectors.into_iter().map(|(.., v)| v));
        let flat: Vec<f32> = Tensor::cat(all, 0)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32 statistics");
        let values = self
            .keys
            .into_iter()
            .zip(&flat[..n_scalars])
            .map(|((p, m), &v)| (p, m, v as f64))
            .collect();
        let mut start = n_scalars;
        let vectors = layout
            .into_iter()
            .map(|(p, k, n)| {
                start += n;
                (p, k, flat[start - n..start].to_vec())
            })
            .collect();
        Read { values, vectors }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// Queues every statistic of a probe step as device-side reductions (the
/// cross-check of [`crate::host::HostJob::compute`]; `probe_reductions = "device"`).
pub fn device_step(view: &StepView<'_>, out: &mut StepStats) {
    let batch = &mut out.batch;
    if let Some(loss) = &view.loss {
        batch.push(None, Metric::Loss, loss.clone());
    }
    for (i, p) in view.points.iter().enumerate() {
        let trace = view.traces[i].as_ref();
        // f' once per point: for the signal below the activation and for saturation.
        let d = p.activation.zip(trace).and_then(|(act, trace)| derivative(act, trace));
        if let Some(g) = &view.taps.out[i] {
            let flat = g.clone().flatten::<1>(0, 1);
            let norm = l2(&flat);
            let n = flat.dims()[0].max(1) as f64;
            batch.push(Some(i), Metric::SignalRms, norm.clone().div_scalar(n.sqrt()));
            batch.push(Some(i), Metric::SignalL2, norm);
            if let Some(d) = &d {
                batch.push(
                    Some(i),
                    Metric::PreactSignalL2,
                    l2(&(d.clone() * g.clone()).flatten::<1>(0, 1)),
                );
            }
        }
        if let Some(g) = &view.taps.norm_in[i] {
            batch.push(Some(i), Metric::BnInSignalL2, l2(&g.clone().flatten::<1>(0, 1)));
        }
        if let Some((id, rank)) = view.weight[i]
            && let Some(g) = grad_flat(view.grads, id, rank)
        {
            grad_stats(batch, i, &g, GradPrefix::Weight);
            out.values.push((Some(i), Metric::WeightNumel, g.dims()[0] as f64));
            if view.update {
                batch.push_vector(i, VectorKind::Histogram, log_histogram(&g));
            }
        }
        if let Some((id, rank)) = view.bias[i]
            && let Some(g) = grad_flat(view.grads, id, rank)
        {
            grad_stats(batch, i, &g, GradPrefix::Bias);
        }
        if let Some(trace) = trace
            && let Some(alive) = activation_stats(batch, i, p.activation, trace, d.as_ref())
        {
            batch.push_vector(i, VectorKind::UnitMaxAbs, alive);
        }
        if let Some(links) = p.block.as_ref().filter(|b| b.identity_skip)
            && let (Some(total), Some(skip)) = (&view.taps.out[links.input], &view.taps.out[links.branch])
        {
            let skip = skip.clone().flatten::<1>(0, 1);
            let branch = total.clone().flatten::<1>(0, 1) - skip.clone();
            let (s, b) = (l2(&skip), l2(&branch));
            batch.push(Some(i), Metric::SkipShare, s.clone() / (s + b + 1e-30));
        }
    }
}

/// Adds an update step's weight norms to `stats` (device path): each point's
/// main weight after the optimiser step, and where `before` holds it from
/// before the step, the update's size; then reads the step's device batch.
pub fn finish_device_step(stats: &mut StepStats, before: &[Option<Tensor<1>>], after: &[Option<Tensor<1>>]) {
    for (i, w) in after.iter().enumerate() {
        let Some(w) = w else { continue };
        stats.batch.push(Some(i), Metric::WeightL2, l2(w));
        if let Some(Some(b)) = before.get(i) {
            stats
                .batch
                .push(Some(i), Metric::UpdateL2, l2(&(w.clone() - b.clone())));
            stats.batch.push(Some(i), Metric::WeightBeforeL2, l2(b));
        }
    }
    let read = std::mem::take(&mut stats.batch).read();
    stats.values.extend(read.values);
    stats.vectors.extend(read.vectors);
}

/// L2 norm of a flat tensor, as `[1]`.
pub fn l2(t: &Tensor<1>) -> Tensor<1> {
    t.clone().powf_scalar(2.0).sum().sqrt()
}

/// Gradient statistics of one parameter: L2, max |g|, fraction exactly zero,
/// number of non-finite entries.
pub fn grad_stats(batch: &mut Batch, point: usize, g: &Tensor<1>, prefix: GradPrefix) {
    let [l2_name, max_name, zero_name, nonfinite_name] = prefix.names();
    batch.push(Some(point), l2_name, l2(g));
    batch.push(Some(point), max_name, g.clone().abs().max());
    batch.push(Some(point), zero_name, g.clone().equal_elem(0.0).float().mean());
    let nonfinite = g.clone().is_nan().int().sum() + g.clone().is_inf().int().sum();
    batch.push(Some(point), nonfinite_name, nonfinite.float());
}

/// Counts of |g| per log10 bin (`HIST_BINS` bins of `HIST_WIDTH` decades from
/// 1e`HIST_LO`; values below fall in the first bin, above in the last), then the
/// number of exact zeros, which are left out of the bins.
pub fn log_histogram(g: &Tensor<1>) -> Tensor<1> {
    let device = g.device();
    let zeros = g.clone().equal_elem(0.0).float().sum();
    let bins: Tensor<1, Int> = ((g.clone().abs().log() / std::f64::consts::LN_10 - HIST_LO) / HIST_WIDTH)
        .floor()
        .clamp(0.0, (HIST_BINS - 1) as f64)
        .int();
    let edges = Tensor::<1, Int>::arange(0..HIST_BINS as i64, &device);
    let n = bins.dims()[0];
    let onehot = bins.reshape([n, 1]).equal(edges.reshape([1, HIST_BINS])).float();
    let counts = onehot.sum_dim(0).reshape([HIST_BINS]);
    // Exact zeros land in bin 0 (log 0 = -inf, clamped); take them out.
    let first = Tensor::<1>::zeros([HIST_BINS], &device).slice_assign(s![0..1], zeros.clone().reshape([1]));
    Tensor::cat(vec![counts - first, zeros.reshape([1])], 0)
}

/// `f'` at a point: at the activation's input where the trace kept it, else
/// read from the output (`None` where neither can tell it).
fn derivative(act: Activation, trace: &Trace) -> Option<Tensor<2>> {
    match &trace.pre {
        Some(pre) => Some(act.derivative(pre.clone())),
        None => act.derivative_of_output(trace.post.clone()),
    }
}

/// Activation statistics of a probe point's trace (`[batch, features]`), with
/// `derivative` the activation's `f'` there (`None` where the trace cannot tell it).
/// Returns the per-unit "alive" indicator (max |post| over the batch) for
/// rectifying layers, so the caller can track units dead over a window.
pub fn activation_stats(
    batch: &mut Batch,
    point: usize,
    activation: Option<Activation>,
    trace: &Trace,
    derivative: Option<&Tensor<2>>,
) -> Option<Tensor<1>> {
    let post = &trace.post;
    let flat = post.clone().flatten::<1>(0, 1);
    let mean = flat.clone().mean();
    batch.push(Some(point), Metric::ActMean, mean.clone());
    batch.push(
        Some(point),
        Metric::ActStd,
        (flat - mean).powf_scalar(2.0).mean().sqrt(),
    );
    let act = activation?;
    match act.regime() {
        Regime::Saturating => {
            if let Some(d) = derivative {
                let saturated = d.clone().lower_elem(0.01 * act.max_derivative()).float().mean();
                batch.push(Some(point), Metric::SaturatedFrac, saturated);
            }
            None
        }
        Regime::Rectifying => {
            let [_, features] = post.dims();
            let alive = post.clone().abs().max_dim(0).reshape([features]);
            // `dead_frac` is derived from `alive` on the host, with the window's.
            batch.push(
                Some(point),
                Metric::ZeroFrac,
                post.clone().equal_elem(0.0).float().mean(),
            );
            Some(alive)
        }
        Regime::LeakyNegative => {
            // The output has the input's sign where it tells f' and the input was not kept.
            let x = trace.pre.as_ref().unwrap_or(post);
            if derivative.is_some() {
                batch.push(
                    Some(point),
                    Metric::NegativeFrac,
                    x.clone().lower_elem(0.0).float().mean(),
                );
            }
            None
        }
        Regime::Linear => None,
    }
}

/// A parameter's gradient, flattened, whatever its rank.
pub fn grad_flat(grads: &GradientsParams, id: ParamId, rank: usize) -> Option<Tensor<1>> {
    match rank {
        1 => grads.get::<1>(id),
        2 => grads.get::<2>(id).map(|t| t.flatten::<1>(0, 1)),
        3 => grads.get::<3>(id).map(|t| t.flatten::<1>(0, 2)),
        4 => grads.get::<4>(id).map(|t| t.flatten::<1>(0, 3)),
        _ => None,
    }
}

/// Current values of the given parameters, flattened, keyed by position in `ids`
/// (`None` where `ids` has none or the module lacks it).
pub fn param_values<M: Module>(model: &M, ids: &[Option<ParamId>]) -> Vec<Option<Tensor<1>>> {
    struct Collect<'a> {
        ids: &'a [Option<ParamId>],
        out: Vec<Option<Tensor<1>>>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(i) = self.ids.iter().position(|id| *id == Some(param.id)) {
                let t = param.val().inner();
                let n = t.shape().num_elements();
                self.out[i] = Some(t.reshape([n]));
            }
        }
    }
    let mut c = Collect {
        ids,
        out: vec![None; ids.len()],
    };
    model.visit(&mut c);
    c.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn histogram_puts_decades_apart() {
        let d = Device::flex();
        let g = Tensor::<1>::from_data(
            TensorData::new(vec![1e-6f32, -1e-6, 3e-3, 0.0, 0.0, 50.0, 1e-30], [7]),
            &d,
        );
        let h: Vec<f32> = log_histogram(&g).into_data().try_to_vec().unwrap();
        assert_eq!(h.len(), HIST_BINS + 1);
        let bin = |x: f64| ((x.log10() - HIST_LO) / HIST_WIDTH).floor() as usize;
        assert_eq!(h[bin(1e-6)], 2.0);
        assert_eq!(h[bin(3e-3)], 1.0);
        assert_eq!(h[bin(50.0)], 1.0);
        assert_eq!(h[0], 1.0, "1e-30 underflows into the first bin; zeros do not");
        assert_eq!(h[HIST_BINS], 2.0, "two exact zeros");
        assert_eq!(h.iter().sum::<f32>(), 7.0);
    }

    #[test]
    fn one_transfer_reads_all_keys_in_order() {
        let d = Device::flex();
        let mut b = Batch::new();
        let t = Tensor::<1>::from_data(TensorData::new(vec![3.0f32, 4.0], [2]), &d);
        b.push(Some(1), Metric::GradL2, l2(&t));
        grad_stats(&mut b, 2, &t, GradPrefix::Bias);
        let r = b.read();
        assert_eq!(r.values[0], (Some(1), Metric::GradL2, 5.0));
        assert_eq!(r.values[1], (Some(2), Metric::BiasGradL2, 5.0));
        assert_eq!(r.values[2], (Some(2), Metric::BiasGradMax, 4.0));
        assert_eq!(r.values[4], (Some(2), Metric::BiasGradNonfinite, 0.0));
    }
}
