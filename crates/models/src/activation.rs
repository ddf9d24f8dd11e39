//! Hidden-layer activation functions, as a closed set the probe can reason about.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Tensor, activation as act};

/// An element-wise activation `h = f(a)`.
///
/// Parsed from `sigmoid`, `tanh`, `relu`, `leaky_relu` (slope 0.01) or
/// `leaky_relu:0.2`, `elu` or `elu:0.5`, `selu`, `gelu`, `identity`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Activation {
    /// `1 / (1 + e^-a)`; its derivative is at most 0.25, the root of vanishing gradients.
    Sigmoid,
    /// Hyperbolic tangent; derivative at most 1, saturating at both ends.
    Tanh,
    /// `max(0, a)`.
    Relu,
    /// `a` for `a > 0`, `slope * a` otherwise.
    LeakyRelu {
        #[serde(default = "default_slope")]
        slope: f64,
    },
    /// `a` for `a > 0`, `alpha (e^a - 1)` otherwise.
    Elu {
        #[serde(default = "default_alpha")]
        alpha: f64,
    },
    /// Scaled ELU (Klambauer et al. 2017), self-normalising with LeCun-normal init.
    Selu,
    /// Gaussian error linear unit (exact, erf-based).
    Gelu,
    /// `f(a) = a`: a deep linear network.
    Identity,
}

fn default_slope() -> f64 {
    0.01
}
fn default_alpha() -> f64 {
    1.0
}

/// The error function (Rust's std has none): Abramowitz & Stegun 7.1.26,
/// absolute error below 1.5e-7, plenty for a diagnostic derivative.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

/// Which activation regime the probe measures for a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// Units can saturate (derivative near zero at both ends): sigmoid, tanh.
    Saturating,
    /// Units can die (zero output and zero derivative for every input): ReLU.
    Rectifying,
    /// Units have a small negative side that keeps a gradient: LeakyReLU, ELU, SELU, GELU.
    LeakyNegative,
    /// No regime to measure.
    Linear,
}

/// SELU's `alpha` and `scale` (Klambauer et al., 2017), as Burn's `selu` uses them.
pub const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
pub const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

impl Activation {
    /// Applies `f` element-wise.
    pub fn forward<const D: usize>(&self, a: Tensor<D>) -> Tensor<D> {
        match *self {
            Activation::Sigmoid => crate::sigmoid::sigmoid(a),
            Activation::Tanh => act::tanh(a),
            Activation::Relu => crate::relu::relu(a),
            Activation::LeakyRelu { slope } => act::leaky_relu(a, slope),
            Activation::Elu { alpha } => act::elu(a, alpha),
            Activation::Selu => act::selu(a),
            Activation::Gelu => act::gelu(a),
            Activation::Identity => a,
        }
    }

    /// `f'(a)` element-wise, for diagnostics (not used by autodiff).
    pub fn derivative<const D: usize>(&self, a: Tensor<D>) -> Tensor<D> {
        match *self {
            Activation::Sigmoid => {
                let s = act::sigmoid(a);
                s.clone() * (s.neg() + 1.0)
            }
            Activation::Tanh => {
                let t = act::tanh(a);
                t.clone() * t.neg() + 1.0
            }
            Activation::Relu => a.greater_elem(0.0).float(),
            Activation::LeakyRelu { slope } => {
                let pos = a.greater_elem(0.0).float();
                pos.clone() + (pos.neg() + 1.0) * slope
            }
            Activation::Elu { alpha } => {
                let pos = a.clone().greater_elem(0.0).float();
                pos.clone() + (pos.neg() + 1.0) * (a.exp() * alpha)
            }
            Activation::Selu => {
                let pos = a.clone().greater_elem(0.0).float();
                (pos.clone() + (pos.neg() + 1.0) * (a.exp() * SELU_ALPHA)) * SELU_SCALE
            }
            Activation::Gelu => {
                // d/da [a Phi(a)] = Phi(a) + a phi(a)
                let phi = (a.clone().powf_scalar(2.0) * -0.5).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let cdf = (a.clone() / std::f64::consts::SQRT_2).erf() * 0.5 + 0.5;
                cdf + a * phi
            }
            Activation::Identity => a.ones_like(),
        }
    }

