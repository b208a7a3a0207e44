//! A fault-tolerant data-parallel job with a replacement, the way `chorus-run --restart-failed`
//! runs one (this example is its own launcher: the library's `launch::run`).
//!
//! Four ranks fit one linear model, averaging their gradients with one all_reduce per step. Rank 2
//! is killed (SIGKILL) at step 40. The survivors go on: the all_reduce it died in completes over
//! them (its report names rank 2), and every later step averages over the ranks alive. The launcher
//! starts rank 2 again as a replacement (`CHORUS_JOIN=1`), which
//! 1. learns where the survivors are in their loop from the marks they publish (`mark` before each
//!    collective, `resume_point` on the replacement),
//! 2. asks for the model in its first all_reduce (a flag next to its zero gradient: that step's
//!    average is dropped, every rank sees the flag in the same result), and the lowest rank without
//!    the flag broadcasts it,
//! 3. trains on with everyone else.
//!
//! Every rank ends with the same model, a low loss, the whole group active, and exactly one
//! replacement; the launcher exits 0 only when every rank's last process did.
//!
//! `cargo run --release --example fault_tolerant_job`
use chorus::bootstrap::launch::{self, LaunchOptions};
use chorus::{Options, ProcessGroup, ReduceOp};
use std::time::Duration;

const RANKS: usize = 4;
const STEPS: u64 = 300;
const KILL_AT: u64 = 40;
const VICTIM: usize = 2;
const DIM: usize = 16;
const SAMPLES: usize = 64;
const LR: f32 = 0.05;

fn main() {
    // The launcher runs its store in a process of its own: this program, started again.
    if let Some(code) = launch::serve_store_if_asked() {
        std::process::exit(code);
    }
    if std::env::var_os("RANK").is_none() {
        let me = std::env::current_exe().expect("this example's path");
        let mut opts = LaunchOptions::new(RANKS, me.to_string_lossy(), Vec::new());
        opts.store_process = true;
        opts.restarts = 1;
        opts.kill_on_failure = false;
        std::process::exit(launch::run(&opts));
    }
    if let Err(e) = rank_main() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

fn rank_main() -> chorus::Result<()> {
    // CHORUS_JOIN=1, which the launcher sets for a replacement, makes this a join.
    let pg = ProcessGroup::from_env(Options::default())?;
    let (me, n) = (pg.rank(), pg.size());
    let (xs, ys) = data(me);
    let resume = pg.resume_point();
    // Each mark covers one collective: 2*step before the gradients' all_reduce, 2*step+1 before a
    // model broadcast. The survivors' last collective before ours ended step `marker / 2`.
    let first = resume.map_or(0, |p| p.marker / 2 + 1);
    let mut w = vec![0f32; DIM];
    let mut have_model = resume.is_none();
    let mut first_loss = None;
    for step in first..STEPS {
        if me == VICTIM && resume.is_none() && step == KILL_AT {
            // SAFETY: kill(2) of this very process: it dies as a crashed rank would.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5)); // the forward and backward passes
        let mut buf = vec![0f32; DIM + n];
        if have_model {
            buf[..DIM].copy_from_slice(&gradient(&w, &xs, &ys));
        } else {
            buf[DIM + me] = 1.0; // "I need the model"
        }
        pg.mark(2 * step);
        let info = match pg.all_reduce(&mut buf, ReduceOp::Sum) {
            Ok(info) => info,
            // A collective that cannot be recovered fails alike on every survivor: skip the step.
            Err(e) if e.is_failure() => continue,
            Err(e) => return Err(e),
        };
        if !info.failed.is_empty() {
            println!("rank {me} step {step}: ranks {:?} failed; averaging over {:?}", info.failed, info.contributors);
        }
        let needy: Vec<usize> = (0..n).filter(|&r| buf[DIM + r] > 0.0).collect();
        if !needy.is_empty() {
            // Someone joined: this step's average holds its zeros, so it is dropped, and the lowest
            // rank that has the model sends it.
            let src = *info.contributors.iter().find(|r| !needy.contains(r)).expect("a rank with the model");
            pg.mark(2 * step + 1);
            pg.broadcast(&mut w, src)?;
            have_model = true;
            println!("rank {me} step {step}: rank(s) {needy:?} rejoined; model from rank {src}");
            continue;
        }
        let k = info.contributors.len() as f32;
        for (wi, g) in w.iter_mut().zip(&buf[..DIM]) {
            *wi -= LR * g / k;
        }
        first_loss.get_or_insert(loss(&w, &xs, &ys));
    }
    // Every rank, the replacement too, must hold the same model, and exactly one is a replacement.
    let mine = [w.iter().map(|x| x.to_bits() as u64).fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b)), resume.is_some() as u64];
    let mut all = vec![0u64; 2 * n];
    pg.all_gather(&mine, &mut all)?;
    let (end_loss, active) = (loss(&w, &xs, &ys), pg.active_ranks());
    println!("rank {me}: done, loss {:.2e} (first {:.2e}), active {active:?}, resumed at {resume:?}", end_loss, first_loss.unwrap_or(f32::NAN));
    assert!(all.chunks(2).all(|c| c[0] == mine[0]), "rank {me}: the ranks' models differ");
    assert_eq!(all.chunks(2).map(|c| c[1]).sum::<u64>(), 1, "rank {me}: expected exactly one replacement");
    assert_eq!(active, (0..n).collect::<Vec<_>>(), "rank {me}: the group is not whole again");
    assert!(end_loss < 1e-3, "rank {me}: the model did not fit (loss {end_loss})");
    Ok(())
}

/// Rank `r`'s samples of y = x . w_true (w_true[i] = (i + 1) / DIM), x from a fixed generator.
fn data(r: usize) -> (Vec<[f32; DIM]>, Vec<f32>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (r as u64 + 1);
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let xs: Vec<[f32; DIM]> = (0..SAMPLES).map(|_| std::array::from_fn(|_| next())).collect();
    let ys = xs.iter().map(|x| x.iter().enumerate().map(|(i, v)| v * (i + 1) as f32 / DIM as f32).sum()).collect();
    (xs, ys)
}

/// The gradient of the mean squared error on this rank's samples.
fn gradient(w: &[f32], xs: &[[f32; DIM]], ys: &[f32]) -> Vec<f32> {
    let mut g = vec![0f32; DIM];
    for (x, y) in xs.iter().zip(ys) {
        let err = x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() - y;
        for (gi, xi) in g.iter_mut().zip(x) {
            *gi += 2.0 * err * xi / xs.len() as f32;
        }
    }
    g
}

fn loss(w: &[f32], xs: &[[f32; DIM]], ys: &[f32]) -> f32 {
    xs.iter().zip(ys).map(|(x, y)| (x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() - y).powi(2)).sum::<f32>() / xs.len() as f32
}
