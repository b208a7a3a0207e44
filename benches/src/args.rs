//! Command line (nccl-tests flag names where they exist).
use clap::Parser;
use std::path::PathBuf;

pub const COLLECTIVES: [&str; 10] =
    ["all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "all_to_all", "gather", "scatter", "sendrecv", "barrier"];

const LONG_ABOUT: &str = "\
nccl-tests style benchmark of chorus collectives on CPU buffers.

Per size: warm up, barrier, time the iterations (wall clock), report the maximum over ranks of
the mean time per iteration, then run one more (untimed) iteration on freshly filled buffers and
verify every element (#wrong). Exits non-zero on any wrong element or error. With --async the
asynchronous form (`*_async`, then `wait` at once) is timed too, alternating with the blocking
call (--rounds R: each form's best of R rounds), verified too, and shown as `async` with its
ratio to `time`.

Sizes are total buffer bytes like nccl-tests: for all_gather, reduce_scatter, all_to_all, gather
and scatter the per-rank block is size/nranks (rows whose block would be empty are skipped).
busbw factors: all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all, gather, scatter
(n-1)/n; broadcast, reduce, sendrecv 1.

Iteration scaling: for a size S the bench runs min(-n, max(1, CAP/S)) timed iterations and
min(-w, max(1, CAP/(4*S))) warm-up iterations, CAP = --max-bytes-per-size (default 256M), so
the default sweep (`chorus-bench all`: -b 8 -e 16M -f 4 -n 20 -w 5) stays short.

Launch: `--nprocs N` spawns N local ranks of this binary (the parent hosts the store); without
it the bench runs as one rank under chorus-run / torchrun (RANK, WORLD_SIZE, ...). With neither,
it behaves as --nprocs 2.";

#[derive(Parser, Debug, Clone)]
#[command(name = "chorus-bench", version, about = "nccl-tests style benchmark of chorus collectives", long_about = LONG_ABOUT)]
pub struct Args {
    /// Collective: all_reduce, broadcast, reduce, all_gather, reduce_scatter, all_to_all,
    /// gather, scatter, sendrecv, barrier, or `all` (every one in turn). A comma list also works.
    #[arg(default_value = "all")]
    pub collective: String,
    /// Smallest size in bytes (suffixes K, M, G: powers of 1024).
    #[arg(short = 'b', long = "minbytes", default_value = "8", value_parser = parse_size)]
    pub min_bytes: u64,
    /// Largest size in bytes (suffixes K, M, G).
    #[arg(short = 'e', long = "maxbytes", default_value = "16M", value_parser = parse_size)]
    pub max_bytes: u64,
    /// Multiply the size by this factor between rows.
    #[arg(short = 'f', long = "stepfactor", default_value_t = 4)]
    pub factor: u64,
    /// Add this many bytes between rows instead (used when -f is 1 or less).
    #[arg(short = 'i', long = "stepbytes", default_value = "1M", value_parser = parse_size)]
    pub step_bytes: u64,
    /// Timed iterations per size (scaled down for large sizes, see CAP).
    #[arg(short = 'n', long = "iters", default_value_t = 20)]
    pub iters: usize,
    /// Warm-up iterations per size (scaled down for large sizes, see CAP).
    #[arg(short = 'w', long = "warmup_iters", default_value_t = 5)]
    pub warmup: usize,
    /// Reduction: sum, prod, min, max, avg, band, bor, bxor.
    #[arg(short = 'o', long = "op", default_value = "sum")]
    pub redop: String,
    /// Data type: float, double, half, bfloat16, int8, uint8, int16, int32, int64, bool (and
    /// uint16/uint32/uint64/f8e4m3/f8e5m2 for data-movement collectives); torch and Rust names too.
    #[arg(short = 'd', long = "datatype", default_value = "float")]
    pub dtype: String,
    /// Root rank of broadcast, reduce, gather and scatter.
    #[arg(short = 'r', long = "root", default_value_t = 0)]
    pub root: usize,
    /// Verify results (1) or not (0).
    #[arg(short = 'c', long = "check", default_value_t = 1)]
    pub check: u8,
    /// Spawn this many local ranks (the parent hosts the store and forwards rank 0's stdout).
    #[arg(long)]
    pub nprocs: Option<usize>,
    /// CAP: bytes per size above which iteration counts are scaled down.
    #[arg(long = "max-bytes-per-size", default_value = "256M", value_parser = parse_size)]
    pub cap_bytes: u64,
    /// Write the results as JSON to this path (rank 0).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also time the asynchronous form (`*_async` then `wait`, back to back) and print it in an
    /// extra column, `async`, beside the blocking call's `time`.
    #[arg(long = "async")]
    pub async_form: bool,
    /// Time each size this many rounds (the blocking and asynchronous forms alternate) and report
    /// each form's best round: this machine is noisy.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
}

/// "8", "64K", "16M", "1G", "1.5M", "64KB" (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let upper = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper).to_string();
    let (num, mult) = match upper.chars().last() {
        Some('K') => (&upper[..upper.len() - 1], 1u64 << 10),
        Some('M') => (&upper[..upper.len() - 1], 1u64 << 20),
        Some('G') => (&upper[..upper.len() - 1], 1u64 << 30),
        _ => (&upper[..], 1u64),
    };
    if let Ok(v) = num.parse::<u64>() {
        return v.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"));
    }
    match num.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok((v * mult as f64) as u64),
        _ => Err(format!("bad size {s:?}: expected a number with an optional K, M or G suffix")),
    }
}

impl Args {
    /// The sizes of the sweep, nccl-tests style (the end is inclusive when reached exactly).
    pub fn sizes(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut s = self.min_bytes;
        while s <= self.max_bytes {
            out.push(s);
            let next = if self.factor > 1 { s.saturating_mul(self.factor) } else { s.saturating_add(self.step_bytes.max(1)) };
            if next <= s {
                break;
            }
            s = next;
        }
        out
    }

    /// The collectives to run, in order.
    pub fn collectives(&self) -> Result<Vec<&'static str>, String> {
        if self.collective == "all" {
            return Ok(COLLECTIVES.to_vec());
        }
        self.collective
            .split(',')
            .map(|c| {
                let c = c.trim().replace('-', "_");
                let c = match c.as_str() {
                    "allreduce" => "all_reduce".to_string(),
                    "allgather" => "all_gather".to_string(),
                    "reducescatter" => "reduce_scatter".to_string(),
                    "alltoall" => "all_to_all".to_string(),
                    _ => c,
                };
                COLLECTIVES
                    .iter()
                    .copied()
                    .find(|k| *k == c)
                    .ok_or_else(|| format!("unknown collective {c:?}; expected one of {} or all", COLLECTIVES.join(", ")))
            })
            .collect()
    }

    /// Timed iterations for a size.
    pub fn iters_for(&self, bytes: u64) -> usize {
        let by_cap = (self.cap_bytes / bytes.max(1)).max(1) as usize;
        self.iters.min(by_cap).max(1)
    }

    /// Warm-up iterations for a size.
    pub fn warmup_for(&self, bytes: u64) -> usize {
        let by_cap = (self.cap_bytes / (4 * bytes.max(1))).max(1) as usize;
        self.warmup.min(by_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8").unwrap(), 8);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("64KB").unwrap(), 65536);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn sweep() {
        let a = Args::try_parse_from(["chorus-bench", "-b", "1K", "-e", "64K", "-f", "4"]).unwrap();
        assert_eq!(a.sizes(), vec![1024, 4096, 16384, 65536]);
        assert_eq!(a.iters_for(64 << 20), 4);
        assert_eq!(a.iters_for(1024), 20);
    }
}
