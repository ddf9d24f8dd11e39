//! ReLU on flex, both passes split over the rayon pool.
//!
//! burn-flex computes `relu` and its backward pass on the calling thread: at
//! two threads a ResNet step spends a few percent of its time there with the
//! other thread idle. Here `y = max(a, 0)` and, from the output,
//! `dL/da = g` where `y > 0` and 0 elsewhere, in chunks over the pool, with
//! Burn's rules at the edges: `relu(0) = 0` with gradient 0, a NaN input
//! stays NaN (a diverging run still shows it) and passes `g` back. Other
//! backends, and tensors that are not f32, take Burn's `relu`.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, activation as act};

use crate::flex_host::{elementwise, map_f32, zip_map_f32};

/// `max(a, 0)` element-wise.
pub fn relu<const D: usize>(a: Tensor<D>) -> Tensor<D> {
    elementwise(a, ParallelRelu, |x| map_f32(x, forward_value), act::relu)
}

/// `a` where positive (or NaN), 0 elsewhere.
pub(crate) fn forward_value(a: f32) -> f32 {
    if a <= 0.0 { 0.0 } else { a }
}

/// `g` where the ReLU's input `a`, or equally its output, is not `<= 0`
/// (positive or NaN), 0 elsewhere: the backward rule (also applied by
/// [`batchnorm`](crate::batchnorm)'s folded ReLU, to the recomputed input).
pub(crate) fn backward_value(a: f32, g: f32) -> f32 {
    if a <= 0.0 { 0.0 } else { g }
}

/// ReLU's autodiff node; its state is the output.
#[derive(Debug)]
struct ParallelRelu;

impl Backward<Flex, 1> for ParallelRelu {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(parent) = &ops.parents[0] {
            let dx = zip_map_f32(&ops.state, &grad, backward_value);
            grads.register::<Flex>(parent.id, dx);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::flex_host::CHUNK;
    use crate::test_support::normal;

    /// Forward and gradient equal Burn's ReLU bit for bit, on a tensor split
    /// over threads and a small one with zeros, a NaN and infinities.
    #[test]
    fn matches_burns_relu_with_and_without_autodiff() {
        let device = Device::flex().autodiff();
        let large = normal([3 * CHUNK / 8 + 1, 8], 0.0, 1.0, 4, &device);
        let special = [-2.0f32, -0.0, 0.0, 3.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let small = Tensor::<2>::from_data(TensorData::new(special.to_vec(), [1, 7]), &device);
        // Equal values, or NaN in both.
        let same = |a: Tensor<2>, b: Tensor<2>, what: &str| {
            let (a, b) = (
                a.into_data().try_to_vec::<f32>().unwrap(),
                b.into_data().try_to_vec::<f32>().unwrap(),
            );
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    x == y || (x.is_nan() && y.is_nan()),
                    "{what}, element {i}: {x} against Burn's {y}"
                );
            }
        };
        for (seed, x) in [(5, large), (6, small)] {
            let (a, b) = (x.clone().require_grad(), x.require_grad());
            let (ours, theirs) = (relu(a.clone()), act::relu(b.clone()));
            same(ours.clone(), theirs.clone(), "output");
            let weights = normal(ours.dims(), 0.0, 1.0, seed, &device);
            let ga = (ours * weights.clone()).sum().backward();
            let gb = (theirs * weights).sum().backward();
            same(a.grad(&ga).unwrap(), b.grad(&gb).unwrap(), "gradient");
        }
        let plain = normal([2, 9], 0.0, 1.0, 7, &Device::flex());
        same(relu(plain.clone()), act::relu(plain), "output without autodiff");
    }
}
