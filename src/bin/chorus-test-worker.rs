//! One rank of chorus's multi-process integration tests (`tests/*.rs` launch it; so can
//! `chorus-run`). Usage: `chorus-test-worker SCENARIO [ARGS...]`.
//!
//! Environment: `RANK`, `WORLD_SIZE` and either `CHORUS_STORE_ADDR` (a store hosted by the test
//! or launcher) or `MASTER_ADDR`/`MASTER_PORT` (rank 0 hosts the store); `CHORUS_TIMEOUT_MS`;
//! `CHORUS_TEST_HOSTS`, a comma list with one host label per rank: ranks with equal labels must be
//! connected by shared memory, others by TCP, or by the transport `CHORUS_TEST_REMOTE` names
//! (unset: every pair shares memory).
//!
//! Scenarios (each creates its group once and runs many cases; exit 0 = every result was right):
//! - `matrix [--dtypes all|reduced|LIST] [--sizes 0,1,7,4097,3M] [--big-ops all|LIST]`: every
//!   collective x dtype x reduce op x size, plus send/recv and batch_send_recv.
//! - `subgroups`: new_group / split, and two overlapping subgroups driven from two threads.
//! - `async`: many asynchronous operations in flight, interleaved with blocking ones.
//! - `errors-local`: invalid ranks/ops/lengths fail locally; use after destroy.
//! - `errors-mismatch [--barrier-first] [--repeat K] [CASE...]`: ranks that disagree on counts/dtypes/ops/roots all get an error.
//! - `barrier-destroy`: rank 0 destroys each group right after a barrier.
//! - `create-timeout`: a failed group creation leaves nothing in /dev/shm.
//! - `smoke`: a short all_reduce/broadcast/all_gather check (for the launcher and netns tests).
use chorus::api::buffer::{as_bytes, as_bytes_mut};
use chorus::bootstrap::{Store, StoreClient};
use chorus::{ChorusError, DType, Element, Options, P2pRequest, ProcessGroup, ReduceOp, Work};
use half::{bf16, f16};
use std::sync::Arc;
use std::time::{Duration, Instant};

type R<T = ()> = Result<T, String>;

macro_rules! ensure {
    ($c:expr, $($f:tt)*) => { if !$c { return Err(format!($($f)*)); } };
}

/// `?` for library results, naming the failing call.
trait Ctx<T> {
    fn ctx(self, what: impl std::fmt::Display) -> R<T>;
}
impl<T> Ctx<T> for Result<T, ChorusError> {
    fn ctx(self, what: impl std::fmt::Display) -> R<T> {
        self.map_err(|e| format!("{what}: unexpected error: {e}"))
    }
}

fn env_usize(k: &str) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{k} must be set"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().cloned().unwrap_or_default();
    let rank = std::env::var("RANK").unwrap_or_else(|_| "?".into());
    let t0 = Instant::now();
    let r = match scenario.as_str() {
        "matrix" => matrix(&args[1..]),
        "subgroups" => subgroups(),
        "async" => async_ops(),
        "errors-local" => errors_local(),
        "errors-mismatch" => errors_mismatch(&args[1..]),
        "smoke" => smoke(),
        "barrier-destroy" => barrier_destroy(),
        "create-timeout" => create_timeout(),
        other => Err(format!("unknown scenario {other:?}")),
    };
    match r {
        Ok(()) => println!("rank {rank}: {scenario} ok in {} ms", t0.elapsed().as_millis()),
        Err(e) => {
            eprintln!("rank {rank}: {scenario} FAILED after {} ms: {e}", t0.elapsed().as_millis());
            std::process::exit(1);
        }
    }
}

// ------------------------------------------------------------------------------------------ setup

