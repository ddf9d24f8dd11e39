//! Creating the compute device for a [`Backend`], explicitly: Burn 0.22's
//! `Device::default()` picks wgpu whenever it is compiled in, GPU or not.

use burn::tensor::{Device, DeviceKind, Tensor};

use crate::config::Backend;

/// A backend that cannot run here.
#[derive(Debug, thiserror::Error)]
#[error("--backend {backend}: {reason}; backends available on this machine: {available}")]
pub struct BackendError {
    pub backend: Backend,
    pub reason: String,
    pub available: String,
}

impl Backend {
    /// Every backend compiled into this build (`cuda` only with the `cuda` feature).
    pub const ALL: &'static [Backend] = &[
        Backend::Flex,
        Backend::Ndarray,
        Backend::Wgpu,
        #[cfg(feature = "cuda")]
        Backend::Cuda,
    ];

    /// The plain (non-autodiff) device. For the GPU backends a tiny computation
    /// runs first so that a missing adapter or driver is reported here, as an
    /// error, rather than as a panic deep inside training.
    pub fn device(self) -> Result<Device, BackendError> {
        let device = match self {
            Backend::Flex => return Ok(Device::flex()),
            #[allow(deprecated)] // burn-ndarray is deprecated upstream; kept for parity checks
            Backend::Ndarray => return Ok(Device::ndarray()),
            Backend::Wgpu => Device::wgpu(DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(0),
            #[cfg(not(feature = "cuda"))]
            Backend::Cuda => {
                return Err(self.unavailable(
                    "this gradscope was built without CUDA support; rebuild it with \
                     `cargo build --release --features cuda` on a machine with the CUDA toolkit",
                ));
            }
        };
        if smoke_test(&device) {
            return Ok(device);
        }
        Err(self.unavailable(match self {
            Backend::Wgpu => {
                "wgpu found no usable adapter (no GPU driver, and no Vulkan software \
                 rasteriser such as Mesa llvmpipe: `apt-get install mesa-vulkan-drivers libvulkan1`)"
            }
            _ => "CUDA found no usable GPU (is the NVIDIA driver loaded and `nvidia-smi` working?)",
        }))
    }

    fn unavailable(self, reason: &str) -> BackendError {
        let cpu = [Backend::Flex, Backend::Ndarray];
        let gpu = Backend::ALL.iter().filter(|b| b.is_gpu() && **b != self);
        // GPU backends other than this one are listed as "maybe": they were not tried.
        let mut available: Vec<String> = cpu.iter().map(ToString::to_string).collect();
        available.extend(gpu.map(|b| format!("{b} (not tried)")));
        BackendError {
            backend: self,
            reason: reason.into(),
            available: available.join(", "),
        }
    }

    /// Whether the backend runs on a GPU (wgpu, cuda) rather than the host CPU.
    pub fn is_gpu(self) -> bool {
        matches!(self, Backend::Wgpu | Backend::Cuda)
    }

    /// The name Burn's `BURN_DEVICE` variable uses for this backend.
    pub fn burn_device_name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// Sum four ones on `device`. Burn panics when a GPU runtime finds no adapter;
/// that panic is kept quiet and turned into `false`.
fn smoke_test(device: &Device) -> bool {
    let device = device.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(move || Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>() == 4.0);
    std::panic::set_hook(previous);
    matches!(ok, Ok(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_backends_always_work() {
        for b in [Backend::Flex, Backend::Ndarray] {
            assert!(smoke_test(&b.device().unwrap()), "{b}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = Backend::Cuda.device().unwrap_err().to_string();
        assert!(err.starts_with("--backend cuda: "), "{err}");
        assert!(err.contains("--features cuda"), "{err}");
        assert!(
            err.ends_with("available on this machine: flex, ndarray, wgpu (not tried)"),
            "{err}"
        );
    }
}
