//! Element types and reduce operations.

/// Element type of a buffer. Discriminants are stable (they cross the C ABI and the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 64-bit IEEE float.
    F64,
    /// 16-bit IEEE half float.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Boolean, one byte (0 or 1).
    Bool,
    /// Unsigned 16-bit integer (data movement only).
    U16,
    /// Unsigned 32-bit integer (data movement only).
    U32,
    /// Unsigned 64-bit integer (data movement only).
    U64,
    /// fp8 E4M3 (`float8_e4m3fn`; data movement only).
    F8E4M3,
    /// fp8 E5M2 (`float8_e5m2`; data movement only).
    F8E5M2,
}

const ALL_DTYPES: [DType; 15] = [
    DType::F32,
    DType::F64,
    DType::F16,
    DType::BF16,
    DType::I8,
    DType::U8,
    DType::I16,
    DType::I32,
    DType::I64,
    DType::Bool,
    DType::U16,
    DType::U32,
    DType::U64,
    DType::F8E4M3,
    DType::F8E5M2,
];

const REDUCIBLE_DTYPES: [DType; 10] = [
    DType::F32,
    DType::F64,
    DType::F16,
    DType::BF16,
    DType::I8,
    DType::U8,
    DType::I16,
    DType::I32,
    DType::I64,
    DType::Bool,
];

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        use DType::*;
        match self {
            F32 | I32 | U32 => 4,
            F64 | I64 | U64 => 8,
            F16 | BF16 | I16 | U16 => 2,
            I8 | U8 | Bool | F8E4M3 | F8E5M2 => 1,
        }
    }

    /// The torch name (`torch.float32` -> "float32").
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "float32",
            F64 => "float64",
            F16 => "float16",
            BF16 => "bfloat16",
            I8 => "int8",
            U8 => "uint8",
            I16 => "int16",
            I32 => "int32",
            I64 => "int64",
            Bool => "bool",
            U16 => "uint16",
            U32 => "uint32",
            U64 => "uint64",
            F8E4M3 => "float8_e4m3fn",
            F8E5M2 => "float8_e5m2",
        }
    }

    /// The nccl-tests style name ("float", "double", "half", ...).
    pub fn short_name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "float",
            F64 => "double",
            F16 => "half",
            BF16 => "bfloat16",
            I8 => "int8",
            U8 => "uint8",
            I16 => "int16",
            I32 => "int32",
            I64 => "int64",
            Bool => "bool",
            U16 => "uint16",
            U32 => "uint32",
            U64 => "uint64",
            F8E4M3 => "f8e4m3",
            F8E5M2 => "f8e5m2",
        }
    }

    /// Parses a torch name, an nccl-tests name or a short Rust-style alias ("f32", "bf16", "u8", ...).
    pub fn from_name(s: &str) -> Option<DType> {
        use DType::*;
        if let Some(d) = ALL_DTYPES.iter().copied().find(|d| d.name() == s || d.short_name() == s) {
            return Some(d);
        }
        Some(match s {
            "f32" => F32,
            "f64" => F64,
            "f16" => F16,
            "bf16" => BF16,
            "i8" => I8,
            "u8" => U8,
            "i16" => I16,
            "i32" => I32,
            "i64" => I64,
            "u16" => U16,
            "u32" => U32,
            "u64" => U64,
            _ => return None,
        })
    }

    /// Every dtype, in discriminant order.
    pub fn all() -> &'static [DType] {
        &ALL_DTYPES
    }

    /// The dtypes that have reductions: F32, F64, F16, BF16, I8, U8, I16, I32, I64, Bool.
    pub fn reducible() -> &'static [DType] {
        &REDUCIBLE_DTYPES
    }

    /// Floating point (including the fp8 formats).
    pub fn is_float(self) -> bool {
        use DType::*;
        matches!(self, F32 | F64 | F16 | BF16 | F8E4M3 | F8E5M2)
    }

    pub(crate) fn is_reducible(self) -> bool {
        REDUCIBLE_DTYPES.contains(&self)
    }

    /// The dtype with discriminant `v`, if any.
    pub fn from_u8(v: u8) -> Option<DType> {
        ALL_DTYPES.get(v as usize).copied()
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reduction operation. Discriminants are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReduceOp {
    /// Sum.
    Sum = 0,
    /// Product.
    Prod,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Mean: the sum divided by the number of contributions ([`crate::finalize_avg`]).
    Avg,
    /// Bitwise and (logical and for bool).
    BAnd,
    /// Bitwise or (logical or for bool).
    BOr,
    /// Bitwise xor (logical xor for bool).
    BXor,
}

const ALL_OPS: [ReduceOp; 8] = [
    ReduceOp::Sum,
    ReduceOp::Prod,
    ReduceOp::Min,
    ReduceOp::Max,
    ReduceOp::Avg,
    ReduceOp::BAnd,
    ReduceOp::BOr,
    ReduceOp::BXor,
];

impl ReduceOp {
    /// The lowercase name ("sum", "prod", ..., "band", "bor", "bxor").
    pub fn name(self) -> &'static str {
        use ReduceOp::*;
        match self {
            Sum => "sum",
            Prod => "prod",
            Min => "min",
            Max => "max",
            Avg => "avg",
            BAnd => "band",
            BOr => "bor",
            BXor => "bxor",
        }
    }

    /// Parses the names of [`ReduceOp::name`].
    pub fn from_name(s: &str) -> Option<ReduceOp> {
        ALL_OPS.iter().copied().find(|o| o.name() == s)
    }

    /// Every op, in discriminant order.
    pub fn all() -> &'static [ReduceOp] {
        &ALL_OPS
    }

    /// The op with discriminant `v`, if any.
    pub fn from_u8(v: u8) -> Option<ReduceOp> {
        ALL_OPS.get(v as usize).copied()
    }
}

impl std::fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
