//! BatchNorm on flex in a few passes over the activations.
//!
//! Burn's training-mode batch norm is a decomposition into tensor operations
//! (`swap_dims` + reshape copies to reduce per channel, then broadcast
//! subtract, divide, multiply and add, and about a dozen more passes
//! backward); on a ResNet's activations these passes cost about as much as
//! the convolutions. Here, on flex, with `M` values per channel, `x̂ = (x - μ) / σ`
//! and `σ = √(var + ε)` (biased variance, as Burn and PyTorch normalise):
//!
//! `y = γ x̂ + β`, `dL/dγ = Σ g x̂`, `dL/dβ = Σ g`, `dL/dx = γ/σ · (g - Σg/M - x̂ · Σ(g x̂)/M)`,
//!
//! two reading passes and one writing pass forward, one reading and one
//! writing pass backward; evaluation is one pass with the running statistics.
//! The running statistics are updated exactly as `burn::nn::BatchNorm` does.
//! Other backends, and tensors that are not f32, take Burn's own `BatchNorm`.
//!
//! [`forward_relu`] folds a ReLU that follows into the same node: the
//! output pass writes `max(y, 0)`, and the backward passes let `g` through
//! where `y > 0` (recomputed from `x`), so the ReLU's own passes over the
//! activations (one writing forward, one backward) are not made. Values and
//! gradients equal BatchNorm followed by [`relu`](crate::relu::relu), bit for bit.

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::BatchNorm;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::flex_host::{f32_tensor, f32s, to_f32, written};
use crate::relu::{backward_value as relu_backward, forward_value as relu_value};

/// `bn.forward(x)` for `x: [N, C, ...]`, with the passes above on flex.
pub fn forward<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    forward_with(bn, x, false)
}

/// `relu(bn.forward(x))`, one node on flex (see the module doc).
pub fn forward_relu<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    forward_with(bn, x, true)
}

/// [`forward`], followed by the ReLU when `relu`.
fn forward_with<const D: usize>(bn: &BatchNorm, x: Tensor<D>, relu: bool) -> Tensor<D> {
    let burns = |x: Tensor<D>| {
        let y = bn.forward(x);
        if relu { crate::relu::relu(y) } else { y }
    };
    let [features] = bn.gamma.shape().dims();
    let dims = x.dims();
    assert!(
        D >= 2 && dims[1] == features,
        "BatchNorm over {features} features got an input of shape {dims:?}"
    );
    if x.device().is_autodiff() && bn.training.is_enabled() {
        match train_flex(bn, &x, relu) {
            Some((y, mean, var)) => {
                update_running_stats(bn, mean, var, &x.device());
                y
            }
            None => burns(x),
        }
    } else {
        inference_flex(bn, &x, relu).unwrap_or_else(|| burns(x))
    }
}

/// The running statistics' update of `burn::nn::BatchNorm::forward_train`.
fn update_running_stats(bn: &BatchNorm, mean: Vec<f32>, var: Vec<f32>, device: &burn::tensor::Device) {
    let c = mean.len();
    let m = bn.momentum;
    let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Vec<f32>| {
        let batch = Tensor::<1>::from_data(TensorData::new(batch, [c]), device);
        let running = state.value_sync().to_device(device);
        state.update(running.mul_scalar(1.0 - m).add(batch.mul_scalar(m)).detach());
    };
    update(&bn.running_mean, mean);
    update(&bn.running_var, var);
}

