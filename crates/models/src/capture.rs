//! Reading `dL/dh` at a hidden tensor `h` without changing the forward pass.
//!
//! Burn keeps gradients only for leaves (`require_grad` panics on anything
//! else). The usual workaround adds a zero leaf to `h` and reads the leaf's
//! gradient; on an 8x256 MLP those zero tensors and additions cost 5-10% of a
//! training step on flex. [`capture`] instead inserts an identity operation
//! into the autodiff graph: the forward pass returns the very same buffer (no
//! computation, no allocation), and its backward step hands the incoming
//! gradient on unchanged while keeping a reference to it in a [`GradSlot`].
//! After `backward`, the slot holds `dL/dh`, summed over every use of `h`,
//! exactly as the zero leaf's gradient would be.
//!
//! The operation is written against Burn's backend-extension API (`Backward`,
//! `OpsPrep`), once per compiled backend: flex, ndarray and the CubeCL runtimes
//! (wgpu, CUDA).

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
#[allow(deprecated)] // ndarray stays a supported `--backend` while Burn ships it.
use burn::backend::{Autodiff, Backend, Cube, Flex, NdArray};
use burn::tensor::Tensor;

use crate::probe_point::flatten;

/// Where [`capture`] leaves the gradient of the tensor it was given,
/// flattened to `[batch, features]`.
#[derive(Debug, Clone, Default)]
pub struct GradSlot(Arc<Mutex<Option<Tensor<2>>>>);

impl GradSlot {
    /// Takes the captured gradient out (`None` before a backward pass reached it).
    pub fn take(&self) -> Option<Tensor<2>> {
        self.0.lock().expect("grad slot lock").take()
    }

    fn put(&self, grad: Tensor<2>) {
        *self.0.lock().expect("grad slot lock") = Some(grad);
    }
}

/// `h` itself, with `dL/dh` left in `slot` by the next backward pass through it.
///
/// On a tensor that does not require a gradient (or a backend without
/// autodiff) nothing is recorded and the slot stays empty.
#[allow(deprecated)] // ndarray
pub fn capture<const D: usize>(h: Tensor<D>, slot: &GradSlot) -> Tensor<D> {
    macro_rules! on {
        ($backend:ty) => {
            if let Ok(ad) = h.clone().try_into_primitive::<Autodiff<$backend>>() {
                let out = capture_on::<$backend, D>(ad, slot.clone());
                return Tensor::from_primitive::<Autodiff<$backend>>(out);
            }
        };
    }
    on!(Flex);
    on!(NdArray);
    on!(Cube);
    h
}

/// Whether `h` is an autodiff tensor, whose gradient [`capture`] would keep
/// (not a validation or inference pass on the inner backend).
#[allow(deprecated)] // ndarray
pub fn is_tracked<const D: usize>(h: &Tensor<D>) -> bool {
    macro_rules! on {
        ($backend:ty) => {
            if h.clone().try_into_primitive::<Autodiff<$backend>>().is_ok() {
                return true;
            }
        };
    }
    on!(Flex);
    on!(NdArray);
    on!(Cube);
    false
}

type AdTensor<B> = <Autodiff<B> as burn::backend::BackendTypes>::FloatTensorPrimitive;

fn capture_on<B: Backend, const D: usize>(h: AdTensor<B>, slot: GradSlot) -> AdTensor<B>
where
    burn::tensor::DispatchTensor: burn::backend::DispatchKindConversion<B>,
{
    let (primitive, guard) = h.into_parts();
    Capture::<B, D> {
        slot,
        _backend: PhantomData,
    }
    .prepare::<NoCheckpointing>([guard])
    .compute_bound()
    .stateless(primitive)
}

/// The identity whose backward step keeps the gradient.
struct Capture<B, const D: usize> {
    slot: GradSlot,
    _backend: PhantomData<fn() -> B>,
}

impl<B, const D: usize> std::fmt::Debug for Capture<B, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Capture")
    }
}

impl<B: Backend, const D: usize> Backward<B, 1> for Capture<B, D>
where
    burn::tensor::DispatchTensor: burn::backend::DispatchKindConversion<B>,
{
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            self.slot.put(flatten(Tensor::<D>::from_primitive::<B>(grad.clone())));
            grad
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData, Tolerance};

    /// The captured gradient is the one a zero leaf added to `h` receives.
    #[test]
    #[allow(deprecated)] // ndarray
    fn capture_matches_the_zero_leaf_gradient() {
        for device in [Device::flex().autodiff(), Device::ndarray().autodiff()] {
            let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], &device).require_grad();
            let f =
                |h: Tensor<2>| burn::tensor::activation::sigmoid((h.clone() * h.clone()).sum_dim(1)).sum() + h.sum();
            // With a zero leaf.
            let tap = Tensor::<2>::zeros([2, 3], &device).require_grad();
            let h = x.clone().tanh();
            let mut grads = f(h.clone() + tap.clone()).backward();
            let expected = tap.grad_remove(&mut grads).unwrap();
            let x_expected = x.grad_remove(&mut grads).unwrap();
            // With the capture.
            let slot = GradSlot::default();
            let h = capture(x.clone().tanh(), &slot);
            let mut grads = f(h).backward();
            let got = slot.take().expect("captured");
            got.to_data()
                .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::default());
            // The gradient flowing on is untouched.
            x.grad_remove(&mut grads)
                .unwrap()
                .to_data()
                .assert_eq(&x_expected.to_data(), true);
            assert!(slot.take().is_none(), "taken once");
        }
    }

    /// Higher-rank tensors come back as `[batch, features]`; untracked ones are left alone.
    #[test]
    fn capture_flattens_and_ignores_untracked_tensors() {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::ones([2, 3, 2, 2], &device).require_grad();
        let slot = GradSlot::default();
        let h = capture(x.clone() * 3.0, &slot);
        let _ = (h * 2.0).sum().backward();
        let g = slot.take().expect("captured");
        assert_eq!(g.dims(), [2, 12]);
        g.to_data().assert_eq(&TensorData::new(vec![2f32; 24], [2, 12]), true);

        assert!(is_tracked(&x) && !is_tracked(&x.clone().inner()));
        let untracked = GradSlot::default();
        let y = capture(Tensor::<2>::ones([2, 2], &device), &untracked);
        let _ = (y.sum() + x.sum()).backward();
        assert!(untracked.take().is_none());
    }
}
