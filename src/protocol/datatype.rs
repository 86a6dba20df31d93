//! Open Inference Protocol datatype names and their tract equivalents.
//!
//! The wire names ("FP32", "UINT8", ...) are fixed by the protocol; tract has its own `DatumType`.
//! Keeping the mapping in one table means a datatype is either supported everywhere or nowhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tract_core::prelude::DatumType;

/// A tensor element type as named by the Open Inference Protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    /// Variable-length byte strings: accepted in metadata, not as a numeric tensor.
    Bytes,
}

const TABLE: &[(DataType, &str)] = &[
    (DataType::Bool, "BOOL"),
    (DataType::Uint8, "UINT8"),
    (DataType::Uint16, "UINT16"),
    (DataType::Uint32, "UINT32"),
    (DataType::Uint64, "UINT64"),
    (DataType::Int8, "INT8"),
    (DataType::Int16, "INT16"),
    (DataType::Int32, "INT32"),
    (DataType::Int64, "INT64"),
    (DataType::Fp16, "FP16"),
    (DataType::Fp32, "FP32"),
    (DataType::Fp64, "FP64"),
    (DataType::Bytes, "BYTES"),
];

impl DataType {
    /// The protocol's name for this datatype.
    pub fn as_str(self) -> &'static str {
        TABLE.iter().find(|(d, _)| *d == self).map(|(_, n)| *n).unwrap_or("BYTES")
    }

    /// Bytes per element in the binary tensor extension; `None` for variable-length BYTES.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }

    /// The tract element type, or `None` where tract has no numeric equivalent (BYTES).
    pub fn datum_type(self) -> Option<DatumType> {
        Some(match self {
            DataType::Bool => DatumType::Bool,
            DataType::Uint8 => DatumType::U8,
            DataType::Uint16 => DatumType::U16,
            DataType::Uint32 => DatumType::U32,
            DataType::Uint64 => DatumType::U64,
            DataType::Int8 => DatumType::I8,
            DataType::Int16 => DatumType::I16,
            DataType::Int32 => DatumType::I32,
            DataType::Int64 => DatumType::I64,
            DataType::Fp16 => DatumType::F16,
            DataType::Fp32 => DatumType::F32,
            DataType::Fp64 => DatumType::F64,
            DataType::Bytes => return None,
        })
    }

    /// The protocol datatype for a tract element type, `None` for types the protocol cannot carry
    /// (quantized, complex, strings, ...).
    pub fn from_datum_type(dt: DatumType) -> Option<DataType> {
        Some(match dt {
            DatumType::Bool => DataType::Bool,
            DatumType::U8 => DataType::Uint8,
            DatumType::U16 => DataType::Uint16,
            DatumType::U32 => DataType::Uint32,
            DatumType::U64 => DataType::Uint64,
            DatumType::I8 => DataType::Int8,
            DatumType::I16 => DataType::Int16,
            DatumType::I32 => DataType::Int32,
            DatumType::I64 => DataType::Int64,
            DatumType::F16 => DataType::Fp16,
            DatumType::F32 => DataType::Fp32,
            DatumType::F64 => DataType::Fp64,
            DatumType::String => DataType::Bytes,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name was not one of the protocol's datatypes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown datatype \"{0}\" (expected one of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)")]
pub struct UnknownDataType(pub String);

impl FromStr for DataType {
    type Err = UnknownDataType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TABLE.iter().find(|(_, n)| *n == s).map(|(d, _)| *d).ok_or_else(|| UnknownDataType(s.to_string()))
    }
}

impl Serialize for DataType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DataType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_through_tract() {
        for (dt, name) in TABLE {
            assert_eq!(name.parse::<DataType>().unwrap(), *dt);
            if let Some(datum) = dt.datum_type() {
                assert_eq!(DataType::from_datum_type(datum), Some(*dt));
                assert_eq!(dt.element_size(), Some(datum.size_of()));
            }
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_name() {
        let err = "FLOAT32".parse::<DataType>().unwrap_err();
        assert!(err.to_string().contains("FLOAT32"));
    }
}
