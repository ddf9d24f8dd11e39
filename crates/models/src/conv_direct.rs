//! Convolutions computed directly on zero-padded input planes (no im2col
//! matrix) by AVX-512 kernels, or AVX2 ones on CPUs without AVX-512F.
//!
//! In a stride-1 convolution that keeps the image's size, every kernel
//! offset `(r, s)` reads the zero-padded image shifted by `r·Wp + s`
//! (`Wp = W + S - 1` the padded width). Computed on the padded grid
//! `q = i·Wp + j` (the `S - 1` columns `j >= W` of each row are thrown away),
//! a vector of output positions reads one contiguous vector of the padded
//! plane per offset:
//!
//! `y[k][q..q+16] = Σ_{c,r,s} W[k,c,r,s] · xpad[c][q + r·Wp + s..][..16]`
//!
//! On small maps the thrown-away columns, and the grid's rounding up to whole
//! steps, are a large share (a 7x7 map computes 64 positions for 49), so
//! where a convolution has at least 32 output channels and that wastes less,
//! the kernel's vectors hold 16 output channels instead, each input value
//! broadcast (`y[q][k..k+16] += xpad[c][at(q) + r·Wp + s] · W[c,r,s][k..k+16]`,
//! `at(q)` where output position `q` reads its first input), and the output
//! is transposed at the end ([`Vectorised`]). Both add the taps in the same
//! order, so they give the same bits. Reading through `at(q)`, this kernel
//! computes strided convolutions too (a ResNet's map-halving ones).
//!
//! The input gradient of a size-keeping convolution is again such a
//! convolution (of the output gradient, with the weights transposed and
//! flipped). The weight gradient `dW[k,c,r,s] = Σ_q g[k][q] · xpad[c][at(q) + r·Wp + s]`
//! is computed with vectors over output channels where the forward kernel's
//! are (`g` transposed), with vectors over the grid for 3x3 kernels on
//! large maps. [`conv`](crate::conv) uses these where [`Plan::new`] and
//! [`Plan::weight_grad`] say they pay; other convolutions (and the input
//! gradient of strided ones), and CPUs without AVX2, keep im2col + gemm.
//!
//! With AVX2 (8 floats per vector, 16 registers) only the kernels over
//! channels exist: written once, generic over the instruction set
//! ([`x86::Simd`]), they hold 2 vectors of channels x 6 positions there,
//! gemm's AVX2 block, and add the taps in the same order as AVX-512's.

use std::sync::atomic::{AtomicU8, Ordering};

/// Floats per vector of AVX-512, and the unit output channels are rounded
/// up to (two AVX2 vectors).
const LANES: usize = 16;
/// Output channels per block of the convolution kernel (accumulators per vector).
const BLOCK: usize = 8;
/// Vectors of positions per step of the convolution kernel.
const VECTORS: usize = 2;
/// Output channels per step of the weight-gradient kernel (9 accumulators each).
const GRAD_BLOCK: usize = 3;
/// The smallest padded grid (positions per channel) on which the
/// weight-gradient kernel with vectors over positions is used (BENCHMARKS.md:
/// faster than im2col + gemm on ResNet-20's 28x28 layers, slower on its 14x14
/// and 7x7 ones, where vectors over channels take it).
const GRAD_MIN_GRID: usize = 512;
/// Rows past the output's in the channel kernel's transposed output, into
/// which its last block of positions spills (the most positions per block).
const SPILL: usize = 8;

/// The x86 vector extension the kernels run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// AVX2 with FMA: 8 floats per vector, 16 vector registers; the kernels
    /// vectorised over output channels only.
    Avx2,
    /// AVX-512F: 16 floats per vector, 32 vector registers; all kernels.
    Avx512,
}

/// The most capable [`Isa`] the kernels may use, set by [`limit_isa`]:
/// 0 none, 1 AVX2, 2 AVX-512 (the default: whatever the CPU has).
static MAX_ISA: AtomicU8 = AtomicU8::new(2);

/// Caps the instruction set the convolution kernels use, for the whole
/// process (`None`: im2col + gemm only), to compare them as a CPU with less
/// would run them. Burn's gemm keeps choosing its own kernels.
pub fn limit_isa(max: Option<Isa>) {
    MAX_ISA.store(max.map_or(0, |isa| isa as u8 + 1), Ordering::Relaxed);
}

impl Isa {
    /// The instruction set the kernels use on this CPU (within [`limit_isa`]'s
    /// cap), or `None` where they do not run (im2col + gemm instead).
    pub fn in_use() -> Option<Self> {
        let max = MAX_ISA.load(Ordering::Relaxed);
        [Self::Avx512, Self::Avx2]
            .into_iter()
            .find(|&isa| (isa as u8) < max && isa.supported())
    }

    /// Whether this CPU has the extension.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Self::Avx2 => has!("avx2") && has!("fma"),
                Self::Avx512 => has!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        })
    }
}

/// A convolution's weights in the kernel's order, and where the kernel reads
/// and writes ([`Places`]): computed once per layer call.
pub(crate) struct Packed {
    weights: Vec<f32>,
    places: Places,
}

/// Where a packed convolution reads and writes, by what its vectors hold.
enum Places {
    /// Per vector of grid positions, where its output lanes go.
    Positions(Vec<Store>),
    Channels(Reads),
}

/// Where the kernels vectorised over channels read the padded planes.
struct Reads {
    /// Per output position (and [`SPILL`] more, repeating the last), where
    /// its input at tap `(0, 0, 0)` starts.
    at: Vec<usize>,
    /// Per tap `(c, r, s)`, its offset from there.
    taps: Vec<usize>,
}

/// A convolution's weight gradient by a direct kernel, set up once per
/// backward pass ([`Plan::weight_grad`]).
pub(crate) struct WeightGrad {
    plan: Plan,
    kernel: GradKernel,
}

/// The weight-gradient kernels and the layout of their sums.
enum GradKernel {
    /// A 3x3 kernel, vectors over grid positions: per-lane sums `[K, C, 9, 16]`.
    Positions,
    /// Vectors over output channels: sums `[C·R·S, K_pad]`.
    Channels(Reads),
}

/// Where one vector of grid positions goes in the output (see [`Plan::stores`]).
#[derive(Debug, Clone, Copy)]
struct Store {
    lanes: u16,
    at: usize,
    first: u16,
}

/// One convolution's sizes on the padded grid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Input channels, output channels.
    c: usize,
    k: usize,
    /// Input rows and columns.
    h: usize,
    w: usize,
    r: usize,
    s: usize,
    /// Padding before the rows and the columns.
    ph: usize,
    pw: usize,
    /// Strides over rows and columns.
    sh: usize,
    sw: usize,
    /// Output rows and columns.
    ho: usize,
    wo: usize,
    /// Padded width.
    wp: usize,
    /// Floats per padded input plane (with slack for the last vectors' reads).
    plane: usize,
    /// Output grid positions per channel, a whole number of steps
    /// ([`Vectorised::Positions`] only).
    grid: usize,
    /// What a vector holds.
    by: Vectorised,
    /// The instruction set the kernels run on.
    isa: Isa,
}

