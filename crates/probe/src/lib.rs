//! gradscope-probe owns the measurement of gradient flow: per-layer weight
//! gradients, the back-propagated signal dL/dh read from the models' taps,
//! parameter and update norms, activation regimes (saturation, dead units),
//! log-binned gradient histograms, skip-versus-branch shares, NaN forensics, and
//! the rule-based vanishing/exploding verdicts with their evidence. It plugs into
//! the training loop as an observer and writes tidy files into the run directory;
//! it knows nothing about datasets, optimisers or how results are drawn.
//! Statistics are taken on the host from one read per probe step ([`host`]),
//! on the probe's own thread while the next step trains, or as device
//! reductions ([`device`], the cross-check); [`ModelProbe`] brings the
//! probe, with dL/dh at the tensors a user marks, to any Burn module trained by
//! burn-train's `Learner` or a loop of the user's own.
//!
//! # One probed step, in order
//!
//! 1. **Capture.** The trainer asks its observers whether to tap the step
//!    (`Observer::wants_taps`, [`ProbeConfig::schedule`]); a tapped forward pass
//!    routes each probe point's output through an identity node whose gradient
//!    is kept (`gradscope_models::capture`), so the backward pass leaves dL/dh
//!    there beside the parameter gradients.
//! 2. **Read.** After the backward pass ([`GradientProbe`]'s `after_backward`),
//!    the step's tensors (dL/dh, the activations, the weight gradients; on
//!    update steps the weights before and after the optimiser step) are read
//!    to the host in one go ([`host::transfer`]) and handed to the probe's own
//!    thread as a [`host::HostJob`], so the next step trains meanwhile.
//! 3. **Reduce.** That thread takes norms, RMS, moments, dead and saturated
//!    shares and |g| histograms ([`host::job`], [`host::kernels`]) into
//!    [`step::StepStats`]; the device path ([`device`]) computes the same as
//!    Burn reductions.
//! 4. **Record.** The statistics become a [`ProbeRecord`] of [`Metric`]s, with
//!    the ratios (grad:weight, update:weight) and dead-unit windows derived,
//!    and one line per value of `probe.csv` (`worker`).
//! 5. **Judge.** [`verdict::judge`] applies the rules (vanishing, exploding,
//!    dead ReLUs, saturation, a huge initial loss, forward explosion,
//!    divergence) to the records, each alert with its evidence and remedies.

pub mod config;
pub mod device;
pub mod host;
pub mod metric;
pub mod model_probe;
pub mod module;
pub mod observer;
pub mod parity;
pub mod record;
pub mod run;
pub mod step;
pub mod table;
pub mod verdict;
mod worker;

pub use config::{ProbeConfig, ProbeSchedule, Reductions, RunConfig};
pub use gradscope_models::Activation;
pub use metric::{Metric, Scope};
pub use model_probe::ModelProbe;
pub use module::{ModuleGrads, ParamGrad};
pub use observer::{GradientProbe, Live, LiveHandle};
pub use record::{GradHistogram, ProbeRecord, read_hist_csv, read_probe_csv};
pub use run::ProbedRun;
pub use table::{Inspection, inspect, render};
pub use verdict::{Alert, Verdicts, judge};