fn timeout() -> Duration {
    Duration::from_millis(std::env::var("CHORUS_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000))
}

/// A top-level group named `name` (fresh groups on one store need distinct names): through
/// `CHORUS_STORE_ADDR` when set, otherwise `from_env` (rank 0 hosts the store).
fn world(name: &str) -> R<ProcessGroup> {
    let opts = Options::default().with_name(name);
    let pg = match std::env::var("CHORUS_STORE_ADDR") {
        Ok(addr) if name != "default" => {
            let store: Arc<dyn Store> = Arc::new(StoreClient::connect(&addr, timeout()).map_err(|e| format!("store {addr}: {e}"))?);
            ProcessGroup::new(store, env_usize("RANK"), env_usize("WORLD_SIZE"), opts)
        }
        _ => ProcessGroup::from_env(opts),
    }
    .ctx(format!("creating group {name}"))?;
    ensure!(pg.rank() == env_usize("RANK") && pg.size() == env_usize("WORLD_SIZE"), "group {name}: rank/size {}/{} differ from the environment", pg.rank(), pg.size());
    Ok(pg)
}

/// Host label of every rank of the job (`CHORUS_TEST_HOSTS`).
fn host_labels(n: usize) -> R<Vec<String>> {
    match std::env::var("CHORUS_TEST_HOSTS") {
        Ok(s) => {
            let v: Vec<String> = s.split(',').map(|x| x.to_string()).collect();
            ensure!(v.len() == n, "CHORUS_TEST_HOSTS={s} names {} ranks, the job has {n}", v.len());
            Ok(v)
        }
        Err(_) => Ok(vec!["local".into(); n]),
    }
}

/// Checks `pg.transports()` against the host labels (`parent` maps group ranks to job ranks).
fn check_transports(pg: &ProcessGroup, parent: &dyn Fn(usize) -> usize) -> R {
    let labels = host_labels(env_usize("WORLD_SIZE"))?;
    let me = pg.rank();
    let remote = std::env::var("CHORUS_TEST_REMOTE").unwrap_or_else(|_| "tcp".into());
    let want: Vec<&str> = (0..pg.size())
        .map(|r| if r == me { "self" } else if labels[parent(r)] == labels[parent(me)] { "shm" } else { remote.as_str() })
        .collect();
    let got = pg.transports();
    ensure!(got == want, "group {}: transports {got:?}, expected {want:?} (host labels {labels:?})", pg.uid());
    Ok(())
}

// ------------------------------------------------------------------------------------- test data

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn h(seed: u64, rank: usize, i: usize) -> u64 {
    mix(seed ^ ((rank as u64) << 52) ^ i as u64)
}

/// Data-movement payloads repeat with this (prime) number of bytes: chunk sizes are powers of
/// two, so a chunk landing at a wrong offset never matches.
const PAT_PERIOD: usize = 65_521;

/// Bytes `off..off+len` of `rank`'s data pattern for case `seed`.
fn pat(seed: u64, rank: usize, off: usize, len: usize) -> Vec<u8> {
    let gen_len = (off + len).min(PAT_PERIOD);
    let mut table = Vec::with_capacity(gen_len + 8);
    let mut w = 0;
    while table.len() < gen_len {
        table.extend_from_slice(&h(seed, rank, w).to_le_bytes());
        w += 1;
    }
    table.truncate(gen_len);
    let mut v = Vec::with_capacity(len);
    let mut at = off % PAT_PERIOD;
    while v.len() < len {
        let take = (gen_len - at).min(len - v.len());
        v.extend_from_slice(&table[at..at + take]);
        at = 0;
    }
    v
}

/// Reduction inputs repeat with this (prime) period, so expected values are computed once per case.
const PERIOD: usize = 4099;

/// Wrapping truncation of an integer into `dt`'s range, read back as i64.
fn norm(dt: DType, v: i64) -> i64 {
    match dt {
        DType::I8 => v as i8 as i64,
        DType::U8 => v as u8 as i64,
        DType::I16 => v as i16 as i64,
        DType::U16 => v as u16 as i64,
        DType::I32 => v as i32 as i64,
        DType::U32 => v as u32 as i64,
        DType::Bool => (v != 0) as i64,
        _ => v,
    }
}

/// Encodes the integer `v` (exact for floats: test values are small) into one element.
fn put(dt: DType, v: i64, out: &mut [u8]) {
    match dt {
        DType::F32 => out.copy_from_slice(&(v as f32).to_ne_bytes()),
        DType::F64 => out.copy_from_slice(&(v as f64).to_ne_bytes()),
        DType::F16 => out.copy_from_slice(&f16::from_f64(v as f64).to_bits().to_ne_bytes()),
        DType::BF16 => out.copy_from_slice(&bf16::from_f64(v as f64).to_bits().to_ne_bytes()),
        DType::Bool => out[0] = (v != 0) as u8,
        _ => out.copy_from_slice(&v.to_ne_bytes()[..dt.size()]), // little-endian truncation
    }
}

fn decode_float(dt: DType, b: &[u8]) -> Option<f64> {
    Some(match dt {
        DType::F32 => f32::from_ne_bytes(b.try_into().ok()?) as f64,
        DType::F64 => f64::from_ne_bytes(b.try_into().ok()?),
        DType::F16 => f16::from_bits(u16::from_ne_bytes(b.try_into().ok()?)).to_f64(),
        DType::BF16 => bf16::from_bits(u16::from_ne_bytes(b.try_into().ok()?)).to_f64(),
        _ => return None,
    })
}

/// Input value of `rank` at element `i`, chosen so every reduction is exact: floats are small
/// integers (|sum| <= 16 * 8 = 128, products of {1, 2, -1} over <= 8 ranks), integers use their
/// full range (sums and products wrap, like the library's), bools are 0/1 biased so that
/// or/and results are not constant.
fn gen(dt: DType, op: ReduceOp, seed: u64, rank: usize, i: usize) -> i64 {
    let x = h(seed, rank, i);
    if dt == DType::Bool {
        return match op {
            ReduceOp::BXor => (x & 1) as i64,
            ReduceOp::Sum | ReduceOp::Max | ReduceOp::BOr => x.is_multiple_of(3) as i64,
            _ => !x.is_multiple_of(3) as i64,
        };
    }
    if dt.is_float() {
        return if op == ReduceOp::Prod { [1, 2, -1][(x % 3) as usize] } else { (x % 33) as i64 - 16 };
    }
    norm(dt, x as i64)
}

/// The expected reduction of `vals` (one per rank) as one encoded element.
fn expect(dt: DType, op: ReduceOp, vals: &[i64], out: &mut [u8]) {
    let n = vals.len();
    let r = match op {
        ReduceOp::Sum | ReduceOp::Avg => vals.iter().fold(0i64, |a, &b| a.wrapping_add(b)),
        ReduceOp::Prod => vals.iter().fold(1i64, |a, &b| a.wrapping_mul(b)),
        ReduceOp::Min => *vals.iter().min().unwrap(),
        ReduceOp::Max => *vals.iter().max().unwrap(),
        ReduceOp::BAnd => vals.iter().fold(-1i64, |a, &b| a & b),
        ReduceOp::BOr => vals.iter().fold(0i64, |a, &b| a | b),
        ReduceOp::BXor => vals.iter().fold(0i64, |a, &b| a ^ b),
    };
    if op != ReduceOp::Avg {
        return put(dt, r, out);
    }
    // Float AVG = sum / n in the dtype's precision (f16/bf16 divide in f32, rounded once);
    // integer AVG = wrapping sum / n, truncated.
    match dt {
        DType::F32 => out.copy_from_slice(&(r as f32 / n as f32).to_ne_bytes()),
        DType::F64 => out.copy_from_slice(&(r as f64 / n as f64).to_ne_bytes()),
        DType::F16 => out.copy_from_slice(&f16::from_f32(r as f32 / n as f32).to_bits().to_ne_bytes()),
        DType::BF16 => out.copy_from_slice(&bf16::from_f32(r as f32 / n as f32).to_bits().to_ne_bytes()),
        _ => put(dt, norm(dt, r) / n as i64, out),
    }
}

/// One reduction case: per-rank input tables and the expected result table, PERIOD elements each.
struct RedCase {
    dt: DType,
    op: ReduceOp,
    seed: u64,
    expected: Vec<u8>,
}

impl RedCase {
    fn new(dt: DType, op: ReduceOp, seed: u64, n: usize) -> RedCase {
        let e = dt.size();
        let mut expected = vec![0u8; PERIOD * e];
        let mut vals = vec![0i64; n];
        for i in 0..PERIOD {
            for (r, v) in vals.iter_mut().enumerate() {
                *v = gen(dt, op, seed, r, i);
            }
            expect(dt, op, &vals, &mut expected[i * e..(i + 1) * e]);
        }
        RedCase { dt, op, seed, expected }
    }

    fn table(&self, rank: usize) -> Vec<u8> {
        let e = self.dt.size();
        let mut t = vec![0u8; PERIOD * e];
        for i in 0..PERIOD {
            put(self.dt, gen(self.dt, self.op, self.seed, rank, i), &mut t[i * e..(i + 1) * e]);
        }
        t
    }

    /// `rank`'s input elements `off..off+count`.
    fn input(&self, rank: usize, off: usize, count: usize) -> Vec<u8> {
        tile(&self.table(rank), self.dt.size(), off, count)
    }

    /// Checks that `buf` holds the reduced elements starting at element `off`.
    fn check(&self, buf: &[u8], off: usize, what: &str) -> R {
        let e = self.dt.size();
        let want = tile(&self.expected, e, off, buf.len() / e);
        if want == buf {
            return Ok(());
        }
        for i in 0..buf.len() / e {
            let (g, w) = (&buf[i * e..(i + 1) * e], &want[i * e..(i + 1) * e]);
            let float_equal = matches!((decode_float(self.dt, g), decode_float(self.dt, w)), (Some(a), Some(b)) if a == b);
            ensure!(
                g == w || float_equal,
                "{what}: dtype {:?} op {} count {}: element {} (of {}) is {g:?} ({:?}), expected {w:?} ({:?})",
                self.dt,
                self.op,
                buf.len() / e,
                off + i,
                buf.len() / e,
                decode_float(self.dt, g),
                decode_float(self.dt, w)
            );
        }
        Ok(())
    }
}

fn tile(table: &[u8], e: usize, off: usize, count: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(count * e);
    let mut i = off % PERIOD;
    while v.len() < count * e {
        let take = (PERIOD - i).min(count - v.len() / e);
        v.extend_from_slice(&table[i * e..(i + take) * e]);
        i = 0;
    }
    v
}

/// Typed helpers for the list forms (which take `&[T]`): dispatch a dtype to its Rust type.
macro_rules! typed {
    ($dt:expr, |$z:ident| $body:expr) => {
        match $dt {
            DType::F32 => { let $z = 0f32; Some($body) }
            DType::F64 => { let $z = 0f64; Some($body) }
            DType::F16 => { let $z = f16::ZERO; Some($body) }
            DType::BF16 => { let $z = bf16::ZERO; Some($body) }
            DType::I8 => { let $z = 0i8; Some($body) }
            DType::U8 => { let $z = 0u8; Some($body) }
            DType::I16 => { let $z = 0i16; Some($body) }
            DType::U16 => { let $z = 0u16; Some($body) }
            DType::I32 => { let $z = 0i32; Some($body) }
            DType::U32 => { let $z = 0u32; Some($body) }
            DType::I64 => { let $z = 0i64; Some($body) }
            DType::U64 => { let $z = 0u64; Some($body) }
            _ => None,
        }
    };
}

fn typed_vec<T: Element>(zero: T, bytes: &[u8]) -> Vec<T> {
    let mut v = vec![zero; bytes.len() / std::mem::size_of::<T>()];
    as_bytes_mut(&mut v).copy_from_slice(bytes);
    v
}

fn rs_list<T: Element>(pg: &ProcessGroup, zero: T, input: &[u8], out_bytes: usize, op: ReduceOp) -> Result<Vec<u8>, ChorusError> {
    let inp = typed_vec(zero, input);
    let b = out_bytes / std::mem::size_of::<T>();
    let slices: Vec<&[T]> = (0..pg.size()).map(|r| &inp[r * b..(r + 1) * b]).collect();
    let mut out = vec![zero; b];
    pg.reduce_scatter_list(&slices, &mut out, op)?;
    Ok(as_bytes(&out).to_vec())
}

fn ag_list<T: Element>(pg: &ProcessGroup, zero: T, input: &[u8]) -> Result<Vec<u8>, ChorusError> {
    let inp = typed_vec(zero, input);
    let mut outs: Vec<Vec<T>> = (0..pg.size()).map(|_| vec![zero; inp.len()]).collect();
    let mut refs: Vec<&mut [T]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
    pg.all_gather_list(&inp, &mut refs)?;
    let mut flat = Vec::new();
    for o in &outs {
        flat.extend_from_slice(as_bytes(o));
    }
    Ok(flat)
}

// ----------------------------------------------------------------------------------------- matrix

struct M {
    pg: ProcessGroup,
    n: usize,
    me: usize,
    k: u64,
    ops_run: usize,
}

impl M {
    fn seed(&mut self) -> u64 {
        self.k += 1;
        self.ops_run += 1;
        mix(self.k ^ 0xC0FFEE)
    }

    fn roots(&self) -> Vec<usize> {
        if self.n == 1 { vec![0] } else { vec![0, self.n - 1] }
    }

    // ---- reductions
    fn all_reduce(&mut self, dt: DType, op: ReduceOp, c: usize) -> R {
        let case = RedCase::new(dt, op, self.seed(), self.n);
        let mut buf = case.input(self.me, 0, c);
        self.pg.all_reduce_raw(&mut buf, dt, op).ctx(format!("all_reduce {dt:?} {op} x{c}"))?;
        case.check(&buf, 0, "all_reduce")
    }

    fn reduce(&mut self, dt: DType, op: ReduceOp, c: usize, root: usize) -> R {
        let case = RedCase::new(dt, op, self.seed(), self.n);
        let mut buf = case.input(self.me, 0, c);
        let orig = buf.clone();
        self.pg.reduce_raw(&mut buf, root, dt, op).ctx(format!("reduce root {root} {dt:?} {op} x{c}"))?;
        if self.me == root {
            case.check(&buf, 0, &format!("reduce to root {root}"))
        } else {
            ensure!(buf == orig, "reduce root {root} {dt:?} {op} x{c}: a non-root's buffer changed");
            Ok(())
        }
    }

    fn reduce_scatter(&mut self, dt: DType, op: ReduceOp, b: usize, list: bool) -> R {
        let case = RedCase::new(dt, op, self.seed(), self.n);
        let (e, n, me) = (dt.size(), self.n, self.me);
        let input = case.input(me, 0, n * b);
        let what = format!("reduce_scatter{} {dt:?} {op} block {b}", if list { "_list" } else { "" });
        let out = if list {
            match typed!(dt, |z| rs_list(&self.pg, z, &input, b * e, op)) {
                Some(r) => r.ctx(&what)?,
                None => return Ok(()),
            }
        } else {
            let mut out = vec![0xA5u8; b * e];
            self.pg.reduce_scatter_raw(&input, &mut out, dt, op).ctx(&what)?;
            out
        };
        ensure!(input == case.input(me, 0, n * b), "{what}: the input changed");
        case.check(&out, me * b, &what)
    }

    // ---- data movement
    fn broadcast(&mut self, dt: DType, c: usize, root: usize) -> R {
        let s = self.seed();
        let len = c * dt.size();
        let mut buf = if self.me == root { pat(s, root, 0, len) } else { pat(s ^ 1, self.me, 0, len) };
        self.pg.broadcast_raw(&mut buf, root).ctx(format!("broadcast root {root} {dt:?} x{c}"))?;
        ensure!(buf == pat(s, root, 0, len), "broadcast root {root} {dt:?} x{c}: wrong data");
        Ok(())
    }

    fn all_gather(&mut self, dt: DType, b: usize, list: bool) -> R {
        let s = self.seed();
        let (len, n) = (b * dt.size(), self.n);
        let input = pat(s, self.me, 0, len);
        let what = format!("all_gather{} {dt:?} block {b}", if list { "_list" } else { "" });
        let out = if list {
            match typed!(dt, |z| ag_list(&self.pg, z, &input)) {
                Some(r) => r.ctx(&what)?,
                None => return Ok(()),
            }
        } else {
            let mut out = vec![0xA5u8; n * len];
            self.pg.all_gather_raw(&input, &mut out).ctx(&what)?;
            out
        };
        for r in 0..n {
            ensure!(out[r * len..(r + 1) * len] == pat(s, r, 0, len)[..], "{what}: block {r} is wrong");
        }
        Ok(())
    }

    fn all_to_all(&mut self, dt: DType, b: usize) -> R {
        let s = self.seed();
        let (len, n, me) = (b * dt.size(), self.n, self.me);
        let input = pat(s, me, 0, n * len);
        let mut out = vec![0xA5u8; n * len];
        self.pg.all_to_all_raw(&input, &mut out).ctx(format!("all_to_all {dt:?} block {b}"))?;
        for p in 0..n {
            ensure!(out[p * len..(p + 1) * len] == pat(s, p, me * len, len)[..], "all_to_all {dt:?} block {b}: block from rank {p} is wrong");
        }
        Ok(())
    }

    fn all_to_all_v(&mut self, dt: DType, b: usize) -> R {
        let s = self.seed();
        let (e, n, me) = (dt.size(), self.n, self.me);
        // Uneven counts with zeros: cnt(from, to).
        let cnt = |from: usize, to: usize| if (from * 3 + to * 5 + b).is_multiple_of(4) { 0 } else { b + (from + 2 * to) % 3 };
        let send: Vec<usize> = (0..n).map(|p| cnt(me, p)).collect();
        let recv: Vec<usize> = (0..n).map(|p| cnt(p, me)).collect();
        let total_in: usize = send.iter().sum();
        let total_out: usize = recv.iter().sum();
        // Buffers larger than the counts need (allowed); the slack must stay untouched.
        let input = pat(s, me, 0, (total_in + 5) * e);
        let mut out = vec![0xEEu8; (total_out + 3) * e];
        self.pg
            .all_to_all_v_raw(&input, &send, &mut out, &recv, dt)
            .ctx(format!("all_to_all_v {dt:?} send {send:?} recv {recv:?}"))?;
        let mut at = 0;
        for p in 0..n {
            let off: usize = (0..me).map(|q| cnt(p, q)).sum();
            let len = recv[p] * e;
            ensure!(out[at..at + len] == pat(s, p, off * e, len)[..], "all_to_all_v {dt:?} recv {recv:?}: segment from rank {p} is wrong");
            at += len;
        }
        ensure!(out[at..].iter().all(|&x| x == 0xEE), "all_to_all_v {dt:?}: wrote past the received counts");
        Ok(())
    }

    fn gather(&mut self, dt: DType, b: usize, root: usize) -> R {
        let s = self.seed();
        let (len, n, me) = (b * dt.size(), self.n, self.me);
        let input = pat(s, me, 0, len);
        let mut out = if me == root { vec![0xA5u8; n * len] } else { Vec::new() };
        self.pg.gather_raw(&input, &mut out, root).ctx(format!("gather root {root} {dt:?} block {b}"))?;
        if me == root {
            for r in 0..n {
                ensure!(out[r * len..(r + 1) * len] == pat(s, r, 0, len)[..], "gather root {root} {dt:?} block {b}: block {r} is wrong");
            }
        }
        Ok(())
    }

    fn scatter(&mut self, dt: DType, b: usize, root: usize) -> R {
        let s = self.seed();
        let (len, n, me) = (b * dt.size(), self.n, self.me);
        let input = if me == root { pat(s, root, 0, n * len) } else { Vec::new() };
        let mut out = vec![0xA5u8; len];
        self.pg.scatter_raw(&input, &mut out, root).ctx(format!("scatter root {root} {dt:?} block {b}"))?;
        ensure!(out == pat(s, root, me * len, len), "scatter root {root} {dt:?} block {b}: wrong data");
        Ok(())
    }

    /// Every rank sends to and receives from every other rank at once: per peer two messages
    /// with tag A (matched in order) and one with tag B, receives posted in a different order
    /// than the sends, everything posted before anything is waited for.
    fn send_recv(&mut self, dt: DType, c: usize) -> R {
        let s = self.seed();
        let (e, n, me) = (dt.size(), self.n, self.me);
        let (ta, tb) = (100 + s % 50, 200 + s % 50);
        // (tag, k, element count) of the messages every rank sends to every peer.
        let msgs = [(ta, 0u64, c), (tb, 0, c / 2 + 1), (ta, 1, c % 5 + 1)];
        let payload = |from: usize, to: usize, tag: u64, k: u64, cnt: usize| pat(s ^ (tag << 8) ^ k, from * 64 + to, 0, cnt * e);
        let mut sends = Vec::new();
        let mut recvs = Vec::new();
        for p in (0..n).filter(|&p| p != me) {
            recvs.push((p, msgs[1], self.pg.recv_async(vec![0u8; msgs[1].2 * e], p, tb)));
            for &(tag, k, cnt) in &msgs {
                sends.push((p, payload(me, p, tag, k, cnt), self.pg.send_async(payload(me, p, tag, k, cnt), p, tag)));
            }
            recvs.push((p, msgs[0], self.pg.recv_async(vec![0u8; msgs[0].2 * e], p, ta)));
            recvs.push((p, msgs[2], self.pg.recv_async(vec![0u8; msgs[2].2 * e], p, ta)));
        }
        for (p, (tag, k, cnt), w) in recvs {
            let got = w.wait().ctx(format!("recv {dt:?} x{cnt} from {p} tag {tag}"))?;
            ensure!(got == payload(p, me, tag, k, cnt), "recv {dt:?} x{cnt} from {p} tag {tag} (message {k}): wrong data");
        }
        for (p, orig, w) in sends {
            let back = w.wait().ctx(format!("send {dt:?} to {p}"))?;
            ensure!(back == orig, "send {dt:?} to {p}: the returned buffer differs from the one sent");
        }
        Ok(())
    }

    fn batch(&mut self, dt: DType, c: usize) -> R {
        let s = self.seed();
        let (e, n, me) = (dt.size(), self.n, self.me);
        let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
        let payload = |from: usize, to: usize, tag: u64| pat(s ^ tag, from * 64 + to, 0, (c + tag as usize) * e);
        let ops = vec![
            P2pRequest::Recv { buf: vec![0u8; (c + 5) * e], from: prev, tag: 5 },
            P2pRequest::Send { buf: payload(me, next, 5), to: next, tag: 5 },
            P2pRequest::Send { buf: payload(me, prev, 6), to: prev, tag: 6 },
            P2pRequest::Recv { buf: vec![0u8; (c + 6) * e], from: next, tag: 6 },
        ];
        let works = self.pg.batch_send_recv(ops);
        let want = [Some(payload(prev, me, 5)), None, None, Some(payload(next, me, 6))];
        for (w, want) in works.into_iter().zip(want) {
            let got = w.wait().ctx(format!("batch_send_recv {dt:?} x{c}"))?;
            if let Some(want) = want {
                ensure!(got == want, "batch_send_recv {dt:?} x{c}: wrong data received");
            }
        }
        Ok(())
    }
}

fn parse_list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> R<Vec<T>> {
    s.split(',').filter(|x| !x.is_empty()).map(|x| f(x).ok_or_else(|| format!("cannot parse {x:?}"))).collect()
}

/// Sizes: element counts, or `<k>M` / `<k>K` for k MiB / KiB worth of elements of each dtype.
fn count_of(spec: &str, dt: DType) -> usize {
    if let Some(mb) = spec.strip_suffix('M') {
        (mb.parse::<usize>().unwrap() << 20) / dt.size()
    } else if let Some(kb) = spec.strip_suffix('K') {
        (kb.parse::<usize>().unwrap() << 10) / dt.size()
    } else {
        spec.parse().unwrap()
    }
}

fn matrix(args: &[String]) -> R {
    let mut dtypes = DType::all().to_vec();
    let mut sizes = vec!["0".to_string(), "1".into(), "7".into(), "4097".into(), "3M".into()];
    let mut big_ops: Option<Vec<ReduceOp>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--dtypes" => {
                dtypes = match v.as_str() {
                    "all" => DType::all().to_vec(),
                    "reduced" => vec![DType::F32, DType::I64, DType::BF16, DType::Bool],
                    l => parse_list(l, DType::from_name)?,
                }
            }
            "--sizes" => sizes = v.split(',').map(String::from).collect(),
            "--big-ops" => big_ops = if v == "all" { None } else { Some(parse_list(v, ReduceOp::from_name)?) },
            _ => return Err(format!("unknown option {a}")),
        }
    }
    let pg = world("default")?;
    check_transports(&pg, &|r| r)?;
    let (n, me) = (pg.size(), pg.rank());
    let mut m = M { pg, n, me, k: 0, ops_run: 0 };
    for &dt in &dtypes {
        let t0 = Instant::now();
        for spec in &sizes {
            let c = count_of(spec, dt);
            let big = spec.ends_with('M') || spec.ends_with('K');
            // Blocked ops (one block per rank) keep the total near the requested size when big.
            let b = if big { c / n } else { c };
            if DType::reducible().contains(&dt) {
                for &op in ReduceOp::all() {
                    if chorus::kernels::check_supported(dt, op).is_err() || (big && big_ops.as_ref().is_some_and(|l| !l.contains(&op))) {
                        continue;
                    }
                    m.all_reduce(dt, op, c)?;
                    for root in m.roots() {
                        m.reduce(dt, op, c, root)?;
                    }
                    m.reduce_scatter(dt, op, b, false)?;
                    m.reduce_scatter(dt, op, b, true)?;
                }
            }
            for root in m.roots() {
                m.broadcast(dt, c, root)?;
                m.gather(dt, b, root)?;
                m.scatter(dt, b, root)?;
            }
            m.all_gather(dt, b, false)?;
            m.all_gather(dt, b, true)?;
            m.all_to_all(dt, b)?;
            m.all_to_all_v(dt, b)?;
            if n > 1 {
                m.send_recv(dt, c)?;
                m.batch(dt, c)?;
            }
            m.pg.barrier().ctx("barrier")?;
        }
        if me == 0 {
            eprintln!("rank 0: {dt:?} done in {} ms", t0.elapsed().as_millis());
        }
    }
    // Every rank ran the same number of cases; a final all_reduce proves they are still in step.
    let mut cnt = [m.ops_run as i64];
    m.pg.all_reduce(&mut cnt, ReduceOp::Max).ctx("final all_reduce")?;
    ensure!(cnt[0] == m.ops_run as i64, "ranks ran different numbers of cases");
    println!("rank {me}: {} cases over {n} ranks, transports {:?}", m.ops_run, m.pg.transports());
    Ok(())
}

