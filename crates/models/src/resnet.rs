//! CIFAR-style ResNets sized for 28x28 single-channel images (He et al. 2015,
//! section 4.2), each depth available as "plain" (no skips) and "residual".

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::s;
use burn::tensor::{Device, Tensor};

use crate::activation::Activation;
use crate::common::{Head, ModelError, Traced, batch_norm};
use crate::init::{Init, conv_weight, linear_weight, param};
use crate::probe_point::{BlockLinks, PointKind, ProbePoint, Recorder};

/// How a block that changes shape (stride 2, more channels) carries its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortcut {
    /// A 1x1 stride-2 convolution (with BatchNorm when the net has it): option B.
    #[default]
    Projection,
    /// Subsample by 2 and pad the new channels with zeros: option A, parameter-free.
    ZeroPad,
}

/// Configuration of a [`ResNet`]: a 3x3 stem, stages of basic blocks (two 3x3
/// convs each), global average pooling and a linear head. Stages `[16, 32, 64]`
/// with `n` blocks each give the 6n+2 family: n=1 -> 8 layers, 3 -> 20, 9 -> 56.
#[derive(Config, Debug, PartialEq)]
pub struct ResNetConfig {
    /// Input channels (1 for MNIST-like data).
    #[config(default = 1)]
    pub in_channels: usize,
    /// Output input size, for the probe points' shapes (28 for MNIST-like data).
    #[config(default = 28)]
    pub image_size: usize,
    /// Channels of each stage; every stage after the first halves the resolution.
    #[config(default = "vec![16, 32, 64]")]
    pub channels: Vec<usize>,
    /// Basic blocks per stage.
    #[config(default = "vec![3, 3, 3]")]
    pub blocks: Vec<usize>,
    /// Identity skips around each block (`false` gives the "plain" network).
    #[config(default = true)]
    pub skip: bool,
    /// BatchNorm after every convolution.
    #[config(default = true)]
    pub batchnorm: bool,
    /// How shape-changing blocks carry their input.
    #[config(default = "Shortcut::Projection")]
    pub shortcut: Shortcut,
    /// Activation after each BatchNorm (and after each addition).
    #[config(default = "Activation::Relu")]
    pub activation: Activation,
    /// Weight initialisation of convolutions and head.
    #[config(default = "Init::HeNormal { gain: None }")]
    pub init: Init,
    /// Zero the last BatchNorm gamma (or last conv, without BatchNorm) of each
    /// residual branch, so every block starts as the identity (Goyal et al. 2017).
    #[config(default = false)]
    pub zero_init_residual: bool,
    /// Output head.
    #[config(default = "Head::Softmax { classes: 10 }")]
    pub head: Head,
    /// Seed of the weight initialisation.
    #[config(default = 0)]
    pub seed: u64,
}

/// Convolution plus optional BatchNorm (no activation: callers apply it).
#[derive(Module, Debug)]
pub struct ConvNorm {
    pub conv: Conv2d,
    pub norm: Option<BatchNorm>,
}

impl ConvNorm {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &ResNetConfig,
        path: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        zero: bool,
        device: &Device,
    ) -> Self {
        let pad = kernel / 2;
        let mut conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(!cfg.batchnorm)
            .init(device);
        let shape = [c_out, c_in, kernel, kernel];
        conv.weight = if zero && !cfg.batchnorm {
            param(vec![0.0; c_out * c_in * kernel * kernel], shape, device)
        } else {
            conv_weight(
                cfg.init,
                cfg.seed,
                &format!("{path}.conv.weight"),
                shape,
                cfg.activation.recommended_gain(),
                device,
            )
        };
        if !cfg.batchnorm {
            conv.bias = Some(param(vec![0.0; c_out], [c_out], device));
        }
        let norm = cfg.batchnorm.then(|| {
            let mut bn = batch_norm(c_out, device);
            if zero {
                bn.gamma = param(vec![0.0; c_out], [c_out], device);
            }
            bn
        });
        Self { conv, norm }
    }

    /// Returns `(output, BatchNorm input)`; the tap on the BatchNorm input is added here.
    fn forward(&self, x: Tensor<4>, rec: &mut Recorder) -> Tensor<4> {
        let z = crate::conv::forward(&self.conv, x);
        match &self.norm {
            Some(bn) => crate::batchnorm::forward(bn, rec.norm_input(z)),
            None => z,
        }
    }

    /// The point's output `act(forward(x))`: a ReLU after BatchNorm is
    /// computed in the BatchNorm's passes (see [`crate::batchnorm::forward_relu`]).
    fn forward_activated(&self, x: Tensor<4>, act: Activation, rec: &mut Recorder) -> Tensor<4> {
        match (&self.norm, act) {
            (Some(bn), Activation::Relu) => {
                let z = crate::conv::forward(&self.conv, x);
                let h = crate::batchnorm::forward_relu(bn, rec.norm_input(z));
                // As `rec.activated` records it: a ReLU keeps no input.
                rec.point(None, h)
            }
            _ => {
                let a = self.forward(x, rec);
                rec.activated(act, a)
            }
        }
    }

    fn param_paths(&self, path: &str) -> Vec<String> {
        let mut p = vec![format!("{path}.conv.weight")];
        if self.conv.bias.is_some() {
            p.push(format!("{path}.conv.bias"));
        }
        if self.norm.is_some() {
            p.extend([format!("{path}.norm.gamma"), format!("{path}.norm.beta")]);
        }
        p
    }
}

