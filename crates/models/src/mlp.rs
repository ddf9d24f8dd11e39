//! Deep fully connected networks: the classic setting of vanishing gradients.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{BatchNorm, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::activation::Activation;
use crate::common::{Head, ModelError, Norm, NormPlacement, Traced, batch_norm};
use crate::init::{Init, linear_weight, param};
use crate::probe_point::{BlockLinks, PointKind, ProbePoint, Recorder};

/// Hidden widths: one size for every layer, or one per layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Width {
    Uniform(usize),
    PerLayer(Vec<usize>),
}

/// Configuration of an [`Mlp`]: `input -> depth x hidden layers -> head`.
///
/// Each hidden layer computes `h = f(W x + b)`, with an optional BatchNorm before
/// or after `f`. With `residual_every = Some(k)`, hidden layers 2 onwards are
/// grouped in blocks of `k` and each block adds its input back:
/// `x_out = x_in + F(x_in)`, a clean identity path for the gradient.
#[derive(Config, Debug, PartialEq)]
pub struct MlpConfig {
    /// Input features (784 for 28x28 images).
    #[config(default = 784)]
    pub input_size: usize,
    /// Number of hidden layers.
    #[config(default = 10)]
    pub depth: usize,
    /// Hidden widths.
    #[config(default = "Width::Uniform(128)")]
    pub width: Width,
    /// Hidden activation.
    #[config(default = "Activation::Sigmoid")]
    pub activation: Activation,
    /// Weight initialisation of every layer (the head uses gain 1).
    #[config(default = "Init::XavierUniform { gain: 1.0 }")]
    pub init: Init,
    /// Constant initial value of hidden biases (0 unless asked: negative values kill ReLUs).
    #[config(default = 0.0)]
    pub bias: f64,
    /// Normalisation in hidden layers.
    #[config(default = "Norm::None")]
    pub norm: Norm,
    /// Where the normalisation sits.
    #[config(default = "NormPlacement::BeforeActivation")]
    pub norm_placement: NormPlacement,
    /// Identity skip around every `k` hidden layers (from layer 2 on), or none.
    #[config(default = "None")]
    pub residual_every: Option<usize>,
    /// Output head.
    #[config(default = "Head::Softmax { classes: 10 }")]
    pub head: Head,
    /// Seed of the weight initialisation.
    #[config(default = 0)]
    pub seed: u64,
}

/// One hidden layer: linear, optional BatchNorm, activation.
#[derive(Module, Debug)]
pub struct DenseLayer {
    pub linear: Linear,
    pub norm: Option<BatchNorm>,
    #[module(skip)]
    pub activation: Activation,
    #[module(skip)]
    pub placement: NormPlacement,
}

impl DenseLayer {
    /// Returns `(activation input, layer output)`, the input only where the
    /// probe needs it ([`gradscope_models::Trace::pre`](crate::Trace::pre)).
    fn forward_parts(&self, x: Tensor<2>, rec: &mut Recorder) -> (Option<Tensor<2>>, Tensor<2>) {
        let z = crate::linear::forward(&self.linear, x);
        match (&self.norm, self.placement) {
            (None, _) => (self.activation.input_to_keep(&z), self.activation.forward(z)),
            (Some(bn), NormPlacement::BeforeActivation) => {
                let a = crate::batchnorm::forward(bn, rec.norm_input(z));
                (self.activation.input_to_keep(&a), self.activation.forward(a))
            }
            (Some(bn), NormPlacement::AfterActivation) => {
                // The output is BatchNorm's: it does not tell the activation's derivative.
                let y = self.activation.forward(z.clone());
                (Some(z), crate::batchnorm::forward(bn, rec.norm_input(y)))
            }
        }
    }
}

/// A deep multilayer perceptron with named probe points (`hidden.1` .. `hidden.N`,
/// `block.1` .., `head`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub hidden: Vec<DenseLayer>,
    pub head: Linear,
    #[module(skip)]
    pub points: Vec<ProbePoint>,
    /// `(first, last)` hidden-layer indices (0-based) of each residual block.
    #[module(skip)]
    pub blocks: Vec<(usize, usize)>,
    #[module(skip)]
    pub head_kind: Head,
}

impl MlpConfig {
    /// The hidden widths, one per layer, validated.
    pub fn widths(&self) -> Result<Vec<usize>, ModelError> {
        if self.depth < 1 {
            return Err(ModelError::TooSmall {
                field: "depth",
                min: 1,
                found: self.depth,
            });
        }
        let widths = match &self.width {
            Width::Uniform(w) => vec![*w; self.depth],
            Width::PerLayer(ws) if ws.len() == self.depth => ws.clone(),
            Width::PerLayer(ws) => {
                return Err(ModelError::WidthCount {
                    found: ws.len(),
                    depth: self.depth,
                });
            }
        };
        if let Some(&w) = widths.iter().find(|&&w| w < 1) {
            return Err(ModelError::TooSmall {
                field: "width",
                min: 1,
                found: w,
            });
        }
        Ok(widths)
    }

