//! Statistics over host memory: the probe's path on CPU backends, and on a
//! GPU while a step's tensors are small ([`crate::observer::Reductions`]).
//!
//! The tensors a probe step needs are read to the host together ([`Gather`]):
//! on flex, where the "device" is the host, each is borrowed in place (no
//! copy), on ndarray copied, both on the probe's own thread; elsewhere one
//! transaction reads them all, requested on the training thread and waited
//! for on the probe's own thread. Their statistics are then
//! taken by vectorised loops. The alternative, Burn reductions on the device
//! ([`crate::measure`]), costs about 40 small ops per layer: a full pass over
//! memory each on flex, a kernel launch each on a GPU.
//!
//! Accumulation: f32 lanes over blocks of [`BLOCK`] values, summed into f64, so
//! the error stays near f32 rounding of a block rather than growing with the
//! tensor's size. Most loops have the one shape LLVM reliably vectorises: one
//! accumulator array of [`LANES`] lanes fed by a branch-free function of each
//! value ([`lane_sum`], [`lane_sum2`]), one such loop per statistic over a
//! block (32 KiB, which stays in L1 for the next). Loops feeding two
//! accumulator arrays were left scalar by LLVM (3-10x slower); the interleaved
//! 16-lane chains of [`Moments::of`] and [`point_pass`] are the exceptions that
//! do vectorise.
//! Counts are accumulated as f32 or u32 lanes, exact at these block sizes.
//! Timings: `cargo bench --workspace --profile dev --bench fused`.
//! The kernels are compiled for each SIMD level (AVX-512, AVX2, ...) and
//! picked at run time ([`multiversion`]): AVX-512 is about 3x faster than the
//! baseline x86-64 build here, since the probe's inputs are in cache.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use burn::backend::flex::FlexTensor;
#[allow(deprecated)] // ndarray stays a supported `--backend` while Burn ships it.
use burn::backend::{Flex, NdArray};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, ExecutionError, Tensor, TensorData, Transaction, read_sync};
use gradscope_models::activation::{SELU_ALPHA, SELU_SCALE};
use gradscope_models::{Activation, Regime};
use multiversion::multiversion;

use crate::measure::{GradPrefix, HIST_BINS, HIST_LO, HIST_WIDTH, StepStats, StepView, VectorKind};

/// A float tensor's values on the host, read without copying where possible.
///
/// On flex a contiguous f32 tensor is borrowed in place: the view holds a
/// reference to the tensor's buffer (an `Arc`), so the tensor stays usable and
/// nothing is copied. Burn's own read back (`into_data`) copies whenever the
/// buffer is shared, and every tensor the probe reads is shared (gradients go
/// on to the optimiser, activations to the backward pass): copying them cost
/// the probe about half of its time on an 8x256 MLP. Other backends, and
/// strided or non-f32 flex tensors, get a copy.
///
/// While a view lives the buffer is shared, so flex writes to it only after
/// copying it (copy on write): reading a view on another thread is safe, and
/// holding a weight's view across the optimiser step costs that weight a copy.
pub enum HostValues {
    /// Borrowed from a flex tensor (contiguous, offset 0, f32, aligned).
    Flex(FlexTensor),
    /// Copied out through `into_data`.
    Copied(Vec<f32>),
}

impl Deref for HostValues {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            HostValues::Flex(t) => {
                let n = t.layout().num_elements();
                // Checked in `borrow`: contiguous from offset 0, f32, 4-byte aligned.
                &bytemuck::cast_slice(t.bytes())[..n]
            }
            HostValues::Copied(v) => v,
        }
    }
}

/// A tensor's values on the host (borrowed on flex, else copied; see [`HostValues`]).
pub fn host<const D: usize>(t: &Tensor<D>) -> HostValues {
    borrow(t).unwrap_or_else(|| HostValues::Copied(t.to_data().convert::<f32>().try_into_vec().expect("f32 tensor")))
}

/// The tensor's flex buffer, if it can be read in place.
fn borrow<const D: usize>(t: &Tensor<D>) -> Option<HostValues> {
    let flex = t.clone().try_into_primitive::<Flex>().ok()?;
    let n = flex.layout().num_elements();
    (flex.dtype() == DType::F32
        && flex.is_contiguous()
        && flex.layout().start_offset() == 0
        && bytemuck::try_cast_slice::<u8, f32>(flex.bytes()).is_ok_and(|v| v.len() >= n))
    .then_some(HostValues::Flex(flex))
}

/// The tensors one probe step reads, collected first and read together.
///
/// On the CPU backends (flex, ndarray) each tensor is read where the values
/// are needed ([`Transfer::finish`], on the probe's own thread): borrowed in
/// place on flex, copied on ndarray. The training thread only keeps a handle
/// to each tensor, whatever its rank: no reshape, no downcast, no copy there.
///
/// On any other backend they are read back in **one** transaction
/// ([`Transaction`]: one request for every buffer, no kernels), started on the
/// training thread, in the order of its work, and finished wherever the
/// values are needed, so the transfer overlaps the next step's work instead of
/// stalling the training loop until the device has drained its queue. (A read
/// back per tensor, each a synchronisation, cost ~15 ms per probed step on an
/// H100 for the ~40 tensors of an 8x256 MLP.)
pub struct Gather {
    reads: Reads,
    len: usize,
}

/// How a step's tensors reach the host: decided once per run from the
/// device they live on ([`Reading::of`]), not per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// CPU backends (flex, ndarray): each tensor read on the thread that
    /// takes the statistics.
    Local,
    /// Any other backend: one transaction for every tensor.
    Transaction,
}

impl Reading {
    /// How tensors on `t`'s device are read.
    #[allow(deprecated)] // ndarray stays a supported `--backend` while Burn ships it.
    pub fn of<const D: usize>(t: &Tensor<D>) -> Self {
        if t.clone().try_into_primitive::<Flex>().is_ok() || t.clone().try_into_primitive::<NdArray>().is_ok() {
            Reading::Local
        } else {
            Reading::Transaction
        }
    }
}

/// A tensor kept to be read later, on whichever thread finishes the transfer.
type LocalRead = Box<dyn FnOnce() -> HostValues + Send>;

enum Reads {
    Local(Vec<LocalRead>),
    Transaction(Transaction),
}

impl Gather {
    /// An empty gather for tensors read the way `reading` says.
    pub fn new(reading: Reading) -> Self {
        let reads = match reading {
            Reading::Local => Reads::Local(Vec::new()),
            Reading::Transaction => Reads::Transaction(Transaction::default()),
        };
        Self { reads, len: 0 }
    }