    /// `f'(a)` for one value: the same function as [`Self::derivative`], for code
    /// that reduces host memory in one pass (the probe on CPU backends).
    pub fn derivative_at(&self, a: f32) -> f32 {
        const ALPHA: f32 = SELU_ALPHA as f32;
        const SCALE: f32 = SELU_SCALE as f32;
        let pos = |slope: f32| if a > 0.0 { 1.0 } else { slope };
        match *self {
            Activation::Sigmoid => {
                let s = 1.0 / (1.0 + (-a).exp());
                s * (1.0 - s)
            }
            Activation::Tanh => {
                let t = a.tanh();
                1.0 - t * t
            }
            Activation::Relu => pos(0.0),
            Activation::LeakyRelu { slope } => pos(slope as f32),
            Activation::Elu { alpha } => pos(a.exp() * alpha as f32),
            Activation::Selu => SCALE * pos(a.exp() * ALPHA),
            Activation::Gelu => {
                let a = a as f64;
                let phi = (-0.5 * a * a).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (0.5 * (1.0 + erf(a / std::f64::consts::SQRT_2)) + a * phi) as f32
            }
            Activation::Identity => 1.0,
        }
    }

    /// Whether `f'(a)` and the sign of `a` can be read from the output
    /// `y = f(a)` alone ([`Self::derivative_of_output`]), so that a probe need
    /// not keep the activation's input. Not for GELU (two inputs share an
    /// output on its negative side), nor for a LeakyReLU or ELU whose negative
    /// side is flat or flipped.
    pub fn reads_from_output(&self) -> bool {
        match *self {
            Activation::LeakyRelu { slope } => slope > 0.0,
            Activation::Elu { alpha } => alpha > 0.0,
            Activation::Gelu => false,
            _ => true,
        }
    }

    /// `f'` element-wise from the output `y = f(a)`: `y (1 - y)` for sigmoid and
    /// `1 - y^2` for tanh (as Burn's backward pass computes them), `y + alpha` on
    /// ELU's negative side; `None` where [`Self::reads_from_output`] is false.
    pub fn derivative_of_output<const D: usize>(&self, y: Tensor<D>) -> Option<Tensor<D>> {
        if !self.reads_from_output() {
            return None;
        }
        let pos = || y.clone().greater_elem(0.0).float();
        Some(match *self {
            Activation::Sigmoid => y.clone() * (y.neg() + 1.0),
            Activation::Tanh => y.clone() * y.neg() + 1.0,
            Activation::Relu => pos(),
            Activation::LeakyRelu { slope } => {
                let pos = pos();
                pos.clone() + (pos.neg() + 1.0) * slope
            }
            Activation::Elu { alpha } => {
                let pos = pos();
                pos.clone() + (pos.neg() + 1.0) * (y + alpha)
            }
            Activation::Selu => {
                let pos = pos();
                pos.clone() * SELU_SCALE + (pos.neg() + 1.0) * (y + SELU_SCALE * SELU_ALPHA)
            }
            Activation::Identity => y.ones_like(),
            Activation::Gelu => unreachable!("GELU does not read from its output"),
        })
    }

    /// [`Self::derivative_of_output`] for one value: the reference for code
    /// that reduces host memory in one pass.
    pub fn derivative_at_output(&self, y: f32) -> Option<f32> {
        const ALPHA: f32 = SELU_ALPHA as f32;
        const SCALE: f32 = SELU_SCALE as f32;
        if !self.reads_from_output() {
            return None;
        }
        let pos = |neg: f32| if y > 0.0 { 1.0 } else { neg };
        Some(match *self {
            Activation::Sigmoid => y * (1.0 - y),
            Activation::Tanh => 1.0 - y * y,
            Activation::Relu => pos(0.0),
            Activation::LeakyRelu { slope } => pos(slope as f32),
            Activation::Elu { alpha } => pos(y + alpha as f32),
            Activation::Selu => {
                if y > 0.0 {
                    SCALE
                } else {
                    y + SCALE * ALPHA
                }
            }
            Activation::Identity => 1.0,
            Activation::Gelu => unreachable!("GELU does not read from its output"),
        })
    }

