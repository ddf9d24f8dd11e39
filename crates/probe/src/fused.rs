//! One-pass statistics over host memory, for the flex backend.
//!
//! On flex the "device" is the host: a tensor read back is a `memcpy`, and
//! every Burn op is a full pass over memory plus an allocation and a dispatch.
//! Measuring a layer with Burn ops costs about 40 such passes; here each tensor
//! is read once and every statistic of it (sum, sum of squares, max |x|, exact
//! zeros, non-finite values) comes out of the same loop. The other backends
//! keep the device-side reductions of [`crate::measure`]: on a GPU a read back
//! crosses PCIe, and the one-transfer-per-step rule matters.
//!
//! Accumulation: f32 lanes over blocks of [`BLOCK`] values, summed into f64, so
//! the error stays near f32 rounding of a block rather than growing with the
//! tensor's size. The loops are written over fixed-width lane arrays with no
//! data-dependent branches so that LLVM vectorises them for the baseline x86-64
//! target; builds of the same loops for AVX2 and AVX-512 (runtime-dispatched
//! `#[target_feature]` copies) measured no faster on this machine, where these
//! passes are bound by memory bandwidth (about 5 GB/s), so they were dropped.
//! Lane counters use `wrapping_add`: a lane counts at most `BLOCK / LANES`
//! values, so they never wrap, and the explicit form keeps the loops
//! vectorised in builds with overflow checks (the dev profile), which
//! otherwise made them 3-10x slower.

use burn::tensor::Tensor;
use gradscope_models::{Activation, Regime};

use crate::measure::{GradPrefix, HIST_BINS, HIST_LO, HIST_WIDTH, StepStats, StepView, VectorKind, grad_flat};

/// A tensor's values on the host (a copy: the tensor stays usable).
pub fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_into_vec().expect("f32 tensor")
}

/// Every statistic of a probe step, each tensor read once (the flex path; see
/// [`crate::measure::device_step`] for the same metrics as device reductions).
pub fn host_step(view: &StepView<'_>, out: &mut StepStats) {
    let mut push = |i: usize, name: &'static str, v: f64| out.values.push((Some(i), name, v));
    // Each tap is read once even when two points use it (skip shares).
    let taps: Vec<Option<Vec<f32>>> = view.taps.out.iter().map(|t| t.as_ref().map(host)).collect();
    for (i, p) in view.points.iter().enumerate() {
        let post_t = view.traces[i].post.clone().inner();
        let post = host(&post_t);
        let g = taps[i].as_deref();
        if let Some(g) = g {
            let m = Moments::of(g);
            push(i, "signal_l2", m.l2());
            push(i, "signal_rms", m.rms());
        }
        if let Some(act) = p.activation {
            // The activation's input: read only where there is an activation.
            let pre = host(&view.traces[i].pre.clone().inner());
            let threshold = (0.01 * act.max_derivative()) as f32;
            let (l2, below) = through_derivative(&pre, g, act, threshold);
            if g.is_some() {
                push(i, "preact_signal_l2", l2);
            }
            match act.regime() {
                Regime::Saturating => push(i, "saturated_frac", below as f64 / pre.len().max(1) as f64),
                Regime::LeakyNegative => push(
                    i,
                    "negative_frac",
                    count_negative(&pre) as f64 / pre.len().max(1) as f64,
                ),
                Regime::Rectifying | Regime::Linear => {}
            }
        }
        if let Some(g) = &view.taps.norm_in[i] {
            push(i, "bn_in_signal_l2", Moments::of(&host(g)).l2());
        }
        for (id, prefix) in [(view.weight[i], GradPrefix::Weight), (view.bias[i], GradPrefix::Bias)] {
            let Some(g) = id.and_then(|(id, rank)| grad_flat(view.grads, id, rank)) else {
                continue;
            };
            let g = host(&g);
            let m = Moments::of(&g);
            let [l2_name, max_name, zero_name, nonfinite_name] = prefix.names();
            push(i, l2_name, m.l2());
            push(i, max_name, m.max_abs_or_nan());
            push(i, zero_name, m.zero_frac());
            push(i, nonfinite_name, m.nonfinite as f64);
            if matches!(prefix, GradPrefix::Weight) {
                push(i, "weight_numel", g.len() as f64);
                if view.hist {
                    let counts = log_histogram(&g).into_iter().map(|c| c as f32).collect();
                    out.vectors.push((i, VectorKind::Histogram, counts));
                }
            }
        }
        let m = Moments::of(&post);
        let mean = m.mean();
        push(i, "act_mean", mean);
        push(i, "act_std", std_about(&post, mean));
        if p.activation.map(|a| a.regime()) == Some(Regime::Rectifying) {
            let [_, features] = post_t.dims();
            let alive = unit_max_abs(&post, features);
            let dead = alive.iter().filter(|&&a| a == 0.0).count();
            push(i, "dead_frac", dead as f64 / features.max(1) as f64);
            push(i, "zero_frac", m.zero_frac());
            out.vectors.push((i, VectorKind::UnitMaxAbs, alive));
        }
        if let Some(links) = p.block.as_ref().filter(|b| b.identity_skip)
            && let (Some(total), Some(skip)) = (&taps[links.input], &taps[links.branch])
        {
            // ||total - skip|| is the branch's part; ||skip|| comes out of the same pass.
            let (b, s) = diff_l2(total, skip);
            push(i, "skip_share", s / (s + b + 1e-30));
        }
    }
}

