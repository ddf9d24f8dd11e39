//! im2col and its adjoint col2im: an image unfolded into the matrix of the
//! patches a convolution reads (`[C·R·S, L]`, `L` output positions), and
//! such a matrix added back into an image, for [`conv`](crate::conv)'s
//! im2col + gemm path. A size-keeping stride-1 convolution's rows are the
//! image shifted (one copy per row); other strides and paddings copy row by
//! row. Knows nothing of tensors or autodiff.

use crate::conv::Geometry;

/// The output positions `o` whose input position `o·stride + offset - pad`
/// lies in `0..size_in`, as a range within `0..size_out`.
#[inline]
fn inside(size_in: usize, size_out: usize, offset: usize, stride: usize, pad: usize) -> std::ops::Range<usize> {
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    let hi = if size_in + pad > offset {
        ((size_in + pad - offset - 1) / stride + 1).min(size_out)
    } else {
        0
    };
    lo.min(hi)..hi
}

/// One image's im2col: `col[(c·R + r)·S + s][oh·Wo + ow] = x[c][oh·sh + r - ph][ow·sw + s - pw]` (0 outside).
pub(crate) fn im2col(geo: &Geometry, x: &[f32], col: &mut [f32]) {
    let l = geo.l();
    let [sh, sw] = geo.stride;
    for c in 0..geo.c {
        let plane = &x[c * geo.h * geo.w..][..geo.h * geo.w];
        for r in 0..geo.r {
            let rows = inside(geo.h, geo.ho, r, sh, geo.pad[0]);
            for s in 0..geo.s {
                let cols = inside(geo.w, geo.wo, s, sw, geo.pad[1]);
                let dst = &mut col[((c * geo.r + r) * geo.s + s) * l..][..l];
                if geo.keeps_size() {
                    shifted_copy(geo, plane, r, s, cols, dst);
                    continue;
                }
                // Zeros first in one pass (per output row, a fill of the one
                // or two padded columns would be a `memset` call each).
                dst.fill(0.0);
                if cols.is_empty() {
                    // No output column reads inside the image (its `first`
                    // below would not be an input column).
                    continue;
                }
                for oh in rows.clone() {
                    let src = &plane[(oh * sh + r - geo.pad[0]) * geo.w..][..geo.w];
                    let out = &mut dst[oh * geo.wo..][..geo.wo];
                    // The first input column this row reads.
                    let first = cols.start * sw + s - geo.pad[1];
                    if sw == 1 {
                        out[cols.clone()].copy_from_slice(&src[first..first + cols.len()]);
                    } else {
                        for (d, v) in out[cols.clone()].iter_mut().zip(src[first..].iter().step_by(sw)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`]'s row for kernel offset `(r, s)` of a stride-1 convolution that
/// keeps the image's size: the plane shifted by `(r - ph)·W + (s - pw)` in one
/// copy, then zeros where a shifted row wraps into its neighbour (the output
/// columns outside `cols`). Rows that fall outside the image are exactly the
/// flat positions the shift moves outside the plane.
fn shifted_copy(geo: &Geometry, plane: &[f32], r: usize, s: usize, cols: std::ops::Range<usize>, dst: &mut [f32]) {
    let (from, range) = geo.shifted(r, s);
    dst[..range.start].fill(0.0);
    dst[range.end..].fill(0.0);
    dst[range.clone()].copy_from_slice(&plane[from..from + range.len()]);
    zero_columns(dst, geo.w, cols);
}

/// The adjoint of [`shifted_copy`]: `plane += src` shifted back, after
/// zeroing `src`'s wrapped columns (which belong to no input position).
fn shifted_add(geo: &Geometry, src: &mut [f32], r: usize, s: usize, cols: std::ops::Range<usize>, plane: &mut [f32]) {
    zero_columns(src, geo.w, cols);
    let (from, range) = geo.shifted(r, s);
    let len = range.len();
    for (d, v) in plane[from..from + len].iter_mut().zip(&src[range]) {
        *d += v;
    }
}

/// Zeroes the columns outside `keep` of a `? x width` matrix, column by
/// column: a fill of one or two values per row would be a `memset` call each.
fn zero_columns(m: &mut [f32], width: usize, keep: std::ops::Range<usize>) {
    for col in (0..keep.start).chain(keep.end..width) {
        for v in m[col..].iter_mut().step_by(width) {
            *v = 0.0;
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry back to the input
/// position it was read from (`col` is scratch: entries that belong to no
/// input position may be zeroed).
pub(crate) fn col2im(geo: &Geometry, col: &mut [f32], x: &mut [f32]) {
    let l = geo.l();
    let [sh, sw] = geo.stride;
    for c in 0..geo.c {
        let plane = &mut x[c * geo.h * geo.w..][..geo.h * geo.w];
        for r in 0..geo.r {
            let rows = inside(geo.h, geo.ho, r, sh, geo.pad[0]);
            for s in 0..geo.s {
                let cols = inside(geo.w, geo.wo, s, sw, geo.pad[1]);
                let src = &mut col[((c * geo.r + r) * geo.s + s) * l..][..l];
                if geo.keeps_size() {
                    shifted_add(geo, src, r, s, cols, plane);
                    continue;
                }
                if cols.is_empty() {
                    continue;
                }
                for oh in rows.clone() {
                    let dst = &mut plane[(oh * sh + r - geo.pad[0]) * geo.w..][..geo.w];
                    let vals = &src[oh * geo.wo..][..geo.wo][cols.clone()];
                    let first = cols.start * sw + s - geo.pad[1];
                    if sw == 1 {
                        for (d, v) in dst[first..first + vals.len()].iter_mut().zip(vals) {
                            *d += v;
                        }
                    } else {
                        for (d, v) in dst[first..].iter_mut().step_by(sw).zip(vals) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col against its definition, and col2im as its adjoint
    /// (`<im2col(x), m> = <x, col2im(m)>`), on strides 1 to 3, paddings 0 to
    /// 2, one-row and one-column maps (where some kernel rows or columns
    /// read only padding) and 1x1 to 5x5 kernels.
    #[test]
    fn im2col_matches_its_definition_and_col2im_its_adjoint() {
        for (c, h, w) in [(2, 5, 6), (1, 7, 7), (3, 14, 14), (1, 1, 9), (2, 6, 1)] {
            for (r, s) in [(1, 1), (3, 3), (2, 3), (5, 5)] {
                for stride in [[1, 1], [2, 2], [1, 2], [3, 3]] {
                    for pad in [[0, 0], [1, 1], [2, 1]] {
                        if h + 2 * pad[0] < r || w + 2 * pad[1] < s {
                            continue;
                        }
                        let out = |size: usize, k: usize, st: usize, p: usize| (size + 2 * p - k) / st + 1;
                        let (ho, wo) = (out(h, r, stride[0], pad[0]), out(w, s, stride[1], pad[1]));
                        let geo = Geometry {
                            n: 1,
                            c,
                            h,
                            w,
                            k: 1,
                            r,
                            s,
                            stride,
                            pad,
                            ho,
                            wo,
                        };
                        let x: Vec<f32> = (0..c * h * w).map(|i| (i % 13) as f32 - 6.0).collect();
                        let mut col = vec![f32::NAN; geo.crs() * geo.l()];
                        im2col(&geo, &x, &mut col);
                        for (i, &got) in col.iter().enumerate() {
                            let (row, pos) = (i / geo.l(), i % geo.l());
                            let (cc, rr, ss) = (row / (r * s), row / s % r, row % s);
                            let ih = ((pos / wo) * stride[0] + rr).checked_sub(pad[0]).filter(|&v| v < h);
                            let iw = ((pos % wo) * stride[1] + ss).checked_sub(pad[1]).filter(|&v| v < w);
                            let want = match (ih, iw) {
                                (Some(ih), Some(iw)) => x[(cc * h + ih) * w + iw],
                                _ => 0.0,
                            };
                            assert_eq!(got, want, "{geo:?}: row {row}, position {pos}");
                        }
                        let m: Vec<f32> = (0..col.len()).map(|i| (i % 7) as f32 - 3.0).collect();
                        let mut back = vec![0f32; x.len()];
                        col2im(&geo, &mut m.clone(), &mut back);
                        let lhs: f64 = col.iter().zip(&m).map(|(a, b)| f64::from(a * b)).sum();
                        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| f64::from(a * b)).sum();
                        assert_eq!(lhs, rhs, "{geo:?}: col2im is not im2col's adjoint");
                    }
                }
            }
        }
    }

    /// The in-bounds output range against a direct check of every position.
    #[test]
    fn inside_ranges_match_a_direct_check() {
        for size_in in 1usize..9 {
            for stride in 1usize..4 {
                for pad in 0usize..3 {
                    for offset in 0usize..4 {
                        let size_out = size_in + 2;
                        let want: Vec<usize> = (0..size_out)
                            .filter(|&o| (o * stride + offset).checked_sub(pad).is_some_and(|i| i < size_in))
                            .collect();
                        let got: Vec<usize> = inside(size_in, size_out, offset, stride, pad).collect();
                        assert_eq!(
                            got, want,
                            "in {size_in} out {size_out} offset {offset} stride {stride} pad {pad}"
                        );
                    }
                }
            }
        }
    }
}