    /// Queues `t`; its values (flattened) will be at the returned index of
    /// [`Transfer::finish`].
    pub fn add<const D: usize>(&mut self, t: Tensor<D>) -> usize {
        match &mut self.reads {
            Reads::Local(local) => local.push(Box::new(move || host(&t))),
            Reads::Transaction(tx) => *tx = std::mem::take(tx).register(t),
        }
        self.len += 1;
        self.len - 1
    }

    /// Queues the gradient of parameter `id` (of rank `rank`), if it has one.
    pub fn add_grad(&mut self, grads: &GradientsParams, (id, rank): (ParamId, usize)) -> Option<usize> {
        match rank {
            1 => grads.get::<1>(id).map(|g| self.add(g)),
            2 => grads.get::<2>(id).map(|g| self.add(g)),
            3 => grads.get::<3>(id).map(|g| self.add(g)),
            4 => grads.get::<4>(id).map(|g| self.add(g)),
            _ => None,
        }
    }

    /// Queues the current values of the given parameters of `model`; the index
    /// of each, by position in `ids` (`None` where `ids` has none or the module lacks it).
    pub fn add_params<M: Module>(&mut self, model: &M, ids: &[Option<ParamId>]) -> Vec<Option<usize>> {
        struct Add<'a> {
            gather: &'a mut Gather,
            ids: &'a [Option<ParamId>],
            at: Vec<Option<usize>>,
        }
        impl ModuleVisitor for Add<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(i) = self.ids.iter().position(|id| *id == Some(param.id)) {
                    self.at[i] = Some(self.gather.add(param.val().inner()));
                }
            }
        }
        let mut add = Add {
            gather: self,
            ids,
            at: vec![None; ids.len()],
        };
        model.visit(&mut add);
        add.at
    }

    /// Starts reading every queued tensor: nothing to do on a CPU backend;
    /// elsewhere the transfer is requested here and waited for by
    /// [`Transfer::finish`].
    pub fn start(self) -> Transfer {
        let tx = match self.reads {
            Reads::Local(reads) => return Transfer::Local(reads),
            Reads::Transaction(tx) => tx,
        };
        let mut read: InFlight = Box::pin(tx.execute_async());
        // One poll issues the request (Burn's futures are lazy); a backend that
        // reads synchronously is done right here.
        match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(data) => Transfer::Done(host_values(data)),
            Poll::Pending => Transfer::InFlight(read),
        }
    }
}

type InFlight = Pin<Box<dyn Future<Output = Result<Vec<TensorData>, ExecutionError>> + Send>>;

/// A [`Gather`]'s values: to read on a CPU backend, ready, or in flight from the device.
pub enum Transfer {
    Local(Vec<LocalRead>),
    Done(Vec<HostValues>),
    InFlight(InFlight),
}

impl Transfer {
    /// The values, in the order they were added; reads them on a CPU backend,
    /// waits for a transfer in flight elsewhere.
    pub fn finish(self) -> Vec<HostValues> {
        match self {
            Transfer::Local(reads) => reads.into_iter().map(|read| read()).collect(),
            Transfer::Done(values) => values,
            Transfer::InFlight(read) => host_values(read_sync(read)),
        }
    }
}

fn host_values(data: Result<Vec<TensorData>, ExecutionError>) -> Vec<HostValues> {
    let data = data.unwrap_or_else(|e| panic!("the probe could not read its tensors back: {e:?}"));
    data.into_iter()
        .map(|d| {
            let v = d
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("probe tensors are float");
            HostValues::Copied(v)
        })
        .collect()
}

/// What [`HostJob::compute`] needs of a point, and where its tensors are among
/// the job's values.
struct At {
    activation: Option<Activation>,
    /// Identity-skip blocks: the points whose taps hold the block input's and
    /// the skip's gradients.
    skip: Option<(usize, usize)>,
    post: usize,
    /// Features per example of `post` (units, for dead-unit counts).
    features: usize,
    pre: Option<usize>,
    norm_in: Option<usize>,
    grads: [(Option<usize>, GradPrefix); 2],
    /// Update steps: the point's main weight before the optimiser step.
    before: Option<usize>,
}

/// A probe step read to the host: every tensor it needs ([`Gather`]: borrowed
/// in place on flex, else copied in one transfer) and where each one is.
///
/// Reads start on the training thread ([`Self::collect`],
/// [`Self::weights_after`]); the statistics ([`Self::compute`]) wait for them
/// and need nothing else, so they can be taken on another thread while
/// training goes on. The borrowed buffers stay valid meanwhile: flex writes in
/// place only into buffers nobody else holds and copies the rest.
pub struct HostJob {
    read: Transfer,
    loss: Option<usize>,
    /// Each tap is read once even when two points use it (skip shares).
    taps: Vec<Option<usize>>,
    at: Vec<At>,
    update: bool,
    /// The points' main weights after the optimiser step, and where each
    /// point's is among the read's values.
    after: Option<(Transfer, Vec<Option<usize>>)>,
    reading: Reading,
}

impl HostJob {
    /// Reads what `view` needs; on update steps (`before`: the model before the
    /// optimiser step, and each point's main weight id) also those weights.
    pub fn collect<M: Module>(view: &StepView<'_>, reading: Reading, before: Option<(&M, &[Option<ParamId>])>) -> Self {
        let mut gather = Gather::new(reading);
        let before = before.map_or_else(
            || vec![None; view.points.len()],
            |(model, ids)| gather.add_params(model, ids),
        );
        let loss = view.loss.clone().map(|l| gather.add(l));
        let taps: Vec<Option<usize>> = view.taps.out.iter().map(|t| t.clone().map(|t| gather.add(t))).collect();
        let at: Vec<At> = (0..view.points.len())
            .map(|i| {
                let mut grad = |id: Option<(ParamId, usize)>| id.and_then(|id| gather.add_grad(view.grads, id));
                let grads = [
                    (grad(view.weight[i]), GradPrefix::Weight),
                    (grad(view.bias[i]), GradPrefix::Bias),
                ];
                let p = &view.points[i];
                let trace = view.traces[i]
                    .as_ref()
                    .expect("the host path reads probe points that were traced");
                At {
                    activation: p.activation,
                    skip: p
                        .block
                        .as_ref()
                        .filter(|b| b.identity_skip)
                        .map(|b| (b.input, b.branch)),
                    post: gather.add(trace.post.clone()),
                    features: trace.post.dims()[1],
                    // The activation's input: read only where there is an activation.
                    pre: p.activation.and(trace.pre.clone()).map(|t| gather.add(t)),
                    norm_in: view.taps.norm_in[i].clone().map(|g| gather.add(g)),
                    grads,
                    before: before[i],
                }
            })
            .collect();
        Self {
            read: gather.start(),
            loss,
            taps,
            at,
            update: view.update,
            after: None,
            reading,
        }
    }

