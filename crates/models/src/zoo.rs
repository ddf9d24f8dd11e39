//! Any network of the zoo, its configuration, and the named presets.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::activation::Activation;
use crate::common::{Head, ModelError, Norm, Traced};
use crate::init::Init;
use crate::mlp::{Mlp, MlpConfig, Width};
use crate::probe_point::{ProbePoint, Recorder};
use crate::resnet::{ResNet, ResNetConfig};

/// The configuration of any network in the zoo (`arch = "mlp"` or `"resnet"` in
/// TOML). Fields left out of a file take the config's defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum ModelConfig {
    Mlp(MlpConfig),
    Resnet(ResNetConfig),
}

impl<'de> serde::Deserialize<'de> for ModelConfig {
    /// Burn's `Config` derive requires every field when deserialising; this
    /// overlays the given fields on the defaults first, so files stay short.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut given = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let arch = given.remove("arch").ok_or_else(|| D::Error::missing_field("arch"))?;
        let defaults = match arch.as_str() {
            Some("mlp") => serde_json::to_value(MlpConfig::new()),
            Some("resnet") => serde_json::to_value(ResNetConfig::new()),
            _ => return Err(D::Error::unknown_variant(&arch.to_string(), &["mlp", "resnet"])),
        }
        .map_err(D::Error::custom)?;
        let serde_json::Value::Object(mut merged) = defaults else {
            unreachable!("configs serialise to maps")
        };
        for (k, v) in given {
            if !merged.contains_key(&k) {
                return Err(D::Error::unknown_field(&k, &[]));
            }
            merged.insert(k, v);
        }
        let value = serde_json::Value::Object(merged);
        Ok(match arch.as_str() {
            Some("mlp") => ModelConfig::Mlp(serde_json::from_value(value).map_err(D::Error::custom)?),
            _ => ModelConfig::Resnet(serde_json::from_value(value).map_err(D::Error::custom)?),
        })
    }
}

impl ModelConfig {
    /// Builds the network; every weight is drawn now from the config's seed.
    pub fn init(&self, device: &Device) -> Result<Model, ModelError> {
        Ok(match self {
            ModelConfig::Mlp(c) => Model::Mlp(c.init(device)?),
            ModelConfig::Resnet(c) => Model::Resnet(c.init(device)?),
        })
    }

    /// The config as JSON plus the layout it implies (an MLP's hidden `widths`
    /// and `residual_blocks` as `[first, last]` layer indices) and its
    /// `trainable_params`, so that another framework can rebuild the same
    /// network without re-deriving gradscope's rules and check itself against
    /// the count; `bench/pytorch/bench.py` reads it.
    pub fn to_layout_json(&self) -> Result<serde_json::Value, ModelError> {
        let mut value = serde_json::to_value(self).expect("model configs serialise");
        if let ModelConfig::Mlp(c) = self {
            value["widths"] = serde_json::json!(c.widths()?);
            value["residual_blocks"] = serde_json::json!(c.residual_blocks()?);
        }
        value["trainable_params"] = crate::trainable_params(&self.init(&Device::flex())?).into();
        Ok(value)
    }

    /// The same configuration with another initialisation seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        match &mut self {
            ModelConfig::Mlp(c) => c.seed = seed,
            ModelConfig::Resnet(c) => c.seed = seed,
        }
        self
    }

    /// The output head.
    pub fn head(&self) -> Head {
        match self {
            ModelConfig::Mlp(c) => c.head,
            ModelConfig::Resnet(c) => c.head,
        }
    }

    /// Sets the output head (e.g. binary for a two-class task).
    pub fn with_head(mut self, head: Head) -> Self {
        match &mut self {
            ModelConfig::Mlp(c) => c.head = head,
            ModelConfig::Resnet(c) => c.head = head,
        }
        self
    }

    /// The hidden activation.
    pub fn activation(&self) -> Activation {
        match self {
            ModelConfig::Mlp(c) => c.activation,
            ModelConfig::Resnet(c) => c.activation,
        }
    }
}

/// Any network of the zoo, as one Burn module.
// The variants' sizes differ (a ResNet holds more layer handles), but a model is
// moved a few times per optimiser step at most: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    Mlp(Mlp),
    Resnet(ResNet),
}

impl Traced for Model {
    fn run(&self, images: Tensor<4>, rec: &mut Recorder) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.run(images, rec),
            Model::Resnet(m) => m.run(images, rec),
        }
    }

    fn points(&self) -> &[ProbePoint] {
        match self {
            Model::Mlp(m) => &m.points,
            Model::Resnet(m) => &m.points,
        }
    }

    fn head_kind(&self) -> Head {
        match self {
            Model::Mlp(m) => m.head_kind,
            Model::Resnet(m) => m.head_kind,
        }
    }
}