// -------------------------------------------------------------------------------------- subgroups

fn sum_i64(ranks: impl Iterator<Item = usize>, f: impl Fn(usize) -> i64) -> i64 {
    ranks.map(f).sum()
}

/// all_reduce (SUM of a per-job-rank value) on `g`, checked.
fn check_group_sum(g: &ProcessGroup, members: &[usize], it: usize, len: usize) -> R {
    let me = g.parent_rank(g.rank()).ok_or("no parent rank")?;
    let val = |r: usize| (r as i64 + 1) * 1000 + it as i64;
    let mut v = vec![val(me); len];
    g.all_reduce(&mut v, ReduceOp::Sum).ctx(format!("group {} all_reduce", g.uid()))?;
    let want = sum_i64(members.iter().copied(), val);
    ensure!(v.iter().all(|&x| x == want), "group {} (members {members:?}) iteration {it}: got {}, expected {want}", g.uid(), v[0]);
    Ok(())
}

fn subgroups() -> R {
    let pg = world("default")?;
    let (n, me) = (pg.size(), pg.rank());
    ensure!(n >= 3, "subgroups needs at least 3 ranks");
    check_transports(&pg, &|r| r)?;

    // new_group: members get Some with ranks in sorted order, others None.
    let members = vec![n - 1, 0];
    let sorted = vec![0, n - 1];
    let g = pg.new_group(&members).ctx("new_group")?;
    ensure!(g.is_some() == sorted.contains(&me), "new_group({members:?}): membership of rank {me} wrong");
    if let Some(g) = &g {
        ensure!(g.size() == 2 && g.rank() == sorted.iter().position(|&r| r == me).unwrap(), "new_group: rank/size {}/{}", g.rank(), g.size());
        ensure!(g.parent_rank(0) == Some(0) && g.parent_rank(1) == Some(n - 1), "new_group: parent ranks wrong");
        check_transports(g, &|r| sorted[r])?;
        check_group_sum(g, &sorted, 0, 4097)?;
        let mut b = vec![me as u32; 5];
        g.broadcast(&mut b, 1).ctx("subgroup broadcast")?;
        ensure!(b == vec![(n - 1) as u32; 5], "subgroup broadcast from its rank 1 gave {b:?}");
    }
    // The parent still works between subgroup operations.
    check_group_sum(&pg, &(0..n).collect::<Vec<_>>(), 1, 7)?;
    // A singleton group (every rank calls new_group with the same list).
    if let Some(s) = pg.new_group(&[n - 1]).ctx("singleton new_group")? {
        ensure!(me == n - 1 && s.size() == 1 && s.rank() == 0, "singleton group: rank {me} got rank {} of {}", s.rank(), s.size());
        check_group_sum(&s, &[n - 1], 2, 3)?;
    } else {
        ensure!(me != n - 1, "singleton group: its member got None");
    }

    // split: colors by parity, key reverses the order; the last rank opts out.
    let color = if me == n - 1 { None } else { Some((me % 2) as u32) };
    let sp = pg.split(color, -(me as i64)).ctx("split")?;
    ensure!(sp.is_some() == color.is_some(), "split: membership wrong");
    if let Some(sg) = &sp {
        let mut mem: Vec<usize> = (0..n - 1).filter(|r| r % 2 == me % 2).collect();
        mem.reverse(); // key = -rank
        ensure!(sg.size() == mem.len() && sg.parent_rank(sg.rank()) == Some(me), "split: size {} rank {}", sg.size(), sg.rank());
        ensure!(sg.rank() == mem.iter().position(|&r| r == me).unwrap(), "split: rank order ignores the key");
        for (i, &r) in mem.iter().enumerate() {
            ensure!(sg.parent_rank(i) == Some(r), "split: parent_rank({i}) = {:?}, expected {r}", sg.parent_rank(i));
        }
        check_transports(sg, &|r| mem[r])?;
        check_group_sum(sg, &mem, 3, 70_000)?;
    }

    // Two overlapping subgroups {0..n-2} and {1..n-1}, used at once from two threads.
    let a: Vec<usize> = (0..n - 1).collect();
    let b: Vec<usize> = (1..n).collect();
    let ga = pg.new_group(&a).ctx("new_group a")?;
    let gb = pg.new_group(&b).ctx("new_group b")?;
    let iters = 40;
    std::thread::scope(|s| -> R {
        let mut hs = Vec::new();
        for (g, mem) in [(ga.clone(), a.clone()), (gb.clone(), b.clone())] {
            let Some(g) = g else { continue };
            hs.push(s.spawn(move || -> R {
                for it in 0..iters {
                    // Mostly small, sometimes multi-chunk.
                    let len = if it % 10 == 9 { 300_000 } else { 1 + it * 13 };
                    check_group_sum(&g, &mem, it, len)?;
                    if it % 7 == 0 {
                        let x = [me as u16 + 1];
                        let mut all = vec![0u16; g.size()];
                        g.all_gather(&x, &mut all).ctx("overlapping all_gather")?;
                        ensure!(all == mem.iter().map(|&r| r as u16 + 1).collect::<Vec<_>>(), "overlapping all_gather gave {all:?}");
                    }
                }
                Ok(())
            }));
        }
        for h in hs {
            h.join().map_err(|_| "a subgroup thread panicked".to_string())??;
        }
        Ok(())
    })?;
    // And the world group afterwards.
    pg.barrier().ctx("final barrier")?;
    check_group_sum(&pg, &(0..n).collect::<Vec<_>>(), 99, 4097)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------ async

fn async_ops() -> R {
    let pg = world("default")?;
    check_transports(&pg, &|r| r)?;
    let (n, me) = (pg.size(), pg.rank());
    let specs: [(DType, ReduceOp, usize); 8] = [
        (DType::F32, ReduceOp::Sum, 1),
        (DType::I64, ReduceOp::Max, 4097),
        (DType::BF16, ReduceOp::Sum, 7),
        (DType::Bool, ReduceOp::BOr, 100),
        (DType::I8, ReduceOp::Min, 300_000),
        (DType::F64, ReduceOp::Avg, 0),
        (DType::U8, ReduceOp::BXor, 1 << 20),
        (DType::F16, ReduceOp::Prod, 33),
    ];
    for round in 0..3u64 {
        let mut pending: Vec<(RedCase, Work<Vec<u8>>)> = Vec::new();
        for (k, &(dt, op, c)) in specs.iter().enumerate() {
            let case = RedCase::new(dt, op, mix(round * 100 + k as u64), n);
            let w = pg.all_reduce_async(case.input(me, 0, c), dt, op);
            pending.push((case, w));
            if k == 3 {
                // A blocking op in the middle of the queue runs after the queued ones.
                let mut b = pat(round, 0, 0, 1000);
                if me != 0 {
                    b.fill(0);
                }
                pg.broadcast_raw(&mut b, 0).ctx("blocking broadcast between async ops")?;
                ensure!(b == pat(round, 0, 0, 1000), "blocking broadcast between async ops: wrong data");
            }
        }
        let len = 4097 + round as usize;
        let ag = pg.all_gather_async(pat(round, me, 0, len), vec![0u8; n * len]);
        let rs_case = RedCase::new(DType::I32, ReduceOp::Sum, mix(round + 7), n);
        let rs = pg.reduce_scatter_async(rs_case.input(me, 0, n * 9), vec![0u8; 9 * 4], DType::I32, ReduceOp::Sum);
        let red_case = RedCase::new(DType::F32, ReduceOp::Max, mix(round + 8), n);
        let root = n - 1;
        let red = pg.reduce_async(red_case.input(me, 0, 77), root, DType::F32, ReduceOp::Max);
        let bc = pg.broadcast_async(if me == 0 { pat(round, 9, 0, 333) } else { vec![0u8; 333] }, 0);
        let ga = pg.gather_async(pat(round, me, 0, 10), vec![0u8; if me == root { 10 * n } else { 0 }], root);
        let sc = pg.scatter_async(if me == 0 { pat(round, 0, 0, 10 * n) } else { Vec::new() }, vec![0u8; 10], 0);
        let a2a = pg.all_to_all_async(pat(round, me, 0, 12 * n), vec![0u8; 12 * n]);
        let a2av = pg.all_to_all_v_async(pat(round, me, 0, 2 * n), vec![2; n], vec![0u8; 2 * n], vec![2; n], DType::U8);
        let bar = pg.barrier_async();
        // A blocking all_reduce right after, without waiting: it must see the queue drained.
        let mut x = [me as i32];
        pg.all_reduce(&mut x, ReduceOp::Sum).ctx("blocking all_reduce after async ops")?;
        ensure!(x[0] == (0..n as i32).sum::<i32>(), "blocking all_reduce after async ops gave {}", x[0]);

        // Everything queued before the blocking op has completed now.
        for (case, w) in pending {
            ensure!(w.wait_for(timeout()), "all_reduce_async did not complete");
            ensure!(w.is_completed() && w.error().is_none(), "all_reduce_async {:?} failed: {:?}", case.dt, w.error());
            let buf = w.wait().ctx("all_reduce_async")?;
            case.check(&buf, 0, "all_reduce_async")?;
        }
        ensure!(ag.wait_for(timeout()) && ag.is_completed() && ag.error().is_none(), "all_gather_async: {:?}", ag.error());
        let (_, out) = ag.wait().ctx("all_gather_async")?;
        for r in 0..n {
            ensure!(out[r * len..(r + 1) * len] == pat(round, r, 0, len)[..], "all_gather_async: block {r} wrong");
        }
        let (_, out) = rs.wait().ctx("reduce_scatter_async")?;
        rs_case.check(&out, me * 9, "reduce_scatter_async")?;
        let buf = red.wait().ctx("reduce_async")?;
        if me == root {
            red_case.check(&buf, 0, "reduce_async")?;
        }
        ensure!(bc.wait().ctx("broadcast_async")? == pat(round, 9, 0, 333), "broadcast_async: wrong data");
        let (_, out) = ga.wait().ctx("gather_async")?;
        if me == root {
            for r in 0..n {
                ensure!(out[r * 10..(r + 1) * 10] == pat(round, r, 0, 10)[..], "gather_async: block {r} wrong");
            }
        }
        ensure!(sc.wait().ctx("scatter_async")?.1 == pat(round, 0, me * 10, 10), "scatter_async: wrong data");
        let (_, out) = a2a.wait().ctx("all_to_all_async")?;
        for p in 0..n {
            ensure!(out[p * 12..(p + 1) * 12] == pat(round, p, me * 12, 12)[..], "all_to_all_async: block from {p} wrong");
        }
        let (_, out) = a2av.wait().ctx("all_to_all_v_async")?;
        for p in 0..n {
            ensure!(out[p * 2..(p + 1) * 2] == pat(round, p, me * 2, 2)[..], "all_to_all_v_async: block from {p} wrong");
        }
        bar.wait().ctx("barrier_async")?;
    }
    // A failed async op is complete at once and reports its error.
    let w = pg.all_reduce_async(vec![0u8; 8], DType::U32, ReduceOp::Sum);
    ensure!(w.is_completed() && w.wait_for(Duration::ZERO), "unsupported all_reduce_async is not complete at once");
    ensure!(w.error().is_some(), "unsupported all_reduce_async has no error");
    ensure!(matches!(w.wait(), Err(ChorusError::Unsupported(_) | ChorusError::UnsupportedOp { .. })), "unsupported all_reduce_async: wrong error");
    pg.barrier().ctx("final barrier")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------- errors

fn expect_err<T>(what: &str, r: Result<T, ChorusError>, ok: impl Fn(&ChorusError) -> bool) -> R {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected an error")),
        Err(e) if ok(&e) => Ok(()),
        Err(e) => Err(format!("{what}: wrong error: {e:?}")),
    }
}

fn invalid_rank(e: &ChorusError) -> bool {
    matches!(e, ChorusError::InvalidRank { .. })
}
fn invalid_arg(e: &ChorusError) -> bool {
    matches!(e, ChorusError::InvalidArgument(_))
}
fn unsupported(e: &ChorusError) -> bool {
    matches!(e, ChorusError::Unsupported(_) | ChorusError::UnsupportedOp { .. })
}

/// Calls that must fail on the calling rank alone, before any communication.
fn local_bad_calls(pg: &ProcessGroup) -> R {
    let (n, me) = (pg.size(), pg.rank());
    let mut b = vec![0u8; 16];
    let mut o = vec![0u8; 16 * n];
    expect_err("reduce root n", pg.reduce_raw(&mut b, n, DType::F32, ReduceOp::Sum), invalid_rank)?;
    expect_err("broadcast root n", pg.broadcast_raw(&mut b, n + 3), invalid_rank)?;
    expect_err("gather root n", pg.gather_raw(&b, &mut o, n), invalid_rank)?;
    expect_err("scatter root n", pg.scatter_raw(&o, &mut b, usize::MAX), invalid_rank)?;
    expect_err("reduce_async root n", pg.reduce_async(vec![0u8; 4], n, DType::F32, ReduceOp::Sum).wait(), invalid_rank)?;
    expect_err("broadcast_async root n", pg.broadcast_async(vec![0u8; 4], n).wait(), invalid_rank)?;
    expect_err("send to n", pg.send_raw(&b, n, 0), invalid_rank)?;
    expect_err("send to self", pg.send_raw(&b, me, 0), invalid_rank)?;
    expect_err("recv from n", pg.recv_raw(&mut b, n + 1, 0), invalid_rank)?;
    expect_err("recv from self", pg.recv_async(vec![0u8; 4], me, 0).wait(), invalid_rank)?;
    expect_err("new_group rank n", pg.new_group(&[0, n]), invalid_rank)?;
    expect_err("new_group duplicate", pg.new_group(&[0, 0]), invalid_arg)?;
    // Unsupported op/dtype pairs.
    for (dt, op) in [(DType::F32, ReduceOp::BAnd), (DType::F64, ReduceOp::BXor), (DType::BF16, ReduceOp::BOr), (DType::U32, ReduceOp::Sum), (DType::U16, ReduceOp::Max), (DType::U64, ReduceOp::Min), (DType::F8E4M3, ReduceOp::Sum), (DType::Bool, ReduceOp::Avg)] {
        expect_err(&format!("all_reduce {dt:?} {op}"), pg.all_reduce_raw(&mut b, dt, op), unsupported)?;
        expect_err(&format!("reduce {dt:?} {op}"), pg.reduce_raw(&mut b, 0, dt, op), unsupported)?;
        expect_err(&format!("reduce_scatter {dt:?} {op}"), pg.reduce_scatter_raw(&o, &mut b, dt, op), unsupported)?;
        expect_err(&format!("all_reduce_async {dt:?} {op}"), pg.all_reduce_async(vec![0u8; 8], dt, op).wait(), unsupported)?;
    }
    // Wrong lengths and list lengths.
    expect_err("all_reduce 3 bytes of f32", pg.all_reduce_raw(&mut b[..3], DType::F32, ReduceOp::Sum), invalid_arg)?;
    expect_err("all_gather output too small", pg.all_gather_raw(&b, &mut o[..16 * n - 1]), invalid_arg)?;
    expect_err("reduce_scatter input too big", pg.reduce_scatter_raw(&vec![0u8; 16 * n + 4], &mut b, DType::F32, ReduceOp::Sum), invalid_arg)?;
    expect_err("all_to_all unequal", pg.all_to_all_raw(&o, &mut vec![0u8; 16 * n + n]), invalid_arg)?;
    expect_err("all_to_all_v count lists", pg.all_to_all_v_raw(&o, &vec![1; n + 1], &mut o.clone(), &vec![1; n], DType::U8), invalid_arg)?;
    expect_err("all_to_all_v counts beyond buffer", pg.all_to_all_v_raw(&b, &vec![17; n], &mut o.clone(), &vec![1; n], DType::U8), invalid_arg)?;
    let x = [1.0f32; 4];
    let mut outs: Vec<Vec<f32>> = (0..n + 1).map(|_| vec![0.0; 4]).collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
    expect_err("all_gather_list n+1 outputs", pg.all_gather_list(&x, &mut refs), invalid_arg)?;
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().take(n).map(|v| &mut v[..3]).collect();
    expect_err("all_gather_list short outputs", pg.all_gather_list(&x, &mut refs), invalid_arg)?;
    let ins: Vec<&[f32]> = (0..n.saturating_sub(1)).map(|_| &x[..]).collect();
    let mut out = [0.0f32; 4];
    expect_err("reduce_scatter_list n-1 inputs", pg.reduce_scatter_list(&ins, &mut out, ReduceOp::Sum), invalid_arg)?;
    let ins: Vec<&[f32]> = (0..n).map(|r| if r == 0 { &x[..2] } else { &x[..] }).collect();
    expect_err("reduce_scatter_list uneven inputs", pg.reduce_scatter_list(&ins, &mut out, ReduceOp::Sum), invalid_arg)?;
    expect_err("all_gather_async wrong output", pg.all_gather_async(vec![0u8; 4], vec![0u8; 4 * n + 1]).wait(), invalid_arg)?;

    Ok(())
}

fn errors_local() -> R {
    let pg = world("default")?;
    check_transports(&pg, &|r| r)?;
    let (n, me) = (pg.size(), pg.rank());
    let mut b = vec![0u8; 16];
    // Only the last rank issues the bad calls: they must fail without communicating, so the
    // all_reduce below still matches up across ranks.
    if me == n - 1 {
        local_bad_calls(&pg)?;
    }
    // None of that communicated: the group still works, and every rank is in step.
    let mut v = vec![me as i64 + 1; 1000];
    pg.all_reduce(&mut v, ReduceOp::Sum).ctx("all_reduce after local errors")?;
    ensure!(v.iter().all(|&x| x == (n * (n + 1) / 2) as i64), "all_reduce after local errors gave {}", v[0]);

    // Use after destroy: every call on every handle fails with Destroyed.
    let g2 = world("destroy-me")?;
    let clone = g2.clone();
    g2.barrier().ctx("barrier before destroy")?;
    g2.destroy();
    let destroyed = |e: &ChorusError| matches!(e, ChorusError::Destroyed);
    expect_err("all_reduce after destroy", g2.all_reduce_raw(&mut b, DType::F32, ReduceOp::Sum), destroyed)?;
    expect_err("clone all_reduce after destroy", clone.all_reduce(&mut [1i32], ReduceOp::Sum), destroyed)?;
    expect_err("barrier after destroy", clone.barrier(), destroyed)?;
    expect_err("broadcast after destroy", g2.broadcast_raw(&mut b, 0), destroyed)?;
    expect_err("all_gather_async after destroy", g2.all_gather_async(vec![0u8; 4], vec![0u8; 4 * n]).wait(), destroyed)?;
    expect_err("all_reduce_async after destroy", g2.all_reduce_async(vec![0u8; 4], DType::F32, ReduceOp::Sum).wait(), destroyed)?;
    if n > 1 {
        expect_err("send after destroy", g2.send_raw(&b, (me + 1) % n, 0), destroyed)?;
        expect_err("recv after destroy", g2.recv_async(vec![0u8; 4], (me + 1) % n, 0).wait(), destroyed)?;
    }
    expect_err("new_group after destroy", g2.new_group(&[0]), destroyed)?;
    expect_err("split after destroy", g2.split(Some(0), 0), destroyed)?;
    g2.destroy(); // idempotent
    // The other group is unaffected.
    pg.barrier().ctx("barrier on the surviving group")?;
    Ok(())
}

/// Each sub-case runs on a fresh group in which rank 0 disagrees with the others; every rank
/// must get an error (not a hang, not a success).
fn errors_mismatch(only: &[String]) -> R {
    let n = env_usize("WORLD_SIZE");
    ensure!(n >= 2, "errors-mismatch needs 2 or more ranks");
    type Case = (&'static str, fn(&ProcessGroup, bool) -> Result<(), ChorusError>);
    let cases: [Case; 8] = [
        ("count", |g, odd| g.all_reduce_raw(&mut vec![0u8; if odd { 40 } else { 48 }], DType::F32, ReduceOp::Sum)),
        ("count-big", |g, odd| g.all_reduce_raw(&mut vec![0u8; if odd { 3 << 20 } else { (3 << 20) + 4 }], DType::F32, ReduceOp::Sum)),
        ("dtype", |g, odd| g.all_reduce_raw(&mut [0u8; 64], if odd { DType::F32 } else { DType::I32 }, ReduceOp::Sum)),
        ("op", |g, odd| g.all_reduce_raw(&mut [0u8; 64], DType::I32, if odd { ReduceOp::Sum } else { ReduceOp::Max })),
        ("root", |g, odd| g.broadcast_raw(&mut [0u8; 64], if odd { 0 } else { 1 })),
        ("collective", |g, odd| if odd { g.all_reduce_raw(&mut [0u8; 64], DType::F32, ReduceOp::Sum) } else { g.broadcast_raw(&mut [0u8; 64], 0) }),
        ("all_gather-count", |g, odd| {
            let l = if odd { 8 } else { 12 };
            g.all_gather_raw(&vec![0u8; l], &mut vec![0u8; l * g.size()])
        }),
        ("all_to_all_v-counts", |g, odd| {
            // Rank 0 sends 3 elements to rank 1; rank 1 expects 4 from rank 0.
            let (n, me) = (g.size(), g.rank());
            let mut send = vec![1usize; n];
            let mut recv = vec![1usize; n];
            if odd {
                send[1] = 3;
            } else if me == 1 {
                recv[0] = 4;
            }
            g.all_to_all_v_raw(&[0u8; 64], &send, &mut [0u8; 64], &recv, DType::U8)
        }),
    ];
    // Options: --barrier-first (a barrier on the fresh group before the mismatched op),
    // --repeat K; then case names. Default: every case but "root" (a known bug makes it time out).
    let mut barrier_first = false;
    let mut repeat = 1;
    let mut names: Vec<&str> = Vec::new();
    let mut it = only.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--barrier-first" => barrier_first = true,
            "--repeat" => repeat = it.next().and_then(|v| v.parse().ok()).ok_or("--repeat needs a number")?,
            c => names.push(c),
        }
    }
    let selected = |c: &str| if names.is_empty() { c != "root" } else { names.contains(&c) };
    let mut keep = Vec::new();
    let runs: Vec<(usize, &Case)> = (0..repeat).flat_map(|k| cases.iter().filter(|c| selected(c.0)).map(move |c| (k, c))).collect();
    for (k, (name, f)) in runs {
        // A fresh group: creating it brings the ranks in step, and its first operation is the
        // mismatched one (no barrier first: a rank that detects the mismatch early aborts the
        // group, which may fail peers still finishing an earlier operation).
        let g = world(&format!("mismatch-{name}-{k}"))?;
        check_transports(&g, &|r| r)?;
        if barrier_first {
            g.barrier().ctx(format!("{name}: barrier"))?;
        }
        let t0 = Instant::now();
        let r = f(&g, g.rank() == 0);
        eprintln!("rank {}: mismatch {name}: {} after {} ms", g.rank(), r.as_ref().err().map_or("Ok".to_string(), |e| format!("{e:?}")), t0.elapsed().as_millis());
        match r {
            Ok(()) => return Err(format!("mismatch {name}: succeeded on rank {}, expected an error", g.rank())),
            Err(ChorusError::Timeout { .. }) => return Err(format!("mismatch {name}: only a timeout on rank {} (the mismatch was not detected)", g.rank())),
            Err(_) => {}
        }
        // Not destroyed here: destroying aborts peers that may still be detecting the mismatch.
        keep.push(g);
    }
    // Every rank is done with every broken group before any of them goes away.
    world("mismatch-done")?.barrier().ctx("final barrier")?;
    Ok(())
}

