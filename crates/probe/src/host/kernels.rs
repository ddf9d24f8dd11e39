//! The vectorised loops of the host statistics.
//!
//! Accumulation: f32 lanes over blocks of [`BLOCK`] values, summed into f64, so
//! the error stays near f32 rounding of a block rather than growing with the
//! tensor's size. Most loops have the one shape LLVM reliably vectorises: one
//! accumulator array of `LANES` lanes fed by a branch-free function of each
//! value (`lane_sum`, `lane_sum2`), one such loop per statistic over a
//! block (32 KiB, which stays in L1 for the next). Loops feeding two
//! accumulator arrays were left scalar by LLVM; the interleaved 16-lane chains
//! of [`Moments::of`] and [`point_pass`] are the exceptions that do vectorise.
//! Counts are accumulated as f32 or u32 lanes, exact at these block sizes.
//! Timings: `cargo bench --workspace --profile dev --bench kernels`. They are
//! compiled for the baseline target: they run on the probe's own thread while
//! the next step trains, and builds per SIMD level picked at run time did not
//! change the probe's overhead measurably (BENCHMARKS.md, "Probe overhead").

use gradscope_models::Activation;
use gradscope_models::activation::{SELU_ALPHA, SELU_SCALE};
use gradscope_models::sigmoid::exp_fast;

use crate::step::{HIST_BINS, HIST_LO, HIST_WIDTH};

/// Values per block whose partial sums are carried in f32.
pub const BLOCK: usize = 8192;
/// f32 lanes per accumulator array: enough independent add chains to hide
/// the adder's latency at any vector width (one chain per register measured
/// 3x slower).
const LANES: usize = 64;

/// First and second moments and the counts the probe needs, from one pass.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Moments {
    pub n: usize,
    pub sum: f64,
    pub sum_sq: f64,
    /// Largest |x|, NaN ignored (it is counted in `nonfinite`).
    pub max_abs: f32,
    pub zeros: usize,
    pub nonfinite: usize,
}

impl Moments {
    /// Moments of `x` in one pass.
    pub fn of(x: &[f32]) -> Self {
        moments(x)
    }

    pub fn l2(&self) -> f64 {
        self.sum_sq.sqrt()
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    pub fn zero_frac(&self) -> f64 {
        self.zeros as f64 / self.n.max(1) as f64
    }

    /// `max_abs`, or NaN when a NaN was seen (non-finite values that are not
    /// infinite), as a device-side `abs().max()` reports it.
    pub fn max_abs_or_nan(&self) -> f64 {
        if self.nonfinite > 0 && self.max_abs.is_finite() {
            f64::NAN
        } else {
            self.max_abs as f64
        }
    }
}

/// [`Moments::of`].
fn moments(x: &[f32]) -> Moments {
    let mut m = Moments {
        n: x.len(),
        ..Moments::default()
    };
    // The exception to one accumulator per loop: five interleaved chains of 16
    // lanes vectorise here, and beat five passes of `lane_sum` by 2x.
    const L: usize = 16;
    for block in x.chunks(BLOCK) {
        let (mut sum, mut sq, mut max) = ([0f32; L], [0f32; L], [0f32; L]);
        let (mut zeros, mut bad) = ([0u32; L], [0u32; L]);
        let (body, tail) = block.as_chunks::<L>();
        for c in body {
            for l in 0..L {
                let v = c[l];
                sum[l] += v;
                sq[l] += v * v;
                max[l] = max[l].max(v.abs());
                zeros[l] = zeros[l].wrapping_add((v == 0.0) as u32);
                bad[l] = bad[l].wrapping_add((!v.is_finite()) as u32);
            }
        }
        for &v in tail {
            sum[0] += v;
            sq[0] += v * v;
            max[0] = max[0].max(v.abs());
            zeros[0] = zeros[0].wrapping_add((v == 0.0) as u32);
            bad[0] = bad[0].wrapping_add((!v.is_finite()) as u32);
        }
        m.sum += sum.iter().map(|&s| s as f64).sum::<f64>();
        m.sum_sq += sq.iter().map(|&s| s as f64).sum::<f64>();
        m.max_abs = max.iter().fold(m.max_abs, |a, &b| a.max(b));
        m.zeros += zeros.iter().sum::<u32>() as usize;
        m.nonfinite += bad.iter().sum::<u32>() as usize;
    }
    m
}

/// `Σ f(v)` over `x` in [`LANES`] f32 lanes, summed into f64 at the end: the
/// loop shape that vectorises. Call it on blocks of at most [`BLOCK`] values.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let (body, tail) = x.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for c in body {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    let tail: f32 = tail.iter().map(|&v| f(v)).sum();
    acc.iter().map(|&s| s as f64).sum::<f64>() + tail as f64
}

