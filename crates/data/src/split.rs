//! An MNIST-like split (images plus labels) in memory, as a Burn [`Dataset`].

use std::path::{Path, PathBuf};

use burn::data::dataset::{Dataset, DatasetError};

use crate::idx::{self, IdxError, IdxImages};

/// Number of classes in every MNIST-like dataset.
pub const NUM_CLASSES: u8 = 10;

/// Which half of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    Train,
    Test,
}

impl SplitKind {
    /// The IDX file-name prefix of this split (`train` or `t10k`).
    pub fn file_prefix(self) -> &'static str {
        match self {
            SplitKind::Train => "train",
            SplitKind::Test => "t10k",
        }
    }
}

/// Why a split could not be assembled from its two files.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(transparent)]
    Idx(#[from] IdxError),
    #[error("{images} holds {image_count} images but {labels} holds {label_count} labels; expected equal counts")]
    CountMismatch {
        images: PathBuf,
        labels: PathBuf,
        image_count: usize,
        label_count: usize,
    },
}

/// One example: a `rows x cols` image of bytes and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnistItem {
    pub image: Vec<u8>,
    pub label: u8,
}

/// A split held in memory: raw pixels (0..255) and labels, validated.
#[derive(Debug, Clone)]
pub struct Split {
    pub images: IdxImages,
    pub labels: Vec<u8>,
}

impl Split {
    /// Builds a split from parsed parts, checking that counts agree.
    pub fn new(images: IdxImages, labels: Vec<u8>, images_path: &Path, labels_path: &Path) -> Result<Self, SplitError> {
        if images.count != labels.len() {
            return Err(SplitError::CountMismatch {
                images: images_path.to_owned(),
                labels: labels_path.to_owned(),
                image_count: images.count,
                label_count: labels.len(),
            });
        }
        Ok(Self { images, labels })
    }

    /// Reads and validates an image file and a label file (each plain or gzip).
    pub fn read(images_path: &Path, labels_path: &Path) -> Result<Self, SplitError> {
        let images = idx::read_images(images_path)?;
        let labels = idx::read_labels(labels_path, NUM_CLASSES)?;
        Self::new(images, labels, images_path, labels_path)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no example (never true for a validated split).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Examples per class, indexed by class.
    pub fn class_counts(&self) -> [usize; NUM_CLASSES as usize] {
        let mut counts = [0; NUM_CLASSES as usize];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Mean and standard deviation of all pixels, on the 0..255 scale.
    pub fn pixel_mean_std(&self) -> (f64, f64) {
        let mut hist = [0u64; 256];
        for &p in &self.images.pixels {
            hist[p as usize] += 1;
        }
        let n = self.images.pixels.len() as f64;
        let mean = hist.iter().enumerate().map(|(v, &c)| v as f64 * c as f64).sum::<f64>() / n;
        let var = hist
            .iter()
            .enumerate()
            .map(|(v, &c)| (v as f64 - mean).powi(2) * c as f64)
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }
}

impl Dataset<MnistItem> for Split {
    /// Panics when `index >= len()`, as Burn's `Dataset` contract says.
    fn get(&self, index: usize) -> Result<MnistItem, DatasetError> {
        Ok(MnistItem {
            image: self.images.image(index).to_vec(),
            label: self.labels[index],
        })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Split {
        Split {
            images: IdxImages {
                count: 4,
                rows: 1,
                cols: 2,
                pixels: vec![0, 255, 10, 20, 30, 40, 50, 60],
            },
            labels: vec![0, 1, 1, 9],
        }
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let t = tiny();
        let err = Split::new(t.images, vec![1, 2], Path::new("a.idx3"), Path::new("b.idx1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.idx3 holds 4 images but b.idx1 holds 2 labels; expected equal counts"
        );
    }

    #[test]
    fn stats_and_counts() {
        let t = tiny();
        assert_eq!(t.class_counts(), [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
        let (mean, std) = t.pixel_mean_std();
        let px: Vec<f64> = t.images.pixels.iter().map(|&p| p as f64).collect();
        let m = px.iter().sum::<f64>() / 8.0;
        let s = (px.iter().map(|p| (p - m).powi(2)).sum::<f64>() / 8.0).sqrt();
        assert!((mean - m).abs() < 1e-9 && (std - s).abs() < 1e-9);
    }

    #[test]
    fn dataset_get() {
        let t = tiny();
        assert_eq!(
            t.get(2).unwrap(),
            MnistItem {
                image: vec![30, 40],
                label: 1
            }
        );
    }

    #[test]
    #[should_panic]
    fn dataset_get_out_of_bounds_panics_like_burn_says() {
        let _ = tiny().get(4);
    }
}
