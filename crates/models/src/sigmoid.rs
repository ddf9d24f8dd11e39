//! The logistic sigmoid on flex, with an `exp` the compiler can vectorise.
//!
//! burn-flex computes `sigmoid` value by value with libm's `expf` behind a
//! branch on the sign, a loop LLVM leaves scalar. Here the forward pass is
//! `y = 1 / (1 + e^-a)` with [`exp_fast`] (plain arithmetic, relative error
//! below 2e-6) in one branch-free pass, split over the rayon pool for large
//! tensors; the backward pass is Burn's own, `dL/da = g · y (1 - y)` from the
//! output. Other backends, and tensors that are not f32, take Burn's `sigmoid`.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ActivationOps;
use burn::tensor::{Tensor, activation as act};

use crate::flex_host::{elementwise, map_f32};

/// `e^x` for f32 in plain arithmetic (so it vectorises, unlike libm's `expf`):
/// `x = n ln2 + r` with |r| <= ln2/2, a degree-6 polynomial for `e^r`, and `2^n`
/// built in the exponent bits. Relative error below 2e-6 on [-87, 88]; clamped
/// outside, where f32 under- or overflows anyway.
pub fn exp_fast(x: f32) -> f32 {
    // Round to nearest by adding 1.5 * 2^23: plain arithmetic, where
    // `f32::round` would be a libm call per element. The sum's low mantissa
    // bits then hold n itself, so 2^n is built from integer bits: a float to
    // int `as` cast (saturating in Rust) would not vectorise.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // Cody-Waite split of ln 2 keeps r accurate.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127).wrapping_shl(23))
}

/// `1 / (1 + e^-a)` element-wise.
pub fn sigmoid<const D: usize>(a: Tensor<D>) -> Tensor<D> {
    elementwise(a, FastSigmoid, forward_flex, act::sigmoid)
}

fn forward_flex(x: &FlexTensor) -> FlexTensor {
    map_f32(x, |x| 1.0 / (1.0 + exp_fast(-x)))
}

/// The sigmoid's autodiff node; its state is the output.
#[derive(Debug)]
struct FastSigmoid;

impl Backward<Flex, 1> for FastSigmoid {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(parent) = &ops.parents[0] {
            grads.register::<Flex>(parent.id, Flex::sigmoid_backward(ops.state, grad));
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, TensorData};

    use super::*;
    use crate::flex_host::CHUNK;

    #[test]
    fn exp_fast_is_accurate_over_the_f32_range() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            worst = worst.max(((exp_fast(x) as f64 - want) / want).abs());
        }
        assert!(worst < 2e-6, "worst relative error {worst}");
        assert_eq!(exp_fast(-1000.0), exp_fast(-87.0));
        assert!(exp_fast(1000.0).is_finite());
    }

    /// Forward and gradient equal Burn's sigmoid, on a tensor large enough to be
    /// split over threads and on one with extreme values.
    #[test]
    fn matches_burns_sigmoid_with_and_without_autodiff() {
        let device = Device::flex().autodiff();
        for (n, scale) in [(3 * CHUNK + 7, 4.0), (257, 100.0)] {
            let x = Tensor::<2>::random([n / 7 + 1, 7], Distribution::Normal(0.0, scale), &device);
            let (a, b) = (x.clone().require_grad(), x.clone().require_grad());
            let (ours, theirs) = (sigmoid(a.clone()), act::sigmoid(b.clone()));
            let diff = (ours.clone() - theirs.clone()).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-6, "forward differs by {diff}");
            let weights = Tensor::<2>::random(ours.shape(), Distribution::Default, &device);
            let ga = (ours * weights.clone()).sum().backward();
            let gb = (theirs * weights).sum().backward();
            let (ga, gb) = (a.grad(&ga).unwrap(), b.grad(&gb).unwrap());
            let diff = (ga - gb).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-6, "gradient differs by {diff}");
        }
        let plain = Tensor::<1>::from_data(
            TensorData::new(vec![-90f32, -1.0, 0.0, 1.0, 90.0], [5]),
            &Device::flex(),
        );
        let y: Vec<f32> = sigmoid(plain).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y[2], 0.5);
        assert!(y[0] >= 0.0 && y[0] < 1e-38 && y[4] == 1.0, "{y:?}");
        assert!((y[3] - 0.731_058_6).abs() < 1e-6 && (y[1] + y[3] - 1.0).abs() < 1e-6);
    }
}
