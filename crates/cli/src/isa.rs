//! `GRADSCOPE_MAX_ISA`: the most capable instruction set gradscope's own
//! convolution kernels may use, as `ONEDNN_MAX_CPU_ISA` caps oneDNN's (and
//! `ATEN_CPU_CAPABILITY` PyTorch's): to measure on an AVX-512 CPU what a CPU
//! with AVX2 only would run. Burn's gemm keeps its own choice.

use anyhow::{Result, bail};
use gradscope_models::conv::{Isa, limit_isa};

/// The environment variable.
pub const ENV: &str = "GRADSCOPE_MAX_ISA";

/// Applies `GRADSCOPE_MAX_ISA` when set: `avx512`, `avx2` or `none`
/// (im2col + gemm only).
pub fn apply_env() -> Result<()> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let max = match value.to_str().map(str::to_ascii_lowercase).as_deref() {
        Some("avx512") => Some(Isa::Avx512),
        Some("avx2") => Some(Isa::Avx2),
        Some("none") => None,
        _ => bail!("{ENV}={value:?}: expected avx512, avx2 or none"),
    };
    limit_isa(max);
    Ok(())
}

/// What the convolutions on flex run, for a benchmark table's heading: the
/// kernels' instruction set, and the caps set in the environment.
pub fn describe() -> String {
    let kernels = match Isa::in_use() {
        Some(Isa::Avx512) => "AVX-512 kernels",
        Some(Isa::Avx2) => "AVX2 kernels",
        None => "im2col + gemm only",
    };
    let caps: Vec<String> = [ENV, "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| format!("{name}={v}")))
        .collect();
    if caps.is_empty() {
        format!("Convolutions on flex: {kernels}.")
    } else {
        format!("Convolutions on flex: {kernels}; set: {}.", caps.join(", "))
    }
}
