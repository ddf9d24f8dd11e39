//! Turning examples into device tensors: pixel normalisation, a Burn
//! [`Batcher`], and the deterministic order in which an epoch visits examples.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::split::{MnistItem, Split};

/// How raw pixel bytes become model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// Bytes as floats, 0 to 255.
    Raw,
    /// Scaled to [0, 1].
    Unit,
    /// Zero mean, unit variance with the training split's pixel mean and std
    /// (about 0.13 and 0.31 on [0, 1] for MNIST).
    #[default]
    Standard,
}

/// A normalisation resolved to `x' = (x - shift) * scale` on the byte value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub shift: f32,
    pub scale: f32,
}

impl Normalization {
    /// Resolves the normalisation against the training split it is fitted on.
    pub fn fit(self, train: &Split) -> Affine {
        match self {
            Normalization::Raw => Affine { shift: 0.0, scale: 1.0 },
            Normalization::Unit => Affine {
                shift: 0.0,
                scale: 1.0 / 255.0,
            },
            Normalization::Standard => {
                let (mean, std) = train.pixel_mean_std();
                Affine {
                    shift: mean as f32,
                    scale: 1.0 / std.max(1e-6) as f32,
                }
            }
        }
    }
}

/// A batch on a device: images `[batch, 1, rows, cols]` and class targets `[batch]`.
#[derive(Debug, Clone)]
pub struct MnistBatch {
    pub images: Tensor<4>,
    pub targets: Tensor<1, Int>,
}

/// Burn batcher that normalises pixels and stacks items into an [`MnistBatch`].
#[derive(Debug, Clone)]
pub struct MnistBatcher {
    pub rows: usize,
    pub cols: usize,
    pub affine: Affine,
}

impl MnistBatcher {
    /// The batcher for `train`'s image size with `normalization` fitted on `train`.
    pub fn fitted(train: &Split, normalization: Normalization) -> Self {
        Self {
            rows: train.images.rows,
            cols: train.images.cols,
            affine: normalization.fit(train),
        }
    }
}

impl Batcher<MnistItem, MnistBatch> for MnistBatcher {
    fn batch(&self, items: Vec<MnistItem>, device: &Device) -> MnistBatch {
        let n = items.len();
        let Affine { shift, scale } = self.affine;
        let mut pixels = Vec::with_capacity(n * self.rows * self.cols);
        let mut labels = Vec::with_capacity(n);
        for item in &items {
            pixels.extend(item.image.iter().map(|&p| (p as f32 - shift) * scale));
            labels.push(item.label as i64);
        }
        MnistBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, 1, self.rows, self.cols]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

/// The order in which one epoch visits a split: a permutation drawn from
/// `(seed, epoch)` alone, so any epoch can be replayed, or resumed from any batch,
/// without replaying the ones before it.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch);
        order.shuffle(&mut rng);
    }
    order
}

/// Batches of one epoch, starting at batch `start` (for resuming mid-epoch).
/// The last batch may be smaller than `batch_size`.
pub fn epoch_batches<'a>(
    split: &'a Split,
    batcher: &'a MnistBatcher,
    order: &'a [usize],
    batch_size: usize,
    start: usize,
    device: &'a Device,
) -> impl Iterator<Item = MnistBatch> + 'a {
    order.chunks(batch_size.max(1)).skip(start).map(move |chunk| {
        let items = split.get_many(chunk.to_vec()).expect("in-memory split cannot fail");
        batcher.batch(items, device)
    })
}

/// Number of batches in an epoch of `len` examples.
pub fn batches_per_epoch(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::IdxImages;

    fn split() -> Split {
        Split {
            images: IdxImages {
                count: 5,
                rows: 1,
                cols: 2,
                pixels: vec![0, 255, 1, 2, 3, 4, 5, 6, 7, 8],
            },
            labels: vec![0, 1, 2, 3, 4],
        }
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 0, true);
        assert_eq!(a, epoch_order(100, 7, 0, true));
        assert_ne!(a, epoch_order(100, 7, 1, true), "epochs differ");
        assert_ne!(a, epoch_order(100, 8, 0, true), "seeds differ");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, 7, 3, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn batcher_normalises_and_shapes() {
        let s = split();
        let device = Device::flex();
        let batcher = MnistBatcher {
            rows: 1,
            cols: 2,
            affine: Normalization::Unit.fit(&s),
        };
        let order = epoch_order(5, 0, 0, false);
        let batches: Vec<_> = epoch_batches(&s, &batcher, &order, 2, 0, &device).collect();
        assert_eq!(batches.len(), batches_per_epoch(5, 2));
        assert_eq!(batches[0].images.dims(), [2, 1, 1, 2]);
        assert_eq!(batches[2].images.dims(), [1, 1, 1, 2]);
        let first: Vec<f32> = batches[0].images.to_data().try_to_vec().unwrap();
        assert_eq!(first, vec![0.0, 1.0, 1.0 / 255.0, 2.0 / 255.0]);
        let t: Vec<i64> = batches[1].targets.to_data().convert::<i64>().try_to_vec().unwrap();
        assert_eq!(t, vec![2, 3]);
        let resumed: Vec<_> = epoch_batches(&s, &batcher, &order, 2, 1, &device).collect();
        assert_eq!(resumed.len(), 2);
    }

    #[test]
    fn standard_normalisation_has_zero_mean_unit_std_on_train() {
        let s = split();
        let Affine { shift, scale } = Normalization::Standard.fit(&s);
        let z: Vec<f64> = s
            .images
            .pixels
            .iter()
            .map(|&p| ((p as f32 - shift) * scale) as f64)
            .collect();
        let m = z.iter().sum::<f64>() / z.len() as f64;
        let v = z.iter().map(|x| (x - m).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4, "{m} {v}");
    }
}