/// What the convolution kernel's vectors hold, chosen per plan by what it
/// would compute for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vectorised {
    /// 16 positions of the padded grid: the grid's extra columns, and its
    /// rounding up to whole steps, are computed and thrown away.
    Positions,
    /// 16 output channels, each input value broadcast: output channels are
    /// rounded up to a multiple of 16, and the output is transposed.
    Channels,
}

impl Plan {
    /// A plan for `[C, H, W]` images, `[K, C, R, S]` weights, the padding
    /// before rows and columns, the strides and the output's size, where a
    /// kernel here computes it better than im2col + gemm, with `isa`'s
    /// kernels (which this CPU must have). With AVX-512, `None` for a
    /// convolution that does not keep the size (stride 2, say) with fewer
    /// than 32 output channels or more than an eighth of the channel
    /// kernel's vectors unused (im2col + gemm's products run at 200-210
    /// GFLOP/s, the channel kernel at 230-245 on whole vectors:
    /// BENCHMARKS.md); with AVX2, see [`Plan::choose`].
    pub(crate) fn new(
        isa: Isa,
        input: [usize; 3],
        kernel: [usize; 3],
        pad: [usize; 2],
        stride: [usize; 2],
        out: [usize; 2],
    ) -> Option<Self> {
        assert!(isa.supported(), "{isa} kernels on a CPU without {isa}");
        Self::sized(input, kernel, pad, stride, out, isa)?.choose()
    }

    /// A plan for these sizes on `isa`, whether a kernel pays or not.
    fn sized(
        [c, h, w]: [usize; 3],
        [k, r, s]: [usize; 3],
        [ph, pw]: [usize; 2],
        [sh, sw]: [usize; 2],
        [ho, wo]: [usize; 2],
        isa: Isa,
    ) -> Option<Self> {
        if [c, h, w, k, r, s, sh, sw, ho, wo].contains(&0) {
            return None;
        }
        let step = LANES * VECTORS;
        let wp = (pw + w).max((wo - 1) * sw + s);
        let hp = (ph + h).max((ho - 1) * sh + r);
        let plan = Self {
            c,
            k,
            h,
            w,
            r,
            s,
            ph,
            pw,
            sh,
            sw,
            ho,
            wo,
            wp,
            plane: hp * wp + s + step,
            grid: (ho * wp).div_ceil(step) * step,
            by: Vectorised::Positions,
            isa,
        };
        Some(plan)
    }

    /// Whether the output has the input's size, at stride 1.
    fn keeps_size(&self) -> bool {
        [self.sh, self.sw, self.ho, self.wo] == [1, 1, self.h, self.w]
    }

    /// With AVX-512, vectors over output channels where there are at least
    /// two vectors of them (with one vector of channels per step, the kernel
    /// has too few accumulators: BENCHMARKS.md) and, for a convolution that
    /// keeps the size, that computes fewer multiply-adds for nothing than
    /// vectors over the padded grid; for other convolutions, see
    /// [`Plan::new`]. With AVX2 (only the kernels over channels, two 8-float
    /// vectors per 16 channels), wherever at most an eighth of the channels
    /// computed are padding.
    fn choose(self) -> Option<Self> {
        let few_unused = self.k * 8 >= self.k_pad() * 7;
        if self.isa == Isa::Avx2 {
            return few_unused.then_some(Self {
                by: Vectorised::Channels,
                ..self
            });
        }
        let channels = (self.k_pad() >= 2 * LANES).then_some(self.ho * self.wo * self.k_pad());
        let by = if self.keeps_size() {
            let positions = self.grid * self.k.div_ceil(BLOCK) * BLOCK;
            match channels {
                Some(channels) if channels < positions => Vectorised::Channels,
                _ => Vectorised::Positions,
            }
        } else if channels.is_some() && few_unused {
            Vectorised::Channels
        } else {
            return None;
        };
        Some(Self { by, ..self })
    }

    /// Output positions per channel.
    fn l(&self) -> usize {
        self.ho * self.wo
    }

    /// Output channels rounded up to whole vectors.
    fn k_pad(&self) -> usize {
        self.k.div_ceil(LANES) * LANES
    }

    /// This plan's convolution vectorised as `by` on `isa` (which the CPU has).
    #[cfg(test)]
    pub(crate) fn vectorised(self, by: Vectorised, isa: Isa) -> Self {
        assert!(isa.supported());
        assert!(by == Vectorised::Channels || (self.keeps_size() && isa == Isa::Avx512));
        Self { by, isa, ..self }
    }

    /// The plan of this convolution's input gradient where it keeps the
    /// size: `dL/dx = conv(dL/dy, W')` with `W'[c][k][r][s] = W[k][c][R-1-r][S-1-s]`
    /// and the end padding first.
    pub(crate) fn transposed(&self) -> Option<Self> {
        self.transposed_sizes()?.choose()
    }

    /// [`Plan::transposed`]'s sizes, whether a kernel pays or not.
    fn transposed_sizes(&self) -> Option<Self> {
        self.keeps_size().then(|| Self {
            c: self.k,
            k: self.c,
            ph: self.r - 1 - self.ph,
            pw: self.s - 1 - self.pw,
            ..*self
        })
    }

    fn blocks(&self) -> usize {
        self.k.div_ceil(BLOCK)
    }

    fn taps(&self) -> usize {
        self.c * self.r * self.s
    }

    /// The weights `[K, C, R, S]` in the kernel's order: per block of output
    /// channels, per tap `(c, r, s)`, the block's values (zero past `K`).
    pub(crate) fn pack(&self, w: &[f32]) -> Packed {
        self.pack_with(|k, t| w[k * self.taps() + t])
    }

    /// The weights of [`Plan::transposed`]'s convolution, packed, from the
    /// forward convolution's `[K, C, R, S]` weights (`self` is the transposed plan).
    pub(crate) fn pack_transposed(&self, w: &[f32]) -> Packed {
        let (rs, taps_fwd) = (self.r * self.s, self.k * self.r * self.s);
        // Output channel `c` of the transposed convolution, tap `(k, r, s)`.
        self.pack_with(|c, t| {
            let (k, rs_at) = (t / rs, t % rs);
            w[k * taps_fwd + c * rs + (rs - 1 - rs_at)]
        })
    }

    fn pack_with(&self, value: impl Fn(usize, usize) -> f32) -> Packed {
        if self.by == Vectorised::Channels {
            let mut packed = vec![0f32; self.taps() * self.k_pad()];
            for (t, row) in packed.chunks_mut(self.k_pad()).enumerate() {
                for (k, v) in row[..self.k].iter_mut().enumerate() {
                    *v = value(k, t);
                }
            }
            return Packed {
                weights: packed,
                places: Places::Channels(self.reads()),
            };
        }
        let mut packed = vec![0f32; self.blocks() * self.taps() * BLOCK];
        for (b, block) in packed.chunks_mut(self.taps() * BLOCK).enumerate() {
            for (t, lanes) in block.chunks_mut(BLOCK).enumerate() {
                for (i, v) in lanes.iter_mut().enumerate() {
                    let k = b * BLOCK + i;
                    if k < self.k {
                        *v = value(k, t);
                    }
                }
            }
        }
        Packed {
            weights: packed,
            places: Places::Positions(self.stores()),
        }
    }