/// A basic block: `act(BN(conv(act(BN(conv(x))))) + shortcut(x))`, or without the
/// shortcut term in a plain network.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: ConvNorm,
    pub conv2: ConvNorm,
    pub projection: Option<ConvNorm>,
    #[module(skip)]
    pub skip: bool,
    #[module(skip)]
    pub stride: usize,
    #[module(skip)]
    pub pad_channels: usize,
    #[module(skip)]
    pub activation: Activation,
}

impl BasicBlock {
    fn forward(&self, x: Tensor<4>, rec: &mut Recorder) -> Tensor<4> {
        let h1 = self.conv1.forward_activated(x.clone(), self.activation, rec);
        if !self.skip {
            return self.conv2.forward_activated(h1, self.activation, rec);
        }
        let a2 = self.conv2.forward(h1, rec);
        let branch = rec.point(None, a2);
        let shortcut = match (&self.projection, self.stride, self.pad_channels) {
            (Some(p), _, _) => p.forward(x, &mut Recorder::off()),
            (None, 1, 0) => x,
            (None, stride, pad) => {
                let sub = x.slice(s![.., .., ..;stride as isize, ..;stride as isize]);
                let [b, _, h, w] = sub.dims();
                let zeros = Tensor::zeros([b, pad, h, w], &sub.device());
                Tensor::cat(vec![sub, zeros], 1)
            }
        };
        let sum = shortcut + branch;
        rec.activated(self.activation, sum)
    }
}

/// A stage: blocks at one resolution.
#[derive(Module, Debug)]
pub struct Stage {
    pub blocks: Vec<BasicBlock>,
}

/// A ResNet-style CNN with probe points `stem`, `stageS.blockB.conv1`,
/// `stageS.blockB.conv2`, `stageS.blockB` (residual only) and `head`.
#[derive(Module, Debug)]
pub struct ResNet {
    pub stem: ConvNorm,
    pub stages: Vec<Stage>,
    pub head: Linear,
    #[module(skip)]
    pub points: Vec<ProbePoint>,
    #[module(skip)]
    pub head_kind: Head,
    #[module(skip)]
    pub activation: Activation,
}

impl ResNetConfig {
    /// Number of weighted layers (convs on the main path plus the head): 6n+2 for three stages.
    pub fn layer_count(&self) -> usize {
        1 + 2 * self.blocks.iter().sum::<usize>() + 1
    }

    fn validate(&self) -> Result<(), ModelError> {
        if self.channels.len() != self.blocks.len() {
            return Err(ModelError::StageCount {
                channels: self.channels.len(),
                blocks: self.blocks.len(),
            });
        }
        if self.channels.is_empty() {
            return Err(ModelError::TooSmall {
                field: "stages",
                min: 1,
                found: 0,
            });
        }
        if let Some(&n) = self.blocks.iter().find(|&&n| n < 1) {
            return Err(ModelError::TooSmall {
                field: "blocks per stage",
                min: 1,
                found: n,
            });
        }
        if let Some(&c) = self.channels.iter().find(|&&c| c < 1) {
            return Err(ModelError::TooSmall {
                field: "channels",
                min: 1,
                found: c,
            });
        }
        Ok(())
    }

