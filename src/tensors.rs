//! Plain slices in and out of tract tensors, in one place: tract's accessors for them changed
//! between releases, and strings and blobs (not `Copy`) need their own constructor.

use tract_core::ndarray::ArrayD;
use tract_core::prelude::{Datum, Tensor, TractResult};

/// The elements of a tensor in row-major order.
pub fn elements<T: Datum>(tensor: &Tensor) -> TractResult<&[T]> {
    tensor.try_as_plain_ram()?.as_slice::<T>()
}

/// A tensor of `shape` holding `data` (any element type, strings and blobs included).
pub fn tensor_of<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<Tensor> {
    Ok(ArrayD::from_shape_vec(shape, data)?.into())
}