    /// Where the kernels vectorised over channels read.
    fn reads(&self) -> Reads {
        let l = self.l();
        let at = (0..l + SPILL).map(|q| q.min(l - 1));
        let (rs, wp, s) = (self.r * self.s, self.wp, self.s);
        Reads {
            at: at
                .map(|q| (q / self.wo) * self.sh * wp + (q % self.wo) * self.sw)
                .collect(),
            taps: (0..self.taps())
                .map(|t| (t / rs) * self.plane + (t / s % self.r) * wp + t % s)
                .collect(),
        }
    }

    /// `x` (`[C, H, W]`) into zero-padded planes (`[C, plane]`).
    fn pad_input(&self, x: &[f32], xpad: &mut [f32]) {
        let hw = self.h * self.w;
        assert_eq!(x.len(), self.c * hw);
        for (plane, image) in xpad.chunks_mut(self.plane).zip(x.chunks(hw)) {
            plane.fill(0.0);
            for (i, row) in image.chunks(self.w).enumerate() {
                plane[(i + self.ph) * self.wp + self.pw..][..self.w].copy_from_slice(row);
            }
        }
    }

    /// [`Plan::run_uninit`] into initialised memory.
    #[cfg(test)]
    pub(crate) fn run(&self, x: &[f32], packed: &Packed, bias: Option<&[f32]>, scratch: &mut Vec<f32>, y: &mut [f32]) {
        // SAFETY: `run_uninit` writes only initialised floats.
        let y = unsafe { &mut *(y as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
        self.run_uninit(x, packed, bias, scratch, y);
    }

    /// One image: `y` (`[K, Ho, Wo]`) = the convolution of `x` (`[C, H, W]`)
    /// with the packed weights, plus `bias` (`[K]`) when given; `y` may be
    /// uninitialised: every value is written.
    pub(crate) fn run_uninit(
        &self,
        x: &[f32],
        packed: &Packed,
        bias: Option<&[f32]>,
        scratch: &mut Vec<f32>,
        y: &mut [std::mem::MaybeUninit<f32>],
    ) {
        assert_eq!(y.len(), self.k * self.l());
        assert!(bias.is_none_or(|b| b.len() == self.k));
        let mut init = vec![0f32; self.blocks() * BLOCK];
        if let Some(b) = bias {
            init[..self.k].copy_from_slice(b);
        }
        let stores = match &packed.places {
            Places::Positions(stores) => stores,
            Places::Channels(Reads { at, taps }) => {
                let l = self.l();
                scratch.resize(self.c * self.plane + (l + SPILL) * self.k_pad(), 0.0);
                let (xpad, out_t) = scratch.split_at_mut(self.c * self.plane);
                self.pad_input(x, xpad);
                init.resize(self.k_pad(), 0.0);
                // SAFETY: a `Plan` exists only where `self.isa` is supported;
                // the kernels assert what their reads and writes rely on.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::convolve_channels(self.isa, self, xpad, &packed.weights, at, taps, &init, out_t);
                    x86::transpose(self.isa, out_t, [l, self.k], self.k_pad(), y, l);
                };
                return;
            }
        };
        assert!(self.keeps_size() && self.isa == Isa::Avx512);
        assert_eq!(packed.weights.len(), self.blocks() * self.taps() * BLOCK);
        assert_eq!(stores.len(), self.grid / LANES);
        scratch.resize(self.c * self.plane, 0.0);
        self.pad_input(x, scratch);
        // SAFETY: a `Plan` exists only where its `isa` is supported (AVX-512F,
        // asserted above); the slices are sized as `x86::convolve` requires
        // (asserted there).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::convolve(self, scratch, &packed.weights, stores, &init, y)
        };
    }

    /// Per vector of grid positions (`q = 16·v`): the lanes that are output
    /// positions (`j < W`, `i < H`), where the first of them goes in the
    /// `H x W` output (the rows' output lanes are consecutive there), and the
    /// mask of as many lanes from the first.
    fn stores(&self) -> Vec<Store> {
        (0..self.grid / LANES)
            .map(|v| {
                let q = v * LANES;
                let lanes = (0..LANES).filter(|&lane| (q + lane) % self.wp < self.w && q + lane < self.h * self.wp);
                let lanes = lanes.fold(0u16, |m, lane| m | 1 << lane);
                let before = (q / self.wp) * self.w + (q % self.wp).min(self.w);
                Store {
                    lanes,
                    at: before.min(self.h * self.w),
                    first: ((1u32 << lanes.count_ones()) - 1) as u16,
                }
            })
            .collect()
    }

    /// This convolution's weight gradient by a direct kernel, where one
    /// beats im2col + gemm (BENCHMARKS.md): vectors over output channels
    /// where the forward kernel's are, else a 3x3 kernel's on planes of at
    /// least [`GRAD_MIN_GRID`] positions (on smaller ones the per-lane sums
    /// are set up and added for too few multiply-adds).
    pub(crate) fn weight_grad(&self) -> Option<WeightGrad> {
        let pays = self.by == Vectorised::Channels || self.grid >= GRAD_MIN_GRID;
        self.weight_grad_by(self.by).filter(|_| pays)
    }

    /// The weight-gradient kernel vectorised as `by`, where it exists
    /// (vectors over grid positions: 3x3 kernels that keep the size, with
    /// AVX-512, only), whether it pays or not.
    pub(crate) fn weight_grad_by(&self, by: Vectorised) -> Option<WeightGrad> {
        let kernel = match by {
            Vectorised::Channels => GradKernel::Channels(self.reads()),
            Vectorised::Positions if self.r == 3 && self.s == 3 && self.keeps_size() && self.isa == Isa::Avx512 => {
                GradKernel::Positions
            }
            Vectorised::Positions => return None,
        };
        Some(WeightGrad { plan: *self, kernel })
    }
}

impl WeightGrad {
    /// Floats of the sums [`WeightGrad::add_image`] adds to.
    pub(crate) fn sums_len(&self) -> usize {
        let p = &self.plan;
        match self.kernel {
            GradKernel::Positions => p.k * p.taps() * LANES,
            GradKernel::Channels(_) => p.taps() * p.k_pad(),
        }
    }

