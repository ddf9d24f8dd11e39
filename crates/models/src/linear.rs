//! A fully connected layer on flex whose products split over the threads by
//! rows, and whose two backward products run side by side.
//!
//! flex hands a product of at least 192³ multiply-adds to gemm's own rayon
//! split, which at an MLP's shapes (a batch of 128 by 256 by 256) costs about
//! what it saves: with it two threads train no faster than one. Here, on
//! `Autodiff<Flex>`, with `x: [B, in]`, `W: [in, out]` and `g = dL/dy`,
//!
//! `y = x W + b`, `dL/dx = g Wᵀ`, `dL/dW = xᵀ g`, `dL/db = Σ_rows g`,
//!
//! each product is cut into one block of rows per thread, each block one
//! single-threaded gemm, and the backward pass computes `dL/dx` and
//! `dL/dW` at the same time (`rayon::join`). Every value is computed by one
//! thread, so a run repeats exactly at the same thread count; at another,
//! gemm may block a smaller product differently (last-bit differences).
//! Other backends, and tensors that are not f32, take Burn's `Linear`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::flex_host::{Mat, f32_tensor, f32s, matmul, to_f32};

/// `linear.forward(x)` for `x: [B, in]`, split over the threads on flex.
pub fn forward(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    let [d_in, _] = linear.weight.dims();
    assert_eq!(x.dims()[1], d_in, "a Linear layer of {d_in} inputs got {:?}", x.dims());
    let bias = linear.bias.as_ref().map(|b| b.val());
    flex_autodiff(&x, &linear.weight.val(), bias.as_ref())
        .or_else(|| flex_plain(&x, &linear.weight.val(), bias.as_ref()))
        .unwrap_or_else(|| linear.forward(x))
}