    /// The input of `f` at `a`, where a probe must keep it to know `f'(a)`
    /// (not [`Self::reads_from_output`]); `None` where the output will do.
    pub fn input_to_keep<const D: usize>(&self, a: &Tensor<D>) -> Option<Tensor<D>> {
        (!self.reads_from_output()).then(|| a.clone())
    }

    /// The largest value `f'` takes; saturation is measured relative to it.
    pub fn max_derivative(&self) -> f64 {
        match *self {
            Activation::Sigmoid => 0.25,
            Activation::Tanh | Activation::Relu | Activation::Identity => 1.0,
            Activation::LeakyRelu { slope } => slope.abs().max(1.0),
            Activation::Elu { alpha } => alpha.max(1.0),
            Activation::Selu => SELU_SCALE * SELU_ALPHA,
            Activation::Gelu => 1.128_904_1,
        }
    }

    /// The regime the probe watches for this activation.
    pub fn regime(&self) -> Regime {
        match self {
            Activation::Sigmoid | Activation::Tanh => Regime::Saturating,
            Activation::Relu => Regime::Rectifying,
            Activation::LeakyRelu { .. } | Activation::Elu { .. } | Activation::Selu | Activation::Gelu => {
                Regime::LeakyNegative
            }
            Activation::Identity => Regime::Linear,
        }
    }

    /// PyTorch's `nn.init.calculate_gain` for this activation: the factor that keeps
    /// activations' variance constant from layer to layer.
    pub fn recommended_gain(&self) -> f64 {
        match *self {
            Activation::Sigmoid | Activation::Identity | Activation::Gelu | Activation::Elu { .. } => 1.0,
            Activation::Tanh => 5.0 / 3.0,
            Activation::Relu => std::f64::consts::SQRT_2,
            Activation::LeakyRelu { slope } => (2.0 / (1.0 + slope * slope)).sqrt(),
            Activation::Selu => 0.75,
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Sigmoid => write!(f, "sigmoid"),
            Activation::Tanh => write!(f, "tanh"),
            Activation::Relu => write!(f, "relu"),
            Activation::LeakyRelu { slope } if *slope == default_slope() => write!(f, "leaky_relu"),
            Activation::LeakyRelu { slope } => write!(f, "leaky_relu:{slope}"),
            Activation::Elu { alpha } if *alpha == default_alpha() => write!(f, "elu"),
            Activation::Elu { alpha } => write!(f, "elu:{alpha}"),
            Activation::Selu => write!(f, "selu"),
            Activation::Gelu => write!(f, "gelu"),
            Activation::Identity => write!(f, "identity"),
        }
    }
}

/// A name that is not an activation.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown activation `{0}`; expected sigmoid, tanh, relu, leaky_relu[:slope], elu[:alpha], selu, gelu or identity"
)]
pub struct ParseActivationError(pub String);

