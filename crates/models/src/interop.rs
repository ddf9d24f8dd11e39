//! Weights in and out as safetensors, in PyTorch's layout.
//!
//! Tensor names are the module paths without the `Model` variant
//! (`hidden.0.linear.weight`, `stages.1.blocks.0.conv2.conv.weight`,
//! `head.bias`). Linear weights are stored `[out, in]` and conv weights
//! `[out, in, kh, kw]`, as in PyTorch; BatchNorm's `gamma`/`beta` are stored as
//! `weight`/`bias` beside `running_mean`/`running_var`. A PyTorch module with the
//! same structure loads the file after renaming keys to its own attribute
//! names, e.g.:
//!
//! ```python
//! from safetensors.torch import load_file
//! state = load_file("model.safetensors")
//! # gradscope MLP `hidden.{i}.linear.*` -> torch `layers.{2*i}.*`, `head.*` -> `out.*`, for a
//! # torch.nn.Sequential of Linear/activation pairs:
//! renamed = {k.replace(f"hidden.{i}.linear.", f"layers.{2*i}."): v
//!            for k, v in state.items() for i in [int(k.split(".")[1])] if k.startswith("hidden.")}
//! renamed |= {k.replace("head.", "out."): v for k, v in state.items() if k.startswith("head.")}
//! torch_model.load_state_dict(renamed)
//! ```

use std::path::Path;

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

/// A safetensors file that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct InteropError {
    pub path: String,
    pub reason: String,
}

/// Writes `model`'s weights to `path` in PyTorch's layout (see the module docs).
pub fn export_safetensors<M: Module>(model: &M, path: &Path) -> Result<(), InteropError> {
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true);
    model.save_into(&mut store).map_err(|e| InteropError {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Loads weights written by [`export_safetensors`] (or by PyTorch with the same
/// names) into `model`, which must have the same structure.
pub fn import_safetensors<M: Module>(mut model: M, path: &Path) -> Result<M, InteropError> {
    let err = |reason: String| InteropError {
        path: path.display().to_string(),
        reason,
    };
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true);
    let result = model.load_from(&mut store).map_err(|e| err(e.to_string()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(err(format!(
            "{} tensors missing, errors: {:?}",
            result.missing.len(),
            result.errors
        )));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Network, preset};
    use burn::tensor::{Device, Tensor};

    /// Names and shapes from a safetensors header (8-byte little-endian length, then JSON).
    fn header(path: &Path) -> serde_json::Map<String, serde_json::Value> {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        serde_json::from_slice(&bytes[8..8 + n]).unwrap()
    }

    #[test]
    fn export_uses_pytorch_layout_and_import_round_trips() {
        let d = Device::flex();
        let tmp = tempfile::tempdir().unwrap();
        for name in ["mlp-relu-bn-2x16", "resnet8-residual"] {
            let a = preset(name).unwrap().with_seed(1).init(&d).unwrap();
            let path = tmp.path().join(format!("{name}.safetensors"));
            export_safetensors(&a, &path).unwrap();
            let h = header(&path);
            let shape = |k: &str| {
                h.get(k)
                    .unwrap_or_else(|| panic!("{name}: no `{k}` in {:?}", h.keys().collect::<Vec<_>>()))["shape"]
                    .clone()
            };
            if name.starts_with("mlp") {
                assert_eq!(
                    shape("hidden.0.linear.weight"),
                    serde_json::json!([16, 784]),
                    "Linear is [out, in]"
                );
                assert_eq!(
                    shape("hidden.0.norm.weight"),
                    serde_json::json!([16]),
                    "BatchNorm gamma is `weight`"
                );
                assert!(h.contains_key("hidden.0.norm.running_var"));
                assert_eq!(shape("head.weight"), serde_json::json!([10, 16]));
            } else {
                assert_eq!(
                    shape("stem.conv.weight"),
                    serde_json::json!([16, 1, 3, 3]),
                    "conv is [out, in, kh, kw]"
                );
                assert_eq!(
                    shape("stages.1.blocks.0.projection.conv.weight"),
                    serde_json::json!([32, 16, 1, 1])
                );
            }
            let b = import_safetensors(preset(name).unwrap().with_seed(2).init(&d).unwrap(), &path).unwrap();
            let x = Tensor::<4>::ones([2, 1, 28, 28], &d);
            let (ya, yb): (Vec<f32>, Vec<f32>) = (
                a.forward(x.clone()).into_data().try_to_vec().unwrap(),
                b.forward(x).into_data().try_to_vec().unwrap(),
            );
            assert_eq!(ya, yb, "{name}: imported model computes the same function");
        }
    }

    #[test]
    fn import_into_a_different_structure_is_an_error_naming_the_file() {
        let d = Device::flex();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("small.safetensors");
        export_safetensors(&preset("mlp-relu-2x16").unwrap().init(&d).unwrap(), &path).unwrap();
        let err = import_safetensors(preset("mlp-relu-3x16").unwrap().init(&d).unwrap(), &path).unwrap_err();
        assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
    }
}