/// The training pass on `Autodiff<Flex>` (with the ReLU when `relu`):
/// output, batch mean and biased variance.
fn train_flex<const D: usize>(bn: &BatchNorm, x: &Tensor<D>, relu: bool) -> Option<(Tensor<D>, Vec<f32>, Vec<f32>)> {
    type Ad = Autodiff<Flex>;
    let x_ad = x.clone().try_into_primitive::<Ad>().ok()?;
    let g_ad = bn.gamma.val().try_into_primitive::<Ad>().ok()?;
    let b_ad = bn.beta.val().try_into_primitive::<Ad>().ok()?;
    let (x_p, x_node) = x_ad.into_parts();
    let (g_p, g_node) = g_ad.into_parts();
    let (b_p, b_node) = b_ad.into_parts();
    if [x_p.dtype(), g_p.dtype(), b_p.dtype()] != [DType::F32; 3] {
        return None;
    }
    let x_p = to_f32(&x_p);
    let gamma = f32s(&to_f32(&g_p)).to_vec();
    let beta = f32s(&to_f32(&b_p)).to_vec();
    let shape = Layout::of(x_p.layout().shape());
    let xs = f32s(&x_p);
    let (mean, var) = shape.mean_var(xs);
    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + bn.epsilon as f32).sqrt()).collect();
    let scale: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
    let y = f32_tensor(
        shape.affine(xs, &scale, &mean, &beta, relu),
        x_p.layout().shape().to_vec(),
    );
    let state = State {
        x: x_p,
        gamma,
        mean: mean.clone(),
        inv_std,
        relu_shift: relu.then_some(beta),
    };
    let out = match DirectBatchNorm
        .prepare::<NoCheckpointing>([x_node, g_node, b_node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some((Tensor::from_primitive::<Ad>(out), mean, var))
}

/// Evaluation on plain flex: `y = γ (x - running mean) / √(running var + ε) + β`
/// (then the ReLU when `relu`) in one pass.
fn inference_flex<const D: usize>(bn: &BatchNorm, x: &Tensor<D>, relu: bool) -> Option<Tensor<D>> {
    let host = |t: Tensor<1>| -> Option<Vec<f32>> {
        let t = t.try_into_primitive::<Flex>().ok()?;
        (t.dtype() == DType::F32).then(|| f32s(&to_f32(&t)).to_vec())
    };
    let x_p = x.clone().try_into_primitive::<Flex>().ok()?;
    if x_p.dtype() != DType::F32 {
        return None;
    }
    let gamma = host(bn.gamma.val())?;
    let beta = host(bn.beta.val())?;
    let mean = host(bn.running_mean.value())?;
    let var = host(bn.running_var.value())?;
    let x_p = to_f32(&x_p);
    let shape = Layout::of(x_p.layout().shape());
    let scale: Vec<f32> = (0..shape.c)
        .map(|c| gamma[c] / (var[c] + bn.epsilon as f32).sqrt())
        .collect();
    let y = shape.affine(f32s(&x_p), &scale, &mean, &beta, relu);
    Some(Tensor::from_primitive::<Flex>(f32_tensor(
        y,
        x_p.layout().shape().to_vec(),
    )))
}

/// What the backward pass needs: the input and the statistics it was normalised with.
#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    gamma: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// `β` when the node includes the ReLU: its output `γ σ⁻¹ (x - μ) + β`
    /// is recomputed to know where the gradient passes.
    relu_shift: Option<Vec<f32>>,
}

/// The batch norm's autodiff node; parents: x, gamma, beta.
#[derive(Debug)]
struct DirectBatchNorm;

