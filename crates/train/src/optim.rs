//! Burn optimisers configured with PyTorch's semantics.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, SgdConfig};

use crate::config::{Optimizer, TrainConfig};

/// Builds the optimiser. Burn's SGD momentum defaults to dampening 0.1 and its
/// Adam epsilon to 1e-5; gradscope sets PyTorch's 0 and 1e-8 (or the config's
/// values) explicitly so results compare with PyTorch runs.
pub fn build_optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let decay = |w: f64| (w > 0.0).then_some(WeightDecayConfig { penalty: w as f32 });
    match config.optimizer {
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => SgdConfig::new()
            .with_momentum((momentum > 0.0).then_some(MomentumConfig {
                momentum,
                dampening: 0.0,
                nesterov,
            }))
            .with_weight_decay(decay(weight_decay))
            .init(),
        Optimizer::Adam {
            beta1,
            beta2,
            epsilon,
            weight_decay,
        } => AdamConfig::new()
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(epsilon as f32)
            .with_weight_decay(decay(weight_decay))
            .init(),
        Optimizer::Adamw {
            beta1,
            beta2,
            epsilon,
            weight_decay,
        } => AdamWConfig::new()
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(epsilon as f32)
            .with_weight_decay(weight_decay as f32)
            .init(),
    }
}
