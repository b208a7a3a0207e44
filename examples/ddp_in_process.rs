//! A data-parallel training loop as a Rust program writes it, with its ranks as threads of one
//! process over the in-memory store: the way to test code that uses chorus without launching
//! processes (under `chorus-run` or torchrun, `ProcessGroup::from_env` replaces the store set-up).
//!
//! Linear regression: each rank holds its own shard of the data, computes the gradient of its
//! mean squared error, and the ranks average the gradients in two buckets, each reduced while the
//! next one is computed (`all_reduce_async`); every rank then takes the same SGD step. At the end
//! every rank holds bit-identical weights, close to the ones the data was made from.
//!
//! `cargo run --release --example ddp_in_process`
use chorus::bootstrap::{MemStore, Store};
use chorus::{Options, ProcessGroup, ReduceOp};
use std::sync::Arc;
use std::time::Duration;

const RANKS: usize = 4;
const FEATURES: usize = 8;
const SAMPLES_PER_RANK: usize = 64;
const STEPS: usize = 200;
const LEARNING_RATE: f32 = 0.05;

/// The weights the data is made from.
fn true_weights() -> [f32; FEATURES] {
    std::array::from_fn(|i| i as f32 * 0.5 - 1.0)
}

/// Rank `rank`'s shard: features from a small deterministic generator, targets from the true
/// weights plus a little noise.
fn shard(rank: usize) -> Vec<([f32; FEATURES], f32)> {
    let mut state = 0x9e37_79b9_u32.wrapping_mul(rank as u32 + 1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 2000) as f32 / 1000.0 - 1.0
    };
    let w = true_weights();
    (0..SAMPLES_PER_RANK)
        .map(|_| {
            let x: [f32; FEATURES] = std::array::from_fn(|_| next());
            let y = x.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() + 0.01 * next();
            (x, y)
        })
        .collect()
}

/// The gradient of the shard's mean squared error over features `range`.
fn gradient(data: &[([f32; FEATURES], f32)], w: &[f32; FEATURES], range: std::ops::Range<usize>) -> Vec<f32> {
    let mut g = vec![0.0f32; range.len()];
    for (x, y) in data {
        let err = x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() - y;
        for (gi, i) in g.iter_mut().zip(range.clone()) {
            *gi += 2.0 * err * x[i] / data.len() as f32;
        }
    }
    g
}

fn train(store: Arc<dyn Store>, rank: usize) -> chorus::Result<[f32; FEATURES]> {
    let opts = Options::default().with_name("ddp-example").with_timeout(Duration::from_secs(60));
    let pg = ProcessGroup::new(store, rank, RANKS, opts)?;
    let data = shard(rank);
    let mut w = [0.0f32; FEATURES];
    let half = FEATURES / 2;
    for _ in 0..STEPS {
        // The first bucket is reduced while the second one is computed.
        let first = pg.all_reduce_async(gradient(&data, &w, 0..half), ReduceOp::Sum);
        let second = pg.all_reduce_async(gradient(&data, &w, half..FEATURES), ReduceOp::Sum);
        let grads: Vec<f32> = first.wait()?.into_iter().chain(second.wait()?).collect();
        for (wi, g) in w.iter_mut().zip(grads) {
            *wi -= LEARNING_RATE * g / pg.size() as f32;
        }
    }
    pg.destroy();
    Ok(w)
}

fn main() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let ranks: Vec<_> = (0..RANKS)
        .map(|rank| {
            let store = store.clone();
            std::thread::spawn(move || train(store, rank))
        })
        .collect();
    let weights: Vec<[f32; FEATURES]> = ranks.into_iter().map(|h| h.join().expect("rank thread").expect("training")).collect();
    for (rank, w) in weights.iter().enumerate() {
        assert_eq!(w.map(f32::to_bits), weights[0].map(f32::to_bits), "rank {rank}'s weights differ from rank 0's");
    }
    let off = weights[0].iter().zip(true_weights()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!("ddp example: {RANKS} ranks, {STEPS} steps, identical weights on every rank, largest error {off:.4}");
    assert!(off < 0.05, "the weights did not converge: largest error {off}");
}