/// The presets `gradscope models list` shows, with what each demonstrates.
pub const PRESETS: [(&str, &str); 16] = [
    (
        "mlp-sigmoid-10x128",
        "10 sigmoid layers, Xavier: the textbook vanishing-gradient net",
    ),
    ("mlp-tanh-10x128", "10 tanh layers, Xavier"),
    ("mlp-relu-10x128-he", "10 ReLU layers, He init: the first cure"),
    ("mlp-relu-bn-10x128", "10 ReLU layers with BatchNorm, He init"),
    ("mlp-sigmoid-bn-10x128", "10 sigmoid layers with BatchNorm, Xavier"),
    ("mlp-leaky-10x128", "10 LeakyReLU (0.01) layers, He init"),
    (
        "mlp-residual-20x128",
        "20 ReLU layers with an identity skip every 2, He init",
    ),
    ("mlp-sigmoid-8x256", "benchmark net: 784 -> 8 x 256 sigmoid -> 10"),
    ("mlp-relu-bn-8x256", "benchmark net: 8 x 256 ReLU + BatchNorm"),
    ("mlp-relu-4x512", "benchmark net: 4 x 512 ReLU"),
    (
        "resnet8-plain",
        "ResNet-8 without skips (stages 16/32/64, 1 block each)",
    ),
    ("resnet8-residual", "ResNet-8 with identity skips"),
    ("resnet20-plain", "ResNet-20 without skips (3 blocks per stage)"),
    ("resnet20-residual", "ResNet-20 with identity skips"),
    ("resnet56-plain", "ResNet-56 without skips (9 blocks per stage)"),
    ("resnet56-residual", "ResNet-56 with identity skips"),
];

/// Looks up a preset by name.
///
/// Besides the listed names, any `mlp-ACT[-bn][-residual]-DEPTHxWIDTH[-INIT]`
/// (ACT in sigmoid, tanh, relu, leaky, elu, selu, gelu, identity; INIT in he,
/// xavier, lecun, orthogonal, small) and any `resnetN-plain|residual` with
/// N = 6n+2 is accepted, e.g. `mlp-tanh-bn-30x64-orthogonal` or `resnet56-residual`.
pub fn preset(name: &str) -> Result<ModelConfig, ModelError> {
    let unknown = || ModelError::UnknownPreset {
        name: name.to_owned(),
        known: PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
    };
    if let Some(rest) = name.strip_prefix("resnet") {
        let (layers, kind) = rest.split_once('-').ok_or_else(unknown)?;
        let layers: usize = layers.parse().map_err(|_| unknown())?;
        if layers < 8 || !(layers - 2).is_multiple_of(6) {
            return Err(unknown());
        }
        let n = (layers - 2) / 6;
        let skip = match kind {
            "plain" => false,
            "residual" => true,
            _ => return Err(unknown()),
        };
        return Ok(ModelConfig::Resnet(
            ResNetConfig::new().with_blocks(vec![n; 3]).with_skip(skip),
        ));
    }
    let mut tokens = name.strip_prefix("mlp-").ok_or_else(unknown)?.split('-').peekable();
    let mut activation = None;
    if let Some(t) = tokens.peek()
        && let Ok(a) = t.parse::<Activation>()
    {
        activation = Some(a);
        tokens.next();
    }
    let mut cfg = MlpConfig::new();
    if tokens.next_if_eq(&"bn").is_some() {
        cfg.norm = Norm::Batchnorm;
    }
    if tokens.next_if_eq(&"residual").is_some() {
        cfg.residual_every = Some(2);
    }
    let (depth, width) = tokens.next().and_then(|t| t.split_once('x')).ok_or_else(unknown)?;
    cfg.depth = depth.parse().map_err(|_| unknown())?;
    cfg.width = Width::Uniform(width.parse().map_err(|_| unknown())?);
    let activation = activation.unwrap_or(Activation::Relu);
    cfg.activation = activation;
    cfg.init = match tokens.next() {
        None => match activation {
            Activation::Sigmoid | Activation::Tanh | Activation::Identity => Init::XavierUniform { gain: 1.0 },
            Activation::Selu => Init::LecunNormal { gain: 1.0 },
            _ => Init::HeNormal { gain: None },
        },
        Some("he") => Init::HeNormal { gain: None },
        Some("xavier") => Init::XavierUniform { gain: 1.0 },
        Some("lecun") => Init::LecunNormal { gain: 1.0 },
        Some("orthogonal") => Init::Orthogonal {
            gain: activation.recommended_gain(),
        },
        Some("small") => Init::Normal { std: 0.01 },
        Some(_) => return Err(unknown()),
    };
    if tokens.next().is_some() || cfg.depth == 0 {
        return Err(unknown());
    }
    Ok(ModelConfig::Mlp(cfg))
}