/// The forward pass with its autodiff node on `Autodiff<Flex>`.
fn flex_autodiff(x: &Tensor<2>, w: &Tensor<2>, b: Option<&Tensor<1>>) -> Option<Tensor<2>> {
    type Ad = Autodiff<Flex>;
    let (x_p, x_node) = x.clone().try_into_primitive::<Ad>().ok()?.into_parts();
    let (w_p, w_node) = w.clone().try_into_primitive::<Ad>().ok()?.into_parts();
    let b = match b {
        Some(b) => Some(b.clone().try_into_primitive::<Ad>().ok()?.into_parts()),
        None => None,
    };
    let dtypes_ok = x_p.dtype() == DType::F32
        && w_p.dtype() == DType::F32
        && b.as_ref().is_none_or(|(b, _)| b.dtype() == DType::F32);
    if !dtypes_ok {
        return None;
    }
    let (x_p, w_p) = (to_f32(&x_p), to_f32(&w_p));
    let y = forward_flex(&x_p, &w_p, b.as_ref().map(|(b, _)| b));
    let state = State { x: x_p, weight: w_p };
    let out = match b {
        Some((_, b_node)) => match (DirectLinear::<3>)
            .prepare::<NoCheckpointing>([x_node, w_node, b_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        None => match (DirectLinear::<2>)
            .prepare::<NoCheckpointing>([x_node, w_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    };
    Some(Tensor::from_primitive::<Ad>(out))
}

/// The forward pass on plain flex (evaluation).
fn flex_plain(x: &Tensor<2>, w: &Tensor<2>, b: Option<&Tensor<1>>) -> Option<Tensor<2>> {
    let x_p = x.clone().try_into_primitive::<Flex>().ok()?;
    let w_p = w.clone().try_into_primitive::<Flex>().ok()?;
    let b_p = match b {
        Some(b) => Some(b.clone().try_into_primitive::<Flex>().ok()?),
        None => None,
    };
    if [x_p.dtype(), w_p.dtype()] != [DType::F32; 2] || b_p.as_ref().is_some_and(|b| b.dtype() != DType::F32) {
        return None;
    }
    Some(Tensor::from_primitive::<Flex>(forward_flex(
        &to_f32(&x_p),
        &to_f32(&w_p),
        b_p.as_ref(),
    )))
}

/// `y = x W + b` on contiguous f32 tensors.
fn forward_flex(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>) -> FlexTensor {
    let (rows, d_in) = dims2(x);
    let (_, d_out) = dims2(w);
    let b = b.map(to_f32);
    let (xs, ws) = (f32s(x), f32s(w));
    let bs = b.as_ref().map(f32s);
    let mut y = vec![0f32; rows * d_out];
    split_rows(&mut y, d_out, rows * d_in * d_out, |first, y_rows| {
        let count = y_rows.len() / d_out;
        if let Some(bs) = bs {
            for row in y_rows.chunks_mut(d_out) {
                row.copy_from_slice(bs);
            }
        }
        matmul(
            Mat::rows(y_rows, count, d_out),
            Mat::rows(&xs[first * d_in..][..count * d_in], count, d_in),
            Mat::rows(ws, d_in, d_out),
            bs.is_some(),
        );
    });
    f32_tensor(y, vec![rows, d_out])
}

/// `f(first_row, block)` for blocks of whole rows of `out` (rows of `width`
/// values), one block per thread when the product is worth splitting.
fn split_rows(out: &mut [f32], width: usize, multiply_adds: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / width.max(1);
    let threads = rayon::current_num_threads();
    if threads == 1 || multiply_adds < SPLIT_MULTIPLY_ADDS || rows < 2 {
        f(0, out);
        return;
    }
    let per_task = rows.div_ceil(threads);
    out.par_chunks_mut(per_task * width)
        .enumerate()
        .for_each(|(i, block)| f(i * per_task, block));
}

/// Products smaller than this run on one thread: splitting costs more.
const SPLIT_MULTIPLY_ADDS: usize = 1 << 20;

fn dims2(t: &FlexTensor) -> (usize, usize) {
    let d = t.layout().shape();
    (d[0], d[1])
}

/// What the backward pass needs: the input and the weight.
#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    weight: FlexTensor,
}

/// The layer's autodiff node; `N` parents: x, weight (and bias).
#[derive(Debug)]
struct DirectLinear<const N: usize>;

impl<const N: usize> Backward<Flex, N> for DirectLinear<N> {
    type State = State;

    fn backward(self, ops: Ops<State, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = to_f32(&grads.consume::<Flex>(&ops.node));
        let State { x, weight } = ops.state;
        let parents = ops.parents;
        let wants = |i: usize| parents.get(i).is_some_and(Option::is_some);
        let (rows, d_in) = dims2(&x);
        let d_out = dims2(&weight).1;
        let (xs, ws, gs) = (f32s(&x), f32s(&weight), f32s(&grad));
        let work = rows * d_in * d_out;
        let grad_x = || {
            wants(0).then(|| {
                // dL/dx (B x in) = g (B x out) · Wᵀ (out x in), by rows of dL/dx.
                let mut gx = vec![0f32; rows * d_in];
                split_rows(&mut gx, d_in, work, |first, block| {
                    let count = block.len() / d_in;
                    matmul(
                        Mat::rows(block, count, d_in),
                        Mat::rows(&gs[first * d_out..][..count * d_out], count, d_out),
                        Mat::rows(ws, d_in, d_out).transposed(),
                        false,
                    );
                });
                f32_tensor(gx, vec![rows, d_in])
            })
        };
        let grad_w = || {
            wants(1).then(|| {
                // dL/dW (in x out) = xᵀ (in x B) · g (B x out), by rows of dL/dW
                // (the columns of x).
                let mut gw = vec![0f32; d_in * d_out];
                split_rows(&mut gw, d_out, work, |first, block| {
                    let count = block.len() / d_out;
                    matmul(
                        Mat::rows(block, count, d_out),
                        Mat::strided(&xs[first..], count, rows, 1, d_in),
                        Mat::rows(gs, rows, d_out),
                        false,
                    );
                });
                f32_tensor(gw, vec![d_in, d_out])
            })
        };
        let (gx, gw) = if rayon::current_num_threads() > 1 && work >= SPLIT_MULTIPLY_ADDS {
            rayon::join(grad_x, grad_w)
        } else {
            (grad_x(), grad_w())
        };
        let gb = wants(2).then(|| {
            let mut sums = vec![0f32; d_out];
            for row in gs.chunks_exact(d_out) {
                sums.iter_mut().zip(row).for_each(|(s, g)| *s += g);
            }
            f32_tensor(sums, vec![d_out])
        });
        for (i, g) in [gx, gw, gb].into_iter().enumerate() {
            if let (Some(Some(node)), Some(g)) = (parents.get(i), g) {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::LinearConfig;
    use burn::tensor::Device;

    use super::*;
    use crate::test_support::{assert_close_slices, normal};

    /// Output and the gradients of x, weight and bias equal Burn's `Linear`,
    /// with and without bias, on shapes split over threads and not, on one
    /// thread and several; a second run at the same thread count is identical.
    #[test]
    fn matches_burns_linear_on_any_thread_count() {
        let device = Device::flex().autodiff();
        for (seed, (rows, d_in, d_out, bias)) in (7..).step_by(10).zip([
            (128, 256, 256, true),
            (5, 3, 4, true),
            (64, 100, 10, false),
            (3, 512, 700, true),
        ]) {
            let layer = LinearConfig::new(d_in, d_out).with_bias(bias).init(&device);
            let x = normal([rows, d_in], 0.0, 1.0, seed, &device);
            let weights = normal([rows, d_out], 0.0, 1.0, seed + 1, &device);
            let run = |ours: bool| {
                let x = x.clone().require_grad();
                let y = if ours {
                    forward(&layer, x.clone())
                } else {
                    layer.forward(x.clone())
                };
                let mut g = (y.clone() * weights.clone()).sum().backward();
                let host = |d: burn::tensor::TensorData| d.try_into_vec::<f32>().unwrap();
                let mut out = vec![host(y.into_data()), host(x.grad_remove(&mut g).unwrap().into_data())];
                out.push(host(layer.weight.val().grad_remove(&mut g).unwrap().into_data()));
                if let Some(b) = &layer.bias {
                    out.push(host(b.val().grad_remove(&mut g).unwrap().into_data()));
                }
                out
            };
            let theirs = run(false);
            let ours = run(true);
            let what = |s: &str, i: usize| format!("{s}, value set {i} of {rows}x{d_in} -> {d_out}");
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_close_slices(a, b, 1e-5, 0.0, &what("against Burn", i));
            }
            let one_thread = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| run(true));
            let three = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap()
                .install(|| run(true));
            let again = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap()
                .install(|| run(true));
            for (i, (((a, b), c), d)) in ours.iter().zip(&one_thread).zip(&three).zip(&again).enumerate() {
                assert_close_slices(a, b, 1e-5, 0.0, &what("one thread", i));
                assert_close_slices(a, c, 1e-5, 0.0, &what("three threads", i));
                assert_eq!(c, d, "{}", what("three threads twice", i));
            }
        }
    }
}