/// Values per block whose partial sums are carried in f32.
pub const BLOCK: usize = 1024;
const LANES: usize = 16;

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
        let mut m = Moments {
            n: x.len(),
            ..Moments::default()
        };
        for block in x.chunks(BLOCK) {
            let mut sum = [0f32; LANES];
            let mut sq = [0f32; LANES];
            let mut max = [0f32; LANES];
            let mut zeros = [0u32; LANES];
            let mut bad = [0u32; LANES];
            let mut lanes = block.chunks_exact(LANES);
            for c in &mut lanes {
                for l in 0..LANES {
                    let v = c[l];
                    sum[l] += v;
                    sq[l] += v * v;
                    max[l] = max[l].max(v.abs());
                    zeros[l] = zeros[l].wrapping_add((v == 0.0) as u32);
                    bad[l] = bad[l].wrapping_add((!v.is_finite()) as u32);
                }
            }
            for &v in lanes.remainder() {
                sum[0] += v;
                sq[0] += v * v;
                max[0] = max[0].max(v.abs());
                zeros[0] += (v == 0.0) as u32;
                bad[0] += (!v.is_finite()) as u32;
            }
            m.sum += sum.iter().map(|&s| s as f64).sum::<f64>();
            m.sum_sq += sq.iter().map(|&s| s as f64).sum::<f64>();
            m.max_abs = max.iter().fold(m.max_abs, |a, &b| a.max(b));
            m.zeros += zeros.iter().sum::<u32>() as usize;
            m.nonfinite += bad.iter().sum::<u32>() as usize;
        }
        m
    }

    pub fn l2(&self) -> f64 {
        self.sum_sq.sqrt()
    }

    pub fn rms(&self) -> f64 {
        (self.sum_sq / self.n.max(1) as f64).sqrt()
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

/// `e^x` for f32 in plain arithmetic (so it vectorises, unlike libm's `expf`):
/// `x = n ln2 + r` with |r| <= ln2/2, a degree-6 polynomial for `e^r`, and `2^n`
/// built in the exponent bits. Relative error below 2e-7 on [-87, 88]; clamped
/// outside, where f32 under- or overflows anyway.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    // Round to nearest by adding and subtracting 1.5 * 2^23: plain SSE2
    // arithmetic, where `f32::round` would be a libm call per element.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // Cody-Waite split of ln 2 keeps r accurate.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32).wrapping_add(127) as u32).wrapping_shl(23))
}

/// [`through_derivative`] for sigmoid (`tanh == false`) or tanh, with [`exp_fast`].
#[inline(always)]
fn sigmoid_pass_kernel(pre: &[f32], g: Option<&[f32]>, threshold: f32, tanh: bool) -> (f64, usize) {
    let d = |a: f32| {
        if tanh {
            // tanh(a) = 1 - 2 / (e^(2a) + 1); tanh' = 1 - tanh^2.
            let t = 1.0 - 2.0 / (exp_fast(2.0 * a) + 1.0);
            1.0 - t * t
        } else {
            let s = 1.0 / (1.0 + exp_fast(-a));
            s * (1.0 - s)
        }
    };
    derivative_kernel(pre, g, d, threshold)
}

/// Population standard deviation about a known mean (a second pass: the one-pass
/// formula loses everything to cancellation when |mean| >> std, as for sigmoid outputs).
pub fn std_about(x: &[f32], mean: f64) -> f64 {
    let mean = mean as f32;
    let mut total = 0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let mut lanes = block.chunks_exact(LANES);
        for c in &mut lanes {
            for l in 0..LANES {
                let d = c[l] - mean;
                acc[l] += d * d;
            }
        }
        for &v in lanes.remainder() {
            acc[0] += (v - mean) * (v - mean);
        }
        total += acc.iter().map(|&s| s as f64).sum::<f64>();
    }
    (total / x.len().max(1) as f64).sqrt()
}

