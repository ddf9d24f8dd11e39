//! Gradient statistics for any Burn [`Module`], by parameter path.
//!
//! The full probe ([`crate::GradientProbe`]) needs a gradscope [`Network`]
//! (probe points, taps, traces). A Burn user with a model of their own can still
//! see the weight-gradient half of the picture: walk the module with a
//! `ModuleVisitor`, key every parameter by its path (`ParamId`s are random per
//! run; paths are stable), and reduce each gradient on the device, read back in
//! one transfer. This is what a burn-train `TrainStep::optimize` can call (see
//! `examples/burn_train_step.rs`).
//!
//! [`Network`]: gradscope_models::Network

use std::collections::BTreeMap;

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use gradscope_models::named_params;

use crate::device::{Batch, grad_flat, grad_stats, l2, param_values};
use crate::metric::Metric;
use crate::step::GradPrefix;

/// One parameter's gradient at one step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParamGrad {
    /// Module path, e.g. `layers.0.weight`.
    pub path: String,
    pub shape: Vec<usize>,
    /// `||g||_2`.
    pub grad_l2: f64,
    /// `||g||_2 / sqrt(numel)`.
    pub grad_rms: f64,
    pub grad_max: f64,
    pub grad_zero_frac: f64,
    pub grad_nonfinite: f64,
    /// `||W||_2` before the step.
    pub weight_l2: f64,
    /// `||g|| / ||W||` (NaN for a zero weight).
    pub grad_weight_ratio: f64,
    /// `||W_after - W_before|| / ||W_before||`, once [`ModuleGrads::update`] has run.
    pub update_weight_ratio: Option<f64>,
}

/// Per-parameter gradient statistics of a module at one step; keep it across the
/// optimiser step and call [`ModuleGrads::update`] to add the update sizes.
#[derive(Debug, Clone)]
pub struct ModuleGrads {
    pub params: Vec<ParamGrad>,
    ids: Vec<Option<ParamId>>,
    before: Vec<Option<Tensor<1>>>,
}

impl ModuleGrads {
    /// Measures every float parameter of `module` that has a gradient in `grads`.
    pub fn measure<M: Module>(module: &M, grads: &GradientsParams) -> Self {
        let named = named_params(module);
        let ids: Vec<Option<ParamId>> = named.iter().map(|p| Some(p.id)).collect();
        let before = param_values(module, &ids);
        let mut batch = Batch::new();
        let mut kept = Vec::new();
        for (i, p) in named.iter().enumerate() {
            let (Some(g), Some(w)) = (grad_flat(grads, p.id, p.shape.len()), &before[i]) else {
                continue;
            };
            grad_stats(&mut batch, i, &g, GradPrefix::Weight);
            batch.push(Some(i), Metric::WeightL2, l2(w));
            kept.push(i);
        }
        let read: BTreeMap<(usize, Metric), f64> = batch
            .read()
            .values
            .into_iter()
            .filter_map(|(p, k, v)| Some(((p?, k), v)))
            .collect();
        let value = |i: usize, m: Metric| read.get(&(i, m)).copied().unwrap_or(f64::NAN);
        let params = kept
            .iter()
            .map(|&i| {
                let p = &named[i];
                let (g, w) = (value(i, Metric::GradL2), value(i, Metric::WeightL2));
                ParamGrad {
                    path: p.path.clone(),
                    shape: p.shape.clone(),
                    grad_l2: g,
                    grad_rms: g / (p.numel().max(1) as f64).sqrt(),
                    grad_max: value(i, Metric::GradMax),
                    grad_zero_frac: value(i, Metric::GradZeroFrac),
                    grad_nonfinite: value(i, Metric::GradNonfinite),
                    weight_l2: w,
                    grad_weight_ratio: if w == 0.0 { f64::NAN } else { g / w },
                    update_weight_ratio: None,
                }
            })
            .collect();
        Self {
            params,
            ids: kept.iter().map(|&i| ids[i]).collect(),
            before: kept.into_iter().map(|i| before[i].clone()).collect(),
        }
    }

    /// Adds `||W_after - W_before|| / ||W_before||` for every measured parameter
    /// (one transfer).
    pub fn update<M: Module>(&mut self, after: &M) {
        let now = param_values(after, &self.ids);
        let mut batch = Batch::new();
        for (i, (old, new)) in self.before.iter().zip(now).enumerate() {
            if let (Some(old), Some(new)) = (old, new) {
                batch.push(Some(i), Metric::UpdateL2, l2(&(new - old.clone())));
            }
        }
        for (i, _, u) in batch.read().values.into_iter().filter_map(|(p, k, v)| Some((p?, k, v))) {
            let p = &mut self.params[i];
            p.update_weight_ratio = Some(if p.weight_l2 == 0.0 { f64::NAN } else { u / p.weight_l2 });
        }
    }

    /// A fixed-width table, one row per parameter.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<28} {:>12} {:>10} {:>10} {:>9} {:>12}\n",
            "parameter", "shape", "|g|", "|g|/|W|", "zero g", "|dW|/|W|"
        );
        for p in &self.params {
            let shape = p.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            out.push_str(&format!(
                "{:<28} {:>12} {:>10.2e} {:>10.2e} {:>8.1}% {:>12}\n",
                p.path,
                shape,
                p.grad_l2,
                p.grad_weight_ratio,
                100.0 * p.grad_zero_frac,
                p.update_weight_ratio.map_or("-".into(), |u| format!("{u:.2e}"))
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct Two {
        first: Linear,
        second: Linear,
    }

    #[test]
    fn measures_by_path_and_matches_hand_computed_values() {
        let device = Device::flex().autodiff();
        let model = Two {
            first: LinearConfig::new(3, 4).init(&device),
            second: LinearConfig::new(4, 2).with_bias(false).init(&device),
        };
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5, 0.0, 1.0, 3.0], [2, 3]), &device);
        let loss = model.second.forward(model.first.forward(x)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut m = ModuleGrads::measure(&model, &grads);
        let paths: Vec<&str> = m.params.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["first.weight", "first.bias", "second.weight"]);
        // d(sum(W2^T (W1^T x + b1)))/d b1 = batch * row sums of W2 (Burn stores W as [in, out]).
        let w2: Vec<f32> = model.second.weight.val().inner().into_data().try_to_vec().unwrap();
        let want: f64 = (0..4)
            .map(|r| (2.0 * (w2[2 * r] + w2[2 * r + 1]) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (m.params[1].grad_l2 - want).abs() < 1e-5 * want,
            "{} vs {want}",
            m.params[1].grad_l2
        );
        assert!(
            m.params
                .iter()
                .all(|p| p.grad_nonfinite == 0.0 && p.update_weight_ratio.is_none())
        );
        // SGD with lr 0.5: the update is 0.5 g, so |dW|/|W| = 0.5 |g|/|W|.
        let mut optim = SgdConfig::new().init();
        let after = optim.step(0.5, model, grads);
        m.update(&after);
        for p in &m.params {
            let u = p.update_weight_ratio.unwrap();
            assert!((u - 0.5 * p.grad_weight_ratio).abs() < 1e-5 * u, "{}: {u}", p.path);
        }
        assert!(m.table().contains("first.bias"));
    }
}
