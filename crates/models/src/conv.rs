//! 2-D convolution whose backward pass on flex is the direct one.
//!
//! burn-flex computes a convolution's forward pass (im2col + gemm) but has no
//! backward pass of its own, so autodiff falls back to burn-backend's generic
//! decomposition: the weight gradient as a convolution whose kernel is the
//! whole output map, the input gradient as a transposed convolution. Here, on
//! `Autodiff<Flex>`, the backward step is the one PyTorch takes: per image,
//! with `col = im2col(x)` (`[C·R·S, L]`, `L` output positions) and `g` the
//! output's gradient (`[K, L]`),
//!
//! `y = W · col + b`, `dL/dW += g · colᵀ`, `dL/dx = col2im(Wᵀ · g)`, `dL/db = Σ g`,
//!
//! images split over the rayon pool (the forward pass too: flex's own im2col
//! copies value by value). On a CPU with AVX-512, a stride-1 convolution
//! that keeps the size computes `y` and `dL/dx`, and most convolutions
//! `dL/dW`, by the `conv_direct` module's kernels instead (no im2col matrix,
//! no col2im), as do strided ones with at least 32 output channels `y` and
//! `dL/dW`; on a CPU with AVX2 (and no AVX-512), every convolution with at
//! most an eighth of its output channels' vectors unused does ([`Isa`],
//! [`limit_isa`]). Every other backend, and groups or dilation other than 1,
//! take Burn's own `conv2d`.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;

use crate::conv_direct::Plan;
pub use crate::conv_direct::{Isa, limit_isa};
use crate::flex_host::{Mat, f32_tensor, f32s, matmul, to_f32, written, zeroed};
use crate::im2col::{col2im, im2col};

/// `conv2d(x, weight, bias)` as Burn computes it (`x: [N, C, H, W]`,
/// `weight: [K, C, R, S]`), with the direct backward pass on `Autodiff<Flex>`.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, options: ConvOptions<2>) -> Tensor<4> {
    if options.groups != 1 || options.dilation != [1, 1] {
        return burn_conv2d(x, weight, bias, options);
    }
    type Ad = Autodiff<Flex>;
    let parts = (
        x.clone().try_into_primitive::<Ad>(),
        weight.clone().try_into_primitive::<Ad>(),
        bias.clone().map(|b| b.try_into_primitive::<Ad>()).transpose(),
    );
    let (Ok(x_ad), Ok(w_ad), Ok(b_ad)) = parts else {
        // Flex without autodiff (evaluation): the forward pass alone.
        let plain = (
            x.clone().try_into_primitive::<Flex>(),
            weight.clone().try_into_primitive::<Flex>(),
            bias.clone().map(|b| b.try_into_primitive::<Flex>()).transpose(),
        );
        if let (Ok(x), Ok(w), Ok(b)) = plain {
            return Tensor::from_primitive::<Flex>(forward_flex(&x, &w, b.as_ref(), &options));
        }
        return burn_conv2d(x, weight, bias, options);
    };
    let (x_p, x_node) = x_ad.into_parts();
    let (w_p, w_node) = w_ad.into_parts();
    let b = b_ad.map(|b| b.into_parts());
    let out = forward_flex(&x_p, &w_p, b.as_ref().map(|b| &b.0), &options);
    let state = State {
        x: x_p,
        weight: w_p,
        options: options.clone(),
    };
    let result = match b {
        Some((_, b_node)) => match (DirectConv::<3> { _n: PhantomData })
            .prepare::<NoCheckpointing>([x_node, w_node, b_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
        None => match (DirectConv::<2> { _n: PhantomData })
            .prepare::<NoCheckpointing>([x_node, w_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    };
    Tensor::from_primitive::<Ad>(result)
}

/// `conv.forward(x)` through [`conv2d`], for a `Conv2d` with explicit or no
/// padding (`Same` padding takes the module's own forward).
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => return conv.forward(x),
    };
    let options = ConvOptions {
        stride: conv.stride,
        padding,
        dilation: conv.dilation,
        groups: conv.groups,
    };
    conv2d(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), options)
}