/// `(||a - b||_2, ||b||_2)` in one pass: an update's size and the norm of the
/// weights it started from; also the share of a gradient not on the skip path.
pub fn diff_l2(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "diff_l2 of tensors of different sizes");
    let (mut diff, mut norm) = (0f64, 0f64);
    for (ca, cb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let mut d2 = [0f32; LANES];
        let mut b2 = [0f32; LANES];
        let mut la = ca.chunks_exact(LANES);
        let mut lb = cb.chunks_exact(LANES);
        for (x, y) in (&mut la).zip(&mut lb) {
            for l in 0..LANES {
                let d = x[l] - y[l];
                d2[l] += d * d;
                b2[l] += y[l] * y[l];
            }
        }
        for (x, y) in la.remainder().iter().zip(lb.remainder()) {
            d2[0] += (x - y) * (x - y);
            b2[0] += y * y;
        }
        diff += d2.iter().map(|&s| s as f64).sum::<f64>();
        norm += b2.iter().map(|&s| s as f64).sum::<f64>();
    }
    (diff.sqrt(), norm.sqrt())
}

/// `||f'(pre) * g||_2` and the number of units with `f'(pre) < threshold`, in one
/// pass: the signal below a layer's activation, and its saturation. Sigmoid and
/// tanh, the activations this matters most for, take a vectorised path.
pub fn through_derivative(pre: &[f32], g: Option<&[f32]>, act: Activation, threshold: f32) -> (f64, usize) {
    let tanh = match act {
        Activation::Sigmoid => false,
        Activation::Tanh => true,
        _ => return derivative_kernel(pre, g, |a| act.derivative_at(a), threshold),
    };
    sigmoid_pass_kernel(pre, g, threshold, tanh)
}