    /// Reads the points' main weights after the optimiser step: their norms,
    /// and where [`Self::collect`] read them before the step, the update's
    /// size. (The probe does this on update steps only.) Read after the step,
    /// not before, because a weight held across the step is copied rather than
    /// updated in place.
    pub fn weights_after<M: Module>(&mut self, model: &M, ids: &[Option<ParamId>]) {
        let mut gather = Gather::new(self.reading);
        let at = gather.add_params(model, ids);
        self.after = Some((gather.start(), at));
    }

    /// Every statistic of the step, each tensor read once (see
    /// [`crate::measure::device_step`] for the same metrics as device reductions).
    ///
    /// `off_thread`: computed on a thread other than the training thread,
    /// which then leaves no copy of the tensors' cache lines in its core's
    /// cache before letting go of them ([`crate::cache`]); on the training
    /// thread itself that would only evict its own working set.
    pub fn compute(self, off_thread: bool) -> StepStats {
        let mut out = StepStats::default();
        let values = &self.read.finish();
        let after: Vec<Option<HostValues>> = match self.after {
            Some((read, at)) => {
                let mut values: Vec<Option<HostValues>> = read.finish().into_iter().map(Some).collect();
                at.into_iter().map(|k| k.and_then(|k| values[k].take())).collect()
            }
            None => Vec::new(),
        };
        if let Some(loss) = self.loss {
            out.values.push((None, "loss", values[loss][0] as f64));
        }
        for (i, at) in self.at.iter().enumerate() {
            let g = self.taps[i].map(|k| &*values[k]);
            let pre = at.pre.map(|k| &*values[k]);
            point_stats(i, at.activation, &values[at.post], at.features, pre, g, &mut out);
            let mut push = |name: &'static str, v: f64| out.values.push((Some(i), name, v));
            if let Some(k) = at.norm_in {
                push("bn_in_signal_l2", l2(&values[k]));
            }
            for &(k, prefix) in &at.grads {
                let Some(g) = k.map(|k| &values[k]) else { continue };
                let m = Moments::of(g);
                let [l2_name, max_name, zero_name, nonfinite_name] = prefix.names();
                push(l2_name, m.l2());
                push(max_name, m.max_abs_or_nan());
                push(zero_name, m.zero_frac());
                push(nonfinite_name, m.nonfinite as f64);
                if matches!(prefix, GradPrefix::Weight) {
                    push("weight_numel", g.len() as f64);
                    if self.update {
                        let counts = log_histogram(g).into_iter().map(|c| c as f32).collect();
                        out.vectors.push((i, VectorKind::Histogram, counts));
                    }
                }
            }
            if let Some(after) = after.get(i).and_then(Option::as_ref) {
                match at.before.map(|k| &values[k]) {
                    // The norm comes out of the same pass as the update's size.
                    Some(before) => {
                        let (update, weight) = diff_l2(before, after);
                        push("weight_l2", weight);
                        push("update_l2", update);
                        push("weight_before_l2", l2(before));
                    }
                    None => push("weight_l2", l2(after)),
                }
            }
            if let Some((input, branch)) = at.skip
                && let (Some(total), Some(skip)) = (self.taps[input], self.taps[branch])
            {
                // ||total - skip|| is the branch's part; ||skip|| comes out of the same pass.
                let (b, s) = diff_l2(&values[total], &values[skip]);
                push("skip_share", s / (s + b + 1e-30));
            }
        }
        if off_thread && self.reading == Reading::Local {
            // The tensors were read where the training thread keeps them:
            // leave no copy of their lines in this core's cache before letting
            // them go (`values` and `after` are dropped on return).
            crate::cache::release_lines();
        }
        out
    }
}

/// The statistics of probe point `i` that its output `post`, its activation's
/// input `pre` (where the trace kept it) and `g = dL/dh` give: the signal, its
/// part below the activation, the activation's regime and moments, and for
/// ReLU each unit's max |y| (dead units), from one pass ([`point_pass`]).
fn point_stats(
    i: usize,
    act: Option<Activation>,
    post: &[f32],
    features: usize,
    pre: Option<&[f32]>,
    g: Option<&[f32]>,
    out: &mut StepStats,
) {
    let threshold = act.map_or(0.0, |a| (0.01 * a.max_derivative()) as f32);
    let (pass, known) = point_pass(post, pre, g, act, threshold);
    let n = pass.n.max(1) as f64;
    let mut push = |name: &'static str, v: f64| out.values.push((Some(i), name, v));
    if g.is_some() {
        let norm = pass.signal_sq.sqrt();
        push("signal_l2", norm);
        push("signal_rms", norm / n.sqrt());
    }
    if let Some(act) = act.filter(|_| known) {
        if g.is_some() {
            push("preact_signal_l2", pass.through_sq.sqrt());
        }
        let share = pass.in_regime as f64 / n;
        match act.regime() {
            Regime::Saturating => push("saturated_frac", share),
            Regime::LeakyNegative => push("negative_frac", share),
            // `dead_frac` is derived from the units' vector when the record is written.
            Regime::Rectifying => {
                push("zero_frac", share);
                out.vectors
                    .push((i, VectorKind::UnitMaxAbs, unit_max_abs(post, features)));
            }
            Regime::Linear => {}
        }
    }
    push("act_mean", pass.mean());
    push("act_std", pass.std());
}

/// Values per block whose partial sums are carried in f32.
pub const BLOCK: usize = 8192;
/// f32 lanes per accumulator array: four AVX-512 registers, so that four
/// independent add chains hide the adder's latency (one register measured 3x slower).
const LANES: usize = 64;

/// First and second moments and the counts the probe needs, from one pass.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Moments {
    pub n: usize,
    pub sum: f64,
    pub sum_sq: f64,
    /// Largest |x|, NaN ignored (it is counted in `nonfinite`).
    pub max_abs: f32,
    pub zeros: usize,
    pub nonfinite: usize,
}

