//! Pieces shared by every architecture: normalisation choice, output head,
//! configuration errors, and the [`Network`] trait the trainer and probe use.

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::probe_point::{ProbePoint, Probed, Recorder, Taps};

/// Normalisation inside a hidden layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    #[default]
    None,
    /// Batch normalisation (Ioffe & Szegedy 2015): batch statistics in training,
    /// running statistics in evaluation.
    Batchnorm,
}

/// Where the normalisation sits relative to the activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormPlacement {
    /// `f(BN(W x + b))`, as in the BatchNorm paper and ResNet.
    #[default]
    BeforeActivation,
    /// `BN(f(W x + b))`.
    AfterActivation,
}

/// The output layer and the loss that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Head {
    /// `classes` logits for softmax cross-entropy.
    Softmax { classes: usize },
    /// One logit for sigmoid + binary cross-entropy (two-class tasks such as 3 vs 5).
    Binary,
}

impl Default for Head {
    fn default() -> Self {
        Head::Softmax { classes: 10 }
    }
}

impl Head {
    /// Number of output units.
    pub fn outputs(&self) -> usize {
        match *self {
            Head::Softmax { classes } => classes,
            Head::Binary => 1,
        }
    }

    /// Mean loss of `logits` against class `targets` (for `Binary`, targets are 0 or 1).
    pub fn loss(&self, logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
        match self {
            Head::Softmax { .. } => {
                let [batch, _] = logits.dims();
                let log_p = burn::tensor::activation::log_softmax(logits, 1);
                let picked = log_p.gather(1, targets.reshape([batch, 1]));
                picked.mean().neg()
            }
            Head::Binary => {
                let z = logits.flatten::<1>(0, 1);
                let y = targets.float();
                // Stable BCE with logits: max(z, 0) - z y + log(1 + e^-|z|).
                let loss = z.clone().clamp_min(0.0) - z.clone() * y + (z.abs().neg().exp() + 1.0).log();
                loss.mean()
            }
        }
    }

    /// Predicted classes from logits.
    pub fn predict(&self, logits: Tensor<2>) -> Tensor<1, Int> {
        match self {
            Head::Softmax { .. } => logits.argmax(1).flatten::<1>(0, 1),
            Head::Binary => logits.greater_elem(0.0).int().flatten::<1>(0, 1),
        }
    }
}

/// Why a model configuration cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("{field} must be at least {min}; found {found}")]
    TooSmall {
        field: &'static str,
        min: usize,
        found: usize,
    },
    #[error("width lists {found} sizes but depth is {depth}; expected one size per hidden layer")]
    WidthCount { found: usize, depth: usize },
    #[error("residual skips need equal widths inside each block; hidden layers {from} to {to} have widths {widths:?}")]
    ResidualWidth { from: usize, to: usize, widths: Vec<usize> },
    #[error("channels lists {channels} stages but blocks lists {blocks}; expected one block count per stage")]
    StageCount { channels: usize, blocks: usize },
    #[error("unknown preset `{name}`; expected one of: {known}")]
    UnknownPreset { name: String, known: String },
}

/// A BatchNorm over `features` channels with PyTorch's defaults
/// (momentum 0.1, epsilon 1e-5); its parameters are constants, so eager.
pub(crate) fn batch_norm(features: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(features).init(device)
}

/// What the trainer and the probe need from a network, whatever its architecture.
pub trait Network: Module {
    /// Logits `[batch, outputs]` for images `[batch, 1, rows, cols]`.
    fn forward(&self, images: Tensor<4>) -> Tensor<2>;
    /// Logits plus every probe point's trace; with `taps`, backward leaves
    /// `dL/dh` at every point in them.
    fn forward_probed(&self, images: Tensor<4>, taps: Option<&Taps>) -> Probed;
    /// The probe points, in forward order.
    fn probe_points(&self) -> &[ProbePoint];
    /// The output head (which loss to use).
    fn head(&self) -> Head;
}

/// The one forward pass each architecture writes; [`Network`] derives both the
/// plain and the probed pass from it, so they cannot drift apart.
pub(crate) trait Traced: Module {
    fn run(&self, images: Tensor<4>, rec: &mut Recorder) -> Tensor<2>;
    fn points(&self) -> &[ProbePoint];
    fn head_kind(&self) -> Head;
}

impl<T: Traced> Network for T {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.run(images, &mut Recorder::off())
    }

    fn forward_probed(&self, images: Tensor<4>, taps: Option<&Taps>) -> Probed {
        let mut rec = Recorder::on(taps);
        let logits = self.run(images, &mut rec);
        Probed {
            logits,
            traces: rec.finish(),
        }
    }

    fn probe_points(&self) -> &[ProbePoint] {
        self.points()
    }

    fn head(&self) -> Head {
        self.head_kind()
    }
}