#[inline(always)]
fn derivative_kernel(pre: &[f32], g: Option<&[f32]>, d: impl Fn(f32) -> f32, threshold: f32) -> (f64, usize) {
    let mut total = 0f64;
    let mut below = 0usize;
    // Lane arrays with no data-dependent branches, so that LLVM vectorises `d` too.
    let mut block = |pb: &[f32], gb: Option<&[f32]>| {
        let mut acc = [0f32; LANES];
        let mut count = [0u32; LANES];
        let mut pc = pb.chunks_exact(LANES);
        match gb {
            Some(gb) => {
                let mut gc = gb.chunks_exact(LANES);
                for (p, q) in (&mut pc).zip(&mut gc) {
                    for l in 0..LANES {
                        let da = d(p[l]);
                        count[l] = count[l].wrapping_add((da < threshold) as u32);
                        acc[l] += (da * q[l]) * (da * q[l]);
                    }
                }
                for (&a, &q) in pc.remainder().iter().zip(gc.remainder()) {
                    let da = d(a);
                    count[0] += (da < threshold) as u32;
                    acc[0] += (da * q) * (da * q);
                }
            }
            None => {
                for p in &mut pc {
                    for l in 0..LANES {
                        count[l] = count[l].wrapping_add((d(p[l]) < threshold) as u32);
                    }
                }
                for &a in pc.remainder() {
                    count[0] += (d(a) < threshold) as u32;
                }
            }
        }
        total += acc.iter().map(|&s| s as f64).sum::<f64>();
        below += count.iter().sum::<u32>() as usize;
    };
    match g {
        Some(g) => {
            assert_eq!(pre.len(), g.len(), "activation and signal of different sizes");
            pre.chunks(BLOCK)
                .zip(g.chunks(BLOCK))
                .for_each(|(p, q)| block(p, Some(q)));
        }
        None => pre.chunks(BLOCK).for_each(|p| block(p, None)),
    }
    (total.sqrt(), below)
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

/// The number of values below zero.
pub fn count_negative(x: &[f32]) -> usize {
    x.iter().map(|&v| (v < 0.0) as usize).sum()
}

/// Counts of |x| per log10 bin, as [`crate::measure::log_histogram`]: `HIST_BINS`
/// bins of `HIST_WIDTH` decades from 1e`HIST_LO` (values outside fall in the end
/// bins), then the exact zeros. NaN falls in no bin.
///
/// No logarithm per value: the bin is estimated from the float's exponent and
/// mantissa (`log2 x ~ e + (m - 1)`, off by less than 0.09 in log2, well under a
/// bin) and then corrected against the exact bin edges.
pub fn log_histogram(x: &[f32]) -> Vec<f64> {
    let edges: Vec<f32> = (0..=HIST_BINS)
        .map(|i| 10f64.powf(HIST_LO + i as f64 * HIST_WIDTH) as f32)
        .collect();
    let last = HIST_BINS - 1;
    let mut counts = vec![0u64; HIST_BINS + 1];
    for &v in x {
        let a = v.abs();
        if a == 0.0 {
            counts[HIST_BINS] += 1;
            continue;
        }
        if a.is_nan() {
            continue;
        }
        let bits = a.to_bits();
        let exponent = ((bits >> 23) & 0xff) as f32 - 127.0;
        let mantissa = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
        let log10 = (exponent + mantissa - 1.0) * std::f32::consts::LOG10_2;
        // Truncation is floor here: negative positions clamp to bin 0 first.
        let position = ((log10 as f64 - HIST_LO) / HIST_WIDTH).max(0.0);
        let mut bin = (position as usize).min(last);
        if bin > 0 && a < edges[bin] {
            bin -= 1;
        } else if bin < last && a >= edges[bin + 1] {
            bin += 1;
        }
        counts[bin] += 1;
    }
    counts.into_iter().map(|c| c as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
            prop_assert!((std_about(&x, mean) - var.sqrt()).abs() <= 1e-4 * var.sqrt().max(1.0));
        }
    }

    #[test]
    fn exp_fast_is_accurate_over_the_f32_range() {
        let mut worst = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp_fast(x) as f64 - want) / want).abs());
        }
        assert!(worst < 2e-6, "worst relative error {worst}");
        assert_eq!(exp_fast(-1000.0), exp_fast(-87.0));
        assert!(exp_fast(1000.0).is_finite());
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
        assert_eq!(count_negative(&x), 1, "-0.0 is not below zero; NaN compares false");
    }

    #[test]
    fn std_survives_a_large_mean() {
        // Sigmoid outputs: mean 0.5, spread 1e-4. The one-pass formula returns ~0 or NaN.
        let x: Vec<f32> = (0..4096).map(|i| 0.5 + if i % 2 == 0 { 1e-4 } else { -1e-4 }).collect();
        assert!((std_about(&x, 0.5) - 1e-4).abs() < 1e-6);
    }

    #[test]
    fn unit_max_finds_dead_columns() {
        // 3 samples x 4 units; unit 2 is zero for every sample.
        let x = [1.0, -2.0, 0.0, 0.0, 0.5, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, -1.0];
        assert_eq!(unit_max_abs(&x, 4), vec![1.0, 2.0, 0.0, 3.0]);
    }

    #[test]
    fn derivative_pass_counts_and_weights() {
        let pre = [-10.0, 0.0, 10.0];
        let g = [1.0, 2.0, 3.0];
        let (l2, below) = through_derivative(&pre, Some(&g), Activation::Relu, 0.01);
        assert_eq!(below, 2);
        assert!((l2 - 3.0).abs() < 1e-12);
        assert_eq!(through_derivative(&pre, None, Activation::Relu, 0.01), (0.0, 2));
        // The vectorised sigmoid and tanh paths against the scalar reference.
        let pre: Vec<f32> = (0..3001).map(|i| (i as f32 - 1500.0) / 100.0).collect();
        let g: Vec<f32> = (0..3001).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
        for act in [Activation::Sigmoid, Activation::Tanh] {
            let t = (0.01 * act.max_derivative()) as f32;
            let fast = through_derivative(&pre, Some(&g), act, t);
            let reference = derivative_kernel(&pre, Some(&g), |a| act.derivative_at(a), t);
            assert!(
                (fast.0 - reference.0).abs() <= 1e-5 * reference.0,
                "{act}: {fast:?} vs {reference:?}"
            );
            assert!(fast.1.abs_diff(reference.1) <= 2, "{act}: {fast:?} vs {reference:?}");
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
    fn histogram_matches_the_device_version() {
        use burn::tensor::{Device, Tensor, TensorData};
        let x: Vec<f32> = vec![1e-6, -1e-6, 3e-3, 0.0, 0.0, 50.0, 1e-30, 1e30, -7.5e-9];
        let device = Device::flex();
        let t = Tensor::<1>::from_data(TensorData::new(x.clone(), [x.len()]), &device);
        let on_device: Vec<f32> = crate::measure::log_histogram(&t).into_data().try_to_vec().unwrap();
        let host = log_histogram(&x);
        assert_eq!(host, on_device.iter().map(|&c| c as f64).collect::<Vec<_>>());
    }
}
