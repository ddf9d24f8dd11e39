//! What one probe step reads ([`StepView`]) and what it yields
//! ([`StepStats`]), shared by the host path ([`crate::host`]) and the device
//! path ([`crate::device`]); and the |g| histogram's bins.

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use gradscope_models::{ProbePoint, Trace};
use gradscope_train::TapGrads;

use crate::device::Batch;
use crate::metric::Metric;

/// Lower edge of the first |g| histogram bin, in log10 units (1e-20).
pub const HIST_LO: f64 = -20.0;
/// Width of a histogram bin in log10 units: half a decade.
pub const HIST_WIDTH: f64 = 0.5;
/// Number of bins: 1e-20 up to 1e2.
pub const HIST_BINS: usize = 44;

/// What a queued vector holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorKind {
    /// |g| counts per log10 bin, then the exact zeros ([`crate::device::log_histogram`]).
    Histogram,
    /// Per-unit max |activation| over the batch (0 = dead on this batch).
    UnitMaxAbs,
}

/// Everything one probe step reads: the probe points, the taps' gradients, the
/// forward traces, the parameter gradients, and which parameters are each
/// point's weight and bias (`(id, rank)`).
pub struct StepView<'a> {
    /// The step's loss (read with everything else), where the loop gave it.
    pub loss: Option<Tensor<1>>,
    pub points: &'a [ProbePoint],
    pub taps: &'a TapGrads,
    /// Per point, what the forward pass saw there (`None` for a point whose
    /// output was not recorded: a layer known only by its parameters).
    pub traces: &'a [Option<Trace>],
    pub grads: &'a GradientsParams,
    pub weight: &'a [Option<(ParamId, usize)>],
    pub bias: &'a [Option<(ParamId, usize)>],
    /// An update step ([`crate::ProbeConfig::update_every`]): also |g|
    /// histograms (the weights and their update are read around the optimiser step).
    pub update: bool,
}

/// A probe step's statistics: values already on the host, and a device batch
/// still to be read (empty on the host path).
#[derive(Default)]
pub struct StepStats {
    pub values: Vec<(Option<usize>, Metric, f64)>,
    pub batch: Batch,
    pub vectors: Vec<(usize, VectorKind, Vec<f32>)>,
}

/// Which parameter a gradient statistic describes.
#[derive(Debug, Clone, Copy)]
pub enum GradPrefix {
    Weight,
    Bias,
}

impl GradPrefix {
    /// Metric names of the L2 norm, max |g|, zero fraction and non-finite count.
    pub fn names(self) -> [Metric; 4] {
        match self {
            GradPrefix::Weight => [
                Metric::GradL2,
                Metric::GradMax,
                Metric::GradZeroFrac,
                Metric::GradNonfinite,
            ],
            GradPrefix::Bias => [
                Metric::BiasGradL2,
                Metric::BiasGradMax,
                Metric::BiasGradZeroFrac,
                Metric::BiasGradNonfinite,
            ],
        }
    }
}
