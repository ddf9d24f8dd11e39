//! Helpers for the kernel tests: seeded inputs that do not depend on what
//! other tests draw at the same time, and a comparison whose tolerance is
//! relative to the size of the values compared.

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// A tensor of `N(mean, std²)` draws from its own ChaCha stream.
///
/// `Tensor::random` draws from the device's shared generator, which tests
/// running in parallel advance in an order that changes from run to run; a
/// test of floating-point agreement must see the same numbers every time.
pub fn normal<const D: usize>(dims: [usize; D], mean: f32, std: f32, seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dist = Normal::new(mean, std).expect("a finite, non-negative std");
    let values: Vec<f32> = (0..dims.iter().product()).map(|_| dist.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// Asserts `max |a - b| <= rel * max |b|`, naming `what` when it fails.
///
/// An element-wise relative tolerance fails on values that are small because
/// large terms cancelled (a BatchNorm input gradient, a weight gradient summed
/// over a batch): two correct f32 orders of summation differ there by the
/// rounding of the large terms, not of the small result. The bound here is the
/// one a float reduction can promise: relative to the largest value of the set.
pub fn assert_close<const D: usize>(a: Tensor<D>, b: Tensor<D>, rel: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let a: Vec<f32> = a.into_data().convert::<f32>().try_into_vec().unwrap();
    let b: Vec<f32> = b.into_data().convert::<f32>().try_into_vec().unwrap();
    assert_close_slices(&a, &b, rel, 0.0, what);
}

/// [`assert_close`] on host values, with an absolute `floor` for sets whose
/// exact value is zero (a bias followed by BatchNorm gets only rounding noise,
/// whose size is set by the other values of the computation, not by its own).
pub fn assert_close_slices(a: &[f32], b: &[f32], rel: f32, floor: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0f32, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d > worst || d.is_nan() {
            (worst, at) = (d, i);
        }
    }
    assert!(
        worst <= rel * scale + floor.max(f32::MIN_POSITIVE),
        "{what}: element {at} is {} against {} (differs by {worst:e}; largest |value| {scale:e}, allowed {:e})",
        a[at],
        b[at],
        rel * scale + floor
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_a_tolerance_that_can_fail() {
        let d = Device::flex();
        let a = normal([3, 4], 1.0, 2.0, 11, &d);
        let b = normal([3, 4], 1.0, 2.0, 11, &d);
        a.to_data().assert_eq(&b.to_data(), true);
        let c = normal([3, 4], 1.0, 2.0, 12, &d);
        assert_ne!(a.to_data(), c.to_data());
        assert_close_slices(&[1.0, 0.0], &[1.0, 1e-6], 1e-5, 0.0, "within");
        assert_close_slices(&[1e-9], &[-1e-9], 1e-5, 1e-8, "under the floor");
        let far = std::panic::catch_unwind(|| assert_close_slices(&[1.0, 0.0], &[1.0, 1e-4], 1e-5, 0.0, "beyond"));
        assert!(far.is_err());
        let nan = std::panic::catch_unwind(|| assert_close_slices(&[f32::NAN], &[1.0], 1e-5, 1.0, "nan"));
        assert!(nan.is_err());
    }
}
