//! Timeout trial worker (issue 25): every rank runs all_reduces of i64; before collective
//! `LATE_OP` rank `LATE` computes (sleeps) `DELAY_MS`, past the others' deadline
//! (`CHORUS_TIMEOUT_MS`). Every rank prints one line per collective — its result's sum, or its
//! error and the error's kind — so the test can check that every rank ended the late collective
//! alike and that the collectives after it ran over everyone with the right sums.
//!
//! Usage: chorus-timeout-worker LATE LATE_OP DELAY_MS OPS
use chorus::{ChorusError, Options, ProcessGroup, ReduceOp};
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    // CHORUS_LOG: this program has no subscriber of its own.
    chorus::logging::install_stderr_logger();
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numeric arguments: LATE LATE_OP DELAY_MS OPS")).collect();
    let [late, late_op, delay_ms, ops] = args[..] else { panic!("usage: chorus-timeout-worker LATE LATE_OP DELAY_MS OPS") };
    let pg = ProcessGroup::from_env(Options::default()).unwrap_or_else(|e| {
        eprintln!("group creation failed: {e}");
        std::process::exit(2)
    });
    let (me, n) = (pg.rank() as u64, pg.size() as u64);
    let mut out = std::io::stdout().lock();
    for op in 1..=ops {
        if op == late_op && me == late {
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let mut v: Vec<i64> = (0..64).map(|i| (me as i64 + 1) * 1000 + op as i64 * 10 + i).collect();
        let t = Instant::now();
        let r = pg.all_reduce(&mut v, ReduceOp::Sum);
        let took = t.elapsed();
        match r {
            Ok(_) => {
                // Every rank contributed: sum over ranks of (r + 1) * 1000 + op * 10 + i.
                let want: Vec<i64> = (0..64).map(|i| (n * (n + 1) / 2) as i64 * 1000 + (n as i64) * (op as i64 * 10 + i)).collect();
                let right = if v == want { "right" } else { "WRONG" };
                writeln!(out, "op {op}: result {right} over {:?}", pg.last_op_info().contributors).unwrap();
            }
            Err(e) => {
                writeln!(out, "op {op}: error {:?}: {e}", e.kind()).unwrap();
                // The late rank learns the outcome the others agreed on: it does not wait for it.
                if me == late && took > Duration::from_millis(1000) {
                    writeln!(out, "op {op}: the late rank waited {} ms for an outcome already agreed", took.as_millis()).unwrap();
                }
                if !matches!(e, ChorusError::AgreedTimeout { .. }) {
                    writeln!(out, "op {op}: not an AgreedTimeout: {e:?}").unwrap();
                }
            }
        }
        out.flush().unwrap();
    }
    pg.destroy();
}