impl Backward<Flex, 3> for DirectBatchNorm {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = to_f32(&grads.consume::<Flex>(&ops.node));
        let State {
            x,
            gamma,
            mean,
            inv_std,
            relu_shift,
        } = ops.state;
        let dims = x.layout().shape().to_vec();
        let shape = Layout::of(&dims);
        let (xs, gs) = (f32s(&x), f32s(&grad));
        // The forward pass's scale γ σ⁻¹ (the same products, so the same
        // output and ReLU gate).
        let a: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, i)| g * i).collect();
        let gate = relu_shift.as_deref().map(|shift| ReluGate {
            scale: &a,
            center: &mean,
            shift,
        });
        // Σ g and Σ g (x - μ) per channel (g past the ReLU's gate where there
        // is one); Σ g x̂ = σ⁻¹ Σ g (x - μ).
        let (sum_g, sum_gx) = shape.grad_sums(gs, xs, &mean, gate);
        let sum_gxhat: Vec<f32> = sum_gx.iter().zip(&inv_std).map(|(s, i)| s * i).collect();
        let [x_parent, gamma_parent, beta_parent] = &ops.parents;
        if let Some(node) = x_parent {
            // dL/dx = a g + b (x - μ) + k per channel.
            let m = shape.per_channel() as f32;
            let b: Vec<f32> = (0..shape.c).map(|c| -a[c] * inv_std[c] * sum_gxhat[c] / m).collect();
            let k: Vec<f32> = (0..shape.c).map(|c| -a[c] * sum_g[c] / m).collect();
            let dx = shape.grad_x(gs, xs, [&a, &b, &mean, &k], gate);
            grads.register::<Flex>(node.id, f32_tensor(dx, dims.clone()));
        }
        if let Some(node) = gamma_parent {
            grads.register::<Flex>(node.id, f32_tensor(sum_gxhat, vec![shape.c]));
        }
        if let Some(node) = beta_parent {
            grads.register::<Flex>(node.id, f32_tensor(sum_g, vec![shape.c]));
        }
    }
}

/// Values per task above which a pass is split over the rayon pool.
const PARALLEL_VALUES: usize = 1 << 15;

/// An input `[N, C, S...]` seen as `N x C` runs of `S` contiguous values.
#[derive(Debug, Clone, Copy)]
struct Layout {
    n: usize,
    c: usize,
    s: usize,
}

impl Layout {
    fn of(dims: &[usize]) -> Self {
        Self {
            n: dims[0],
            c: dims[1],
            s: dims[2..].iter().product(),
        }
    }

    /// Values normalised together (one channel's).
    fn per_channel(&self) -> usize {
        self.n * self.s
    }

    fn parallel(&self) -> bool {
        self.n * self.c * self.s >= PARALLEL_VALUES
    }

    /// Per channel `Σ x` (`SQUARED = false`) or `Σ (x - center)²` over the batch and positions.
    fn channel_sums<const SQUARED: bool>(&self, x: &[f32], center: &[f32]) -> Vec<f32> {
        let Self { n, c, s } = *self;
        let term = |v: f32, m: f32| if SQUARED { (v - m) * (v - m) } else { v };
        if s == 1 {
            // [N, C]: accumulate rows, vectorised over channels.
            let mut acc = vec![0f64; c];
            let mut rows = vec![0f32; c];
            for block in x.chunks(c * ROWS_PER_F64_ADD) {
                rows.fill(0.0);
                for row in block.chunks_exact(c) {
                    for ((r, &v), &m) in rows.iter_mut().zip(row).zip(center) {
                        *r += term(v, m);
                    }
                }
                acc.iter_mut().zip(&rows).for_each(|(a, &r)| *a += f64::from(r));
            }
            return acc.into_iter().map(|a| a as f32).collect();
        }
        let channel = |ch: usize| -> f32 {
            let m = center[ch];
            let sum: f64 = (0..n)
                .map(|i| f64::from(lane_sum(&x[(i * c + ch) * s..][..s], |v| term(v, m))))
                .sum();
            sum as f32
        };
        if self.parallel() {
            (0..c).into_par_iter().map(channel).collect()
        } else {
            (0..c).map(channel).collect()
        }
    }

    /// Batch mean and biased variance per channel (two passes: the variance of centred values).
    fn mean_var(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let m = self.per_channel() as f32;
        let zeros = vec![0f32; self.c];
        let mean: Vec<f32> = self.channel_sums::<false>(x, &zeros).iter().map(|s| s / m).collect();
        let var = self.channel_sums::<true>(x, &mean).iter().map(|s| s / m).collect();
        (mean, var)
    }

