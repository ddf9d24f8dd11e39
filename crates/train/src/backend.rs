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
    /// Every backend compiled into this build.
    pub const ALL: [Backend; 3] = [Backend::Flex, Backend::Ndarray, Backend::Wgpu];

    /// The plain (non-autodiff) device. For wgpu, a tiny computation runs first so
    /// that a missing adapter is reported here, as an error, rather than as a panic
    /// deep inside training.
    pub fn device(self) -> Result<Device, BackendError> {
        let device = match self {
            Backend::Flex => Device::flex(),
            #[allow(deprecated)] // burn-ndarray is deprecated upstream; kept for parity checks
            Backend::Ndarray => Device::ndarray(),
            Backend::Wgpu => Device::wgpu(DeviceKind::DefaultDevice),
        };
        if self == Backend::Wgpu {
            let probe = device.clone();
            // Burn panics when wgpu has no adapter; keep that panic quiet and turn it into an error.
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let ok = std::panic::catch_unwind(move || {
                let t = Tensor::<1>::ones([4], &probe);
                t.sum().into_scalar::<f32>() == 4.0
            });
            std::panic::set_hook(previous);
            if !matches!(ok, Ok(true)) {
                return Err(BackendError {
                    backend: self,
                    reason: "wgpu found no usable adapter (no GPU driver, and no Vulkan software \
                             rasteriser such as Mesa llvmpipe: `apt-get install mesa-vulkan-drivers libvulkan1`)"
                        .into(),
                    available: "flex, ndarray".into(),
                });
            }
        }
        Ok(device)
    }

    /// The name Burn's `BURN_DEVICE` variable uses for this backend.
    pub fn burn_device_name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
        }
    }
}