    /// Adds one image's weight gradient to `sums` (`sums_len()` floats,
    /// zero at first): `x` is the image (`[C, H, W]`), `g` its output
    /// gradient (`[K, H, W]`).
    pub(crate) fn add_image(&self, x: &[f32], g: &[f32], scratch: &mut Vec<f32>, sums: &mut [f32]) {
        let p = &self.plan;
        let l = p.l();
        assert_eq!(g.len(), p.k * l);
        assert_eq!(sums.len(), self.sums_len());
        match &self.kernel {
            GradKernel::Positions => {
                scratch.resize(p.c * p.plane + p.k * p.grid, 0.0);
                let (xpad, gpad) = scratch.split_at_mut(p.c * p.plane);
                p.pad_input(x, xpad);
                for (to, from) in gpad.chunks_mut(p.grid).zip(g.chunks(l)) {
                    to.fill(0.0);
                    for (i, row) in from.chunks(p.w).enumerate() {
                        to[i * p.wp..][..p.w].copy_from_slice(row);
                    }
                }
                // SAFETY: this kernel is made only for AVX-512 plans, and a
                // `Plan` exists only where its `isa` is supported; sizes as
                // asserted there.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::weight_grad(p, xpad, gpad, sums)
                };
            }
            GradKernel::Channels(Reads { at, taps }) => {
                // `g` transposed to `[H·W, K_pad]` (the padding channels stay zero).
                scratch.resize(p.c * p.plane + l * p.k_pad(), 0.0);
                let (xpad, g_t) = scratch.split_at_mut(p.c * p.plane);
                p.pad_input(x, xpad);
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let to = &mut *(&mut g_t[..] as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]);
                    x86::transpose(p.isa, g, [p.k, l], l, to, p.k_pad());
                    x86::weight_grad_channels(p.isa, p, xpad, g_t, &at[..l], taps, sums)
                };
            }
        }
    }

    /// Adds `sums` to `gw_t`, the weight gradient transposed (`[C·R·S, K]`).
    pub(crate) fn add_to(&self, sums: &[f32], gw_t: &mut [f32]) {
        let p = &self.plan;
        assert_eq!(gw_t.len(), p.taps() * p.k);
        match self.kernel {
            GradKernel::Positions => {
                for (i, lanes) in sums.chunks(LANES).enumerate() {
                    let (k, t) = (i / p.taps(), i % p.taps());
                    gw_t[t * p.k + k] += lanes.iter().sum::<f32>();
                }
            }
            GradKernel::Channels(_) => {
                for (to, from) in gw_t.chunks_mut(p.k).zip(sums.chunks(p.k_pad())) {
                    to.iter_mut().zip(from).for_each(|(to, from)| *to += from);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{BLOCK, GRAD_BLOCK, Isa, LANES, Plan, SPILL, Store, VECTORS};

    /// Per block of `BLOCK` output channels and per `VECTORS` vectors of grid
    /// positions `q`: `BLOCK x VECTORS` accumulators; per tap `(c, r, s)`,
    /// `VECTORS` loads of `xpad[c][q + r·Wp + s..]` and as many multiply-adds
    /// per channel of the block, with the tap's weight broadcast.
    ///
    /// # Safety
    /// The CPU has AVX-512F. The last step of a plane reads up to
    /// `grid - 1 + (R-1)·Wp + S-1 < plane` floats into it, inside `xpad`
    /// (`[C, plane]`); writes stay in the block's rows of `grid`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn convolve(
        p: &Plan,
        xpad: &[f32],
        packed: &[f32],
        stores: &[Store],
        init: &[f32],
        y: &mut [MaybeUninit<f32>],
    ) {
        assert!(p.grid.is_multiple_of(LANES * VECTORS) && p.grid + (p.r - 1) * p.wp + p.s - 1 <= p.plane);
        assert!(xpad.len() >= p.c * p.plane && y.len() == p.k * p.h * p.w);
        let (taps, hw) = (p.taps(), p.h * p.w);
        // Where each tap (c, r, s) reads, for the grid's first position.
        // (Plain loops: closures are not inlined into this function.)
        let mut reads = Vec::with_capacity(taps);
        for c in 0..p.c {
            for r in 0..p.r {
                for s in 0..p.s {
                    reads.push(xpad[c * p.plane + r * p.wp + s..].as_ptr());
                }
            }
        }
        for b in 0..p.blocks() {
            let (weights, _) = packed[b * taps * BLOCK..][..taps * BLOCK].as_chunks::<BLOCK>();
            let mut start = [[_mm512_setzero_ps(); VECTORS]; BLOCK];
            for (v, &b0) in start.iter_mut().zip(&init[b * BLOCK..][..BLOCK]) {
                *v = [_mm512_set1_ps(b0); VECTORS];
            }
            // This block's output channels (fewer than BLOCK in the last one).
            let channels = BLOCK.min(p.k - b * BLOCK);
            let out = y[b * BLOCK * hw..][..channels * hw].as_mut_ptr().cast::<f32>();
            for (step, stores) in stores.chunks_exact(VECTORS).enumerate() {
                let q = step * LANES * VECTORS;
                let mut acc = start;
                for (&from, tap) in reads.iter().zip(weights) {
                    // `wrapping_add` and a masked load: with debug
                    // assertions on, `ptr::add` and `_mm512_loadu_ps` (a
                    // `read_unaligned`) check their preconditions on every
                    // call; the bounds are asserted above instead.
                    let at = from.wrapping_add(q);
                    let mut v = [_mm512_setzero_ps(); VECTORS];
                    for (j, v) in v.iter_mut().enumerate() {
                        *v = unsafe { _mm512_maskz_loadu_ps(!0, at.wrapping_add(j * LANES)) };
                    }
                    for (&w, a) in tap.iter().zip(&mut acc) {
                        let w = _mm512_set1_ps(w);
                        for (a, &v) in a.iter_mut().zip(&v) {
                            *a = _mm512_fmadd_ps(w, v, *a);
                        }
                    }
                }
                // The output lanes of each vector, packed together and
                // stored where they go in the H x W output (in bounds:
                // `stores` places at most `H·W` values per channel).
                for (kk, a) in acc.iter().enumerate().take(channels) {
                    for (&v, &Store { lanes, at, first }) in a.iter().zip(stores) {
                        let to = out.wrapping_add(kk * hw + at);
                        unsafe { _mm512_mask_storeu_ps(to, first, _mm512_maskz_compress_ps(lanes, v)) };
                    }
                }
            }
        }
    }

    /// The vector operations the kernels vectorised over channels use, per
    /// instruction set. Each is `#[inline(always)]`: the generic kernels
    /// below compile inside the `#[target_feature]` entry point of their
    /// instruction set ([`per_isa`]), where the intrinsics inline.
    pub(super) trait Simd {
        /// Floats per vector.
        const LANES: usize;
        /// The most vectors of output channels per block (accumulators:
        /// this times the positions per block).
        const MAX_KV: usize;
        type V: Copy;
        /// `LANES` vectors.
        type Tile: Copy + AsMut<[Self::V]> + IntoIterator<Item = Self::V>;
        unsafe fn zero() -> Self::V;
        unsafe fn zero_tile() -> Self::Tile;
        /// A whole vector (a masked load with every lane on: with debug
        /// assertions on, a plain unaligned load checks its preconditions on
        /// every call; the kernels assert their bounds instead).
        unsafe fn load(p: *const f32) -> Self::V;
        unsafe fn store(p: *mut f32, v: Self::V);
        /// The first `n < LANES` floats, the other lanes zero.
        unsafe fn load_first(p: *const f32, n: usize) -> Self::V;
        unsafe fn store_first(p: *mut f32, n: usize, v: Self::V);
        /// `*p` in every lane.
        unsafe fn splat(p: *const f32) -> Self::V;
        /// `a · b + c`.
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        /// A `LANES x LANES` tile transposed.
        unsafe fn transpose_tile(rows: Self::Tile) -> Self::Tile;
    }

    /// AVX-512F.
    pub(super) struct Avx512;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        const MAX_KV: usize = 4;
        type V = __m512;
        type Tile = [__m512; 16];
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn zero_tile() -> [__m512; 16] {
            [unsafe { _mm512_setzero_ps() }; 16]
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(!0, p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_mask_storeu_ps(p, !0, v) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps((1 << n) - 1, p) }
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, n: usize, v: __m512) {
            unsafe { _mm512_mask_storeu_ps(p, (1 << n) - 1, v) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m512 {
            unsafe { _mm512_broadcastss_ps(_mm512_castps512_ps128(_mm512_maskz_loadu_ps(1, p))) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn transpose_tile(r: [__m512; 16]) -> [__m512; 16] {
            // Pairs of rows interleaved, then groups of four rows per 128-bit
            // lane: `u[4g + c]`, lane `L`, holds rows `4g..4g+4` of column `4L + c`.
            let t: [__m512; 16] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    unsafe { _mm512_unpacklo_ps(a, b) }
                } else {
                    unsafe { _mm512_unpackhi_ps(a, b) }
                }
            });
            let mut u = t;
            for g in 0..4 {
                let t = &t[4 * g..];
                unsafe {
                    u[4 * g] = _mm512_shuffle_ps::<0x44>(t[0], t[2]);
                    u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t[0], t[2]);
                    u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t[1], t[3]);
                    u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t[1], t[3]);
                }
            }
            // Column `4L + c` gathers lane `L` of `u[c]`, `u[4 + c]`, `u[8 + c]`, `u[12 + c]`.
            let mut out = u;
            for c in 0..4 {
                unsafe {
                    let even_lo = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
                    let odd_lo = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
                    let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
                    let odd_hi = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
                    out[c] = _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi);
                    out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi);
                    out[4 + c] = _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi);
                    out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi);
                }
            }
            out
        }
    }

    /// AVX2 with FMA.
    pub(super) struct Avx2;

    impl Avx2 {
        /// Lanes `0..n` on.
        #[inline(always)]
        unsafe fn first(n: usize) -> __m256i {
            unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
        }
    }

    impl Simd for Avx2 {
        const LANES: usize = 8;
        const MAX_KV: usize = 2;
        type V = __m256;
        type Tile = [__m256; 8];
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn zero_tile() -> [__m256; 8] {
            [unsafe { _mm256_setzero_ps() }; 8]
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_maskload_ps(p, _mm256_set1_epi32(-1)) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_maskstore_ps(p, _mm256_set1_epi32(-1), v) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> __m256 {
            unsafe { _mm256_maskload_ps(p, Self::first(n)) }
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, n: usize, v: __m256) {
            unsafe { _mm256_maskstore_ps(p, Self::first(n), v) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m256 {
            unsafe { _mm256_broadcastss_ps(_mm_maskload_ps(p, _mm_setr_epi32(-1, 0, 0, 0))) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn transpose_tile(r: [__m256; 8]) -> [__m256; 8] {
            // As AVX-512's, with two 128-bit lanes: `u[4h + c]`, lane `L`,
            // holds rows `4h..4h+4` of column `4L + c`; column `4L + c` joins
            // lane `L` of `u[c]` and `u[4 + c]`.
            let mut out = r;
            unsafe {
                let t: [__m256; 8] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i % 2 == 0 {
                        _mm256_unpacklo_ps(a, b)
                    } else {
                        _mm256_unpackhi_ps(a, b)
                    }
                });
                let mut u = t;
                for h in 0..2 {
                    let t = &t[4 * h..];
                    u[4 * h] = _mm256_shuffle_ps::<0x44>(t[0], t[2]);
                    u[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(t[0], t[2]);
                    u[4 * h + 2] = _mm256_shuffle_ps::<0x44>(t[1], t[3]);
                    u[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(t[1], t[3]);
                }
                for c in 0..4 {
                    out[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
                    out[4 + c] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
                }
            }
            out
        }
    }

    /// `pub(super) unsafe fn $name(isa: Isa, args..)` from one generic body
    /// over `S: Simd`: the body compiled inside a `#[target_feature]`
    /// function for each instruction set, and the one for `isa` called.
    macro_rules! per_isa {
        ($(#[$doc:meta])* fn $name:ident<$s:ident>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
            $(#[$doc])*
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(isa: Isa, $($arg: $ty),*) {
                #[inline(always)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn generic<$s: Simd>($($arg: $ty),*) $body
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    unsafe { generic::<Avx512>($($arg),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    unsafe { generic::<Avx2>($($arg),*) }
                }
                match isa {
                    Isa::Avx512 => unsafe { avx512($($arg),*) },
                    Isa::Avx2 => unsafe { avx2($($arg),*) },
                }
            }
        };
    }

    per_isa! {
        /// Per block of up to `S::MAX_KV` vectors of output channels and per
        /// block of positions: one accumulator per pair; per tap `(c, r, s)`,
        /// the block's weights loaded and each position's input value
        /// broadcast. `out_t` is the output transposed (`[H·W + SPILL, K_pad]`).
        ///
        /// # Safety
        /// The CPU has `isa`; `xpad` is `[C, plane]`, `packed` `[C·R·S, K_pad]`.
        fn convolve_channels<S>(
            p: &Plan,
            xpad: &[f32],
            packed: &[f32],
            at: &[usize],
            offsets: &[usize],
            init: &[f32],
            out_t: &mut [f32],
        ) {
            let (hw, k_pad) = (p.l(), p.k_pad());
            assert!(at.len() == hw + SPILL && reads_inside(at, offsets, xpad.len()));
            assert!(packed.len() == p.taps() * k_pad && offsets.len() == p.taps());
            assert!(init.len() == k_pad && out_t.len() == (hw + SPILL) * k_pad);
            let vectors = k_pad / S::LANES;
            let mut v = 0;
            while v < vectors {
                let n = (vectors - v).min(S::MAX_KV);
                let (x, w) = (xpad.as_ptr(), packed[v * S::LANES..].as_ptr());
                let (init, out) = (&init[v * S::LANES..], &mut out_t[v * S::LANES..]);
                // Blocks that fill the registers: AVX-512's 32 hold up to 4x6
                // or 3x8 accumulators, AVX2's 16 hold 2x6 (`K_pad` is a
                // multiple of 16: always two vectors).
                unsafe {
                    match (S::LANES, n) {
                        (16, 1) => channel_blocks::<S, 1, 8, 7>(hw, k_pad, x, at, offsets, w, init, out),
                        (16, 2) => channel_blocks::<S, 2, 8, 7>(hw, k_pad, x, at, offsets, w, init, out),
                        (16, 3) => channel_blocks::<S, 3, 8, 7>(hw, k_pad, x, at, offsets, w, init, out),
                        (16, _) => channel_blocks::<S, 4, 6, 5>(hw, k_pad, x, at, offsets, w, init, out),
                        (_, 1) => channel_blocks::<S, 1, 8, 7>(hw, k_pad, x, at, offsets, w, init, out),
                        _ => channel_blocks::<S, 2, 6, 5>(hw, k_pad, x, at, offsets, w, init, out),
                    }
                }
                v += n;
            }
        }
    }

    per_isa! {
        /// `to[j·to_stride + i] = from[i·from_stride + j]` for `i < rows`,
        /// `j < cols`, by tiles transposed in registers.
        ///
        /// # Safety
        /// The CPU has `isa`.
        fn transpose<S>(
            from: &[f32],
            shape: [usize; 2],
            from_stride: usize,
            to: &mut [MaybeUninit<f32>],
            to_stride: usize,
        ) {
            let [rows, cols] = shape;
            if rows == 0 || cols == 0 {
                return;
            }
            assert!(cols <= from_stride && rows <= to_stride);
            assert!(from.len() >= (rows - 1) * from_stride + cols && to.len() >= (cols - 1) * to_stride + rows);
            let (from, to) = (from.as_ptr(), to.as_mut_ptr().cast::<f32>());
            for i0 in (0..rows).step_by(S::LANES) {
                let in_rows = (rows - i0).min(S::LANES);
                for j0 in (0..cols).step_by(S::LANES) {
                    let in_cols = (cols - j0).min(S::LANES);
                    let mut tile = unsafe { S::zero_tile() };
                    for (i, row) in tile.as_mut().iter_mut().enumerate().take(in_rows) {
                        let at = from.wrapping_add((i0 + i) * from_stride + j0);
                        *row = unsafe {
                            if in_cols == S::LANES {
                                S::load(at)
                            } else {
                                S::load_first(at, in_cols)
                            }
                        };
                    }
                    // Whole vectors stored unmasked: on AMD's cores a masked
                    // store costs several plain ones.
                    let tile = unsafe { S::transpose_tile(tile) };
                    for (j, column) in tile.into_iter().enumerate().take(in_cols) {
                        let at = to.wrapping_add((j0 + j) * to_stride + i0);
                        unsafe {
                            if in_rows == S::LANES {
                                S::store(at, column);
                            } else {
                                S::store_first(at, in_rows, column);
                            }
                        }
                    }
                }
            }
        }
    }

    /// `KV` vectors of output channels (weights from `w`, row stride
    /// `k_pad`) for all positions, in blocks of `P` or `Q = P - 1` positions
    /// that cover them exactly where there are enough, else of `P` with the
    /// last block spilling into the extra rows.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn channel_blocks<S: Simd, const KV: usize, const P: usize, const Q: usize>(
        hw: usize,
        k_pad: usize,
        xpad: *const f32,
        at: &[usize],
        offsets: &[usize],
        w: *const f32,
        init: &[f32],
        out: &mut [f32],
    ) {
        assert!(Q + 1 == P && P <= SPILL && at.len() >= hw + SPILL && KV * S::LANES <= init.len());
        assert!(out.len() >= (hw + P - 1) * k_pad + KV * S::LANES - 1);
        let mut start = [unsafe { S::zero() }; KV];
        for (j, s) in start.iter_mut().enumerate() {
            *s = unsafe { S::load(init.as_ptr().wrapping_add(j * S::LANES)) };
        }
        let blocks = hw.div_ceil(P);
        // Blocks of Q where P would overrun, when that leaves no block short.
        let short = if blocks * P - hw <= blocks { blocks * P - hw } else { 0 };
        let mut first = 0;
        for b in 0..blocks {
            let rows = out[first * k_pad..].as_mut_ptr();
            unsafe {
                if b < short {
                    channel_block::<S, KV, Q>(xpad, &at[first..][..Q], offsets, w, k_pad, start, rows);
                    first += Q;
                } else {
                    channel_block::<S, KV, P>(xpad, &at[first..][..P], offsets, w, k_pad, start, rows);
                    first += P;
                }
            }
        }
    }

    /// Whether every read of the channel kernels (a position's start plus a
    /// tap's offset) falls inside padded planes of `len` floats.
    fn reads_inside(at: &[usize], offsets: &[usize], len: usize) -> bool {
        let last = at.iter().max().zip(offsets.iter().max()).map(|(a, o)| a + o);
        last.is_some_and(|last| last < len)
    }

    /// `N` positions (inputs at `xpad + at[i]` for tap (0, 0, 0)) times `KV`
    /// vectors of output channels, over all taps, stored in `rows` (stride `k_pad`).
    #[inline(always)]
    unsafe fn channel_block<S: Simd, const KV: usize, const N: usize>(
        xpad: *const f32,
        at: &[usize],
        offsets: &[usize],
        w: *const f32,
        k_pad: usize,
        start: [S::V; KV],
        rows: *mut f32,
    ) {
        let mut xs = [xpad; N];
        for (x, &at) in xs.iter_mut().zip(at) {
            *x = xpad.wrapping_add(at);
        }
        let mut acc = [start; N];
        unsafe {
            outer_products::<S, KV, N>(&xs, offsets, w, k_pad, &mut acc);
            store_rows::<S, KV, N>(&acc, rows, k_pad);
        }
    }

    /// `acc[i][j] += Σ_t xs[i][steps[t]] · v[t·stride + LANES·j..][..LANES]`:
    /// the sum of outer products both channel kernels compute, one input
    /// value broadcast per row of accumulators, `KV` vectors loaded per step.
    #[inline(always)]
    unsafe fn outer_products<S: Simd, const KV: usize, const N: usize>(
        xs: &[*const f32; N],
        steps: &[usize],
        v: *const f32,
        stride: usize,
        acc: &mut [[S::V; KV]; N],
    ) {
        let mut vt = v;
        for &step in steps {
            let mut vv = [unsafe { S::zero() }; KV];
            for (j, vv) in vv.iter_mut().enumerate() {
                *vv = unsafe { S::load(vt.wrapping_add(j * S::LANES)) };
            }
            vt = vt.wrapping_add(stride);
            for (a, &x) in acc.iter_mut().zip(xs) {
                let xb = unsafe { S::splat(x.wrapping_add(step)) };
                for (a, &vv) in a.iter_mut().zip(&vv) {
                    *a = unsafe { S::fmadd(xb, vv, *a) };
                }
            }
        }
    }

    /// `rows[i·k_pad + LANES·j..][..LANES] = acc[i][j]`.
    #[inline(always)]
    unsafe fn store_rows<S: Simd, const KV: usize, const N: usize>(
        acc: &[[S::V; KV]; N],
        rows: *mut f32,
        k_pad: usize,
    ) {
        for (i, a) in acc.iter().enumerate() {
            for (j, &a) in a.iter().enumerate() {
                unsafe { S::store(rows.wrapping_add(i * k_pad + j * S::LANES), a) };
            }
        }
    }

    per_isa! {
        /// Per block of up to `S::MAX_KV` vectors of output channels and per
        /// block of taps: one accumulator per pair, loaded from `sums`
        /// (`[C·R·S, K_pad]`) and stored back; per output position, the
        /// block's `g` loaded from `g_t` (`[H·W, K_pad]`) and each tap's
        /// input value broadcast.
        ///
        /// # Safety
        /// The CPU has `isa`; `xpad` is `[C, plane]`.
        fn weight_grad_channels<S>(
            p: &Plan,
            xpad: &[f32],
            g_t: &[f32],
            at: &[usize],
            offsets: &[usize],
            sums: &mut [f32],
        ) {
            let (hw, k_pad) = (p.l(), p.k_pad());
            assert!(at.len() == hw && reads_inside(at, offsets, xpad.len()));
            assert!(g_t.len() == hw * k_pad && offsets.len() == p.taps() && sums.len() == p.taps() * k_pad);
            let vectors = k_pad / S::LANES;
            let mut v = 0;
            while v < vectors {
                let n = (vectors - v).min(S::MAX_KV);
                let (x, g) = (xpad.as_ptr(), g_t[v * S::LANES..].as_ptr());
                let sums = &mut sums[v * S::LANES..];
                unsafe {
                    match (S::LANES, n) {
                        (16, 1) => grad_blocks::<S, 1, 10>(k_pad, x, at, offsets, g, sums),
                        (16, 2) => grad_blocks::<S, 2, 10>(k_pad, x, at, offsets, g, sums),
                        (16, 3) => grad_blocks::<S, 3, 8>(k_pad, x, at, offsets, g, sums),
                        (16, _) => grad_blocks::<S, 4, 6>(k_pad, x, at, offsets, g, sums),
                        (_, 1) => grad_blocks::<S, 1, 10>(k_pad, x, at, offsets, g, sums),
                        _ => grad_blocks::<S, 2, 6>(k_pad, x, at, offsets, g, sums),
                    }
                }
                v += n;
            }
        }
    }

    /// `KV` vectors of output channels for all taps, in blocks of `N` (the
    /// last few one at a time).
    #[inline(always)]
    unsafe fn grad_blocks<S: Simd, const KV: usize, const N: usize>(
        k_pad: usize,
        xpad: *const f32,
        at: &[usize],
        offsets: &[usize],
        g: *const f32,
        sums: &mut [f32],
    ) {
        assert!(sums.len() >= (offsets.len() - 1) * k_pad + KV * S::LANES);
        let mut t = 0;
        while t < offsets.len() {
            let rows = sums[t * k_pad..].as_mut_ptr();
            unsafe {
                if t + N <= offsets.len() {
                    grad_block::<S, KV, N>(k_pad, xpad, at, &offsets[t..][..N], g, rows);
                    t += N;
                } else {
                    grad_block::<S, KV, 1>(k_pad, xpad, at, &offsets[t..][..1], g, rows);
                    t += 1;
                }
            }
        }
    }

    /// `N` taps (input at `xpad + offsets[i] + at[q]` for position `q`) times
    /// `KV` vectors of output channels, summed over all positions into `rows`
    /// (stride `k_pad`).
    #[inline(always)]
    unsafe fn grad_block<S: Simd, const KV: usize, const N: usize>(
        k_pad: usize,
        xpad: *const f32,
        at: &[usize],
        offsets: &[usize],
        g: *const f32,
        rows: *mut f32,
    ) {
        let mut xs = [xpad; N];
        for (x, &off) in xs.iter_mut().zip(offsets) {
            *x = xpad.wrapping_add(off);
        }
        let mut acc = [[unsafe { S::zero() }; KV]; N];
        for (i, a) in acc.iter_mut().enumerate() {
            for (j, a) in a.iter_mut().enumerate() {
                *a = unsafe { S::load(rows.wrapping_add(i * k_pad + j * S::LANES)) };
            }
        }
        unsafe {
            outer_products::<S, KV, N>(&xs, at, g, k_pad, &mut acc);
            store_rows::<S, KV, N>(&acc, rows, k_pad);
        }
    }

    /// Per input channel and per `GRAD_BLOCK` output channels: `9 x GRAD_BLOCK`
    /// accumulators; per vector of grid positions, one load of each output
    /// channel's `g`, nine loads of the shifted `xpad[c]` and a multiply-add
    /// per pair. The sums stay per lane (added to `sums`, `[K, C, 9, 16]`).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `xpad` is `[C, plane]`, `gpad` `[K, grid]` (zero
    /// outside the output), reads bounded as in [`convolve`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad(p: &Plan, xpad: &[f32], gpad: &[f32], sums: &mut [f32]) {
        assert!(p.r == 3 && p.s == 3 && p.grid.is_multiple_of(LANES) && p.grid + 2 * p.wp + 2 <= p.plane);
        assert!(xpad.len() >= p.c * p.plane && gpad.len() >= p.k * p.grid && sums.len() >= p.k * p.c * 9 * LANES);
        for c in 0..p.c {
            let x = &xpad[c * p.plane..][..p.plane];
            let xs: [*const f32; 9] = std::array::from_fn(|t| x[(t / 3) * p.wp + t % 3..].as_ptr());
            let mut k = 0;
            while k < p.k {
                let out = &mut sums[(k * p.c + c) * 9 * LANES..];
                if k + GRAD_BLOCK <= p.k {
                    let gs = std::array::from_fn(|kk| gpad[(k + kk) * p.grid..].as_ptr());
                    let acc = weight_grad_step::<GRAD_BLOCK>(p.grid, &xs, &gs);
                    add_lanes(&acc, out, p.c * 9 * LANES);
                    k += GRAD_BLOCK;
                } else {
                    let acc = weight_grad_step::<1>(p.grid, &xs, &[gpad[k * p.grid..].as_ptr()]);
                    add_lanes(&acc, out, p.c * 9 * LANES);
                    k += 1;
                }
            }
        }
    }

    /// `N` output channels' `g` against the nine shifted reads of one input
    /// channel, over `grid` positions, per lane.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn weight_grad_step<const N: usize>(grid: usize, xs: &[*const f32; 9], gs: &[*const f32; N]) -> [[__m512; 9]; N] {
        let mut acc = [[_mm512_setzero_ps(); 9]; N];
        for q in (0..grid).step_by(LANES) {
            // Masked loads and `wrapping_add`, as in `convolve`.
            let mut gv = [_mm512_setzero_ps(); N];
            for (gv, &from) in gv.iter_mut().zip(gs) {
                *gv = unsafe { _mm512_maskz_loadu_ps(!0, from.wrapping_add(q)) };
            }
            for (t, &from) in xs.iter().enumerate() {
                let xv = unsafe { _mm512_maskz_loadu_ps(!0, from.wrapping_add(q)) };
                for (a, &gv) in acc.iter_mut().zip(&gv) {
                    a[t] = _mm512_fmadd_ps(gv, xv, a[t]);
                }
            }
        }
        acc
    }

    /// `out[kk·stride + t·16..][..16] += acc[kk][t]`.
    #[target_feature(enable = "avx512f")]
    fn add_lanes<const N: usize>(acc: &[[__m512; 9]; N], out: &mut [f32], stride: usize) {
        for (kk, a) in acc.iter().enumerate() {
            for (t, &a) in a.iter().enumerate() {
                let lanes = &mut out[kk * stride + t * LANES..][..LANES];
                let sum = _mm512_add_ps(unsafe { _mm512_loadu_ps(lanes.as_ptr()) }, a);
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sum) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, in f64.
    fn reference(plan: &Plan, x: &[f32], w: &[f32]) -> Vec<f32> {
        let Plan {
            c,
            k,
            h,
            w: wd,
            r,
            s,
            ph,
            pw,
            ..
        } = *plan;
        let mut y = vec![0f32; k * h * wd];
        for kk in 0..k {
            for i in 0..h {
                for j in 0..wd {
                    let mut sum = 0f64;
                    for cc in 0..c {
                        for rr in 0..r {
                            for ss in 0..s {
                                let (ii, jj) = ((i + rr).checked_sub(ph), (j + ss).checked_sub(pw));
                                if let (Some(ii), Some(jj)) = (ii, jj)
                                    && ii < h
                                    && jj < wd
                                {
                                    sum += f64::from(w[((kk * c + cc) * r + rr) * s + ss])
                                        * f64::from(x[(cc * h + ii) * wd + jj]);
                                }
                            }
                        }
                    }
                    y[(kk * h + i) * wd + j] = sum as f32;
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum()
    }

    /// The forward kernel against the definition, the input gradient by
    /// `<conv(x), g> = <x, convᵀ(g)>` and the weight gradient by its
    /// definition, on channel
    /// counts that fill a block, fall short of one and spill into the next,
    /// kernels 1x1 to 3x3 with any padding that keeps the size, widths
    /// around a vector.
    #[test]
    fn kernels_match_the_definition() {
        // Each kernel this CPU runs: AVX2 ones on AVX-512 CPUs too.
        let kernels: Vec<(Vectorised, Isa)> = [
            (Vectorised::Positions, Isa::Avx512),
            (Vectorised::Channels, Isa::Avx512),
            (Vectorised::Channels, Isa::Avx2),
        ]
        .into_iter()
        .filter(|(_, isa)| isa.supported())
        .collect();
        let Some(&(_, best)) = kernels.first() else {
            eprintln!("no AVX2 or AVX-512F on this CPU: nothing here runs these kernels");
            return;
        };
        type Case = ([usize; 3], [usize; 3], [usize; 2]);
        let cases: [Case; 10] = [
            ([3, 8, 8], [4, 3, 3], [1, 1]),
            ([16, 28, 28], [16, 3, 3], [1, 1]),
            ([1, 28, 28], [16, 3, 3], [1, 1]),
            ([5, 7, 7], [17, 3, 3], [1, 1]),
            ([2, 5, 9], [3, 3, 3], [2, 0]),
            ([2, 5, 9], [3, 2, 2], [1, 0]),
            ([4, 6, 17], [9, 1, 1], [0, 0]),
            ([2, 4, 3], [8, 3, 2], [2, 1]),
            ([3, 6, 6], [70, 3, 3], [1, 1]),
            ([2, 4, 5], [40, 3, 3], [1, 1]),
        ];
        for (seed, ([c, h, w], [k, r, s], pad)) in (1..).zip(cases) {
            let plan = Plan::sized([c, h, w], [k, r, s], pad, [1, 1], [h, w], best).unwrap();
            let x = values(c * h * w, seed);
            let wt = values(k * c * r * s, seed + 100);
            let b = values(k, seed + 200);
            let g = values(k * h * w, seed + 300);
            let mut scratch = Vec::new();
            let want = reference(&plan, &x, &wt);
            // Per kernel: its output (with the bias) and dL/dx, which every
            // kernel computes with the same bits (the taps in the same order).
            let mut same_bits: Vec<(String, [Vec<f32>; 2])> = Vec::new();
            // Each kernel (here and in the transposed plan).
            for &(by, isa) in &kernels {
                let what = format!("{c}x{h}x{w} * {k}x{r}x{s}, padding {pad:?}, {by:?} by {isa}");
                let plan = plan.vectorised(by, isa);
                let mut y = vec![f32::NAN; k * h * w];
                for bias in [None, Some(&b[..])] {
                    plan.run(&x, &plan.pack(&wt), bias, &mut scratch, &mut y);
                    for (i, (got, want)) in y.iter().zip(&want).enumerate() {
                        let want = want + bias.map_or(0.0, |b| b[i / (h * w)]);
                        let err = (got - want).abs();
                        assert!(
                            err < 1e-6 * (c * r * s) as f32,
                            "{what}: output {i} is {got}, want {want}"
                        );
                    }
                }
                let t = plan.transposed_sizes().unwrap().vectorised(by, isa);
                let mut gx = vec![f32::NAN; c * h * w];
                t.run(&g, &t.pack_transposed(&wt), None, &mut scratch, &mut gx);
                let (lhs, rhs) = (dot(&want, &g), dot(&x, &gx));
                assert!(
                    (lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0),
                    "{what}: dL/dx {lhs} vs {rhs}"
                );
                same_bits.push((what, [y, gx]));
            }
            for pair in same_bits.windows(2) {
                let ((a, a_values), (b, b_values)) = (&pair[0], &pair[1]);
                assert!(a_values == b_values, "{a} and {b} differ");
            }
            // Per instruction set, the weight gradient with vectors over channels.
            let mut by_channels: Vec<(Isa, Vec<f32>)> = Vec::new();
            let what = format!("{c}x{h}x{w} * {k}x{r}x{s}, padding {pad:?}");
            for &(by, isa) in &kernels {
                let Some(wg) = plan.vectorised(by, isa).weight_grad_by(by) else {
                    continue;
                };
                // Twice: the sums accumulate.
                let mut sums = vec![0f32; wg.sums_len()];
                wg.add_image(&x, &g, &mut scratch, &mut sums);
                wg.add_image(&x, &g, &mut scratch, &mut sums);
                let mut gw_t = vec![0f32; k * c * r * s];
                wg.add_to(&sums, &mut gw_t);
                for (ct, row) in gw_t.chunks(k).enumerate() {
                    let (cc, rr, ss) = (ct / (r * s), ct / s % r, ct % s);
                    for (kk, &got) in row.iter().enumerate() {
                        let mut want = 0f64;
                        for (i, j) in (0..h).flat_map(|i| (0..w).map(move |j| (i, j))) {
                            let (ii, jj) = ((i + rr).checked_sub(pad[0]), (j + ss).checked_sub(pad[1]));
                            if let (Some(ii), Some(jj)) = (ii, jj)
                                && ii < h
                                && jj < w
                            {
                                want += 2.0 * f64::from(g[(kk * h + i) * w + j]) * f64::from(x[(cc * h + ii) * w + jj]);
                            }
                        }
                        let err = (f64::from(got) - want).abs();
                        assert!(
                            err < 1e-5 * want.abs().max(1.0),
                            "{what}, {by:?} by {isa}: dW[{kk}][{ct}] is {got}, want {want}"
                        );
                    }
                }
                if by == Vectorised::Channels {
                    by_channels.push((isa, gw_t));
                }
            }
            if let [(a, a_values), (b, b_values)] = &by_channels[..] {
                assert!(a_values == b_values, "{what}: dL/dW by channels, {a} and {b} differ");
            }
        }
    }
}