    /// `scale[c] (x - center[c]) + shift[c]` value by value (centred first,
    /// as Burn does: `scale x + (shift - scale center)` would lose digits to
    /// cancellation when the mean is large against the spread).
    /// With `relu`, `max(·, 0)` of each (see [`relu_value`]).
    fn affine(&self, x: &[f32], scale: &[f32], center: &[f32], shift: &[f32], relu: bool) -> Vec<f32> {
        assert!(x.len() == self.n * self.c * self.s && [scale, center, shift].iter().all(|p| p.len() == self.c));
        // SAFETY: each image's block has `C·S` values, one per value of `x_i`,
        // and the loops below zip the whole block with `x_i` (and, at `S = 1`,
        // with the `C` channels' parameters), writing each once.
        unsafe {
            self.per_image(|i, y_i| {
                let x_i = &x[i * y_i.len()..][..y_i.len()];
                let value = |y: f32| if relu { relu_value(y) } else { y };
                if self.s == 1 {
                    let per_channel = scale.iter().zip(center).zip(shift);
                    for ((y, &x), ((&a, &m), &b)) in y_i.iter_mut().zip(x_i).zip(per_channel) {
                        y.write(value(a * (x - m) + b));
                    }
                    return;
                }
                for (ch, (y, x)) in y_i.chunks_mut(self.s).zip(x_i.chunks(self.s)).enumerate() {
                    let (a, m, b) = (scale[ch], center[ch], shift[ch]);
                    for (y, &x) in y.iter_mut().zip(x) {
                        y.write(value(a * (x - m) + b));
                    }
                }
            })
        }
    }

    /// Per channel `Σ g` and `Σ g (x - mean)`, `g` through `gate` where given.
    fn grad_sums(&self, g: &[f32], x: &[f32], mean: &[f32], gate: Option<ReluGate>) -> (Vec<f32>, Vec<f32>) {
        let Self { n, c, s } = *self;
        if s == 1 {
            let (mut sg, mut sgx) = (vec![0f32; c], vec![0f32; c]);
            let mut gated = vec![0f32; if gate.is_some() { c } else { 0 }];
            for (g_row, x_row) in g.chunks_exact(c).zip(x.chunks_exact(c)) {
                let g_row = match &gate {
                    Some(gate) => gate.row(g_row, x_row, &mut gated),
                    None => g_row,
                };
                for (((sg, sgx), (&g, &x)), &m) in sg.iter_mut().zip(&mut sgx).zip(g_row.iter().zip(x_row)).zip(mean) {
                    *sg += g;
                    *sgx += g * (x - m);
                }
            }
            return (sg, sgx);
        }
        let channel = |ch: usize| -> (f32, f32) {
            let mut sums = (0f64, 0f64);
            for i in 0..n {
                let at = (i * c + ch) * s;
                let (g, x) = (&g[at..][..s], &x[at..][..s]);
                let (a, b) = match &gate {
                    Some(gate) => lane_sum2(g, x, mean[ch], gate.channel(ch)),
                    None => lane_sum2(g, x, mean[ch], |g, _| g),
                };
                sums.0 += f64::from(a);
                sums.1 += f64::from(b);
            }
            (sums.0 as f32, sums.1 as f32)
        };
        let pairs: Vec<(f32, f32)> = if self.parallel() {
            (0..c).into_par_iter().map(channel).collect()
        } else {
            (0..c).map(channel).collect()
        };
        pairs.into_iter().unzip()
    }