/// [`lane_sum`] of `f(a, b)` over two slices of the same length.
#[inline(always)]
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let ((xa, ta), (xb, tb)) = (a.as_chunks::<LANES>(), b.as_chunks::<LANES>());
    let mut acc = [0f32; LANES];
    for (x, y) in xa.iter().zip(xb) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(&x, &y)| f(x, y)).sum();
    acc.iter().map(|&s| s as f64).sum::<f64>() + tail as f64
}

/// `||x||_2`, the one statistic of a back-propagated signal or a weight that the
/// probe needs every step.
pub fn l2(x: &[f32]) -> f64 {
    x.chunks(BLOCK).map(|b| lane_sum(b, |v| v * v)).sum::<f64>().sqrt()
}

/// `(||a - b||_2, ||b||_2)` in one pass: the size of an update from `a` to `b`
/// and the norm of the weights it led to; also the part of a gradient not on
/// the skip path.
pub fn diff_l2(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "diff_l2 of tensors of different sizes");
    let (mut diff, mut norm) = (0f64, 0f64);
    for (ca, cb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        diff += lane_sum2(ca, cb, |x, y| (x - y) * (x - y));
        norm += lane_sum(cb, |y| y * y);
    }
    (diff.sqrt(), norm.sqrt())
}

/// What one pass over a probe point's output `y`, its activation's input `x`
/// and `g = dL/dy` gives ([`point_pass`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PointPass {
    pub n: usize,
    /// `c`, a value near the mean (that of the first values) about which the
    /// deviations are summed: the one-pass variance about 0 loses everything
    /// to cancellation where |mean| >> std, as for sigmoid outputs.
    pub shift: f64,
    /// `Σ (y - c)`.
    pub dev: f64,
    /// `Σ (y - c)²`.
    pub dev_sq: f64,
    /// `Σ g²`.
    pub signal_sq: f64,
    /// `Σ (f'(x) g)²`: the signal below the activation.
    pub through_sq: f64,
    /// Values in the activation's regime ([`gradscope_models::Regime`]): saturated (`f'(x)`
    /// below the threshold) for sigmoid and tanh, exactly zero (`y = 0`) for
    /// ReLU, negative (`x < 0`) for the leaky ones; none for the identity.
    pub in_regime: usize,
}

impl PointPass {
    pub fn mean(&self) -> f64 {
        self.shift + self.dev / self.n.max(1) as f64
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        let n = self.n.max(1) as f64;
        (self.dev_sq / n - (self.dev / n).powi(2)).max(0.0).sqrt()
    }
}

/// A probe point's [`PointPass`], with `f'` read from the activation's input
/// `pre` where the trace kept it, else from the output `post`. The flag says
/// whether `f'` was known: not for a point without an activation, nor for
/// GELU without its input (the pass then runs as for the identity). Without
/// `g` the signal's sums are 0.
pub fn point_pass(
    post: &[f32],
    pre: Option<&[f32]>,
    g: Option<&[f32]>,
    act: Option<Activation>,
    threshold: f32,
) -> (PointPass, bool) {
    let head = &post[..post.len().min(16)];
    let shift = head.iter().sum::<f32>() / head.len().max(1) as f32;
    match (act, pre) {
        (Some(act), Some(pre)) => (from_input(pre, post, g, act, threshold, shift), true),
        (Some(act), None) if act.reads_from_output() => (from_output(post, g, act, threshold, shift), true),
        _ => (from_output(post, g, Activation::Identity, threshold, shift), false),
    }
}

/// SELU's constants at the passes' precision.
const SELU_ALPHA32: f32 = SELU_ALPHA as f32;
const SELU_SCALE32: f32 = SELU_SCALE as f32;

