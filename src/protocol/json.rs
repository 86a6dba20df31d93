//! JSON tensor data: each input's `data` kept as an unparsed slice and converted straight into a
//! typed buffer for its declared datatype, flat or nested, so numbers never pass through a generic
//! JSON value tree.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tract_core::prelude::{f16, Datum, Tensor};

use super::datatype::DataType;
use super::error::DecodeError;

pub(super) fn tensor_from_json(
    name: &str,
    datatype: DataType,
    shape: &[usize],
    count: usize,
    data: &RawValue,
) -> Result<Tensor, DecodeError> {
    fn typed<T: JsonElement>(
        name: &str,
        shape: &[usize],
        count: usize,
        data: &RawValue,
    ) -> Result<Tensor, DecodeError> {
        // A lying shape must not make us reserve gigabytes: every value takes at least one byte of JSON.
        let mut values: Vec<T> = Vec::with_capacity(count.min(data.get().len()));
        let mut de = serde_json::Deserializer::from_str(data.get());
        Flatten { out: &mut values, limit: count }
            .deserialize(&mut de)
            .map_err(|e| DecodeError::BadData { name: name.to_string(), message: clean_serde_message(&e) })?;
        if values.len() != count {
            return Err(DecodeError::LengthMismatch {
                name: name.to_string(),
                shape: shape.to_vec(),
                expected: count,
                actual: values.len(),
            });
        }
        Tensor::from_shape(shape, &values)
            .map_err(|e| DecodeError::BadData { name: name.to_string(), message: e.to_string() })
    }
    match datatype {
        DataType::Bool => typed::<bool>(name, shape, count, data),
        DataType::Uint8 => typed::<u8>(name, shape, count, data),
        DataType::Uint16 => typed::<u16>(name, shape, count, data),
        DataType::Uint32 => typed::<u32>(name, shape, count, data),
        DataType::Uint64 => typed::<u64>(name, shape, count, data),
        DataType::Int8 => typed::<i8>(name, shape, count, data),
        DataType::Int16 => typed::<i16>(name, shape, count, data),
        DataType::Int32 => typed::<i32>(name, shape, count, data),
        DataType::Int64 => typed::<i64>(name, shape, count, data),
        DataType::Fp16 => typed::<f16>(name, shape, count, data),
        DataType::Fp32 => typed::<f32>(name, shape, count, data),
        DataType::Fp64 => typed::<f64>(name, shape, count, data),
        DataType::Bytes => unreachable!("BYTES inputs are decoded apart"),
    }
}

/// serde_json appends "at line 1 column N" positions relative to the `data` slice, which would
/// mislead a reader of the whole request; the message itself is what matters.
pub(super) fn clean_serde_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(pos) => msg[..pos].to_string(),
        None => msg,
    }
}

/// An element type that JSON numbers (or booleans) convert into without loss of meaning.
trait JsonElement: Datum + Copy {
    const NAME: &'static str;
    fn from_f64(v: f64) -> Option<Self>;
    fn from_i64(v: i64) -> Option<Self>;
    fn from_u64(v: u64) -> Option<Self>;
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
}

macro_rules! integer_element {
    ($($t:ty => $name:literal),*) => {$(
        impl JsonElement for $t {
            const NAME: &'static str = $name;
            fn from_f64(v: f64) -> Option<Self> {
                (v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64).then(|| v as $t)
            }
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
        }
    )*};
}
integer_element!(u8 => "UINT8", u16 => "UINT16", u32 => "UINT32", u64 => "UINT64",
                 i8 => "INT8", i16 => "INT16", i32 => "INT32", i64 => "INT64");

macro_rules! float_element {
    ($($t:ty => $name:literal, $from:expr),*) => {$(
        impl JsonElement for $t {
            const NAME: &'static str = $name;
            fn from_f64(v: f64) -> Option<Self> {
                Some($from(v))
            }
            fn from_i64(v: i64) -> Option<Self> {
                Some($from(v as f64))
            }
            fn from_u64(v: u64) -> Option<Self> {
                Some($from(v as f64))
            }
        }
    )*};
}
float_element!(f32 => "FP32", |v: f64| v as f32, f64 => "FP64", |v: f64| v, f16 => "FP16", f16::from_f64);

impl JsonElement for bool {
    const NAME: &'static str = "BOOL";
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

/// Pushes the leaves of arbitrarily nested JSON arrays into one flat buffer, in row-major order.
struct Flatten<'v, T> {
    out: &'v mut Vec<T>,
    limit: usize,
}

impl<'de, T: JsonElement> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<T: JsonElement> Flatten<'_, T> {
    fn push<E: serde::de::Error>(self, v: Option<T>, shown: &dyn fmt::Display) -> Result<(), E> {
        if self.out.len() == self.limit {
            return Err(E::custom(format!("more values than the shape holds ({})", self.limit)));
        }
        let v = v.ok_or_else(|| E::custom(format!("{shown} is not a valid {} value", T::NAME)))?;
        self.out.push(v);
        Ok(())
    }
}

impl<'de, T: JsonElement> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} values, as a flat or nested array", T::NAME)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten { out: &mut *self.out, limit: self.limit })?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), &v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), &v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), &v)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), &v)
    }
}
