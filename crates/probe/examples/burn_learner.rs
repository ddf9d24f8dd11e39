//! gradscope's probe inside burn-train's own loop, on a model of your own.
//!
//! A small CNN written here (not one of gradscope's presets) trains with
//! burn-train's `Learner` and `SupervisedTraining` on the bundled MNIST-like
//! sample. Five lines, marked `// gradscope`, add gradient-flow monitoring
//! (three more, the `activate` calls in `forward`, add the back-propagated
//! signal dL/dh and dead-unit counts at each convolution); the probe writes a run
//! directory that `gradscope inspect`, `compare` and `tensorboard` read.
//!
//! Run: `cargo run -p gradscope-probe --example burn_learner -- OUT [EPOCHS]`,
//! then `gradscope compare OUT/gradscope`.

use std::path::Path;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::transform::PartialDataset;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep};
use gradscope_data::{MnistBatch, MnistBatcher, MnistLike, Normalization};
use gradscope_probe::{Activation, ModelProbe, ProbeConfig, Verdicts};

/// Three 3x3 convolutions (the last two with stride 2) and a linear classifier.
#[derive(Module, Debug)]
pub struct SmallCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc: Linear,
    #[module(skip)]
    probe: ModelProbe, // gradscope
}

impl SmallCnn {
    pub fn new(probe: ModelProbe, device: &Device) -> Self {
        let conv = |c_in, c_out, stride| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv(1, 8, 1),
            conv2: conv(8, 16, 2),
            conv3: conv(16, 16, 2),
            fc: LinearConfig::new(16 * 7 * 7, 10).init(device),
            probe,
        }
    }

    /// Logits for `[batch, 1, 28, 28]` images.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let relu = Activation::Relu;
        let h = self.probe.activate("conv1", relu, self.conv1.forward(x));
        let h = self.probe.activate("conv2", relu, self.conv2.forward(h));
        let h = self.probe.activate("conv3", relu, self.conv3.forward(h));
        self.fc.forward(h.flatten(1, 3))
    }

    fn output(&self, batch: MnistBatch) -> ClassificationOutput {
        let output = self.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&output.device())
            .forward(output.clone(), batch.targets.clone());
        ClassificationOutput {
            loss,
            output,
            targets: batch.targets,
        }
    }
}

impl TrainStep for SmallCnn {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
        let out = self.output(batch);
        self.probe.loss(&out.loss); // gradscope
        TrainOutput::new(self, out.loss.backward(), out)
    }

    fn optimize(self, optim: &mut ModuleOptimizer, lr: ModuleLearningRate, grads: GradientsParams) -> Self {
        self.probe.clone().optimize(self, optim, lr, grads) // gradscope
    }
}

impl InferenceStep for SmallCnn {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> ClassificationOutput {
        self.output(batch)
    }
}

/// Trains the CNN for `epochs` on the first `images` training images (all of
/// them with `None`); burn-train's files go to `out/burn-train`, gradscope's
/// run directory is `out/gradscope`.
pub fn train(out: &Path, epochs: usize, images: Option<usize>) -> Result<Verdicts, Box<dyn std::error::Error>> {
    let device = Device::flex().autodiff();
    device.seed(0);
    let data = MnistLike::bundled()?;
    let batcher = MnistBatcher::fitted(&data.train, Normalization::Standard);
    let n = images.unwrap_or(data.train.len()).min(data.train.len());
    let loader_train = DataLoaderBuilder::new(batcher.clone())
        .batch_size(64)
        .shuffle(0)
        .build(PartialDataset::new(data.train, 0, n));
    let loader_valid = DataLoaderBuilder::new(batcher).batch_size(256).build(data.test);

    let probe = ModelProbe::create(out.join("gradscope"), ProbeConfig::default())?; // gradscope
    let model = SmallCnn::new(probe.clone(), &device);
    let learner = Learner::new(model, SgdConfig::new().init(), 0.05);
    SupervisedTraining::new(out.join("burn-train"), loader_train, loader_valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .num_epochs(epochs)
        .with_application_logger(None)
        .launch(learner);
    Ok(probe.finish()?) // gradscope
}

#[allow(dead_code)] // A test includes this file and calls `train` alone.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: burn_learner OUT [EPOCHS]")?;
    let epochs = match args.next() {
        Some(e) => e
            .parse()
            .map_err(|_| format!("EPOCHS must be a whole number; found `{e}`"))?,
        None => 1,
    };
    let verdicts = train(Path::new(&out), epochs, None)?;
    println!(
        "verdict: {:?}; run directory: {}",
        verdicts.verdict,
        Path::new(&out).join("gradscope").display()
    );
    Ok(())
}