/// [`point_pass`] with `f'` at the activation's input, written out branch-free
/// with [`exp_fast`] so that the pass vectorises (tested against
/// [`Activation::derivative_at`], the reference); GELU, which needs `erf`, uses
/// the reference per value.
fn from_input(pre: &[f32], post: &[f32], g: Option<&[f32]>, act: Activation, threshold: f32, shift: f32) -> PointPass {
    macro_rules! kernel {
        ($d:expr, $count:expr) => {
            point_kernel(pre, post, g, shift, $d, $count)
        };
    }
    let saturated = |_, _, d: f32| d < threshold;
    match act {
        Activation::Sigmoid => kernel!(
            |a| {
                let s = 1.0 / (1.0 + exp_fast(-a));
                s * (1.0 - s)
            },
            saturated
        ),
        Activation::Tanh => kernel!(
            |a| {
                // tanh(a) = 1 - 2 / (e^(2a) + 1); tanh' = 1 - tanh^2.
                let t = 1.0 - 2.0 / (exp_fast(2.0 * a) + 1.0);
                1.0 - t * t
            },
            saturated
        ),
        Activation::Relu => kernel!(|a| if a > 0.0 { 1.0 } else { 0.0 }, dead),
        Activation::LeakyRelu { slope } => {
            let slope = slope as f32;
            kernel!(|a| if a > 0.0 { 1.0 } else { slope }, negative)
        }
        Activation::Elu { alpha } => {
            let alpha = alpha as f32;
            kernel!(|a| if a > 0.0 { 1.0 } else { alpha * exp_fast(a) }, negative)
        }
        Activation::Selu => kernel!(
            |a| SELU_SCALE32 * if a > 0.0 { 1.0 } else { SELU_ALPHA32 * exp_fast(a) },
            negative
        ),
        Activation::Identity => kernel!(|_| 1.0, |_, _, _| false),
        Activation::Gelu => kernel!(|a| act.derivative_at(a), negative),
    }
}

/// [`point_pass`] with `f'` read from the output `post`
/// ([`Activation::derivative_at_output`], the reference): `y (1 - y)` for
/// sigmoid, as Burn's backward pass computes it, with no exponential to take.
/// Call it only where [`Activation::reads_from_output`]; the output then has
/// the input's sign, so negative values are counted on it.
fn from_output(post: &[f32], g: Option<&[f32]>, act: Activation, threshold: f32, shift: f32) -> PointPass {
    macro_rules! kernel {
        ($d:expr, $count:expr) => {
            point_kernel(post, post, g, shift, $d, $count)
        };
    }
    let pos = |y: f32, neg: f32| if y > 0.0 { 1.0 } else { neg };
    let saturated = |_, _, d: f32| d < threshold;
    match act {
        Activation::Sigmoid => kernel!(|y| y * (1.0 - y), saturated),
        Activation::Tanh => kernel!(|y| 1.0 - y * y, saturated),
        Activation::Relu => kernel!(|y| pos(y, 0.0), dead),
        Activation::LeakyRelu { slope } => {
            let slope = slope as f32;
            kernel!(|y| pos(y, slope), negative)
        }
        Activation::Elu { alpha } => {
            let alpha = alpha as f32;
            kernel!(|y| pos(y, y + alpha), negative)
        }
        Activation::Selu => kernel!(
            |y| if y > 0.0 {
                SELU_SCALE32
            } else {
                y + SELU_SCALE32 * SELU_ALPHA32
            },
            negative
        ),
        Activation::Identity => kernel!(|_| 1.0, |_, _, _| false),
        Activation::Gelu => unreachable!("GELU's output does not tell its derivative"),
    }
}

/// [`point_kernel`]'s regime test for ReLU: the unit is dead (`y = 0`).
fn dead(_: f32, y: f32, _: f32) -> bool {
    y == 0.0
}

/// [`point_kernel`]'s regime test for the leaky activations: `x < 0`.
fn negative(x: f32, _: f32, _: f32) -> bool {
    x < 0.0
}

