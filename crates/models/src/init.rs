//! Weight initialisation, computed on the host from a seed and the parameter's
//! path.
//!
//! Burn draws parameters lazily, on the device, with each backend's own random
//! generator, so the same seed gives different weights on flex, ndarray and wgpu,
//! and the order in which parameters are first touched changes them. gradscope
//! draws every weight on the host instead, from a ChaCha stream keyed by
//! `(seed, parameter path)`: the values depend on nothing else, so every backend
//! starts from bit-identical weights, whatever the caller does after `init`.

use std::fmt;
use std::str::FromStr;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use sha2::{Digest, Sha256};

/// How a weight matrix (or conv kernel) is initialised. `fan_in` is the number
/// of inputs per output unit (`in * kh * kw` for a conv), `fan_out` the converse.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Init {
    /// `U(-b, b)`, `b = gain * sqrt(6 / (fan_in + fan_out))` (Glorot & Bengio 2010).
    XavierUniform {
        #[serde(default = "one")]
        gain: f64,
    },
    /// `N(0, s^2)`, `s = gain * sqrt(2 / (fan_in + fan_out))`.
    XavierNormal {
        #[serde(default = "one")]
        gain: f64,
    },
    /// `U(-b, b)`, `b = gain * sqrt(3 / fan_in)`; gain defaults to the activation's
    /// (sqrt 2 for ReLU), as PyTorch's `kaiming_uniform_` (He et al. 2015).
    HeUniform {
        #[serde(default)]
        gain: Option<f64>,
    },
    /// `N(0, s^2)`, `s = gain / sqrt(fan_in)`; gain defaults to the activation's.
    HeNormal {
        #[serde(default)]
        gain: Option<f64>,
    },
    /// `N(0, s^2)`, `s = gain / sqrt(fan_in)` with gain 1 (LeCun; for SELU).
    LecunNormal {
        #[serde(default = "one")]
        gain: f64,
    },
    /// A (semi-)orthogonal matrix times `gain` (Saxe et al. 2013).
    Orthogonal {
        #[serde(default = "one")]
        gain: f64,
    },
    /// `N(0, std^2)`, whatever the layer size: small std makes signals vanish.
    Normal { std: f64 },
    /// Burn's and PyTorch's default for Linear and Conv: `U(-b, b)`, `b = 1 / sqrt(fan_in)`.
    BurnDefault,
}

fn one() -> f64 {
    1.0
}

/// Shape facts an initialiser needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fans {
    pub fan_in: usize,
    pub fan_out: usize,
}

impl Init {
    /// Draws `n = rows * cols` values for a weight seen as a `rows x cols` matrix
    /// (`rows` outputs, `cols = fan_in` inputs, PyTorch's layout), with
    /// `default_gain` for He when no gain is given.
    pub fn draw(&self, rng: &mut ChaCha8Rng, fans: Fans, rows: usize, cols: usize, default_gain: f64) -> Vec<f32> {
        let n = rows * cols;
        let (fi, fo) = (fans.fan_in as f64, fans.fan_out as f64);
        let uniform =
            |rng: &mut ChaCha8Rng, b: f64| -> Vec<f32> { (0..n).map(|_| rng.random_range(-b..=b) as f32).collect() };
        let normal = |rng: &mut ChaCha8Rng, s: f64| -> Vec<f32> {
            (0..n)
                .map(|_| (s * rng.sample::<f64, _>(StandardNormal)) as f32)
                .collect()
        };
        match *self {
            Init::XavierUniform { gain } => uniform(rng, gain * (6.0 / (fi + fo)).sqrt()),
            Init::XavierNormal { gain } => normal(rng, gain * (2.0 / (fi + fo)).sqrt()),
            Init::HeUniform { gain } => uniform(rng, gain.unwrap_or(default_gain) * (3.0 / fi).sqrt()),
            Init::HeNormal { gain } => normal(rng, gain.unwrap_or(default_gain) / fi.sqrt()),
            Init::LecunNormal { gain } => normal(rng, gain / fi.sqrt()),
            Init::Normal { std } => normal(rng, std),
            Init::BurnDefault => uniform(rng, 1.0 / fi.sqrt()),
            Init::Orthogonal { gain } => orthogonal(rng, rows, cols, gain),
        }
    }

