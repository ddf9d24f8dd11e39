//! A stride-1 convolution that keeps the image's size, computed directly
//! (no im2col matrix) by AVX-512 kernels, on CPUs that have AVX-512F.
//!
//! For such a convolution every kernel offset `(r, s)` reads the zero-padded
//! image shifted by `r·Wp + s` (`Wp = W + S - 1` the padded width). Computed
//! on the padded grid `q = i·Wp + j` (the `S - 1` columns `j >= W` of each
//! row are thrown away), a vector of output positions reads one contiguous
//! vector of the padded plane per offset:
//!
//! `y[k][q..q+16] = Σ_{c,r,s} W[k,c,r,s] · xpad[c][q + r·Wp + s..][..16]`
//!
//! The input gradient is again such a convolution (of the output gradient,
//! with the weights transposed and flipped), and the weight gradient of a 3x3
//! kernel is `dW[k,c,r,s] = Σ_q g[k][q] · xpad[c][q + r·Wp + s]` with `g` on
//! the same grid (zero in the thrown-away columns). [`conv`](crate::conv)
//! uses these for all three where they apply; other convolutions, and CPUs
//! without AVX-512 (where no benchmark has shown these kernels to beat
//! im2col + gemm), keep im2col + gemm.

/// Floats per vector.
const LANES: usize = 16;
/// Output channels per block of the convolution kernel (accumulators per vector).
const BLOCK: usize = 8;
/// Vectors of positions per step of the convolution kernel.
const VECTORS: usize = 2;
/// Output channels per step of the weight-gradient kernel (9 accumulators each).
const GRAD_BLOCK: usize = 3;
/// The smallest padded grid (positions per channel) on which the
/// weight-gradient kernel is used (BENCHMARKS.md: faster than im2col + gemm
/// on ResNet-20's 28x28 layers, slower on its 14x14 and 7x7 ones).
const GRAD_MIN_GRID: usize = 512;

/// Whether this CPU runs the kernels.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A convolution's weights in the kernel's order, and where each vector of
/// grid positions goes in the output: computed once per layer call.
pub(crate) struct Packed {
    weights: Vec<f32>,
    stores: Vec<Store>,
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
    h: usize,
    w: usize,
    r: usize,
    s: usize,
    /// Padding before the rows and the columns.
    ph: usize,
    pw: usize,
    /// Padded width.
    wp: usize,
    /// Floats per padded input plane (with slack for the last vectors' reads).
    plane: usize,
    /// Output grid positions per channel, a whole number of steps.
    grid: usize,
}

impl Plan {
    /// A plan for `[C, H, W]` images, `[K, C, R, S]` weights and the padding
    /// before rows and columns (`ph < R`, `pw < S`; the output is `H x W`),
    /// `None` when this CPU lacks AVX-512F.
    pub(crate) fn new([c, h, w]: [usize; 3], [k, r, s]: [usize; 3], [ph, pw]: [usize; 2]) -> Option<Self> {
        assert!(ph < r && pw < s, "padding {ph},{pw} for a {r}x{s} kernel keeps no size");
        let step = LANES * VECTORS;
        let wp = w + s - 1;
        available().then(|| Self {
            c,
            k,
            h,
            w,
            r,
            s,
            ph,
            pw,
            wp,
            plane: (h + r - 1) * wp + s + step,
            grid: (h * wp).div_ceil(step) * step,
        })
    }