    /// `a[c] g + b[c] (x - center[c]) + k[c]` value by value, `g` through `gate` where given.
    fn grad_x(&self, g: &[f32], x: &[f32], [a, b, center, k]: [&[f32]; 4], gate: Option<ReluGate>) -> Vec<f32> {
        assert!(x.len() == self.n * self.c * self.s && g.len() == x.len());
        assert!([a, b, center, k].iter().all(|p| p.len() == self.c));
        // SAFETY: as in `affine`: the loops zip each whole block with `g_i`
        // and `x_i` of the same length, writing each value once.
        unsafe {
            self.per_image(|i, dx_i| {
                let len = dx_i.len();
                let (g_i, x_i) = (&g[i * len..][..len], &x[i * len..][..len]);
                if self.s == 1 {
                    let mut gated = vec![0f32; if gate.is_some() { len } else { 0 }];
                    let g_i = match &gate {
                        Some(gate) => gate.row(g_i, x_i, &mut gated),
                        None => g_i,
                    };
                    let per_channel = a.iter().zip(b).zip(center).zip(k);
                    for (((d, &g), &x), (((&a, &b), &m), &k)) in dx_i.iter_mut().zip(g_i).zip(x_i).zip(per_channel) {
                        d.write(a * g + b * (x - m) + k);
                    }
                    return;
                }
                let runs = dx_i.chunks_mut(self.s).zip(g_i.chunks(self.s)).zip(x_i.chunks(self.s));
                for (ch, ((dx, g), x)) in runs.enumerate() {
                    let (a, b, m, k) = (a[ch], b[ch], center[ch], k[ch]);
                    let terms = dx.iter_mut().zip(g).zip(x);
                    match &gate {
                        Some(gate) => {
                            let gate = gate.channel(ch);
                            for ((d, &g), &x) in terms {
                                d.write(a * gate(g, x) + b * (x - m) + k);
                            }
                        }
                        None => {
                            for ((d, &g), &x) in terms {
                                d.write(a * g + b * (x - m) + k);
                            }
                        }
                    }
                }
            })
        }
    }

    /// `N·C·S` values, written by `f(i, out_i)` for each image's `C x S`
    /// block `out_i`, over rayon when large (not zeroed first: that would be
    /// one more pass over the layer's output).
    ///
    /// # Safety
    /// `f` writes every value of the block it is given.
    unsafe fn per_image(&self, f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
        let block = self.c * self.s;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            if self.parallel() && self.s > 1 {
                out.par_chunks_mut(block).enumerate().for_each(|(i, o)| f(i, o));
            } else {
                out.chunks_mut(block).enumerate().for_each(|(i, o)| f(i, o));
            }
        };
        // SAFETY: the blocks cover the buffer; the caller's `f` writes each.
        unsafe { written(self.n * block, fill) }
    }
}

/// The ReLU after a fused BatchNorm, per channel: `g` passes by the ReLU's
/// backward rule applied to the BatchNorm's output `scale (x - center) + shift`.
#[derive(Debug, Clone, Copy)]
struct ReluGate<'a> {
    scale: &'a [f32],
    center: &'a [f32],
    shift: &'a [f32],
}

impl ReluGate<'_> {
    /// Channel `ch`'s `(g, x) -> g` or 0.
    fn channel(&self, ch: usize) -> impl Fn(f32, f32) -> f32 + use<> {
        let (a, m, b) = (self.scale[ch], self.center[ch], self.shift[ch]);
        move |g, x| relu_backward(a * (x - m) + b, g)
    }

    /// One `[C]` row of an `[N, C]` input's gradient, gated, in `out`.
    fn row<'o>(&self, g: &[f32], x: &[f32], out: &'o mut [f32]) -> &'o [f32] {
        for (ch, ((o, &g), &x)) in out.iter_mut().zip(g).zip(x).enumerate() {
            *o = self.channel(ch)(g, x);
        }
        out
    }
}

/// Rows of an `[N, C]` input summed in f32 before their sum joins the f64 total.
const ROWS_PER_F64_ADD: usize = 64;