/// The pass behind [`point_pass`] for a derivative `d` of `x` and the regime
/// test `count(x, y, d)`: five interleaved chains of 16 lanes (the shape
/// [`Moments::of`] showed LLVM vectorises). As separate passes over the
/// output, the signal and the derivative, the same statistics of a 128x256
/// point took 27 us against 5.4 us (`cargo bench --bench kernels`).
#[inline(always)]
fn point_kernel(
    x: &[f32],
    y: &[f32],
    g: Option<&[f32]>,
    shift: f32,
    d: impl Fn(f32) -> f32,
    count: impl Fn(f32, f32, f32) -> bool,
) -> PointPass {
    const L: usize = 16;
    assert_eq!(x.len(), y.len(), "activation input and output of different sizes");
    // Without a signal the pass reads `y` in its place and drops those sums.
    let (g, signal) = match g {
        Some(g) => (g, 1.0),
        None => (y, 0.0),
    };
    assert_eq!(y.len(), g.len(), "activation and signal of different sizes");
    let mut p = PointPass {
        n: y.len(),
        shift: shift as f64,
        ..PointPass::default()
    };
    for ((xb, yb), gb) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).zip(g.chunks(BLOCK)) {
        let (mut dev, mut dev_sq, mut gsq, mut tsq) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
        let mut counted = [0u32; L];
        let mut add = |l: usize, a: f32, v: f32, q: f32| {
            let da = d(a);
            let e = v - shift;
            dev[l] += e;
            dev_sq[l] += e * e;
            gsq[l] += q * q;
            tsq[l] += (da * q) * (da * q);
            counted[l] = counted[l].wrapping_add(count(a, v, da) as u32);
        };
        let ((xc, xt), (yc, yt), (gc, gt)) = (xb.as_chunks::<L>(), yb.as_chunks::<L>(), gb.as_chunks::<L>());
        for ((cx, cy), cg) in xc.iter().zip(yc).zip(gc) {
            for l in 0..L {
                add(l, cx[l], cy[l], cg[l]);
            }
        }
        for ((&a, &v), &q) in xt.iter().zip(yt).zip(gt) {
            add(0, a, v, q);
        }
        let wide = |a: [f32; L]| a.iter().map(|&s| s as f64).sum::<f64>();
        p.dev += wide(dev);
        p.dev_sq += wide(dev_sq);
        p.signal_sq += signal * wide(gsq);
        p.through_sq += signal * wide(tsq);
        p.in_regime += counted.iter().sum::<u32>() as usize;
    }
    p
}

/// Per-unit max |x| over the batch of a row-major `[batch, features]` buffer:
/// a unit is dead on this batch when its value is 0.
pub fn unit_max_abs(x: &[f32], features: usize) -> Vec<f32> {
    let mut out = vec![0f32; features];
    for row in x.chunks_exact(features) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = o.max(v.abs());
        }
    }
    out
}

/// Where |x| falls among the histogram's bins, looked up by the top 16 bits of
/// its float (the sign cleared: 8 exponent and 7 mantissa bits). Each entry
/// holds the bin of the smallest float with those bits, and in its top bit
/// whether a bin edge falls inside the entry's range (it spans 2^-7 of a
/// binade, 0.0034 decades, so at most one edge): then one comparison with
/// that edge decides.
struct BinTable {
    entry: Vec<u8>,
    /// The bins' edges, `edges[i]` the lower edge of bin `i`.
    edges: [f32; HIST_BINS + 1],
}

const STRADDLES: u8 = 0x80;

impl BinTable {
    fn get() -> &'static BinTable {
        static TABLE: std::sync::OnceLock<BinTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| {
            let edges: [f32; HIST_BINS + 1] =
                std::array::from_fn(|i| 10f64.powf(HIST_LO + i as f64 * HIST_WIDTH) as f32);
            // Values below the first inner edge fall in bin 0, above the last in the last bin.
            let exact = |a: f32| edges[1..HIST_BINS].iter().take_while(|&&e| a >= e).count();
            let entry = (0u32..1 << 15)
                .map(|k| {
                    let (lo, hi) = (f32::from_bits(k << 16), f32::from_bits((k << 16) | 0xffff));
                    if lo.is_nan() || lo.is_infinite() {
                        // Infinity falls in the last bin; NaN is sorted out by the caller.
                        return (HIST_BINS - 1) as u8;
                    }
                    let (a, b) = (exact(lo), exact(hi));
                    debug_assert!(b - a <= 1, "a bin narrower than a table entry");
                    a as u8 | if b > a { STRADDLES } else { 0 }
                })
                .collect();
            BinTable { entry, edges }
        })
    }
}

