//! The probe inside burn-train: a model of the user's own implements
//! `TrainStep`, and its `optimize` (which burn-train's `Learner` calls after
//! every backward pass) measures each parameter's gradient by module path
//! before the optimiser step and the update size after it.
//!
//! The model here is a plain Burn module, not a gradscope network: no probe
//! points or taps, so [`ModuleGrads`] sees weight gradients and updates only
//! (the back-propagated signal needs taps; see `custom_loop.rs`).
//!
//! Run: `cargo run --example burn_train_step` (prints per-parameter tables for
//! the first and last step of a deep sigmoid MLP and the first/last layer ratio).

use std::sync::Mutex;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Int, Tensor};
use burn::train::{ClassificationOutput, TrainOutput, TrainStep};
use gradscope_data::{MnistLike, Normalization, epoch_batches, epoch_order};
use gradscope_probe::ModuleGrads;

/// What `optimize` measured, step by step (a real project would log it).
static MEASURED: Mutex<Vec<ModuleGrads>> = Mutex::new(Vec::new());

/// A user's model: `784 -> 6 x 64 sigmoid -> 10`.
#[derive(Module, Debug)]
struct DeepSigmoid {
    hidden: Vec<Linear>,
    out: Linear,
}

impl DeepSigmoid {
    fn new(device: &Device) -> Self {
        let mut hidden = vec![LinearConfig::new(784, 64).init(device)];
        hidden.extend((1..6).map(|_| LinearConfig::new(64, 64).init(device)));
        Self {
            hidden,
            out: LinearConfig::new(64, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.hidden.iter().fold(x, |h, layer| sigmoid(layer.forward(h)));
        self.out.forward(h)
    }
}

impl TrainStep for DeepSigmoid {
    type Input = (Tensor<2>, Tensor<1, Int>);
    type Output = ClassificationOutput;

    fn step(&self, (x, targets): Self::Input) -> TrainOutput<ClassificationOutput> {
        let output = self.forward(x);
        let loss = CrossEntropyLossConfig::new()
            .init(&output.device())
            .forward(output.clone(), targets.clone());
        let grads = loss.backward();
        TrainOutput::new(self, grads, ClassificationOutput { loss, output, targets })
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        // Gradients by parameter path, reduced on the device, one transfer.
        let mut measured = ModuleGrads::measure(&self, &grads);
        let updated = optim.step(lr, self, grads);
        // |W_after - W_before| / |W_before|, one more transfer.
        measured.update(&updated);
        MEASURED.lock().expect("not poisoned").push(measured);
        updated
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut model = DeepSigmoid::new(&device);
    let mut optim = SgdConfig::new().init();

    let data = MnistLike::bundled()?;
    let batcher = gradscope_data::MnistBatcher::fitted(&data.train, Normalization::Standard);
    let order = epoch_order(data.train.len(), 0, 0, true);
    let steps = 20;
    // burn-train's `Learner` runs this same pair of calls for every batch.
    for batch in epoch_batches(&data.train, &batcher, &order, 64, 0, &device).take(steps) {
        let x = batch.images.flatten::<2>(1, 3);
        let out = model.step((x, batch.targets));
        model = model.optimize(&mut optim, 0.5.into(), out.grads);
    }

    let measured = MEASURED.lock().expect("not poisoned");
    let (first, last) = (&measured[0], &measured[measured.len() - 1]);
    println!("step 0\n{}", first.table());
    println!("step {}\n{}", measured.len() - 1, last.table());
    let ratio = |m: &ModuleGrads| m.params[0].grad_l2 / m.params[m.params.len() - 2].grad_l2;
    println!(
        "|g| of hidden.0.weight / |g| of out.weight: {:.2e} at step 0, {:.2e} at step {}",
        ratio(first),
        ratio(last),
        measured.len() - 1
    );
    Ok(())
}
