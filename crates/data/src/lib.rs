//! gradscope-data owns MNIST-like data: reading and validating IDX files (plain
//! or gzip), the catalogue of downloadable datasets with their published
//! checksums, verified atomic downloads, the bundled offline sample, and turning
//! examples into normalised batches on a caller-chosen Burn device in a
//! reproducible order. It knows nothing about models, training, probes or reports:
//! it hands out tensors and file facts, never decisions about what to do with them.

pub mod batch;
pub mod catalog;
pub mod fetch;
pub mod idx;
pub mod split;

pub use batch::{Affine, MnistBatch, MnistBatcher, Normalization, batches_per_epoch, epoch_batches, epoch_order};
pub use catalog::{BUNDLED_NAME, CATALOG, CatalogEntry, DataError, MnistLike, Source};
pub use split::{MnistItem, NUM_CLASSES, Split, SplitKind};