impl FromStr for Activation {
    type Err = ParseActivationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseActivationError(s.to_owned());
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a.parse::<f64>().map_err(|_| err())?)),
            None => (s, None),
        };
        let no_arg = |a: Activation| if arg.is_some() { Err(err()) } else { Ok(a) };
        match name.replace('-', "_").as_str() {
            "sigmoid" => no_arg(Activation::Sigmoid),
            "tanh" => no_arg(Activation::Tanh),
            "relu" => no_arg(Activation::Relu),
            "leaky_relu" | "leaky" => Ok(Activation::LeakyRelu {
                slope: arg.unwrap_or(default_slope()),
            }),
            "elu" => Ok(Activation::Elu {
                alpha: arg.unwrap_or(default_alpha()),
            }),
            "selu" => no_arg(Activation::Selu),
            "gelu" => no_arg(Activation::Gelu),
            "identity" | "linear" => no_arg(Activation::Identity),
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "sigmoid",
            "tanh",
            "relu",
            "leaky_relu",
            "leaky_relu:0.2",
            "elu",
            "elu:0.5",
            "selu",
            "gelu",
            "identity",
        ] {
            let a: Activation = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert!(
            "swish"
                .parse::<Activation>()
                .unwrap_err()
                .to_string()
                .contains("unknown activation `swish`")
        );
        assert!("relu:2".parse::<Activation>().is_err());
    }

    /// Where the output determines the derivative, reading it from the output
    /// (tensor and scalar forms) gives the derivative at the input, and the
    /// output has the input's sign.
    #[test]
    fn derivative_of_output_matches_derivative_at_input() {
        let device = Device::flex();
        let xs: Vec<f32> = vec![-3.0, -0.7, -0.1, 0.0, 0.2, 0.9, 2.5];
        let n = xs.len();
        for name in [
            "sigmoid",
            "tanh",
            "relu",
            "leaky_relu:0.1",
            "elu:0.5",
            "selu",
            "identity",
        ] {
            let a: Activation = name.parse().unwrap();
            assert!(a.reads_from_output(), "{name}");
            let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device);
            let y = a.forward(x.clone());
            let y_host: Vec<f32> = y.to_data().try_to_vec().unwrap();
            let at_input: Vec<f32> = a.derivative(x).to_data().try_to_vec().unwrap();
            let of_output: Vec<f32> = a.derivative_of_output(y).unwrap().to_data().try_to_vec().unwrap();
            for i in 0..n {
                let scalar = a.derivative_at_output(y_host[i]).unwrap();
                assert!(
                    (of_output[i] - at_input[i]).abs() < 1e-5,
                    "{name} at {}: {} vs {}",
                    xs[i],
                    of_output[i],
                    at_input[i]
                );
                assert!(
                    (scalar - at_input[i]).abs() < 1e-5,
                    "{name} at {}: {scalar} vs {}",
                    xs[i],
                    at_input[i]
                );
                if name != "sigmoid" {
                    assert_eq!(
                        y_host[i] < 0.0,
                        xs[i] < 0.0 && name != "relu",
                        "{name}: sign at {}",
                        xs[i]
                    );
                }
            }
        }
        for name in ["gelu", "leaky_relu:0", "elu:0"] {
            let a: Activation = name.parse().unwrap();
            assert!(!a.reads_from_output(), "{name}");
            assert!(a.derivative_at_output(0.5).is_none());
            let y = Tensor::<1>::zeros([2], &device);
            assert!(a.input_to_keep(&y).is_some() && a.derivative_of_output(y).is_none());
        }
    }

    #[test]
    fn derivative_matches_finite_differences() {
        let device = Device::flex();
        let xs: Vec<f32> = vec![-3.0, -0.7, -0.1, 0.2, 0.9, 2.5];
        let acts = [
            "sigmoid",
            "tanh",
            "relu",
            "leaky_relu:0.1",
            "elu",
            "selu",
            "gelu",
            "identity",
        ];
        for name in acts {
            let a: Activation = name.parse().unwrap();
            let h = 1e-3f32;
            let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [6]), &device);
            let plus: Vec<f32> = a
                .forward(t(xs.iter().map(|x| x + h).collect()))
                .to_data()
                .try_to_vec()
                .unwrap();
            let minus: Vec<f32> = a
                .forward(t(xs.iter().map(|x| x - h).collect()))
                .to_data()
                .try_to_vec()
                .unwrap();
            let d: Vec<f32> = a.derivative(t(xs.clone())).to_data().try_to_vec().unwrap();
            for i in 0..6 {
                let fd = (plus[i] - minus[i]) / (2.0 * h);
                assert!((fd - d[i]).abs() < 2e-2, "{name} at {}: fd {fd} vs {}", xs[i], d[i]);
                assert!(d[i] as f64 <= a.max_derivative() + 1e-6, "{name}: {} > max", d[i]);
                let scalar = a.derivative_at(xs[i]);
                assert!(
                    (scalar - d[i]).abs() <= 1e-6 * d[i].abs().max(1.0),
                    "{name} at {}: derivative_at {scalar} vs tensor {}",
                    xs[i],
                    d[i]
                );
            }
        }
    }
}
