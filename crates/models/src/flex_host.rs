//! Flex tensors as f32 slices, buffers filled without zeroing, element-wise
//! passes split over the rayon pool and matrix products on one thread, for
//! the ops written directly on flex's memory ([`conv`](crate::conv),
//! [`batchnorm`](crate::batchnorm), [`linear`](crate::linear),
//! [`relu`](crate::relu), [`sigmoid`](crate::sigmoid)).

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

/// `t` laid out contiguously (a no-op when it already is), checked to hold f32.
pub(crate) fn to_f32(t: &FlexTensor) -> FlexTensor {
    let t = t.to_contiguous();
    assert_eq!(t.dtype(), DType::F32, "written for f32 tensors");
    t
}

/// The values of a contiguous f32 tensor (see [`to_f32`]).
pub(crate) fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// A flex tensor over `values` in row-major order.
pub(crate) fn f32_tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, Shape::from(shape)))
}

/// `len` floats written by `write`, without zeroing them first (zeroing a
/// layer's output is a pass over memory the kernel then overwrites).
///
/// # Safety
/// `write` initialises every element of the buffer it is given.
pub(crate) unsafe fn written(len: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    write(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: the caller's promise; the capacity is `len`.
    unsafe { values.set_len(len) };
    values
}

/// `values` zeroed, as initialised floats.
pub(crate) fn zeroed(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    values.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `forward(a)` for an element-wise op computed on flex's f32 values, whose
/// backward step (`node`) needs only the output; an autodiff node when `a`
/// is tracked, and `fallback(a)` on other backends or element types.
pub(crate) fn elementwise<const D: usize, N>(
    a: Tensor<D>,
    node: N,
    forward: impl Fn(&FlexTensor) -> FlexTensor,
    fallback: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D>
where
    N: Backward<Flex, 1, State = FlexTensor>,
{
    type Ad = Autodiff<Flex>;
    if let Ok(prim) = a.clone().try_into_primitive::<Ad>() {
        let (x, parent) = prim.into_parts();
        if x.dtype() != DType::F32 {
            return fallback(a);
        }
        let y = forward(&x);
        let out = match node.prepare::<NoCheckpointing>([parent]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return Tensor::from_primitive::<Ad>(out);
    }
    match a.clone().try_into_primitive::<Flex>() {
        Ok(x) if x.dtype() == DType::F32 => Tensor::from_primitive::<Flex>(forward(&x)),
        _ => fallback(a),
    }
}

/// Values per rayon task of an element-wise pass: below this a tensor is one task.
pub(crate) const CHUNK: usize = 1 << 15;

/// `f` of each value of `x` (f32), split over the rayon pool for large tensors.
pub(crate) fn map_f32(x: &FlexTensor, f: impl Fn(f32) -> f32 + Sync) -> FlexTensor {
    let x = to_f32(x);
    let xs = f32s(&x);
    let pass = |(y, x): (&mut [MaybeUninit<f32>], &[f32])| {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(f(x));
        }
    };
    let fill = |y: &mut [MaybeUninit<f32>]| {
        if xs.len() > CHUNK {
            y.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(pass);
        } else {
            pass((y, xs));
        }
    };
    // SAFETY: the chunks of `y` and `xs` pair up one to one, equal in length.
    let values = unsafe { written(xs.len(), fill) };
    f32_tensor(values, x.layout().shape().to_vec())
}

/// `f(a, b)` of each pair of values of `a` and `b` (f32, the same shape),
/// split over the rayon pool for large tensors.
pub(crate) fn zip_map_f32(a: &FlexTensor, b: &FlexTensor, f: impl Fn(f32, f32) -> f32 + Sync) -> FlexTensor {
    let (a, b) = (to_f32(a), to_f32(b));
    assert_eq!(
        a.layout().shape().to_vec(),
        b.layout().shape().to_vec(),
        "element-wise pass over two shapes"
    );
    let (xs, ys) = (f32s(&a), f32s(&b));
    let pass = |out: &mut [MaybeUninit<f32>], x: &[f32], y: &[f32]| {
        for (o, (&x, &y)) in out.iter_mut().zip(x.iter().zip(y)) {
            o.write(f(x, y));
        }
    };
    let fill = |out: &mut [MaybeUninit<f32>]| {
        if xs.len() > CHUNK {
            out.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK).zip(ys.par_chunks(CHUNK)))
                .for_each(|(out, (x, y))| pass(out, x, y));
        } else {
            pass(out, xs, ys);
        }
    };
    // SAFETY: the chunks of `out`, `xs` and `ys` pair up one to one, equal in length.
    let values = unsafe { written(xs.len(), fill) };
    f32_tensor(values, a.layout().shape().to_vec())
}

/// A matrix over a slice: `rows x cols`, element `(i, j)` at `i·rs + j·cs`.
pub(crate) struct Mat<S> {
    data: S,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<S: AsRef<[f32]>> Mat<S> {
    /// The first `rows·cols` values of `data`, row by row.
    pub(crate) fn rows(data: S, rows: usize, cols: usize) -> Self {
        assert!(
            data.as_ref().len() >= rows * cols,
            "a {rows}x{cols} matrix over {} values",
            data.as_ref().len()
        );
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// `rows x cols` values of `data` at row stride `rs` and column stride `cs`.
    pub(crate) fn strided(data: S, rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        let last = (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
        assert!(
            rows * cols == 0 || last < data.as_ref().len(),
            "a {rows}x{cols} matrix at strides ({rs}, {cs}) over {} values",
            data.as_ref().len()
        );
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The same values as the transpose (no copy).
    pub(crate) fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, on one thread
/// (the callers split the work).
pub(crate) fn matmul(dst: Mat<&mut [f32]>, lhs: Mat<&[f32]>, rhs: Mat<&[f32]>, accumulate: bool) {
    assert!(
        lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows,
        "matmul of {}x{} by {}x{} into {}x{}",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols,
        dst.rows,
        dst.cols
    );
    let stride = |s: usize| s as isize;
    // SAFETY: `Mat::rows` checked that each slice holds its rows x cols values
    // at the strides given (a transpose addresses the same values), and the
    // shapes agree (above); `dst` is borrowed mutably, the others shared.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr(),
            stride(dst.cs),
            stride(dst.rs),
            accumulate,
            lhs.data.as_ptr(),
            stride(lhs.cs),
            stride(lhs.rs),
            rhs.data.as_ptr(),
            stride(rhs.cs),
            stride(rhs.rs),
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