impl Moments {
    /// Moments of `x` in one pass.
    pub fn of(x: &[f32]) -> Self {
        moments(x)
    }

    pub fn l2(&self) -> f64 {
        self.sum_sq.sqrt()
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    pub fn zero_frac(&self) -> f64 {
        self.zeros as f64 / self.n.max(1) as f64
    }

    /// `max_abs`, or NaN when a NaN was seen (non-finite values that are not
    /// infinite), as a device-side `abs().max()` reports it.
    pub fn max_abs_or_nan(&self) -> f64 {
        if self.nonfinite > 0 && self.max_abs.is_finite() {
            f64::NAN
        } else {
            self.max_abs as f64
        }
    }
}

/// [`Moments::of`], compiled for each SIMD level and picked at run time.
#[multiversion(targets = "simd")]
fn moments(x: &[f32]) -> Moments {
    let mut m = Moments {
        n: x.len(),
        ..Moments::default()
    };
    // The exception to one accumulator per loop: five interleaved chains of 16
    // lanes vectorise here, and beat five passes of `lane_sum` by 2x.
    const L: usize = 16;
    for block in x.chunks(BLOCK) {
        let (mut sum, mut sq, mut max) = ([0f32; L], [0f32; L], [0f32; L]);
        let (mut zeros, mut bad) = ([0u32; L], [0u32; L]);
        let (body, tail) = block.as_chunks::<L>();
        for c in body {
            for l in 0..L {
                let v = c[l];
                sum[l] += v;
                sq[l] += v * v;
                max[l] = max[l].max(v.abs());
                zeros[l] = zeros[l].wrapping_add((v == 0.0) as u32);
                bad[l] = bad[l].wrapping_add((!v.is_finite()) as u32);
            }
        }
        for &v in tail {
            sum[0] += v;
            sq[0] += v * v;
            max[0] = max[0].max(v.abs());
            zeros[0] = zeros[0].wrapping_add((v == 0.0) as u32);
            bad[0] = bad[0].wrapping_add((!v.is_finite()) as u32);
        }
        m.sum += sum.iter().map(|&s| s as f64).sum::<f64>();
        m.sum_sq += sq.iter().map(|&s| s as f64).sum::<f64>();
        m.max_abs = max.iter().fold(m.max_abs, |a, &b| a.max(b));
        m.zeros += zeros.iter().sum::<u32>() as usize;
        m.nonfinite += bad.iter().sum::<u32>() as usize;
    }
    m
}

/// `Σ f(v)` over `x` in [`LANES`] f32 lanes, summed into f64 at the end: the
/// loop shape that vectorises. Call it on blocks of at most [`BLOCK`] values.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let (body, tail) = x.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for c in body {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    let tail: f32 = tail.iter().map(|&v| f(v)).sum();
    acc.iter().map(|&s| s as f64).sum::<f64>() + tail as f64
}

/// [`lane_sum`] of `f(a, b)` over two slices of the same length.
#[inline(always)]
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let ((xa, ta), (xb, tb)) = (a.as_chunks::<LANES>(), b.as_chunks::<LANES>());
    let mut acc = [0f32; LANES];
    for (x, y) in xa.iter().zip(xb) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(&x, &y)| f(x, y)).sum();
    acc.iter().map(|&s| s as f64).sum::<f64>() + tail as f64
}

/// `||x||_2`, the one statistic of a back-propagated signal or a weight that the
/// probe needs every step.
#[multiversion(targets = "simd")]
pub fn l2(x: &[f32]) -> f64 {
    x.chunks(BLOCK).map(|b| lane_sum(b, |v| v * v)).sum::<f64>().sqrt()
}

/// `e^x` for f32 in plain arithmetic (so it vectorises, unlike libm's `expf`):
/// `x = n ln2 + r` with |r| <= ln2/2, a degree-6 polynomial for `e^r`, and `2^n`
/// built in the exponent bits. Relative error below 2e-7 on [-87, 88]; clamped
/// outside, where f32 under- or overflows anyway.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    // Round to nearest by adding 1.5 * 2^23: plain arithmetic, where
    // `f32::round` would be a libm call per element. The sum's low mantissa
    // bits then hold n itself, so 2^n is built from integer bits: a float to
    // int `as` cast (saturating in Rust) would not vectorise.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // Cody-Waite split of ln 2 keeps r accurate.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127).wrapping_shl(23))
}

/// `(||a - b||_2, ||b||_2)` in one pass: the size of an update from `a` to `b`
/// and the norm of the weights it led to; also the part of a gradient not on
/// the skip path.
#[multiversion(targets = "simd")]
pub fn diff_l2(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "diff_l2 of tensors of different sizes");
    let (mut diff, mut norm) = (0f64, 0f64);
    for (ca, cb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        diff += lane_sum2(ca, cb, |x, y| (x - y) * (x - y));
        norm += lane_sum(cb, |y| y * y);
    }
    (diff.sqrt(), norm.sqrt())
}

/// What one pass over a probe point's output `y`, its activation's input `x`
/// and `g = dL/dy` gives ([`point_pass`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PointPass {
    pub n: usize,
    /// `c`, a value near the mean (that of the first values) about which the
    /// deviations are summed: the one-pass variance about 0 loses everything
    /// to cancellation where |mean| >> std, as for sigmoid outputs.
    pub shift: f64,
    /// `Σ (y - c)`.
    pub dev: f64,
    /// `Σ (y - c)²`.
    pub dev_sq: f64,
    /// `Σ g²`.
    pub signal_sq: f64,
    /// `Σ (f'(x) g)²`: the signal below the activation.
    pub through_sq: f64,
    /// Values in the activation's regime ([`Regime`]): saturated (`f'(x)`
    /// below the threshold) for sigmoid and tanh, exactly zero (`y = 0`) for
    /// ReLU, negative (`x < 0`) for the leaky ones; none for the identity.
    pub in_regime: usize,
}

impl PointPass {
    pub fn mean(&self) -> f64 {
        self.shift + self.dev / self.n.max(1) as f64
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        let n = self.n.max(1) as f64;
        (self.dev_sq / n - (self.dev / n).powi(2)).max(0.0).sqrt()
    }
}

