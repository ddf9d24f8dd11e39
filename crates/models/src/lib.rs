//! gradscope-models owns the networks whose gradients gradscope studies: deep
//! MLPs (depth, width, activation, initialisation, BatchNorm, residual skips) and
//! CIFAR-style ResNets (plain or residual, BatchNorm on or off) as Burn modules,
//! their named presets, host-side seeded initialisation that gives identical
//! weights on every backend, the probe points (names, shapes, parameter
//! paths, taps) through which the probe reads them, and the convolution,
//! BatchNorm, ReLU and sigmoid they train with (on flex: the direct backward
//! pass, and AVX-512 or AVX2 kernels without im2col, [`conv`]; a few passes over the activations, a ReLU that follows folded
//! in, [`batchnorm`]; both passes split over the threads, [`relu`]; a
//! vectorised `exp`, [`sigmoid`]). It knows nothing of datasets, optimisers,
//! training loops, metrics or reports.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use gradscope_models::{Network, preset};
//!
//! let device = Device::flex();
//! let model = preset("mlp-sigmoid-10x128").unwrap().init(&device).unwrap();
//! let names: Vec<&str> = model.probe_points().iter().map(|p| p.name.as_str()).collect();
//! assert_eq!(names[0], "hidden.1");
//! assert_eq!(names[10], "head");
//! // All-zero images through zero biases: every sigmoid unit outputs exactly 0.5.
//! let probed = model.forward_probed(Tensor::zeros([2, 1, 28, 28], &device), None);
//! let h1: Vec<f32> = probed.traces[0].post.to_data().try_to_vec().unwrap();
//! assert!(h1.iter().all(|&v| v == 0.5));
//! assert_eq!(probed.logits.dims(), [2, 10]);
//! ```

pub mod activation;
pub mod batchnorm;
pub mod capture;
pub mod common;
pub mod conv;
mod conv_direct;
mod flex_host;
mod im2col;
pub mod init;
pub mod interop;
pub mod linear;
pub mod mlp;
pub mod params;
pub mod probe_point;
pub mod relu;
pub mod resnet;
pub mod sigmoid;
pub mod zoo;

pub use activation::{Activation, Regime};
pub use capture::{GradSlot, capture, is_tracked};
pub use common::{Head, ModelError, Network, Norm, NormPlacement};
pub use init::Init;
pub use interop::{InteropError, export_safetensors, import_safetensors};
pub use mlp::{Mlp, MlpConfig, Width};
pub use params::{NamedParam, named_params, trainable_params};
pub use probe_point::{BlockLinks, PointKind, ProbePoint, Probed, Taps, Trace};
pub use resnet::{ResNet, ResNetConfig, Shortcut};
pub use zoo::{Model, ModelConfig, PRESETS, preset};

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
