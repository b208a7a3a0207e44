//! Micro-benchmark of the CPU reduce kernels (single thread).
//!
//! `cargo run -p chorus-kernels --release --example reduce_bench [MiB] [label filter]`
//!
//! "algbw" = accumulator bytes / time; "mem" = bytes actually moved ((1 + k) reads + 1 write) / time.

use chorus_kernels::{reduce_accumulate, reduce_into, DType, ReduceOp};
use std::time::Instant;

fn bench(label: &str, dtype: DType, op: ReduceOp, bytes: usize, k: usize, into: bool) {
    if let Some(filter) = std::env::args().nth(2) {
        if !label.contains(filter.as_str()) {
            return;
        }
    }
    // Misalign everything by 1..7 bytes to exercise the any-alignment path; fill after slicing so the
    // elements hold sensible values (no subnormals or NaNs from torn patterns).
    let fill = |v: &mut [u8], i: usize| {
        for (j, c) in v.chunks_exact_mut(dtype.size()).enumerate() {
            let x = ((j * 7 + i * 13) % 17) as f64 * 0.01 + 0.5;
            match dtype {
                DType::F16 => c.copy_from_slice(&half::f16::from_f64(x).to_bits().to_ne_bytes()),
                DType::BF16 => c.copy_from_slice(&half::bf16::from_f64(x).to_bits().to_ne_bytes()),
                DType::F32 => c.copy_from_slice(&(x as f32).to_ne_bytes()),
                DType::F64 => c.copy_from_slice(&x.to_ne_bytes()),
                _ => c.iter_mut().for_each(|b| *b = (j ^ i) as u8),
            }
        }
    };
    let mut acc_store = vec![0u8; bytes + 8];
    let acc = &mut acc_store[1..1 + bytes];
    fill(acc, 99);
    let srcs_store: Vec<(usize, Vec<u8>)> = (0..k + 1)
        .map(|i| {
            let off = 1 + (i + 1) % 7;
            let mut v = vec![0u8; bytes + 8];
            fill(&mut v[off..off + bytes], i);
            (off, v)
        })
        .collect();
    let srcs: Vec<&[u8]> = srcs_store.iter().map(|(off, v)| &v[*off..*off + bytes]).collect();
    let reps = 10;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        if into {
            reduce_into(dtype, op, acc, &srcs[..k + 1]).unwrap();
        } else {
            reduce_accumulate(dtype, op, acc, &srcs[..k]).unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let moved = (bytes * (k + 2)) as f64;
    println!(
        "{label:<34} {:>7.2} GB/s algbw  {:>7.2} GB/s mem  ({:.2} ms)",
        bytes as f64 / best / 1e9,
        moved / best / 1e9,
        best * 1e3
    );
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let bytes = mib << 20;
    println!("buffers: {mib} MiB, best of 10, 1 thread");
    if std::env::args().nth(2).is_none() {
        baseline(bytes);
    }
    bench("f32 sum  acc += 1 other", DType::F32, ReduceOp::Sum, bytes, 1, false);
    bench("f32 sum  acc += 3 others", DType::F32, ReduceOp::Sum, bytes, 3, false);
    bench("f32 sum  dst = 2 srcs", DType::F32, ReduceOp::Sum, bytes, 1, true);
    bench("f32 max  acc += 1 other", DType::F32, ReduceOp::Max, bytes, 1, false);
    bench("f64 sum  acc += 1 other", DType::F64, ReduceOp::Sum, bytes, 1, false);
    bench("i32 sum  acc += 1 other", DType::I32, ReduceOp::Sum, bytes, 1, false);
    bench("i8  sum  acc += 1 other", DType::I8, ReduceOp::Sum, bytes, 1, false);
    bench("f16 sum  acc += 1 other", DType::F16, ReduceOp::Sum, bytes, 1, false);
    bench("f16 sum  acc += 3 others", DType::F16, ReduceOp::Sum, bytes, 3, false);
    bench("bf16 sum acc += 1 other", DType::BF16, ReduceOp::Sum, bytes, 1, false);
    bench("bf16 sum acc += 3 others", DType::BF16, ReduceOp::Sum, bytes, 3, false);
}

/// Reference points: memcpy and an aligned `Vec<f32>` add (what the hardware does without byte decoding).
fn baseline(bytes: usize) {
    let n = bytes / 4;
    let mut a = vec![1.0f32; n];
    let b = vec![2.0f32; n];
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        for (x, y) in a.iter_mut().zip(b.iter()) {
            *x += *y;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&a);
    println!("{:<34} {:>7.2} GB/s algbw  {:>7.2} GB/s mem", "[ref] aligned Vec<f32> a += b", bytes as f64 / best / 1e9, 3.0 * bytes as f64 / best / 1e9);
    let src = vec![3u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    println!("{:<34} {:>7.2} GB/s algbw  {:>7.2} GB/s mem", "[ref] memcpy", bytes as f64 / best / 1e9, 2.0 * bytes as f64 / best / 1e9);
}