/// `Σ f(v)` in 16 independent lanes, so the loop vectorises.
#[inline]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `(Σ g', Σ g' (x - mean))` with `g' = gate(g, x)`, in 16 independent lanes each.
#[inline]
fn lane_sum2(g: &[f32], x: &[f32], mean: f32, gate: impl Fn(f32, f32) -> f32) -> (f32, f32) {
    let (mut sg, mut sgx) = ([0f32; 16], [0f32; 16]);
    let (gc, xc) = (g.chunks_exact(16), x.chunks_exact(16));
    let mut tail = (0f32, 0f32);
    for (&g, &x) in gc.remainder().iter().zip(xc.remainder()) {
        let g = gate(g, x);
        tail.0 += g;
        tail.1 += g * (x - mean);
    }
    for (g, x) in gc.zip(xc) {
        for i in 0..16 {
            let g = gate(g[i], x[i]);
            sg[i] += g;
            sgx[i] += g * (x[i] - mean);
        }
    }
    (sg.iter().sum::<f32>() + tail.0, sgx.iter().sum::<f32>() + tail.1)
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, Param};
    use burn::nn::BatchNormConfig;
    use burn::tensor::Device;

    use super::*;
    use crate::test_support::{assert_close, normal};

    /// Two BatchNorms with the same gamma and beta and their own running statistics.
    fn pair(c: usize, seed: u64, device: &Device) -> (BatchNorm, BatchNorm) {
        let gamma = normal([c], 1.0, 0.5, seed, device).into_data();
        let beta = normal([c], 0.0, 0.5, seed + 1, device).into_data();
        let make = || {
            let mut bn = BatchNormConfig::new(c).init(device);
            bn.gamma = Param::from_tensor(Tensor::from_data(gamma.clone(), device));
            bn.beta = Param::from_tensor(Tensor::from_data(beta.clone(), device));
            bn
        };
        (make(), make())
    }

    /// Output, the gradients of x, gamma and beta, the running statistics
    /// (after two steps) and evaluation equal Burn's `BatchNorm`, within `rel`
    /// of each set's largest value.
    fn compare<const D: usize>(dims: [usize; D], seed: u64, rel: f32) {
        let device = Device::flex().autodiff();
        let (ours, theirs) = pair(dims[1], seed, &device);
        let what = |s: &str| format!("{s} of {dims:?}, seed {seed}");
        for step in 0..2u64 {
            let x = normal(dims, 3.0 - step as f32, 2.0, seed + 10 + step, &device);
            let (a, b) = (x.clone().require_grad(), x.require_grad());
            let (y_ours, y_theirs) = (forward(&ours, a.clone()), theirs.forward(b.clone()));
            assert_close(y_ours.clone(), y_theirs.clone(), rel, &what("output"));
            let weights = normal(dims, 0.0, 1.0, seed + 20 + step, &device);
            let mut g_ours = (y_ours * weights.clone()).sum().backward();
            let mut g_theirs = (y_theirs * weights).sum().backward();
            assert_close(
                a.grad_remove(&mut g_ours).unwrap(),
                b.grad_remove(&mut g_theirs).unwrap(),
                rel,
                &what("dL/dx"),
            );
            for (p, q, name) in [
                (&ours.gamma, &theirs.gamma, "dL/dgamma"),
                (&ours.beta, &theirs.beta, "dL/dbeta"),
            ] {
                assert_close(
                    p.val().grad_remove(&mut g_ours).unwrap(),
                    q.val().grad_remove(&mut g_theirs).unwrap(),
                    rel,
                    &what(name),
                );
            }
            assert_close(
                ours.running_mean.value(),
                theirs.running_mean.value(),
                rel,
                &what("running mean"),
            );
            assert_close(
                ours.running_var.value(),
                theirs.running_var.value(),
                rel,
                &what("running var"),
            );
        }
        let x = normal(dims, 1.0, 2.0, seed + 30, &Device::flex());
        assert_close(
            forward(&ours.valid(), x.clone()),
            theirs.valid().forward(x),
            rel,
            &what("evaluation"),
        );
    }

    #[test]
    fn matches_burns_batch_norm_on_mlp_and_conv_inputs() {
        for seed in [5, 105, 205] {
            compare([7, 5], seed, 1e-5);
            compare([128, 64], seed, 1e-5);
            compare([3, 4, 5, 6], seed, 1e-5);
            // Large enough to be split over threads; runs of 17 values (a lane tail).
            compare([16, 8, 17, 17], seed, 1e-5);
        }
    }

    /// BatchNorm with the ReLU folded in equals BatchNorm followed by the
    /// ReLU bit for bit: output, the gradients of x, gamma and beta, and
    /// evaluation; on MLP and conv inputs, one split over threads, with the
    /// inputs shifted so that about half of the outputs are cut to zero.
    #[test]
    fn relu_folded_in_equals_relu_after() {
        let device = Device::flex().autodiff();
        let bits = |t: Tensor<1>| -> Vec<u32> {
            t.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let flat = |t: Tensor<4>| t.flatten::<1>(0, 3);
        for (dims, seed) in [([7, 5, 1, 1], 40), ([3, 4, 5, 6], 41), ([16, 8, 17, 17], 42)] {
            let (fused, apart) = pair(dims[1], seed, &device);
            let x = normal(dims, 0.5, 2.0, seed + 1, &device);
            let (a, b) = (x.clone().require_grad(), x.require_grad());
            let (y_fused, y_apart) = (
                forward_relu(&fused, a.clone()),
                crate::relu::relu(forward(&apart, b.clone())),
            );
            let zeros = flat(y_apart.clone()).equal_elem(0.0).int().sum().into_scalar::<i64>();
            let n = dims.iter().product::<usize>() as i64;
            assert!(
                zeros > n / 5 && zeros < 4 * n / 5,
                "{zeros} of {n} outputs cut: the gate is not exercised"
            );
            assert_eq!(
                bits(flat(y_fused.clone())),
                bits(flat(y_apart.clone())),
                "output of {dims:?}"
            );
            let weights = normal(dims, 0.0, 1.0, seed + 2, &device);
            let mut g_fused = (y_fused * weights.clone()).sum().backward();
            let mut g_apart = (y_apart * weights).sum().backward();
            assert_eq!(
                bits(flat(a.grad_remove(&mut g_fused).unwrap())),
                bits(flat(b.grad_remove(&mut g_apart).unwrap())),
                "dL/dx of {dims:?}"
            );
            for (p, q, name) in [
                (&fused.gamma, &apart.gamma, "dL/dgamma"),
                (&fused.beta, &apart.beta, "dL/dbeta"),
            ] {
                assert_eq!(
                    bits(p.val().grad_remove(&mut g_fused).unwrap()),
                    bits(q.val().grad_remove(&mut g_apart).unwrap()),
                    "{name} of {dims:?}"
                );
            }
            let x = normal(dims, 0.5, 2.0, seed + 3, &Device::flex());
            let (e_fused, e_apart) = (
                forward_relu(&fused.valid(), x.clone()),
                crate::relu::relu(forward(&apart.valid(), x)),
            );
            assert_eq!(bits(flat(e_fused)), bits(flat(e_apart)), "evaluation of {dims:?}");
        }
    }

    /// A mean far from zero against the spread (activations offset by 1000,
    /// where a one-pass variance `E[x²] - E[x]²` would be off by percents):
    /// still Burn's output and gradient.
    #[test]
    fn a_large_mean_loses_no_digits() {
        let device = Device::flex().autodiff();
        let (ours, theirs) = pair(6, 9, &device);
        let x = normal([8, 6, 5, 5], 1000.0, 1.0, 10, &device);
        let (a, b) = (x.clone().require_grad(), x.require_grad());
        let (y_ours, y_theirs) = (forward(&ours, a.clone()), theirs.forward(b.clone()));
        assert_close(y_ours.clone(), y_theirs.clone(), 1e-3, "output");
        let weights = normal([8, 6, 5, 5], 0.0, 1.0, 11, &device);
        let mut g_ours = (y_ours * weights.clone()).sum().backward();
        let mut g_theirs = (y_theirs * weights).sum().backward();
        assert_close(
            a.grad_remove(&mut g_ours).unwrap(),
            b.grad_remove(&mut g_theirs).unwrap(),
            1e-3,
            "dL/dx",
        );
    }
}