/// What the backward step needs: the input and weight of the forward pass.
#[derive(Debug, Clone)]
struct State {
    x: FlexTensor,
    weight: FlexTensor,
    options: ConvOptions<2>,
}

/// The convolution's autodiff node; `N` parents: x, weight (and bias).
#[derive(Debug)]
struct DirectConv<const N: usize> {
    _n: PhantomData<[(); N]>,
}

impl<const N: usize> Backward<Flex, N> for DirectConv<N> {
    type State = State;

    fn backward(self, ops: Ops<State, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let State { x, weight, options } = ops.state;
        let parents = ops.parents;
        let wants = |i: usize| parents.get(i).is_some_and(Option::is_some);
        let out = backward(&x, &weight, &grad, &options, wants(0), wants(1), wants(2));
        for (i, g) in [out.x, out.weight, out.bias].into_iter().enumerate() {
            if let (Some(Some(node)), Some(g)) = (parents.get(i), g) {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

/// The gradients a backward step computed (`None` where not asked for).
struct Grads {
    x: Option<FlexTensor>,
    weight: Option<FlexTensor>,
    bias: Option<FlexTensor>,
}

/// The shapes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) k: usize,
    pub(crate) r: usize,
    pub(crate) s: usize,
    pub(crate) stride: [usize; 2],
    /// Padding before each spatial dimension (the end padding only shapes `ho`, `wo`).
    pub(crate) pad: [usize; 2],
    pub(crate) ho: usize,
    pub(crate) wo: usize,
}

impl Geometry {
    /// The geometry of input dims `[N, C, H, W]` and weight dims `[K, C, R, S]`.
    fn of(x: &[usize], w: &[usize], options: &ConvOptions<2>) -> Self {
        let out = |size: usize, kernel: usize, stride: usize, (begin, end): (usize, usize)| {
            (size + begin + end - kernel) / stride + 1
        };
        Self {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            k: w[0],
            r: w[2],
            s: w[3],
            stride: options.stride,
            pad: [options.padding[0].0, options.padding[1].0],
            ho: out(x[2], w[2], options.stride[0], options.padding[0]),
            wo: out(x[3], w[3], options.stride[1], options.padding[1]),
        }
    }

    /// Rows of an image's im2col matrix.
    pub(crate) fn crs(&self) -> usize {
        self.c * self.r * self.s
    }
    /// Output positions per image.
    pub(crate) fn l(&self) -> usize {
        self.ho * self.wo
    }

    /// For a stride-1 convolution that keeps the image's size, kernel offset
    /// `(r, s)` reads the plane shifted by `(r - ph)·W + (s - pw)`: the first
    /// input position read and the output positions whose reads fall inside
    /// the plane (flat; the columns that wrap into a neighbouring row are
    /// not excluded here).
    pub(crate) fn shifted(&self, r: usize, s: usize) -> (usize, std::ops::Range<usize>) {
        let hw = (self.h * self.w) as isize;
        let shift = (r as isize - self.pad[0] as isize) * self.w as isize + (s as isize - self.pad[1] as isize);
        let lo = (-shift).clamp(0, hw);
        let hi = (hw - shift).clamp(lo, hw);
        // (Clamped: where no position reads inside, e.g. a row above a
        // one-row map, the range is empty and the start unused.)
        ((lo + shift).clamp(0, hw) as usize, lo as usize..hi as usize)
    }

    /// Whether each kernel offset reads the plane shifted (see [`Geometry::shifted`]).
    pub(crate) fn keeps_size(&self) -> bool {
        self.stride == [1, 1] && self.ho == self.h && self.wo == self.w
    }

    /// The direct kernels' plan for this convolution where one applies (see
    /// [`Plan::new`]), on a CPU with AVX-512 or AVX2.
    fn direct_plan(&self) -> Option<Plan> {
        self.direct_plan_on(Isa::in_use()?)
    }

    /// [`Geometry::direct_plan`] with `isa`'s kernels, where this CPU has them.
    fn direct_plan_on(&self, isa: Isa) -> Option<Plan> {
        isa.supported().then(|| {
            Plan::new(
                isa,
                [self.c, self.h, self.w],
                [self.k, self.r, self.s],
                self.pad,
                self.stride,
                [self.ho, self.wo],
            )
        })?
    }
}

#[allow(clippy::too_many_arguments)]
fn backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
    want_x: bool,
    want_w: bool,
    want_b: bool,
) -> Grads {
    let (x, weight, grad) = (to_f32(x), to_f32(weight), to_f32(grad));
    let xd = x.layout().shape().to_vec();
    let wd = weight.layout().shape().to_vec();
    let geo = Geometry::of(&xd, &wd, options);
    debug_assert_eq!(grad.layout().shape().to_vec(), [geo.n, geo.k, geo.ho, geo.wo]);
    let (xs, ws, gs) = (f32s(&x), f32s(&weight), f32s(&grad));
    let (gx, gw) = direct_backward(&geo, geo.direct_plan(), xs, ws, gs, want_x, want_w);
    let bias = want_b.then(|| {
        let mut gb = vec![0f32; geo.k];
        for g_n in gs.chunks(geo.k * geo.l()) {
            for (b, row) in gb.iter_mut().zip(g_n.chunks(geo.l())) {
                *b += row.iter().sum::<f32>();
            }
        }
        f32_tensor(gb, vec![geo.k])
    });
    Grads {
        x: gx.map(|v| f32_tensor(v, xd.to_vec())),
        weight: gw.map(|v| f32_tensor(v, wd.to_vec())),
        bias,
    }
}

/// The forward pass on flex tensors: per image `y = W · im2col(x) + b`.
fn forward_flex(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>, options: &ConvOptions<2>) -> FlexTensor {
    let (x, w) = (to_f32(x), to_f32(w));
    let b = b.map(to_f32);
    let geo = Geometry::of(&x.layout().shape().to_vec(), &w.layout().shape().to_vec(), options);
    let y = direct_forward(&geo, geo.direct_plan(), f32s(&x), f32s(&w), b.as_ref().map(f32s));
    f32_tensor(y, vec![geo.n, geo.k, geo.ho, geo.wo])
}

/// `y[n] (K x L) = W (K x CRS) · im2col(x[n]) (CRS x L) + b`, or by the
/// direct kernel given its `plan`; images split over rayon.
fn direct_forward(geo: &Geometry, plan: Option<Plan>, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let (crs, l, chw) = (geo.crs(), geo.l(), geo.c * geo.h * geo.w);
    if let Some(plan) = plan {
        let packed = plan.pack(w);
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(geo.k * l)
                .enumerate()
                .for_each_init(Vec::new, |scratch, (n, y_n)| {
                    plan.run_uninit(&x[n * chw..(n + 1) * chw], &packed, b, scratch, y_n);
                });
        };
        // SAFETY: `run_uninit` writes every value of its image's output.
        return unsafe { written(geo.n * geo.k * l, fill) };
    }
    let mut y = vec![0f32; geo.n * geo.k * l];
    y.par_chunks_mut(geo.k * l).enumerate().for_each_init(
        || vec![0f32; crs * l],
        |col, (n, y_n)| {
            im2col(geo, &x[n * chw..(n + 1) * chw], col);
            if let Some(b) = b {
                for (row, &bias) in y_n.chunks_mut(l).zip(b) {
                    row.fill(bias);
                }
            }
            // y_n (K x L) (+)= W (K x CRS) · col (CRS x L)
            matmul(
                Mat::rows(y_n, geo.k, l),
                Mat::rows(w, geo.k, crs),
                Mat::rows(&col[..], crs, l),
                b.is_some(),
            );
        },
    );
    y
}

/// `dL/dx` and `dL/dW` on slices in NCHW / KCRS order, images split over
/// rayon; `dL/dx` by the direct kernel where `plan` is given.
#[allow(clippy::too_many_arguments)]
fn direct_backward(
    geo: &Geometry,
    plan: Option<Plan>,
    x: &[f32],
    w: &[f32],
    g: &[f32],
    want_x: bool,
    want_w: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (crs, l, chw) = (geo.crs(), geo.l(), geo.c * geo.h * geo.w);
    // dL/dx is the transposed convolution of g: directly where it can be.
    let transposed = plan.filter(|_| want_x).and_then(|p| p.transposed());
    let packed_t = transposed.map(|t| t.pack_transposed(w));
    let weight_grad = plan.filter(|_| want_w).and_then(|p| p.weight_grad());
    // Writes every value of `gx_n` when `want_x`.
    let per_image = |gx_n: &mut [MaybeUninit<f32>], n: usize, acc: &mut Scratch| {
        let g_n = &g[n * geo.k * l..(n + 1) * geo.k * l];
        if let Some(wg) = &weight_grad {
            wg.add_image(&x[n * chw..(n + 1) * chw], g_n, &mut acc.direct, &mut acc.sums);
        } else if want_w {
            im2col(geo, &x[n * chw..(n + 1) * chw], &mut acc.col);
            // dWᵀ (CRS x K) += col (CRS x L) · g_nᵀ (L x K): the same
            // product as dW += g_n · colᵀ, in the operand order gemm runs faster.
            matmul(
                Mat::rows(&mut acc.gw_t[..], crs, geo.k),
                Mat::rows(&acc.col[..], crs, l),
                Mat::rows(g_n, geo.k, l).transposed(),
                true,
            );
        }
        if let (true, Some(t), Some(packed)) = (want_x, &transposed, &packed_t) {
            t.run_uninit(g_n, packed, None, &mut acc.direct, gx_n);
        } else if want_x {
            // colgrad (CRS x L) = Wᵀ (CRS x K) · g_n (K x L)
            matmul(
                Mat::rows(&mut acc.colgrad[..], crs, l),
                Mat::rows(w, geo.k, crs).transposed(),
                Mat::rows(g_n, geo.k, l),
                false,
            );
            col2im(geo, &mut acc.colgrad, zeroed(gx_n));
        }
    };
    let scratch = || Scratch {
        col: vec![0f32; if want_w && weight_grad.is_none() { crs * l } else { 0 }],
        colgrad: vec![0f32; if want_x && transposed.is_none() { crs * l } else { 0 }],
        direct: Vec::new(),
        sums: vec![0f32; weight_grad.as_ref().map_or(0, |wg| wg.sums_len())],
        gw_t: vec![0f32; if want_w { geo.k * crs } else { 0 }],
    };
    // The weight gradient sums over images in fixed chunks, each in image
    // order, and the chunks' sums in chunk order: the same result whatever
    // the number of threads and however rayon splits the work.
    let chunk = geo.n.div_ceil(WEIGHT_GRAD_CHUNKS).max(1);
    let run_chunk = |first: usize, gx_chunk: &mut [MaybeUninit<f32>]| {
        let mut acc = scratch();
        for n in first..(first + chunk).min(geo.n) {
            let gx_n = if want_x {
                &mut gx_chunk[(n - first) * chw..][..chw]
            } else {
                &mut []
            };
            per_image(gx_n, n, &mut acc);
        }
        if let Some(wg) = &weight_grad {
            wg.add_to(&acc.sums, &mut acc.gw_t);
        }
        acc.gw_t
    };
    let mut partials: Vec<Vec<f32>> = Vec::new();
    let fill = |gx: &mut [MaybeUninit<f32>]| {
        partials = if want_x {
            gx.par_chunks_mut(chunk * chw)
                .enumerate()
                .map(|(i, gx_chunk)| run_chunk(i * chunk, gx_chunk))
                .collect()
        } else {
            (0..geo.n.div_ceil(chunk))
                .into_par_iter()
                .map(|i| run_chunk(i * chunk, &mut []))
                .collect()
        };
    };
    // SAFETY: every image of every chunk goes through `per_image`, which
    // writes all of its `dL/dx` (none when `!want_x`: an empty buffer).
    let gx = unsafe { written(if want_x { geo.n * chw } else { 0 }, fill) };
    let gw = want_w.then(|| {
        let mut sum_t = vec![0f32; geo.k * crs];
        for p in &partials {
            sum_t.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        let mut sum = vec![0f32; geo.k * crs];
        for (j, row) in sum_t.chunks(geo.k).enumerate() {
            for (kk, &v) in row.iter().enumerate() {
                sum[kk * crs + j] = v;
            }
        }
        sum
    });
    (want_x.then_some(gx), gw)
}

/// Chunks of images whose weight-gradient sums [`direct_backward`] adds up
/// in a fixed order (work for up to this many threads).
const WEIGHT_GRAD_CHUNKS: usize = 16;

/// Per-chunk buffers of [`direct_backward`].
struct Scratch {
    col: Vec<f32>,
    colgrad: Vec<f32>,
    /// The chunk's weight gradient, transposed (`CRS x K`).
    gw_t: Vec<f32>,
    /// The direct kernels' padded planes and output grid.
    direct: Vec<f32>,
    /// The direct weight-gradient kernel's sums.
    sums: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, assert_close_slices, normal};
    use burn::tensor::{Device, Distribution};

    /// Forward and all three gradients equal Burn's own op's, on shapes the
    /// ResNets use and a few others: strides 1 and 2, padding 0 to 2
    /// (asymmetric too), 1x1 to 5x5 kernels, maps of one row or one column,
    /// batch 1 and 64; within 1e-5 of each set's largest value, on three seeds.
    #[test]
    fn direct_backward_matches_burns_conv2d() {
        let device = Device::flex().autodiff();
        /// Input dims, weight dims, stride, padding, bias.
        type Case = ([usize; 4], [usize; 4], [usize; 2], [(usize, usize); 2], bool);
        let cases: [Case; 19] = [
            ([2, 3, 8, 8], [4, 3, 3, 3], [1, 1], [(1, 1), (1, 1)], true),
            // Vectors over output channels (three, the last partly used) in
            // the forward kernel, two in dL/dx's.
            ([2, 20, 5, 9], [40, 20, 3, 3], [1, 1], [(1, 1), (1, 1)], true),
            // Strided, by the channel kernels where this CPU has them: a
            // ResNet's map-halving convolution and its 1x1 projection, and
            // unequal strides and paddings with two channels of the last
            // vector unused.
            ([3, 16, 28, 28], [32, 16, 3, 3], [2, 2], [(1, 1), (1, 1)], false),
            ([2, 16, 9, 9], [32, 16, 1, 1], [2, 2], [(0, 0), (0, 0)], false),
            ([2, 4, 9, 7], [30, 4, 3, 2], [2, 1], [(1, 0), (0, 1)], true),
            // A ResNet stem: one input channel, batch 64.
            ([64, 1, 28, 28], [16, 1, 3, 3], [1, 1], [(1, 1), (1, 1)], false),
            // Stride 1 keeping the size with asymmetric padding; stride 1 shrinking it.
            ([2, 3, 5, 6], [4, 3, 2, 2], [1, 1], [(1, 0), (0, 1)], true),
            ([2, 2, 7, 7], [3, 2, 3, 3], [1, 1], [(0, 0), (0, 0)], false),
            ([2, 3, 9, 7], [5, 3, 3, 3], [2, 2], [(1, 1), (1, 1)], true),
            ([1, 4, 8, 8], [6, 4, 1, 1], [2, 2], [(0, 0), (0, 0)], false),
            ([64, 8, 6, 6], [8, 8, 3, 3], [1, 1], [(1, 1), (1, 1)], false),
            ([3, 2, 7, 6], [3, 2, 3, 2], [1, 2], [(0, 0), (0, 0)], true),
            ([2, 2, 6, 6], [3, 2, 3, 3], [2, 1], [(1, 0), (0, 1)], true),
            ([1, 16, 28, 28], [16, 16, 3, 3], [1, 1], [(1, 1), (1, 1)], false),
            // Size-keeping odd shapes: one row, one column, a 5x5 kernel.
            ([2, 3, 1, 5], [4, 3, 1, 3], [1, 1], [(0, 0), (1, 1)], true),
            ([2, 2, 5, 1], [3, 2, 3, 1], [1, 1], [(1, 1), (0, 0)], false),
            ([1, 2, 6, 7], [9, 2, 5, 5], [1, 1], [(2, 2), (2, 2)], true),
            // A 3x3 kernel on a one-row map (rows above and below read only
            // padding), and stride 2 over a one-column map.
            ([2, 3, 1, 6], [4, 3, 3, 3], [1, 1], [(1, 1), (1, 1)], false),
            ([2, 2, 5, 1], [3, 2, 3, 3], [2, 2], [(1, 1), (1, 1)], true),
        ];
        for ((xs, wsh, stride, padding, with_bias), seed) in
            cases.into_iter().flat_map(|c| [(c, 3), (c, 103), (c, 203)])
        {
            let what =
                |s: &str| format!("{s} of x {xs:?} * w {wsh:?}, stride {stride:?}, padding {padding:?}, seed {seed}");
            let options = ConvOptions {
                stride,
                padding,
                dilation: [1, 1],
                groups: 1,
            };
            let x = normal(xs, 0.0, 1.0, seed, &device).require_grad();
            let w = normal(wsh, 0.0, 0.5, seed + 1, &device).require_grad();
            let b = with_bias.then(|| normal([wsh[0]], 0.0, 1.0, seed + 2, &device).require_grad());
            // A loss that weights every output differently.
            let y_ref = burn_conv2d(x.clone(), w.clone(), b.clone(), options.clone());
            let weights = normal(y_ref.dims(), 0.0, 1.0, seed + 3, &device);
            let loss = |y: Tensor<4>| (y * weights.clone()).sum();
            let mut g_ref = loss(y_ref.clone()).backward();
            let y = conv2d(x.clone(), w.clone(), b.clone(), options.clone());
            assert_close(y.clone(), y_ref, 1e-5, &what("output"));
            let mut g = loss(y).backward();
            let pairs = [
                (
                    x.grad_remove(&mut g).unwrap(),
                    x.grad_remove(&mut g_ref).unwrap(),
                    "dL/dx",
                ),
                (
                    w.grad_remove(&mut g).unwrap(),
                    w.grad_remove(&mut g_ref).unwrap(),
                    "dL/dW",
                ),
            ];
            for (got, want, name) in pairs {
                assert_close(got, want, 1e-5, &what(name));
            }
            if let Some(b) = &b {
                let (got, want) = (b.grad_remove(&mut g).unwrap(), b.grad_remove(&mut g_ref).unwrap());
                assert_close(got, want, 1e-5, &what("dL/db"));
            }
        }
    }

    /// The gradients do not depend on the number of threads (or on how rayon
    /// splits the images): bit for bit, as a seeded run must be reproducible.
    #[test]
    fn backward_is_the_same_on_any_number_of_threads() {
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        // Vectors over positions, and over channels, where this CPU has the kernels.
        for (xs, ws) in [([37, 3, 6, 5], [4, 3, 3, 3]), ([19, 8, 7, 7], [32, 8, 3, 3])] {
            let geo = Geometry::of(&xs, &ws, &options);
            let x = values(geo.n * geo.c * geo.h * geo.w, 1);
            let w = values(geo.k * geo.crs(), 2);
            let g = values(geo.n * geo.k * geo.l(), 3);
            // im2col + gemm, and the direct kernels where this CPU has them.
            for plan in [None, geo.direct_plan(), geo.direct_plan_on(Isa::Avx2)] {
                let on = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| direct_backward(&geo, plan, &x, &w, &g, true, true))
                };
                let one = on(1);
                for threads in [2, 3, 5] {
                    assert_eq!(
                        on(threads),
                        one,
                        "{xs:?}, {threads} threads, direct kernel: {}",
                        plan.is_some()
                    );
                }
            }
        }
    }

    /// Where this CPU has the direct kernels, each instruction set's and
    /// im2col + gemm give the same output and gradients (the tests against
    /// Burn's op above take whichever this CPU runs).
    #[test]
    fn direct_kernels_match_im2col_and_gemm() {
        type Case = ([usize; 4], [usize; 4], [usize; 2], [(usize, usize); 2]);
        let cases: [Case; 7] = [
            ([4, 16, 28, 28], [16, 16, 3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([3, 64, 7, 7], [64, 64, 3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([2, 5, 9, 6], [17, 5, 3, 3], [1, 1], [(2, 0), (1, 1)]),
            ([2, 3, 5, 6], [4, 3, 2, 2], [1, 1], [(1, 0), (0, 1)]),
            ([2, 16, 14, 14], [32, 16, 3, 3], [2, 2], [(1, 1), (1, 1)]),
            ([2, 16, 9, 9], [32, 16, 1, 1], [2, 2], [(0, 0), (0, 0)]),
            ([2, 6, 9, 7], [46, 6, 3, 2], [2, 1], [(1, 0), (0, 1)]),
        ];
        let mut ran = false;
        for ((seed, (xs, ws, stride, padding)), isa) in
            (1..).zip(cases).flat_map(|c| [(c, Isa::Avx512), (c, Isa::Avx2)])
        {
            let options = ConvOptions {
                stride,
                padding,
                dilation: [1, 1],
                groups: 1,
            };
            let geo = Geometry::of(&xs, &ws, &options);
            let Some(plan) = geo.direct_plan_on(isa) else {
                continue;
            };
            ran = true;
            let host = |t: Tensor<4>| t.into_data().try_into_vec::<f32>().unwrap();
            let device = Device::flex();
            let x = host(normal(xs, 0.0, 1.0, seed, &device));
            let w = host(normal(ws, 0.0, 0.5, seed + 1, &device));
            let g = host(normal([xs[0], ws[0], geo.ho, geo.wo], 0.0, 1.0, seed + 2, &device));
            let b = host(normal([1, 1, 1, ws[0]], 0.0, 1.0, seed + 3, &device));
            let what = |s: &str| format!("{s} of x {xs:?} * w {ws:?}, stride {stride:?}, padding {padding:?}, {isa}");
            let (direct, gemm) = (
                direct_forward(&geo, Some(plan), &x, &w, Some(&b)),
                direct_forward(&geo, None, &x, &w, Some(&b)),
            );
            assert_close_slices(&direct, &gemm, 1e-5, 0.0, &what("output"));
            let (direct, gemm) = (
                direct_backward(&geo, Some(plan), &x, &w, &g, true, true),
                direct_backward(&geo, None, &x, &w, &g, true, true),
            );
            assert_close_slices(&direct.0.unwrap(), &gemm.0.unwrap(), 1e-5, 0.0, &what("dL/dx"));
            assert_close_slices(&direct.1.unwrap(), &gemm.1.unwrap(), 1e-5, 0.0, &what("dL/dW"));
        }
        if !ran {
            eprintln!("no direct kernel on this CPU");
        }
    }

    /// Flex without autodiff: the same forward values as Burn's op.
    #[test]
    fn plain_flex_forward_matches_burns_conv2d() {
        let device = Device::flex();
        let x = normal([3, 4, 9, 8], 0.0, 1.0, 1, &device);
        let w = normal([5, 4, 3, 3], 0.0, 1.0, 2, &device);
        let b = normal([5], 0.0, 1.0, 3, &device);
        let options = ConvOptions::new([2, 1], [1, 1], [1, 1], 1);
        let ours = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
        assert_close(ours, burn_conv2d(x, w, Some(b), options), 1e-5, "output");
    }

    /// With groups, it is Burn's op.
    #[test]
    fn other_backends_and_groups_take_burns_op() {
        let device = Device::flex();
        let x = Tensor::<4>::random([1, 4, 5, 5], Distribution::Default, &device);
        let w = Tensor::<4>::random([4, 2, 3, 3], Distribution::Default, &device);
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 2);
        conv2d(x.clone(), w.clone(), None, options.clone())
            .into_data()
            .assert_eq(&burn_conv2d(x, w, None, options).into_data(), true);
    }
}