    /// The standard deviation this initialiser gives (for the step-0 audit).
    pub fn std(&self, fans: Fans, default_gain: f64) -> f64 {
        let (fi, fo) = (fans.fan_in as f64, fans.fan_out as f64);
        match *self {
            Init::XavierUniform { gain } | Init::XavierNormal { gain } => gain * (2.0 / (fi + fo)).sqrt(),
            Init::HeUniform { gain } | Init::HeNormal { gain } => gain.unwrap_or(default_gain) / fi.sqrt(),
            Init::LecunNormal { gain } => gain / fi.sqrt(),
            Init::Normal { std } => std,
            Init::BurnDefault => 1.0 / (3.0 * fi).sqrt(),
            Init::Orthogonal { gain } => gain / fi.max(fo).sqrt(),
        }
    }
}

/// A `rows x cols` matrix with orthonormal rows (or columns, whichever are
/// fewer), by Gram-Schmidt on a Gaussian matrix with the sign fix that makes the
/// result Haar-distributed, as `torch.nn.init.orthogonal_`.
fn orthogonal(rng: &mut ChaCha8Rng, rows: usize, cols: usize, gain: f64) -> Vec<f32> {
    // Orthonormalise the `k` longer vectors of length `m`.
    let (k, m) = if rows <= cols { (rows, cols) } else { (cols, rows) };
    let mut q: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..m).map(|_| rng.sample(StandardNormal)).collect())
        .collect();
    for i in 0..k {
        // Twice for numerical orthogonality ("twice is enough").
        for _ in 0..2 {
            for j in 0..i {
                let dot: f64 = q[i].iter().zip(&q[j]).map(|(a, b)| a * b).sum();
                let qj = q[j].clone();
                q[i].iter_mut().zip(&qj).for_each(|(a, b)| *a -= dot * b);
            }
        }
        let norm = q[i].iter().map(|a| a * a).sum::<f64>().sqrt();
        q[i].iter_mut().for_each(|a| *a /= norm);
    }
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let v = if rows <= cols { q[r][c] } else { q[c][r] };
            out[r * cols + c] = (gain * v) as f32;
        }
    }
    out
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::XavierUniform { gain } if *gain == 1.0 => write!(f, "xavier_uniform"),
            Init::XavierUniform { gain } => write!(f, "xavier_uniform:{gain}"),
            Init::XavierNormal { gain } if *gain == 1.0 => write!(f, "xavier_normal"),
            Init::XavierNormal { gain } => write!(f, "xavier_normal:{gain}"),
            Init::HeUniform { gain: None } => write!(f, "he_uniform"),
            Init::HeUniform { gain: Some(g) } => write!(f, "he_uniform:{g}"),
            Init::HeNormal { gain: None } => write!(f, "he_normal"),
            Init::HeNormal { gain: Some(g) } => write!(f, "he_normal:{g}"),
            Init::LecunNormal { gain } if *gain == 1.0 => write!(f, "lecun_normal"),
            Init::LecunNormal { gain } => write!(f, "lecun_normal:{gain}"),
            Init::Orthogonal { gain } if *gain == 1.0 => write!(f, "orthogonal"),
            Init::Orthogonal { gain } => write!(f, "orthogonal:{gain}"),
            Init::Normal { std } => write!(f, "normal:{std}"),
            Init::BurnDefault => write!(f, "burn_default"),
        }
    }
}

/// A name that is not an initialiser.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown initialisation `{0}`; expected xavier_uniform[:gain], xavier_normal[:gain], he_uniform[:gain], \
     he_normal[:gain], lecun_normal, orthogonal[:gain], normal:STD or burn_default"
)]
pub struct ParseInitError(pub String);

impl FromStr for Init {
    type Err = ParseInitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseInitError(s.to_owned());
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (
                n,
                Some(
                    a.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .ok_or_else(err)?,
                ),
            ),
            None => (s, None),
        };
        Ok(match name.replace('-', "_").as_str() {
            "xavier_uniform" | "xavier" => Init::XavierUniform {
                gain: arg.unwrap_or(1.0),
            },
            "xavier_normal" => Init::XavierNormal {
                gain: arg.unwrap_or(1.0),
            },
            "he_uniform" | "kaiming_uniform" => Init::HeUniform { gain: arg },
            "he_normal" | "he" | "kaiming_normal" => Init::HeNormal { gain: arg },
            "lecun_normal" | "lecun" => Init::LecunNormal {
                gain: arg.unwrap_or(1.0),
            },
            "orthogonal" => Init::Orthogonal {
                gain: arg.unwrap_or(1.0),
            },
            "normal" => Init::Normal {
                std: arg.ok_or_else(err)?,
            },
            "burn_default" | "default" if arg.is_none() => Init::BurnDefault,
            _ => return Err(err()),
        })
    }
}

/// The random stream for one parameter: ChaCha8 seeded by `seed`, on the stream
/// numbered by the first 8 bytes of SHA-256(`path`).
pub fn param_rng(seed: u64, path: &str) -> ChaCha8Rng {
    let digest = Sha256::digest(path.as_bytes());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")));
    rng
}