/// Counts of |x| per log10 bin, as [`crate::device::log_histogram`]: `HIST_BINS`
/// bins of `HIST_WIDTH` decades from 1e`HIST_LO` (values outside fall in the end
/// bins), then the exact zeros. NaN falls in no bin.
///
/// No logarithm per value: a table lookup on the float's top bits, exact at
/// every edge (see `BinTable`). Four interleaved sets of counters keep
/// increments of neighbouring values (gradients cluster in a few bins) from
/// waiting on each other.
pub fn log_histogram(x: &[f32]) -> Vec<f64> {
    let table = BinTable::get();
    // Slots: the bins, then exact zeros, then NaN (discarded).
    const ZERO: usize = HIST_BINS;
    const NAN: usize = HIST_BINS + 1;
    let slot = |v: f32| {
        let bits = v.to_bits() & 0x7fff_ffff;
        let e = table.entry[(bits >> 16) as usize];
        let bin = (e & !STRADDLES) as usize;
        let up = (e & STRADDLES != 0) & (f32::from_bits(bits) >= table.edges[(bin + 1).min(HIST_BINS)]);
        if bits == 0 {
            ZERO
        } else if bits > 0x7f80_0000 {
            NAN
        } else {
            bin + up as usize
        }
    };
    let mut counts = [[0u64; HIST_BINS + 2]; 4];
    let (quads, tail) = x.as_chunks::<4>();
    for q in quads {
        for (c, &v) in counts.iter_mut().zip(q) {
            c[slot(v)] += 1;
        }
    }
    for &v in tail {
        counts[0][slot(v)] += 1;
    }
    (0..=HIST_BINS)
        .map(|i| counts.iter().map(|c| c[i]).sum::<u64>() as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use gradscope_models::Regime;
    use proptest::prelude::*;

    use super::*;

    fn naive(x: &[f32]) -> (f64, f64, f32, usize, usize) {
        let sum = x.iter().map(|&v| v as f64).sum();
        let sq = x.iter().map(|&v| (v as f64).powi(2)).sum();
        let max = x.iter().filter(|v| !v.is_nan()).fold(0f32, |a, &b| a.max(b.abs()));
        let zeros = x.iter().filter(|&&v| v == 0.0).count();
        let bad = x.iter().filter(|v| !v.is_finite()).count();
        (sum, sq, max, zeros, bad)
    }

    proptest! {
        #[test]
        fn moments_match_a_naive_f64_pass(x in prop::collection::vec(-1e3f32..1e3, 0..5000)) {
            let m = Moments::of(&x);
            let (sum, sq, max, zeros, bad) = naive(&x);
            let scale = x.iter().map(|&v| (v as f64).abs()).sum::<f64>().max(1.0);
            prop_assert!((m.sum - sum).abs() <= 1e-5 * scale, "{} vs {}", m.sum, sum);
            prop_assert!((m.sum_sq - sq).abs() <= 1e-5 * sq.max(1.0), "{} vs {}", m.sum_sq, sq);
            prop_assert_eq!(m.max_abs, max);
            prop_assert_eq!((m.zeros, m.nonfinite, m.n), (zeros, bad, x.len()));
        }

        #[test]
        fn diff_and_std_match_naive(x in prop::collection::vec(-10f32..10.0, 1..3000)) {
            let y: Vec<f32> = x.iter().map(|v| v * 0.5 + 1.0).collect();
            let want = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
            let (diff, norm) = diff_l2(&x, &y);
            prop_assert!((diff - want).abs() <= 1e-5 * want.max(1.0));
            let want = y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            prop_assert!((norm - want).abs() <= 1e-5 * want.max(1.0));
        }

        #[test]
        fn point_moments_match_naive(x in prop::collection::vec(-10f32..10.0, 1..3000), offset in -1e3f32..1e3) {
            // Shifted as far as +-1000 from 0: the deviations' sums keep the spread.
            let x: Vec<f32> = x.iter().map(|v| v + offset).collect();
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
            let (p, _) = point_pass(&x, None, None, None, 0.0);
            prop_assert!((p.mean() - mean).abs() <= 1e-6 * mean.abs().max(1.0), "{} vs {mean}", p.mean());
            prop_assert!((p.std() - var.sqrt()).abs() <= 1e-4 * var.sqrt().max(1e-3), "{} vs {}", p.std(), var.sqrt());
        }
    }

    #[test]
    fn counts_special_values() {
        let x = [0.0, -0.0, f32::NAN, f32::INFINITY, -2.0, 3.0];
        let m = Moments::of(&x);
        assert_eq!((m.zeros, m.nonfinite), (2, 2));
        assert_eq!(m.max_abs, f32::INFINITY);
        let nan_only = Moments::of(&[1.0, f32::NAN]);
        assert_eq!(nan_only.max_abs, 1.0);
        assert!(nan_only.max_abs_or_nan().is_nan());
        let leaky = Some(Activation::LeakyRelu { slope: 0.01 });
        let (p, _) = point_pass(&x, None, None, leaky, 0.0);
        assert_eq!(p.in_regime, 1, "-0.0 is not below zero; NaN compares false");
    }

    #[test]
    fn std_survives_a_large_mean() {
        // Sigmoid outputs: mean 0.5, spread 1e-4. The one-pass formula returns ~0 or NaN.
        let x: Vec<f32> = (0..4096).map(|i| 0.5 + if i % 2 == 0 { 1e-4 } else { -1e-4 }).collect();
        let (p, _) = point_pass(&x, None, None, Some(Activation::Sigmoid), 0.0);
        assert!((p.std() - 1e-4).abs() < 1e-6, "{}", p.std());
        assert!((p.mean() - 0.5).abs() < 1e-7, "{}", p.mean());
    }

    #[test]
    fn unit_max_finds_dead_columns() {
        // 3 samples x 4 units; unit 2 is zero for every sample.
        let x = [1.0, -2.0, 0.0, 0.0, 0.5, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, -1.0];
        assert_eq!(unit_max_abs(&x, 4), vec![1.0, 2.0, 0.0, 3.0]);
    }

    /// One of each activation, for the derivative passes.
    const EVERY_ACTIVATION: [Activation; 8] = [
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.01 },
        Activation::Elu { alpha: 1.0 },
        Activation::Selu,
        Activation::Gelu,
        Activation::Identity,
    ];

    /// 3001 inputs evenly spread over +-1500/`per_unit`, and a signal cycling over seven values.
    fn inputs_and_signal(per_unit: f32) -> (Vec<f32>, Vec<f32>) {
        let x = (0..3001).map(|i| (i as f32 - 1500.0) / per_unit).collect();
        let g = (0..3001).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
        (x, g)
    }

    #[test]
    fn point_pass_counts_and_weights() {
        let (pre, post, g) = ([-10.0, 0.0, 10.0], [0.0, 0.0, 10.0], [1.0, 2.0, 3.0]);
        let relu = Some(Activation::Relu);
        let (p, known) = point_pass(&post, Some(&pre), Some(&g), relu, 0.01);
        assert!(known);
        assert_eq!((p.n, p.in_regime), (3, 2), "two dead values");
        assert_eq!((p.signal_sq, p.through_sq), (14.0, 9.0));
        assert!((p.mean() - 10.0 / 3.0).abs() < 1e-6 && (p.std() - 200f64.sqrt() / 3.0).abs() < 1e-6);
        let tanh = Some(Activation::Tanh);
        assert_eq!(
            point_pass(&post, Some(&pre), Some(&g), tanh, 0.01).0.in_regime,
            2,
            "two saturated"
        );
        let leaky = Some(Activation::LeakyRelu { slope: 0.1 });
        assert_eq!(
            point_pass(&post, Some(&pre), Some(&g), leaky, 0.01).0.in_regime,
            1,
            "one negative"
        );
        // Without a signal its sums are 0; without an activation nothing tells `f'`.
        let (p, _) = point_pass(&post, Some(&pre), None, relu, 0.01);
        assert_eq!((p.signal_sq, p.through_sq, p.in_regime), (0.0, 0.0, 2));
        assert!(!point_pass(&post, None, Some(&g), None, 0.0).1);
        assert!(!point_pass(&post, None, Some(&g), Some(Activation::Gelu), 0.0).1);
        // The vectorised derivatives at the input against the scalar reference.
        let (pre, g) = inputs_and_signal(100.0);
        for act in EVERY_ACTIVATION {
            let t = (0.01 * act.max_derivative()) as f32;
            let (fast, _) = point_pass(&pre, Some(&pre), Some(&g), Some(act), t);
            let reference = point_kernel(
                &pre,
                &pre,
                Some(&g),
                fast.shift as f32,
                |a| act.derivative_at(a),
                |_, _, _| false,
            );
            assert!(
                (fast.through_sq - reference.through_sq).abs() <= 2e-5 * reference.through_sq,
                "{act}: {fast:?} vs {reference:?}"
            );
            assert_eq!(
                (fast.signal_sq, fast.dev, fast.dev_sq),
                (reference.signal_sq, reference.dev, reference.dev_sq)
            );
            if act.regime() == Regime::Saturating {
                let saturated = pre.iter().filter(|&&a| act.derivative_at(a) < t).count();
                assert!(
                    fast.in_regime.abs_diff(saturated) <= 2,
                    "{act}: {fast:?} vs {saturated}"
                );
            }
        }
    }

    /// Read from the output, the pass agrees with its scalar reference exactly
    /// (same arithmetic) and with the pass over the input to f32 rounding; the
    /// output has the input's sign where it tells `f'`.
    #[test]
    fn point_pass_reads_the_output() {
        let (pre, g) = inputs_and_signal(200.0);
        for act in EVERY_ACTIVATION.into_iter().filter(|a| *a != Activation::Gelu) {
            let x = Tensor::<1>::from_data(TensorData::new(pre.clone(), [pre.len()]), &burn::tensor::Device::flex());
            let post: Vec<f32> = act.forward(x).to_data().try_to_vec().unwrap();
            let t = (0.01 * act.max_derivative()) as f32;
            let (fast, known) = point_pass(&post, None, Some(&g), Some(act), t);
            assert!(known, "{act} reads from its output");
            let d = |y| act.derivative_at_output(y).unwrap();
            let reference = point_kernel(&post, &post, Some(&g), fast.shift as f32, d, |_, _, _| false);
            assert_eq!(fast.through_sq, reference.through_sq, "{act}");
            let (at_input, _) = point_pass(&post, Some(&pre), Some(&g), Some(act), t);
            assert!(
                (fast.through_sq - at_input.through_sq).abs() <= 2e-4 * at_input.through_sq,
                "{act}: {fast:?} vs {at_input:?}"
            );
            // Saturated, dead and negative values alike, from either side.
            assert!(
                fast.in_regime.abs_diff(at_input.in_regime) <= 2,
                "{act}: {fast:?} vs {at_input:?}"
            );
            assert_eq!(
                (fast.dev, fast.dev_sq),
                (at_input.dev, at_input.dev_sq),
                "{act}: moments of the output"
            );
        }
    }

    #[test]
    fn histogram_bins_follow_the_decades_exactly() {
        // Values just below and at each edge land on either side of it.
        for i in 1..HIST_BINS {
            let edge = 10f64.powf(HIST_LO + i as f64 * HIST_WIDTH) as f32;
            let below = f32::from_bits(edge.to_bits() - 1);
            let h = log_histogram(&[below, edge, -edge]);
            assert_eq!(h[i - 1], 1.0, "just below edge {i}");
            assert_eq!(h[i], 2.0, "at edge {i}");
        }
        let h = log_histogram(&[f32::INFINITY, 1e-45, f32::NAN]);
        assert_eq!((h[HIST_BINS - 1], h[0], h.iter().sum::<f64>()), (1.0, 1.0, 2.0));
    }

    #[test]
    fn l2_matches_naive() {
        let x: Vec<f32> = (0..20_001).map(|i| ((i % 13) as f32 - 6.0) * 0.25).collect();
        let want = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((l2(&x) - want).abs() <= 1e-6 * want);
        assert_eq!(l2(&[]), 0.0);
    }

    #[test]
    fn histogram_matches_the_device_version() {
        use burn::tensor::{Device, Tensor, TensorData};
        let x: Vec<f32> = vec![1e-6, -1e-6, 3e-3, 0.0, 0.0, 50.0, 1e-30, 1e30, -7.5e-9];
        let device = Device::flex();
        let t = Tensor::<1>::from_data(TensorData::new(x.clone(), [x.len()]), &device);
        let on_device: Vec<f32> = crate::device::log_histogram(&t).into_data().try_to_vec().unwrap();
        let host = log_histogram(&x);
        assert_eq!(host, on_device.iter().map(|&c| c as f64).collect::<Vec<_>>());
    }
}
