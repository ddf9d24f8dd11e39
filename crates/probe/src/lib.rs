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