/// A probe point's [`PointPass`], with `f'` read from the activation's input
/// `pre` where the trace kept it, else from the output `post`. The flag says
/// whether `f'` was known: not for a point without an activation, nor for
/// GELU without its input (the pass then runs as for the identity). Without
/// `g` the signal's sums are 0.
pub fn point_pass(
    post: &[f32],
    pre: Option<&[f32]>,
    g: Option<&[f32]>,
    act: Option<Activation>,
    threshold: f32,
) -> (PointPass, bool) {
    let head = &post[..post.len().min(16)];
    let shift = head.iter().sum::<f32>() / head.len().max(1) as f32;
    match (act, pre) {
        (Some(act), Some(pre)) => (from_input(pre, post, g, act, threshold, shift), true),
        (Some(act), None) if act.reads_from_output() => (from_output(post, g, act, threshold, shift), true),
        _ => (from_output(post, g, Activation::Identity, threshold, shift), false),
    }
}

/// SELU's constants at the passes' precision.
const SELU_ALPHA32: f32 = SELU_ALPHA as f32;
const SELU_SCALE32: f32 = SELU_SCALE as f32;

/// [`point_pass`] with `f'` at the activation's input, written out branch-free
/// with [`exp_fast`] so that the pass vectorises (tested against
/// [`Activation::derivative_at`], the reference); GELU, which needs `erf`, uses
/// the reference per value.
#[multiversion(targets = "simd")]
fn from_input(pre: &[f32], post: &[f32], g: Option<&[f32]>, act: Activation, threshold: f32, shift: f32) -> PointPass {
    macro_rules! kernel {
        ($d:expr, $count:expr) => {
            point_kernel(pre, post, g, shift, $d, $count)
        };
    }
    let saturated = |_, _, d: f32| d < threshold;
    match act {
        Activation::Sigmoid => kernel!(
            |a| {
                let s = 1.0 / (1.0 + exp_fast(-a));
                s * (1.0 - s)
            },
            saturated
        ),
        Activation::Tanh => kernel!(
            |a| {
                // tanh(a) = 1 - 2 / (e^(2a) + 1); tanh' = 1 - tanh^2.
                let t = 1.0 - 2.0 / (exp_fast(2.0 * a) + 1.0);
                1.0 - t * t
            },
            saturated
        ),
        Activation::Relu => kernel!(|a| if a > 0.0 { 1.0 } else { 0.0 }, dead),
        Activation::LeakyRelu { slope } => {
            let slope = slope as f32;
            kernel!(|a| if a > 0.0 { 1.0 } else { slope }, negative)
        }
        Activation::Elu { alpha } => {
            let alpha = alpha as f32;
            kernel!(|a| if a > 0.0 { 1.0 } else { alpha * exp_fast(a) }, negative)
        }
        Activation::Selu => kernel!(
            |a| SELU_SCALE32 * if a > 0.0 { 1.0 } else { SELU_ALPHA32 * exp_fast(a) },
            negative
        ),
        Activation::Identity => kernel!(|_| 1.0, |_, _, _| false),
        Activation::Gelu => kernel!(|a| act.derivative_at(a), negative),
    }
}

/// [`point_pass`] with `f'` read from the output `post`
/// ([`Activation::derivative_at_output`], the reference): `y (1 - y)` for
/// sigmoid, as Burn's backward pass computes it, with no exponential to take.
/// Call it only where [`Activation::reads_from_output`]; the output then has
/// the input's sign, so negative values are counted on it.
#[multiversion(targets = "simd")]
fn from_output(post: &[f32], g: Option<&[f32]>, act: Activation, threshold: f32, shift: f32) -> PointPass {
    macro_rules! kernel {
        ($d:expr, $count:expr) => {
            point_kernel(post, post, g, shift, $d, $count)
        };
    }
    let pos = |y: f32, neg: f32| if y > 0.0 { 1.0 } else { neg };
    let saturated = |_, _, d: f32| d < threshold;
    match act {
        Activation::Sigmoid => kernel!(|y| y * (1.0 - y), saturated),
        Activation::Tanh => kernel!(|y| 1.0 - y * y, saturated),
        Activation::Relu => kernel!(|y| pos(y, 0.0), dead),
        Activation::LeakyRelu { slope } => {
            let slope = slope as f32;
            kernel!(|y| pos(y, slope), negative)
        }
        Activation::Elu { alpha } => {
            let alpha = alpha as f32;
            kernel!(|y| pos(y, y + alpha), negative)
        }
        Activation::Selu => kernel!(
            |y| if y > 0.0 {
                SELU_SCALE32
            } else {
                y + SELU_SCALE32 * SELU_ALPHA32
            },
            negative
        ),
        Activation::Identity => kernel!(|_| 1.0, |_, _, _| false),
        Activation::Gelu => unreachable!("GELU's output does not tell its derivative"),
    }
}

/// [`point_kernel`]'s regime test for ReLU: the unit is dead (`y = 0`).
fn dead(_: f32, y: f32, _: f32) -> bool {
    y == 0.0
}

/// [`point_kernel`]'s regime test for the leaky activations: `x < 0`.
fn negative(x: f32, _: f32, _: f32) -> bool {
    x < 0.0
}

/// The pass behind [`point_pass`] for a derivative `d` of `x` and the regime
/// test `count(x, y, d)`: five interleaved chains of 16 lanes (the shape
/// [`Moments::of`] showed LLVM vectorises). As separate passes over the
/// output, the signal and the derivative, the same statistics of a 128x256
/// point took 27 us against 5.4 us (`cargo bench --bench fused`).
#[inline(always)]
fn point_kernel(
    x: &[f32],
    y: &[f32],
    g: Option<&[f32]>,
    shift: f32,
    d: impl Fn(f32) -> f32,
    count: impl Fn(f32, f32, f32) -> bool,
) -> PointPass {
    const L: usize = 16;
    assert_eq!(x.len(), y.len(), "activation input and output of different sizes");
    // Without a signal the pass reads `y` in its place and drops those sums.
    let (g, signal) = match g {
        Some(g) => (g, 1.0),
        None => (y, 0.0),
    };
    assert_eq!(y.len(), g.len(), "activation and signal of different sizes");
    let mut p = PointPass {
        n: y.len(),
        shift: shift as f64,
        ..PointPass::default()
    };
    for ((xb, yb), gb) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).zip(g.chunks(BLOCK)) {
        let (mut dev, mut dev_sq, mut gsq, mut tsq) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
        let mut counted = [0u32; L];
        let mut add = |l: usize, a: f32, v: f32, q: f32| {
            let da = d(a);
            let e = v - shift;
            dev[l] += e;
            dev_sq[l] += e * e;
            gsq[l] += q * q;
            tsq[l] += (da * q) * (da * q);
            counted[l] = counted[l].wrapping_add(count(a, v, da) as u32);
        };
        let ((xc, xt), (yc, yt), (gc, gt)) = (xb.as_chunks::<L>(), yb.as_chunks::<L>(), gb.as_chunks::<L>());
        for ((cx, cy), cg) in xc.iter().zip(yc).zip(gc) {
            for l in 0..L {
                add(l, cx[l], cy[l], cg[l]);
            }
        }
        for ((&a, &v), &q) in xt.iter().zip(yt).zip(gt) {
            add(0, a, v, q);
        }
        let wide = |a: [f32; L]| a.iter().map(|&s| s as f64).sum::<f64>();
        p.dev += wide(dev);
        p.dev_sq += wide(dev_sq);
        p.signal_sq += signal * wide(gsq);
        p.through_sq += signal * wide(tsq);
        p.in_regime += counted.iter().sum::<u32>() as usize;
    }
    p
}

