//! Flex tensors as f32 slices, for the ops written directly on flex's memory
//! ([`conv`](crate::conv), [`batchnorm`](crate::batchnorm)).

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, TensorData};

/// `t` laid out contiguously (a no-op when it already is), checked to hold f32.
pub(crate) fn to_f32(t: &FlexTensor) -> FlexTensor {
    let t = t.to_contiguous();
    assert_eq!(t.dtype(), DType::F32, "written for f32 tensors");
    t
}

/// A flex tensor over `values` in row-major order.
pub(crate) fn f32_tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, Shape::from(shape)))
}