/// A barrier that returned on one rank must also complete on the others, even when that rank
/// destroys the group right away: rank 0 destroys immediately after each barrier.
fn barrier_destroy() -> R {
    let me = env_usize("RANK");
    for k in 0..20 {
        let g = world(&format!("barrier-destroy-{k}"))?;
        let r = g.barrier();
        if me == 0 {
            g.destroy();
        }
        r.ctx(format!("barrier {k} (rank 0 destroys the group right after it)"))?;
    }
    world("barrier-destroy-done")?.barrier().ctx("final barrier")?;
    Ok(())
}

/// Run alone as rank 0 of a 2-rank job: group creation must fail (rank 1 never comes), and must
/// not leave this process's shared-memory segments behind in /dev/shm.
fn create_timeout() -> R {
    let addr = std::env::var("CHORUS_STORE_ADDR").map_err(|_| "create-timeout needs CHORUS_STORE_ADDR")?;
    let store: Arc<dyn Store> = Arc::new(StoreClient::connect(&addr, timeout()).map_err(|e| format!("store {addr}: {e}"))?);
    let r = ProcessGroup::new(store, 0, 2, Options::default().with_timeout(Duration::from_millis(500)).with_name("lonely"));
    ensure!(r.is_err(), "creating a 2-rank group alone succeeded");
    let prefix = format!("chorus-{}-", std::process::id());
    let leaked: Vec<String> = std::fs::read_dir("/dev/shm")
        .map_err(|e| format!("/dev/shm: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for n in &leaked {
        let _ = std::fs::remove_file(format!("/dev/shm/{n}")); // do not leave them for the next run
    }
    ensure!(leaked.is_empty(), "a failed group creation ({}) left {leaked:?} in /dev/shm", r.err().unwrap());
    Ok(())
}

// ------------------------------------------------------------------------------------------ smoke

fn smoke() -> R {
    let pg = world("default")?;
    check_transports(&pg, &|r| r)?;
    let (n, me) = (pg.size(), pg.rank());
    for &c in &[0usize, 7, 4097, 1 << 20] {
        let case = RedCase::new(DType::F32, ReduceOp::Sum, c as u64, n);
        let mut buf = case.input(me, 0, c);
        pg.all_reduce_raw(&mut buf, DType::F32, ReduceOp::Sum).ctx("all_reduce")?;
        case.check(&buf, 0, "all_reduce")?;
        let mut b = if me == n - 1 { pat(c as u64, 0, 0, c) } else { vec![0u8; c] };
        pg.broadcast_raw(&mut b, n - 1).ctx("broadcast")?;
        ensure!(b == pat(c as u64, 0, 0, c), "broadcast: wrong data");
        let mut out = vec![0u8; c * n];
        pg.all_gather_raw(&pat(c as u64, me, 0, c), &mut out).ctx("all_gather")?;
        for r in 0..n {
            ensure!(out[r * c..(r + 1) * c] == pat(c as u64, r, 0, c)[..], "all_gather: block {r} wrong");
        }
    }
    if n > 1 {
        let to = (me + 1) % n;
        let w = pg.send_async(pat(5, me, 0, 1000), to, 1);
        let got = pg.recv_async(vec![0u8; 1000], (me + n - 1) % n, 1).wait().ctx("recv")?;
        ensure!(got == pat(5, (me + n - 1) % n, 0, 1000), "recv: wrong data");
        w.wait().ctx("send")?;
    }
    pg.barrier().ctx("barrier")?;
    println!("rank {me}: smoke ok, transports {:?}", pg.transports());
    Ok(())
}