/// Per-unit max |x| over the batch of a row-major `[batch, features]` buffer:
/// a unit is dead on this batch when its value is 0.
#[multiversion(targets = "simd")]
pub fn unit_max_abs(x: &[f32], features: usize) -> Vec<f32> {
    let mut out = vec![0f32; features];
    for row in x.chunks_exact(features) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = o.max(v.abs());
        }
    }
    out
}

/// Where |x| falls among the histogram's bins, looked up by the top 16 bits of
/// its float (the sign cleared: 8 exponent and 7 mantissa bits). Each entry
/// holds the bin of the smallest float with those bits, and in its top bit
/// whether a bin edge falls inside the entry's range (it spans 2^-7 of a
/// binade, 0.0034 decades, so at most one edge): then one comparison with
/// that edge decides.
struct BinTable {
    entry: Vec<u8>,
    /// The bins' edges, `edges[i]` the lower edge of bin `i`.
    edges: [f32; HIST_BINS + 1],
}

const STRADDLES: u8 = 0x80;

impl BinTable {
    fn get() -> &'static BinTable {
        static TABLE: std::sync::OnceLock<BinTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| {
            let edges: [f32; HIST_BINS + 1] =
                std::array::from_fn(|i| 10f64.powf(HIST_LO + i as f64 * HIST_WIDTH) as f32);
            // Values below the first inner edge fall in bin 0, above the last in the last bin.
            let exact = |a: f32| edges[1..HIST_BINS].iter().take_while(|&&e| a >= e).count();
            let entry = (0u32..1 << 15)
                .map(|k| {
                    let (lo, hi) = (f32::from_bits(k << 16), f32::from_bits((k << 16) | 0xffff));
                    if lo.is_nan() || lo.is_infinite() {
                        // Infinity falls in the last bin; NaN is sorted out by the caller.
                        return (HIST_BINS - 1) as u8;
                    }
                    let (a, b) = (exact(lo), exact(hi));
                    debug_assert!(b - a <= 1, "a bin narrower than a table entry");
                    a as u8 | if b > a { STRADDLES } else { 0 }
                })
                .collect();
            BinTable { entry, edges }
        })
    }
}