    /// Builds the network with every weight drawn now, on the host, from `seed`.
    pub fn init(&self, device: &Device) -> Result<ResNet, ModelError> {
        self.validate()?;
        let act = self.activation;
        let mut points = Vec::new();
        let skip = self.skip;
        let push = |points: &mut Vec<ProbePoint>,
                    name: String,
                    kind,
                    activation,
                    params: Vec<String>,
                    shape: Vec<usize>,
                    has_norm,
                    block| {
            let weight = params.first().cloned();
            let depth = points.len();
            // In a residual net, block internals are off the main path.
            let main_path = !(skip && matches!(kind, PointKind::Conv | PointKind::Branch) && name != "stem");
            points.push(ProbePoint {
                name,
                kind,
                depth,
                activation,
                params,
                weight,
                shape,
                has_norm,
                block,
                main_path,
            });
            depth
        };
        let stem = ConvNorm::new(self, "stem", self.in_channels, self.channels[0], 3, 1, false, device);
        let mut size = self.image_size;
        let mut last = push(
            &mut points,
            "stem".into(),
            PointKind::Conv,
            Some(act),
            stem.param_paths("stem"),
            vec![self.channels[0], size, size],
            self.batchnorm,
            None,
        );
        let mut c_in = self.channels[0];
        let mut stages = Vec::new();
        for (si, (&c_out, &n)) in self.channels.iter().zip(&self.blocks).enumerate() {
            let mut blocks = Vec::new();
            for bi in 0..n {
                let stride = if si > 0 && bi == 0 { 2 } else { 1 };
                size = size.div_ceil(stride);
                let path = format!("stages.{si}.blocks.{bi}");
                let name = format!("stage{}.block{}", si + 1, bi + 1);
                let conv1 = ConvNorm::new(self, &format!("{path}.conv1"), c_in, c_out, 3, stride, false, device);
                let zero = self.skip && self.zero_init_residual;
                let conv2 = ConvNorm::new(self, &format!("{path}.conv2"), c_out, c_out, 3, 1, zero, device);
                let reshapes = stride != 1 || c_in != c_out;
                let projection = (self.skip && reshapes && self.shortcut == Shortcut::Projection).then(|| {
                    ConvNorm::new(
                        self,
                        &format!("{path}.projection"),
                        c_in,
                        c_out,
                        1,
                        stride,
                        false,
                        device,
                    )
                });
                let shape = vec![c_out, size, size];
                let input = last;
                push(
                    &mut points,
                    format!("{name}.conv1"),
                    PointKind::Conv,
                    Some(act),
                    conv1.param_paths(&format!("{path}.conv1")),
                    shape.clone(),
                    self.batchnorm,
                    None,
                );
                if self.skip {
                    let branch = push(
                        &mut points,
                        format!("{name}.conv2"),
                        PointKind::Branch,
                        None,
                        conv2.param_paths(&format!("{path}.conv2")),
                        shape.clone(),
                        self.batchnorm,
                        None,
                    );
                    let params = projection
                        .as_ref()
                        .map(|p| p.param_paths(&format!("{path}.projection")))
                        .unwrap_or_default();
                    let links = BlockLinks {
                        input,
                        branch,
                        identity_skip: !reshapes,
                    };
                    last = push(
                        &mut points,
                        name,
                        PointKind::Block,
                        Some(act),
                        params,
                        shape,
                        false,
                        Some(links),
                    );
                } else {
                    last = push(
                        &mut points,
                        format!("{name}.conv2"),
                        PointKind::Conv,
                        Some(act),
                        conv2.param_paths(&format!("{path}.conv2")),
                        shape,
                        self.batchnorm,
                        None,
                    );
                }
                blocks.push(BasicBlock {
                    conv1,
                    conv2,
                    projection,
                    skip: self.skip,
                    stride,
                    pad_channels: if reshapes { c_out - c_in.min(c_out) } else { 0 },
                    activation: act,
                });
                c_in = c_out;
            }
            stages.push(Stage { blocks });
        }
        let outputs = self.head.outputs();
        let mut head = LinearConfig::new(c_in, outputs).init(device);
        head.weight = linear_weight(self.init, self.seed, "head.weight", c_in, outputs, 1.0, device);
        head.bias = Some(param(vec![0.0; outputs], [outputs], device));
        push(
            &mut points,
            "head".into(),
            PointKind::Head,
            None,
            vec!["head.weight".into(), "head.bias".into()],
            vec![outputs],
            false,
            None,
        );
        Ok(ResNet {
            stem,
            stages,
            head,
            points,
            head_kind: self.head,
            activation: act,
        }
        .materialize())
    }
}

impl Traced for ResNet {
    fn run(&self, images: Tensor<4>, rec: &mut Recorder) -> Tensor<2> {
        let mut x = self.stem.forward_activated(images, self.activation, rec);
        for stage in &self.stages {
            for block in &stage.blocks {
                x = block.forward(x, rec);
            }
        }
        let [b, c, _, _] = x.dims();
        let pooled = x.mean_dim(3).mean_dim(2).reshape([b, c]);
        let logits = crate::linear::forward(&self.head, pooled);
        rec.point(None, logits)
    }

    fn points(&self) -> &[ProbePoint] {
        &self.points
    }

    fn head_kind(&self) -> Head {
        self.head_kind
    }
}
