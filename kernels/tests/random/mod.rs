//! Random test inputs shared by the kernel unit tests (`src/tests.rs`) and the GPU kernel tests
//! (`tests/cuda.rs`): the same generator, so both check the same kind of values.
use super::DType;
use half::{bf16, f16};

/// xorshift64* — tiny deterministic PRNG.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Mostly ordinary values in [-4, 4), with NaN, +-inf, +-0, equal pairs and tiny values mixed in.
    pub fn float(&mut self) -> f64 {
        match self.below(64) {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 => 0.0,
            4 => -0.0,
            5 => 1.0,
            6 => 1e-6 * (self.below(1000) as f64 - 500.0),
            _ => (self.below(1 << 20) as f64 / (1u64 << 17) as f64) - 4.0,
        }
    }
}

/// Random bytes for `n` elements of `dtype`.
pub fn gen(dtype: DType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        match dtype {
            DType::F32 => out.extend_from_slice(&(rng.float() as f32).to_ne_bytes()),
            DType::F64 => out.extend_from_slice(&rng.float().to_ne_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f64(rng.float()).to_bits().to_ne_bytes()),
            DType::BF16 => out.extend_from_slice(&bf16::from_f64(rng.float()).to_bits().to_ne_bytes()),
            DType::Bool => out.push(if rng.below(2) == 0 { 0 } else { rng.below(255) as u8 + 1 }),
            _ => {
                // Mix small values (so min/max/prod see ties and signs) with full-range bits.
                let v = if rng.below(4) == 0 { rng.below(7) .wrapping_sub(3) } else { rng.next() };
                out.extend_from_slice(&v.to_ne_bytes()[..dtype.size()]);
            }
        }
    }
    out
}