/// Builds an initialised (not lazy) parameter from host values.
pub fn param<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// A Linear weight for `path`, drawn as PyTorch's `[out, in]` and stored as
/// Burn's `[in, out]`.
pub fn linear_weight(
    init: Init,
    seed: u64,
    path: &str,
    d_in: usize,
    d_out: usize,
    gain: f64,
    device: &Device,
) -> Param<Tensor<2>> {
    let fans = Fans {
        fan_in: d_in,
        fan_out: d_out,
    };
    let w = init.draw(&mut param_rng(seed, path), fans, d_out, d_in, gain);
    let mut t = vec![0f32; d_in * d_out];
    for o in 0..d_out {
        for i in 0..d_in {
            t[i * d_out + o] = w[o * d_in + i];
        }
    }
    param(t, [d_in, d_out], device)
}

/// A conv kernel `[out, in, kh, kw]` for `path`.
pub fn conv_weight(
    init: Init,
    seed: u64,
    path: &str,
    shape: [usize; 4],
    gain: f64,
    device: &Device,
) -> Param<Tensor<4>> {
    let [o, i, kh, kw] = shape;
    let fans = Fans {
        fan_in: i * kh * kw,
        fan_out: o * kh * kw,
    };
    let w = init.draw(&mut param_rng(seed, path), fans, o, i * kh * kw, gain);
    param(w, shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_of(v: &[f32]) -> f64 {
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n).sqrt()
    }

    #[test]
    fn initialiser_std_matches_formula_on_512x512() {
        let fans = Fans {
            fan_in: 512,
            fan_out: 512,
        };
        let cases = [
            ("xavier_uniform", (1.0f64 / 512.0).sqrt()),
            ("xavier_normal", (1.0f64 / 512.0).sqrt()),
            ("he_uniform", (2.0f64 / 512.0).sqrt()),
            ("he_normal", (2.0f64 / 512.0).sqrt()),
            ("lecun_normal", (1.0f64 / 512.0).sqrt()),
            ("normal:0.05", 0.05),
            ("burn_default", (1.0f64 / (3.0 * 512.0)).sqrt()),
        ];
        for (name, expected) in cases {
            let init: Init = name.parse().unwrap();
            let v = init.draw(&mut param_rng(1, name), fans, 512, 512, std::f64::consts::SQRT_2);
            let s = std_of(&v);
            assert!((s / expected - 1.0).abs() < 0.03, "{name}: std {s} vs {expected}");
            assert!(
                (init.std(fans, std::f64::consts::SQRT_2) / expected - 1.0).abs() < 1e-12,
                "{name}"
            );
        }
    }

    #[test]
    fn orthogonal_gives_identity_gram_matrix() {
        for (rows, cols) in [(64, 64), (32, 96), (96, 32)] {
            let w = orthogonal(&mut param_rng(3, "o"), rows, cols, 1.0);
            let k = rows.min(cols);
            for a in 0..k {
                for b in 0..k {
                    // Gram of the shorter side's vectors.
                    let dot: f64 = if rows <= cols {
                        (0..cols).map(|c| w[a * cols + c] as f64 * w[b * cols + c] as f64).sum()
                    } else {
                        (0..rows).map(|r| w[r * cols + a] as f64 * w[r * cols + b] as f64).sum()
                    };
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-4, "{rows}x{cols} [{a},{b}] = {dot}");
                }
            }
        }
    }

    #[test]
    fn streams_depend_on_seed_and_path_only() {
        let draw = |seed, path| {
            Init::HeNormal { gain: None }.draw(&mut param_rng(seed, path), Fans { fan_in: 4, fan_out: 4 }, 4, 4, 1.0)
        };
        assert_eq!(draw(1, "a.weight"), draw(1, "a.weight"));
        assert_ne!(draw(1, "a.weight"), draw(1, "b.weight"));
        assert_ne!(draw(1, "a.weight"), draw(2, "a.weight"));
    }

    #[test]
    fn parse_errors_name_the_input() {
        assert!("he".parse::<Init>().is_ok());
        let e = "normal".parse::<Init>().unwrap_err().to_string();
        assert!(e.contains("unknown initialisation `normal`"), "{e}");
        assert!("xavier:-1".parse::<Init>().is_err());
        for s in [
            "xavier_uniform",
            "he_normal:2",
            "normal:0.01",
            "orthogonal:1.5",
            "burn_default",
        ] {
            assert_eq!(s.parse::<Init>().unwrap().to_string(), s);
        }
    }
}