/// Counts of |x| per log10 bin, as [`crate::measure::log_histogram`]: `HIST_BINS`
/// bins of `HIST_WIDTH` decades from 1e`HIST_LO` (values outside fall in the end
/// bins), then the exact zeros. NaN falls in no bin.
///
/// No logarithm per value: a table lookup on the float's top bits, exact at
/// every edge (see [`BinTable`]). Four interleaved sets of counters keep
/// increments of neighbouring values (gradients cluster in a few bins) from
/// waiting on each other.
#[multiversion(targets = "simd")]
pub fn log_histogram(x: &[f32]) -> Vec<f64> {
    let table = BinTable::get();
    // Slots: the bins, then exact zeros, then NaN (discarded).
    const ZERO: usize = HIST_BINS;
    const NAN: usize = HIST_BINS + 1;
    let slot = |v: f32| {
        let bits = v.to_bits() & 0x7fff_ffff;
        let e = table.entry[(bits >> 16) as usize];
        let bin = (e & !STRADDLES) as usize;
        let up = (e & STRADDLES != 0) & (f32::from_bits(bits) >= table.edges[(bin + 1).min(HIST_BINS)]);
        if bits == 0 {
            ZERO
        } else if bits > 0x7f80_0000 {
            NAN
        } else {
            bin + up as usize
        }
    };
    let mut counts = [[0u64; HIST_BINS + 2]; 4];
    let (quads, tail) = x.as_chunks::<4>();
    for q in quads {
        for (c, &v) in counts.iter_mut().zip(q) {
            c[slot(v)] += 1;
        }
    }
    for &v in tail {
        counts[0][slot(v)] += 1;
    }
    (0..=HIST_BINS)
        .map(|i| counts.iter().map(|c| c[i]).sum::<u64>() as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(x: &[f32]) -> (f64, f64, f32, usize, usize) {
        let sum = x.iter().map(|&v| v as f64).sum();
        let sq = x.iter().map(|&v| (v as f64).powi(2)).sum();
        let max = x.iter().filter(|v| !v.is_nan()).fold(0f32, |a, &b| a.max(b.abs()));
        let zeros = x.iter().filter(|&&v| v == 0.0).count();
        let bad = x.iter().filter(|v| !v.is_finite()).count();
        (sum, sq, max, zeros, bad)
    }

    proptest! {
        #[test]
        fn moments_match_a_naive_f64_pass(x in prop::collection::vec(-1e3f32..1e3, 0..5000)) {
            let m = Moments::of(&x);
            let (sum, sq, max, zeros, bad) = naive(&x);
            let scale = x.iter().map(|&v| (v as f64).abs()).sum::<f64>().max(1.0);
            prop_assert!((m.sum - sum).abs() <= 1e-5 * scale, "{} vs {}", m.sum, sum);
            prop_assert!((m.sum_sq - sq).abs() <= 1e-5 * sq.max(1.0), "{} vs {}", m.sum_sq, sq);
            prop_assert_eq!(m.max_abs, max);
            prop_assert_eq!((m.zeros, m.nonfinite, m.n), (zeros, bad, x.len()));
        }

        #[test]
        fn diff_and_std_match_naive(x in prop::collection::vec(-10f32..10.0, 1..3000)) {
            let y: Vec<f32> = x.iter().map(|v| v * 0.5 + 1.0).collect();
            let want = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
            let (diff, norm) = diff_l2(&x, &y);
            prop_assert!((diff - want).abs() <= 1e-5 * want.max(1.0));
            let want = y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            prop_assert!((norm - want).abs() <= 1e-5 * want.max(1.0));
        }

        #[test]
        fn point_moments_match_naive(x in prop::collection::vec(-10f32..10.0, 1..3000), offset in -1e3f32..1e3) {
            // Shifted as far as +-1000 from 0: the deviations' sums keep the spread.
            let x: Vec<f32> = x.iter().map(|v| v + offset).collect();
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
            let (p, _) = point_pass(&x, None, None, None, 0.0);
            prop_assert!((p.mean() - mean).abs() <= 1e-6 * mean.abs().max(1.0), "{} vs {mean}", p.mean());
            prop_assert!((p.std() - var.sqrt()).abs() <= 1e-4 * var.sqrt().max(1e-3), "{} vs {}", p.std(), var.sqrt());
        }
    }

    #[test]
    fn exp_fast_is_accurate_over_the_f32_range() {
        let mut worst = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp_fast(x) as f64 - want) / want).abs());
        }
        assert!(worst < 2e-6, "worst relative error {worst}");
        assert_eq!(exp_fast(-1000.0), exp_fast(-87.0));
        assert!(exp_fast(1000.0).is_finite());
    }

    #[test]
    fn counts_special_values() {
        let x = [0.0, -0.0, f32::NAN, f32::INFINITY, -2.0, 3.0];
        let m = Moments::of(&x);
        assert_eq!((m.zeros, m.nonfinite), (2, 2));
        assert_eq!(m.max_abs, f32::INFINITY);
        let nan_only = Moments::of(&[1.0, f32::NAN]);
        assert_eq!(nan_only.max_abs, 1.0);
        assert!(nan_only.max_abs_or_nan().is_nan());
        let leaky = Some(Activation::LeakyRelu { slope: 0.01 });
        let (p, _) = point_pass(&x, None, None, leaky, 0.0);
        assert_eq!(p.in_regime, 1, "-0.0 is not below zero; NaN compares false");
    }

    #[test]
    fn std_survives_a_large_mean() {
        // Sigmoid outputs: mean 0.5, spread 1e-4. The one-pass formula returns ~0 or NaN.
        let x: Vec<f32> = (0..4096).map(|i| 0.5 + if i % 2 == 0 { 1e-4 } else { -1e-4 }).collect();
        let (p, _) = point_pass(&x, None, None, Some(Activation::Sigmoid), 0.0);
        assert!((p.std() - 1e-4).abs() < 1e-6, "{}", p.std());
        assert!((p.mean() - 0.5).abs() < 1e-7, "{}", p.mean());
    }

    #[test]
    fn unit_max_finds_dead_columns() {
        // 3 samples x 4 units; unit 2 is zero for every sample.
        let x = [1.0, -2.0, 0.0, 0.0, 0.5, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, -1.0];
        assert_eq!(unit_max_abs(&x, 4), vec![1.0, 2.0, 0.0, 3.0]);
    }

    /// One of each activation, for the derivative passes.
    const EVERY_ACTIVATION: [Activation; 8] = [
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.01 },
        Activation::Elu { alpha: 1.0 },
        Activation::Selu,
        Activation::Gelu,
        Activation::Identity,
    ];

    /// 3001 inputs evenly spread over +-1500/`per_unit`, and a signal cycling over seven values.
    fn inputs_and_signal(per_unit: f32) -> (Vec<f32>, Vec<f32>) {
        let x = (0..3001).map(|i| (i as f32 - 1500.0) / per_unit).collect();
        let g = (0..3001).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
        (x, g)
    }

    #[test]
    fn point_pass_counts_and_weights() {
        let (pre, post, g) = ([-10.0, 0.0, 10.0], [0.0, 0.0, 10.0], [1.0, 2.0, 3.0]);
        let relu = Some(Activation::Relu);
        let (p, known) = point_pass(&post, Some(&pre), Some(&g), relu, 0.01);
        assert!(known);
        assert_eq!((p.n, p.in_regime), (3, 2), "two dead values");
        assert_eq!((p.signal_sq, p.through_sq), (14.0, 9.0));
        assert!((p.mean() - 10.0 / 3.0).abs() < 1e-6 && (p.std() - 200f64.sqrt() / 3.0).abs() < 1e-6);
        let tanh = Some(Activation::Tanh);
        assert_eq!(
            point_pass(&post, Some(&pre), Some(&g), tanh, 0.01).0.in_regime,
            2,
            "two saturated"
        );
        let leaky = Some(Activation::LeakyRelu { slope: 0.1 });
        assert_eq!(
            point_pass(&post, Some(&pre), Some(&g), leaky, 0.01).0.in_regime,
            1,
            "one negative"
        );
        // Without a signal its sums are 0; without an activation nothing tells `f'`.
        let (p, _) = point_pass(&post, Some(&pre), None, relu, 0.01);
        assert_eq!((p.signal_sq, p.through_sq, p.in_regime), (0.0, 0.0, 2));
        assert!(!point_pass(&post, None, Some(&g), None, 0.0).1);
        assert!(!point_pass(&post, None, Some(&g), Some(Activation::Gelu), 0.0).1);
        // The vectorised derivatives at the input against the scalar reference.
        let (pre, g) = inputs_and_signal(100.0);
        for act in EVERY_ACTIVATION {
            let t = (0.01 * act.max_derivative()) as f32;
            let (fast, _) = point_pass(&pre, Some(&pre), Some(&g), Some(act), t);
            let reference = point_kernel(
                &pre,
                &pre,
                Some(&g),
                fast.shift as f32,
                |a| act.derivative_at(a),
                |_, _, _| false,
            );
            assert!(
                (fast.through_sq - reference.through_sq).abs() <= 2e-5 * reference.through_sq,
                "{act}: {fast:?} vs {reference:?}"
            );
            assert_eq!(
                (fast.signal_sq, fast.dev, fast.dev_sq),
                (reference.signal_sq, reference.dev, reference.dev_sq)
            );
            if act.regime() == Regime::Saturating {
                let saturated = pre.iter().filter(|&&a| act.derivative_at(a) < t).count();
                assert!(
                    fast.in_regime.abs_diff(saturated) <= 2,
                    "{act}: {fast:?} vs {saturated}"
                );
            }
        }
    }

    /// Read from the output, the pass agrees with its scalar reference exactly
    /// (same arithmetic) and with the pass over the input to f32 rounding; the
    /// output has the input's sign where it tells `f'`.
    #[test]
    fn point_pass_reads_the_output() {
        let (pre, g) = inputs_and_signal(200.0);
        for act in EVERY_ACTIVATION.into_iter().filter(|a| *a != Activation::Gelu) {
            let x = Tensor::<1>::from_data(TensorData::new(pre.clone(), [pre.len()]), &burn::tensor::Device::flex());
            let post: Vec<f32> = act.forward(x).to_data().try_to_vec().unwrap();
            let t = (0.01 * act.max_derivative()) as f32;
            let (fast, known) = point_pass(&post, None, Some(&g), Some(act), t);
            assert!(known, "{act} reads from its output");
            let d = |y| act.derivative_at_output(y).unwrap();
            let reference = point_kernel(&post, &post, Some(&g), fast.shift as f32, d, |_, _, _| false);
            assert_eq!(fast.through_sq, reference.through_sq, "{act}");
            let (at_input, _) = point_pass(&post, Some(&pre), Some(&g), Some(act), t);
            assert!(
                (fast.through_sq - at_input.through_sq).abs() <= 2e-4 * at_input.through_sq,
                "{act}: {fast:?} vs {at_input:?}"
            );
            // Saturated, dead and negative values alike, from either side.
            assert!(
                fast.in_regime.abs_diff(at_input.in_regime) <= 2,
                "{act}: {fast:?} vs {at_input:?}"
            );
            assert_eq!(
                (fast.dev, fast.dev_sq),
                (at_input.dev, at_input.dev_sq),
                "{act}: moments of the output"
            );
        }
    }

    #[test]
    fn histogram_bins_follow_the_decades_exactly() {
        // Values just below and at each edge land on either side of it.
        for i in 1..HIST_BINS {
            let edge = 10f64.powf(HIST_LO + i as f64 * HIST_WIDTH) as f32;
            let below = f32::from_bits(edge.to_bits() - 1);
            let h = log_histogram(&[below, edge, -edge]);
            assert_eq!(h[i - 1], 1.0, "just below edge {i}");
            assert_eq!(h[i], 2.0, "at edge {i}");
        }
        let h = log_histogram(&[f32::INFINITY, 1e-45, f32::NAN]);
        assert_eq!((h[HIST_BINS - 1], h[0], h.iter().sum::<f64>()), (1.0, 1.0, 2.0));
    }

    #[test]
    fn host_borrows_flex_buffers_and_copies_the_rest() {
        use burn::tensor::{Device, Tensor, TensorData};
        let x: Vec<f32> = (0..12).map(|i| i as f32 - 3.5).collect();
        let data = TensorData::new(x.clone(), [3, 4]);
        let t = Tensor::<2>::from_data(data.clone(), &Device::flex());
        let view = host(&t);
        assert!(
            matches!(view, HostValues::Flex(_)),
            "a contiguous flex tensor is read in place"
        );
        assert_eq!(&*view, &x[..]);
        drop(view);
        // Still usable, unchanged.
        assert_eq!(t.clone().into_data().try_to_vec::<f32>().unwrap(), x);
        // A transposed view is strided: copied, in logical order.
        let tt = t.clone().transpose();
        let want = tt.clone().into_data().try_to_vec::<f32>().unwrap();
        let view = host(&tt);
        assert!(matches!(view, HostValues::Copied(_)));
        assert_eq!(&*view, &want[..]);
        // Another backend: copied.
        let ndarray = gradscope_train::Backend::Ndarray
            .device()
            .expect("ndarray is compiled in");
        let nd = Tensor::<2>::from_data(data, &ndarray);
        let view = host(&nd);
        assert!(matches!(view, HostValues::Copied(_)));
        assert_eq!(&*view, &x[..]);
    }

    /// Flex lends its buffers; ndarray is copied where the values are read; a GPU's transfer
    /// (wgpu, where a Vulkan driver exists: llvmpipe in CI) is requested here
    /// and finished on another thread, as the probe's worker does.
    #[test]
    fn gather_reads_every_tensor_in_order_on_any_backend() {
        use burn::tensor::{Device, Tensor, TensorData};
        use gradscope_train::Backend;
        let mut devices = vec![(Device::flex(), true), (Backend::Ndarray.device().unwrap(), false)];
        match Backend::Wgpu.device() {
            Ok(wgpu) => devices.push((wgpu, false)),
            Err(e) => eprintln!("wgpu not checked: {e}"),
        }
        for (device, borrowed) in devices {
            let a: Vec<f32> = (0..6).map(|i| i as f32).collect();
            let b: Vec<f32> = vec![-1.5, 2.5, 7.0];
            let reading = Reading::of(&Tensor::<1>::zeros([1], &device));
            let mut gather = Gather::new(reading);
            let ia = gather.add(Tensor::<2>::from_data(TensorData::new(a.clone(), [2, 3]), &device));
            let ib = gather.add(Tensor::<1>::from_data(TensorData::new(b.clone(), [3]), &device));
            let transfer = gather.start();
            let values = std::thread::spawn(move || transfer.finish()).join().unwrap();
            assert_eq!((&*values[ia], &*values[ib]), (&a[..], &b[..]), "{device:?}");
            assert_eq!(values.iter().all(|v| matches!(v, HostValues::Flex(_))), borrowed);
        }
    }

    #[test]
    fn l2_matches_naive() {
        let x: Vec<f32> = (0..20_001).map(|i| ((i % 13) as f32 - 6.0) * 0.25).collect();
        let want = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((l2(&x) - want).abs() <= 1e-6 * want);
        assert_eq!(l2(&[]), 0.0);
    }

    #[test]
    fn histogram_matches_the_device_version() {
        use burn::tensor::{Device, Tensor, TensorData};
        let x: Vec<f32> = vec![1e-6, -1e-6, 3e-3, 0.0, 0.0, 50.0, 1e-30, 1e30, -7.5e-9];
        let device = Device::flex();
        let t = Tensor::<1>::from_data(TensorData::new(x.clone(), [x.len()]), &device);
        let on_device: Vec<f32> = crate::measure::log_histogram(&t).into_data().try_to_vec().unwrap();
        let host = log_histogram(&x);
        assert_eq!(host, on_device.iter().map(|&c| c as f64).collect::<Vec<_>>());
    }
}
