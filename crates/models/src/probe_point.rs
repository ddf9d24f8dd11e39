//! Named places in a network where the probe looks, and the machinery that
//! records them during a forward pass.
//!
//! A probed forward pass records, per probe point, the pre-activation and
//! post-activation tensors (flattened to `[batch, features]`) and passes the
//! point's output through [`capture`], an identity in the autodiff graph whose
//! backward step keeps `dL/dh` in the point's [`GradSlot`]. The forward values,
//! the loss and every parameter gradient are exactly those of the unprobed pass.

use burn::tensor::Tensor;

use crate::activation::Activation;
use crate::capture::{GradSlot, capture};

/// What kind of layer a probe point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointKind {
    /// A fully connected hidden layer `h = f(norm(W x + b))`.
    Dense,
    /// A convolution with its norm and activation.
    Conv,
    /// The last layer of a residual branch, before the skip is added.
    Branch,
    /// The output of a residual block, `x + F(x)` (then activated, in a ResNet).
    Block,
    /// The output logits.
    Head,
}

/// How a residual block's gradient can be split between skip and branch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockLinks {
    /// Index of the probe point whose output is the block's input.
    pub input: usize,
    /// Index of the branch's last probe point (its output is added to the skip).
    pub branch: usize,
    /// Whether the skip is the identity (so `dL/dx = dL/dsum + branch part`).
    pub identity_skip: bool,
}

/// A layer the probe looks at, in forward order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbePoint {
    /// Stable, readable name: `hidden.3`, `stage2.block1.conv2`, `head`.
    pub name: String,
    pub kind: PointKind,
    /// Position along the forward path, 0 nearest the input.
    pub depth: usize,
    /// The activation applied at this point, if any.
    pub activation: Option<Activation>,
    /// Burn module paths of the parameters that belong to this point.
    pub params: Vec<String>,
    /// Path of this point's main weight (the one whose gradient is compared across depth).
    pub weight: Option<String>,
    /// Per-example shape of the output (`[256]`, `[16, 28, 28]`).
    pub shape: Vec<usize>,
    /// Whether a BatchNorm sits in this point's layer (then a second tap sees its input).
    pub has_norm: bool,
    /// For block outputs: how to split the gradient between skip and branch.
    pub block: Option<BlockLinks>,
    /// Whether the point lies on the network's main path (not inside a residual
    /// branch). Depth profiles of the back-propagated signal use these points.
    pub main_path: bool,
}

impl ProbePoint {
    /// Number of features per example.
    pub fn features(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Gradient slots, one per probe point (plus one per BatchNorm input), that
/// hold `dL/dh` at those points after the probed pass's `backward`.
#[derive(Debug, Clone)]
pub struct Taps {
    /// Each point's output.
    pub out: Vec<GradSlot>,
    /// The input of each point's BatchNorm (`None` where it has none).
    pub norm_in: Vec<Option<GradSlot>>,
}

impl Taps {
    /// Empty slots for `points`. They can be reused from one step to the next:
    /// each backward pass refills them.
    pub fn new(points: &[ProbePoint]) -> Self {
        Self {
            out: points.iter().map(|_| GradSlot::default()).collect(),
            norm_in: points.iter().map(|p| p.has_norm.then(GradSlot::default)).collect(),
        }
    }
}

/// What a probed forward pass saw at one probe point, flattened to `[batch, features]`
/// and detached from autodiff (values only).
#[derive(Debug, Clone)]
pub struct Trace {
    /// The activation's input, kept only where the output does not tell the
    /// activation's derivative ([`Activation::reads_from_output`]): GELU, or an
    /// activation that a BatchNorm follows. Elsewhere the probe reads `f'`
    /// from `post` (as Burn's backward pass does for sigmoid and tanh), which
    /// spares holding a tensor per point until the probe has read it.
    pub pre: Option<Tensor<2>>,
    /// The point's output.
    pub post: Tensor<2>,
}

impl Trace {
    /// The trace of a point whose output is `post` (and whose activation's
    /// input is `pre`, where it is kept), without autodiff: traces are only
    /// read, never differentiated.
    pub fn of<const D: usize>(pre: Option<Tensor<D>>, post: &Tensor<D>) -> Self {
        Self {
            pre: pre.map(|pre| flatten(pre.inner())),
            post: flatten(post.clone().inner()),
        }
    }
}

/// Records probe points during a forward pass; a no-op when probing is off.
pub(crate) struct Recorder<'a> {
    taps: Option<&'a Taps>,
    traces: Option<Vec<Trace>>,
    next: usize,
}

impl<'a> Recorder<'a> {
    pub(crate) fn off() -> Self {
        Self {
            taps: None,
            traces: None,
            next: 0,
        }
    }

    pub(crate) fn on(taps: Option<&'a Taps>) -> Self {
        Self {
            taps,
            traces: Some(Vec::new()),
            next: 0,
        }
    }

    /// Captures `dL/dx` at the current point's BatchNorm input (if it has one).
    pub(crate) fn norm_input<const D: usize>(&mut self, x: Tensor<D>) -> Tensor<D> {
        match self.taps.and_then(|t| t.norm_in[self.next].as_ref()) {
            Some(slot) => capture(x, slot),
            None => x,
        }
    }

    /// Records the current point's output (and its activation's input, where
    /// given: see [`Trace::pre`]), captures `dL/dh` at its output, and moves
    /// on to the next point.
    pub(crate) fn point<const D: usize>(&mut self, pre: Option<Tensor<D>>, post: Tensor<D>) -> Tensor<D> {
        let i = self.next;
        self.next += 1;
        if let Some(traces) = self.traces.as_mut() {
            traces.push(Trace::of(pre, &post));
        }
        match self.taps.map(|t| &t.out[i]) {
            Some(slot) => capture(post, slot),
            None => post,
        }
    }

    /// [`Self::point`] for a point whose output is `act(a)`.
    pub(crate) fn activated<const D: usize>(&mut self, act: Activation, a: Tensor<D>) -> Tensor<D> {
        self.point(act.input_to_keep(&a), act.forward(a))
    }

    pub(crate) fn finish(self) -> Vec<Trace> {
        self.traces.unwrap_or_default()
    }
}

/// `t` as `[batch, features]`; a rank-2 tensor is passed on as it is (a
/// reshape through the dispatch layer costs a few microseconds, and a probed
/// MLP step makes dozens of them).
pub(crate) fn flatten<const D: usize>(t: Tensor<D>) -> Tensor<2> {
    if D == 2 {
        return Tensor::from_bridge(t.into_bridge());
    }
    let dims = t.dims();
    let batch = dims[0];
    let features = dims[1..].iter().product::<usize>();
    t.reshape([batch, features])
}

/// Output of a probed forward pass.
#[derive(Debug, Clone)]
pub struct Probed {
    pub logits: Tensor<2>,
    /// One per probe point, in order.
    pub traces: Vec<Trace>,
}
