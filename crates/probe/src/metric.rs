//! What a probe record holds: each statistic named by a [`Metric`], at a
//! probe point or for the whole model ([`Scope`]). A metric's name is its
//! `metric` column in `probe.csv`.

use std::fmt;
use std::str::FromStr;

macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A statistic the probe records.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Metric {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Metric {
            /// Every metric, in declaration order.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant),*];

            /// The name in `probe.csv`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }
        }
    };
}

metrics! {
    /// The step's training loss (model-wide).
    Loss = "loss",
    /// ||dL/dW|| of the layer's main weight.
    GradL2 = "grad_l2",
    /// max |dL/dW|.
    GradMax = "grad_max",
    /// Share of exactly-zero entries of dL/dW.
    GradZeroFrac = "grad_zero_frac",
    /// Non-finite entries of dL/dW.
    GradNonfinite = "grad_nonfinite",
    /// ||dL/dW|| / sqrt(entries).
    GradRms = "grad_rms",
    /// ||dL/db|| of the layer's bias.
    BiasGradL2 = "bias_grad_l2",
    BiasGradMax = "bias_grad_max",
    BiasGradZeroFrac = "bias_grad_zero_frac",
    BiasGradNonfinite = "bias_grad_nonfinite",
    /// ||dL/dh|| of the back-propagated signal at the point's output.
    SignalL2 = "signal_l2",
    /// RMS of dL/dh: the signal a layer passes toward the input.
    SignalRms = "signal_rms",
    /// ||dL/da|| at the activation's input.
    PreactSignalL2 = "preact_signal_l2",
    /// ||dL/dx|| at a BatchNorm's input.
    BnInSignalL2 = "bn_in_signal_l2",
    /// Mean and standard deviation of the point's output.
    ActMean = "act_mean",
    ActStd = "act_std",
    /// Share of outputs exactly zero (ReLU family).
    ZeroFrac = "zero_frac",
    /// Share of units zero for every example of the batch.
    DeadFrac = "dead_frac",
    /// Share of units zero for every example of every probed batch in a window.
    DeadWindowFrac = "dead_window_frac",
    /// Share of outputs where a sigmoid/tanh's derivative is below 1% of its maximum.
    SaturatedFrac = "saturated_frac",
    /// Share of a leaky unit's inputs on the negative side.
    NegativeFrac = "negative_frac",
    /// Share of a residual block's input gradient that came through the skip.
    SkipShare = "skip_share",
    /// ||W|| (update steps).
    WeightL2 = "weight_l2",
    /// Entries of W.
    WeightNumel = "weight_numel",
    /// ||W|| before the optimiser step (update steps; turned into a ratio).
    WeightBeforeL2 = "weight_before_l2",
    /// ||W_after - W_before|| (update steps; turned into a ratio).
    UpdateL2 = "update_l2",
    /// ||dL/dW|| / ||W||, the weight norm the latest update step read.
    GradWeightRatio = "grad_weight_ratio",
    /// ||W_after - W_before|| / ||W_before||.
    UpdateWeightRatio = "update_weight_ratio",
}

impl Metric {
    /// Whether a positive value counts non-finite entries.
    pub fn counts_nonfinite(self) -> bool {
        matches!(self, Metric::GradNonfinite | Metric::BiasGradNonfinite)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .iter()
            .find(|m| m.name() == s)
            .copied()
            .ok_or_else(|| format!("unknown metric `{s}`"))
    }
}

impl serde::Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a value was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The whole model (the loss).
    Model,
    /// The probe point of this index.
    Point(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.name().parse::<Metric>().unwrap(), *m);
            assert!(Metric::ALL[..i].iter().all(|o| o.name() != m.name()), "{m}");
            let json = serde_json::to_string(m).unwrap();
            assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), *m);
        }
        assert!("signal_rsm".parse::<Metric>().unwrap_err().contains("`signal_rsm`"));
    }
}
