//! nccl-tests style table and the JSON file.
use std::fmt::Write as _;

pub const HEADER: &str = "#       size         count      type   redop    root     time   algbw   busbw #wrong";
pub const UNITS: &str = "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)       ";
/// The extra column of `--async` (the asynchronous form's time and its ratio to `time`).
pub const ASYNC_HEADER: &str = "    async  ratio";
pub const ASYNC_UNITS: &str = "     (us)       ";

#[derive(Clone, Debug)]
pub struct Row {
    pub op: &'static str,
    pub size: u64,
    pub count: u64,
    pub dtype: String,
    pub redop: String,
    pub root: i64,
    pub time_us: f64,
    pub algbw: f64,
    pub busbw: f64,
    pub wrong: u64,
    pub iters: usize,
    pub nranks: usize,
    /// The asynchronous form's time (`--async`).
    pub async_us: Option<f64>,
}

fn us(t: f64) -> String {
    if t >= 1e6 {
        format!("{t:.0}")
    } else {
        format!("{t:.2}")
    }
}

pub fn line(r: &Row) -> String {
    let mut l = format!(
        "{:>12}{:>14}{:>10}{:>8}{:>8}{:>9}{:>8.2}{:>8.2}{:>7}",
        r.size,
        r.count,
        r.dtype,
        r.redop,
        r.root,
        us(r.time_us),
        r.algbw,
        r.busbw,
        r.wrong
    );
    if let Some(a) = r.async_us {
        let ratio = if r.time_us > 0.0 { a / r.time_us } else { 0.0 };
        l.push_str(&format!("{:>9}{:>7.2}", us(a), ratio));
    }
    l
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn json(rows: &[Row], nranks: usize, transports: &[&str]) -> String {
    let mut s = String::new();
    let tr: Vec<String> = transports.iter().map(|t| format!("\"{}\"", esc(t))).collect();
    let _ = write!(s, "{{\n  \"bench\": \"chorus\",\n  \"nranks\": {nranks},\n  \"transports_rank0\": [{}],\n  \"results\": [", tr.join(", "));
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "{}\n    {{\"op\": \"{}\", \"size\": {}, \"count\": {}, \"dtype\": \"{}\", \"redop\": \"{}\", \"root\": {}, \"time_us\": {:.3}, \"algbw\": {:.4}, \"busbw\": {:.4}, \"wrong\": {}, \"iters\": {}, \"nranks\": {}{}}}",
            if i == 0 { "" } else { "," },
            r.op,
            r.size,
            r.count,
            esc(&r.dtype),
            esc(&r.redop),
            r.root,
            r.time_us,
            r.algbw,
            r.busbw,
            r.wrong,
            r.iters,
            r.nranks,
            r.async_us.map_or(String::new(), |a| format!(", \"async_time_us\": {a:.3}"))
        );
    }
    s.push_str("\n  ]\n}\n");
    s
}