    /// Residual blocks as `(first, last)` hidden-layer indices, validated.
    pub fn residual_blocks(&self) -> Result<Vec<(usize, usize)>, ModelError> {
        let widths = self.widths()?;
        let Some(k) = self.residual_every else {
            return Ok(Vec::new());
        };
        if k < 1 {
            return Err(ModelError::TooSmall {
                field: "residual_every",
                min: 1,
                found: k,
            });
        }
        let blocks: Vec<(usize, usize)> = (1..self.depth)
            .step_by(k)
            .map(|s| (s, (s + k - 1).min(self.depth - 1)))
            .collect();
        for &(s, e) in &blocks {
            // The block's input is layer s-1's output; every layer in it keeps that width.
            if widths[s - 1..=e].iter().any(|&w| w != widths[s - 1]) {
                return Err(ModelError::ResidualWidth {
                    from: s,
                    to: e + 1,
                    widths: widths[s - 1..=e].to_vec(),
                });
            }
        }
        Ok(blocks)
    }

    /// Builds the network with every weight drawn now, on the host, from `seed`.
    pub fn init(&self, device: &Device) -> Result<Mlp, ModelError> {
        let widths = self.widths()?;
        let blocks = self.residual_blocks()?;
        let mut hidden = Vec::with_capacity(self.depth);
        let mut d_in = self.input_size;
        let gain = self.activation.recommended_gain();
        for (i, &d_out) in widths.iter().enumerate() {
            let mut linear = LinearConfig::new(d_in, d_out).init(device);
            linear.weight = linear_weight(
                self.init,
                self.seed,
                &format!("hidden.{i}.linear.weight"),
                d_in,
                d_out,
                gain,
                device,
            );
            linear.bias = Some(param(vec![self.bias as f32; d_out], [d_out], device));
            let norm = (self.norm == Norm::Batchnorm).then(|| batch_norm(d_out, device));
            hidden.push(DenseLayer {
                linear,
                norm,
                activation: self.activation,
                placement: self.norm_placement,
            });
            d_in = d_out;
        }
        let outputs = self.head.outputs();
        let mut head = LinearConfig::new(d_in, outputs).init(device);
        head.weight = linear_weight(self.init, self.seed, "head.weight", d_in, outputs, 1.0, device);
        head.bias = Some(param(vec![0.0; outputs], [outputs], device));
        let points = self.points(&widths, &blocks);
        Ok(Mlp {
            hidden,
            head,
            points,
            blocks,
            head_kind: self.head,
        }
        .materialize())
    }

    fn points(&self, widths: &[usize], blocks: &[(usize, usize)]) -> Vec<ProbePoint> {
        let mut points: Vec<ProbePoint> = Vec::new();
        let mut block_input = None;
        let norm = self.norm == Norm::Batchnorm;
        for (i, &w) in widths.iter().enumerate() {
            if blocks.iter().any(|&(s, _)| s == i) {
                // The block's input is the output of the point just before it.
                block_input = points.len().checked_sub(1);
            }
            let block = blocks.iter().position(|&(_, e)| e == i);
            let mut params = vec![format!("hidden.{i}.linear.weight"), format!("hidden.{i}.linear.bias")];
            if norm {
                params.extend([format!("hidden.{i}.norm.gamma"), format!("hidden.{i}.norm.beta")]);
            }
            points.push(ProbePoint {
                name: format!("hidden.{}", i + 1),
                kind: if block.is_some() {
                    PointKind::Branch
                } else {
                    PointKind::Dense
                },
                depth: points.len(),
                activation: Some(self.activation),
                weight: Some(params[0].clone()),
                params,
                shape: vec![w],
                has_norm: norm,
                block: None,
                main_path: !blocks.iter().any(|&(s, e)| (s..=e).contains(&i)),
            });
            if let Some(b) = block {
                points.push(ProbePoint {
                    name: format!("block.{}", b + 1),
                    kind: PointKind::Block,
                    depth: points.len(),
                    activation: None,
                    params: Vec::new(),
                    weight: None,
                    shape: vec![w],
                    has_norm: false,
                    block: Some(BlockLinks {
                        input: block_input.take().expect("a block starts after hidden layer 1"),
                        branch: points.len() - 1,
                        identity_skip: true,
                    }),
                    main_path: true,
                });
            }
        }
        let outputs = self.head.outputs();
        points.push(ProbePoint {
            name: "head".into(),
            kind: PointKind::Head,
            depth: points.len(),
            activation: None,
            params: vec!["head.weight".into(), "head.bias".into()],
            weight: Some("head.weight".into()),
            shape: vec![outputs],
            has_norm: false,
            block: None,
            main_path: true,
        });
        points
    }
}

impl Traced for Mlp {
    fn run(&self, images: Tensor<4>, rec: &mut Recorder) -> Tensor<2> {
        let [batch, ..] = images.dims();
        let mut h: Tensor<2> = images.reshape([batch as i32, -1]);
        let mut skip_in = None;
        for (i, layer) in self.hidden.iter().enumerate() {
            if self.blocks.iter().any(|&(s, _)| s == i) {
                skip_in = Some(h.clone());
            }
            let (pre, out) = layer.forward_parts(h, rec);
            h = rec.point(pre, out);
            if self.blocks.iter().any(|&(_, e)| e == i) {
                let sum = skip_in.take().expect("block start precedes its end") + h;
                h = rec.point(None, sum);
            }
        }
        let logits = crate::linear::forward(&self.head, h);
        rec.point(None, logits)
    }

    fn points(&self) -> &[ProbePoint] {
        &self.points
    }

    fn head_kind(&self) -> Head {
        self.head_kind
    }
}