    /// The plan of this convolution's input gradient: `dL/dx = conv(dL/dy, W')`
    /// with `W'[c][k][r][s] = W[k][c][R-1-r][S-1-s]` and the end padding first.
    pub(crate) fn transposed(&self) -> Self {
        Self {
            c: self.k,
            k: self.c,
            ph: self.r - 1 - self.ph,
            pw: self.s - 1 - self.pw,
            ..*self
        }
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
            stores: self.stores(),
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

    /// One image: `y` (`[K, H, W]`) = the convolution of `x` (`[C, H, W]`)
    /// with the packed weights, plus `bias` (`[K]`) when given.
    #[cfg(test)]
    pub(crate) fn run(&self, x: &[f32], packed: &Packed, bias: Option<&[f32]>, scratch: &mut Vec<f32>, y: &mut [f32]) {
        // SAFETY: `run_uninit` writes only initialised floats.
        let y = unsafe { &mut *(y as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
        self.run_uninit(x, packed, bias, scratch, y);
    }

    /// [`Plan::run`] into memory not yet initialised: every value of `y` is written.
    pub(crate) fn run_uninit(
        &self,
        x: &[f32],
        packed: &Packed,
        bias: Option<&[f32]>,
        scratch: &mut Vec<f32>,
        y: &mut [std::mem::MaybeUninit<f32>],
    ) {
        assert_eq!(y.len(), self.k * self.h * self.w);
        assert_eq!(packed.weights.len(), self.blocks() * self.taps() * BLOCK);
        assert_eq!(packed.stores.len(), self.grid / LANES);
        assert!(bias.is_none_or(|b| b.len() == self.k));
        scratch.resize(self.c * self.plane, 0.0);
        self.pad_input(x, scratch);
        let mut init = vec![0f32; self.blocks() * BLOCK];
        if let Some(b) = bias {
            init[..self.k].copy_from_slice(b);
        }
        // SAFETY: a `Plan` exists only where `available()`; the slices are
        // sized as `x86::convolve` requires (asserted there).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::convolve(self, scratch, packed, &init, y)
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

    /// Whether [`Plan::weight_grad`] computes this convolution's weight
    /// gradient (a 3x3 kernel).
    pub(crate) fn has_weight_grad(&self) -> bool {
        self.r == 3 && self.s == 3
    }

    /// Whether [`Plan::weight_grad`] beats im2col + gemm here: on planes of
    /// at least [`GRAD_MIN_GRID`] positions. On smaller ones each channel
    /// pair's accumulators are set up and summed for too few multiply-adds.
    pub(crate) fn weight_grad_pays(&self) -> bool {
        self.has_weight_grad() && self.grid >= GRAD_MIN_GRID
    }

    /// Floats of the per-lane weight-gradient sums (`[K, C, 9, 16]`).
    pub(crate) fn weight_grad_len(&self) -> usize {
        self.k * self.c * 9 * LANES
    }

    /// Adds one image's weight gradient, per lane, to `sums`
    /// (`[K, C, 9, 16]`, see [`Plan::add_weight_grad`]): `x` is the image
    /// (`[C, H, W]`), `g` its output gradient (`[K, H, W]`).
    pub(crate) fn weight_grad(&self, x: &[f32], g: &[f32], scratch: &mut Vec<f32>, sums: &mut [f32]) {
        assert!(self.has_weight_grad(), "a {}x{} kernel", self.r, self.s);
        assert_eq!(g.len(), self.k * self.h * self.w);
        assert_eq!(sums.len(), self.weight_grad_len());
        scratch.resize(self.c * self.plane + self.k * self.grid, 0.0);
        let (xpad, gpad) = scratch.split_at_mut(self.c * self.plane);
        self.pad_input(x, xpad);
        for (to, from) in gpad.chunks_mut(self.grid).zip(g.chunks(self.h * self.w)) {
            to.fill(0.0);
            for (i, row) in from.chunks(self.w).enumerate() {
                to[i * self.wp..][..self.w].copy_from_slice(row);
            }
        }
        // SAFETY: as in `run`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::weight_grad(self, xpad, gpad, sums)
        };
    }

    /// Adds the lanes of [`Plan::weight_grad`]'s `sums` to `gw_t`, the
    /// weight gradient transposed (`[C·9, K]`).
    pub(crate) fn add_weight_grad(&self, sums: &[f32], gw_t: &mut [f32]) {
        for (i, lanes) in sums.chunks(LANES).enumerate() {
            let (k, ct) = (i / (self.c * 9), i % (self.c * 9));
            gw_t[ct * self.k + k] += lanes.iter().sum::<f32>();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{BLOCK, GRAD_BLOCK, LANES, Packed, Plan, Store, VECTORS};

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
    pub(super) unsafe fn convolve(p: &Plan, xpad: &[f32], packed: &Packed, init: &[f32], y: &mut [MaybeUninit<f32>]) {
        assert!(p.grid.is_multiple_of(LANES * VECTORS) && p.grid + (p.r - 1) * p.wp + p.s - 1 <= p.plane);
        assert!(xpad.len() >= p.c * p.plane && y.len() == p.k * p.h * p.w);
        let (taps, hw) = (p.taps(), p.h * p.w);
        let Packed {
            weights: packed,
            stores,
        } = packed;
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
        if !available() {
            eprintln!("no AVX-512F on this CPU: nothing here runs these kernels");
            return;
        }
        type Case = ([usize; 3], [usize; 3], [usize; 2]);
        let cases: [Case; 8] = [
            ([3, 8, 8], [4, 3, 3], [1, 1]),
            ([16, 28, 28], [16, 3, 3], [1, 1]),
            ([1, 28, 28], [16, 3, 3], [1, 1]),
            ([5, 7, 7], [17, 3, 3], [1, 1]),
            ([2, 5, 9], [3, 3, 3], [2, 0]),
            ([2, 5, 9], [3, 2, 2], [1, 0]),
            ([4, 6, 17], [9, 1, 1], [0, 0]),
            ([2, 4, 3], [8, 3, 2], [2, 1]),
        ];
        for (seed, ([c, h, w], [k, r, s], pad)) in (1..).zip(cases) {
            let plan = Plan::new([c, h, w], [k, r, s], pad).unwrap();
            let what = format!("{c}x{h}x{w} * {k}x{r}x{s}, padding {pad:?}");
            let x = values(c * h * w, seed);
            let wt = values(k * c * r * s, seed + 100);
            let b = values(k, seed + 200);
            let mut scratch = Vec::new();
            let want = reference(&plan, &x, &wt);
            for bias in [None, Some(&b[..])] {
                let mut y = vec![f32::NAN; k * h * w];
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
            let g = values(k * h * w, seed + 300);
            let t = plan.transposed();
            let mut gx = vec![f32::NAN; c * h * w];
            t.run(&g, &t.pack_transposed(&wt), None, &mut scratch, &mut gx);
            let (lhs, rhs) = (dot(&want, &g), dot(&x, &gx));
            assert!(
                (lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0),
                "{what}: dL/dx {lhs} vs {rhs}"
            );
            if !plan.has_weight_grad() {
                continue;
            }
            // Twice: the sums accumulate.
            let mut sums = vec![0f32; plan.weight_grad_len()];
            plan.weight_grad(&x, &g, &mut scratch, &mut sums);
            plan.weight_grad(&x, &g, &mut scratch, &mut sums);
            let mut gw_t = vec![0f32; k * c * 9];
            plan.add_weight_grad(&sums, &mut gw_t);
            for (ct, row) in gw_t.chunks(k).enumerate() {
                let (cc, rr, ss) = (ct / 9, ct / 3 % 3, ct % 3);
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
                        "{what}: dW[{kk}][{ct}] is {got}, want {want}"
                    );
                }
            }
        }
    }
}
