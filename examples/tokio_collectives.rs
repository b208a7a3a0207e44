//! Collectives inside a tokio program: `ProcessGroup::new_async` creates the group without
//! blocking the runtime, and `.await` on an operation's `Work` parks no thread, so other tasks
//! keep running while a collective waits for a slow rank.
//!
//! Four ranks, each a thread with its own current-thread runtime (one process, the in-memory
//! store); rank 0 joins each all_reduce 100 ms late, and a 1 ms ticker on every other rank must
//! keep ticking meanwhile (a blocking call would starve it: 0 ticks).
//!
//! `cargo run --release --example tokio_collectives`
use chorus::bootstrap::{MemStore, Store};
use chorus::{Options, ProcessGroup, ReduceOp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const RANKS: usize = 4;
const ROUNDS: usize = 3;

async fn rank_main(store: Arc<dyn Store>, rank: usize) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let opts = Options::default().with_name("tokio-example").with_timeout(Duration::from_secs(60));
    let pg = ProcessGroup::new_async(store, rank, RANKS, opts).await?;
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(1));
            loop {
                every.tick().await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut waited_ticks = 0;
    for round in 0..ROUNDS {
        if rank == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = ticks.load(Ordering::Relaxed);
        let grads = vec![(rank + round) as f32; 1024];
        let (sum, info) = pg.all_reduce_async(grads, ReduceOp::Sum).await?;
        let want: f32 = (0..RANKS).map(|r| (r + round) as f32).sum();
        assert!(sum.iter().all(|&x| x == want), "round {round}: got {}, want {want}", sum[0]);
        assert_eq!(info.contributors, (0..RANKS).collect::<Vec<_>>());
        waited_ticks += ticks.load(Ordering::Relaxed) - before;
    }
    ticker.abort();
    pg.destroy();
    Ok(waited_ticks)
}

fn main() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let ranks: Vec<_> = (0..RANKS)
        .map(|rank| {
            let store = store.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a tokio runtime");
                rt.block_on(rank_main(store, rank)).map_err(|e| e.to_string())
            })
        })
        .collect();
    for (rank, h) in ranks.into_iter().enumerate() {
        let ticks = h.join().expect("rank thread").unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        println!("rank {rank}: the ticker ticked {ticks} times while its all_reduces waited");
        // Ranks 1.. wait about 100 ms per round for rank 0; their ticker must not have starved.
        assert!(rank == 0 || ticks > 0, "rank {rank}'s runtime was blocked while it waited");
    }
    println!("tokio example: {ROUNDS} all_reduces on {RANKS} ranks, runtimes never blocked");
}
