//! The one table `include/chorus.h` is rendered from.
//!
//! Why a table and not cbindgen: cbindgen (and the `syn` parse it needs) would be the crate's only
//! heavy dependency, and the ABI is small. Enum values here come from the Rust constants the code
//! uses (status codes, `DType`, `ReduceOp`), so they cannot drift; function declarations are
//! written once below, and `tests/header.rs` checks that (1) the checked-in header equals
//! `render()`, and (2) the set of `#[no_mangle]` functions in `src/` and their parameter
//! counts equal the declarations here. `CHORUS_BLESS=1 cargo test -p chorus-ffi --test header`
//! rewrites the header.
use crate::error::STATUS_CODES;
use crate::{CHORUS_ABI_VERSION, CHORUS_DEVICE_CPU};
use chorus_backend::{DType, ReduceOp};

/// A C function declaration.
pub struct Func {
    pub doc: &'static str,
    pub ret: &'static str,
    pub name: &'static str,
    pub args: &'static [&'static str],
}

const PREAMBLE: &str = r#"/*
 * chorus.h — C ABI of chorus, a fault-tolerant collective-communication library.
 *
 * GENERATED from ffi/src/header.rs; do not edit by hand. Regenerate with
 *   CHORUS_BLESS=1 cargo test -p chorus-ffi --test header
 *
 * Conventions
 * - Every function that can fail returns a chorus_status_t (0 = CHORUS_OK). On failure,
 *   chorus_last_error() returns a message for the calling thread.
 * - Handles (chorus_group_t, chorus_work_t) are opaque. A group handle may be used from several
 *   threads; collectives of one group must be issued in the same order on every rank.
 * - Every collective (and send/recv) has two forms, chosen by its last argument `work`:
 *   - asynchronous (`work` non-NULL): it returns at once with a work handle in *work. The caller
 *     keeps every data pointer valid, and does not write input memory, until the work completes
 *     (chorus_work_wait returns or chorus_work_is_completed says 1), then frees the handle with
 *     chorus_work_free. Operations of a group run one at a time in issue order: on the group's
 *     worker thread, or on the thread that waits for one that has not started yet
 *     (chorus_work_wait with timeout_ms < 0 then runs it, and those issued before it, itself).
 *   - blocking (`work == NULL`): the call runs the operation to completion on the calling thread,
 *     after the group's earlier operations, and returns its status (message in
 *     chorus_last_error); no handle is made. What it reported (failed ranks, contributors, epoch)
 *     is read with chorus_last_op_*, per thread, until the thread's next blocking call. On device
 *     memory (below) both forms return once the operation is enqueued.
 * - Every collective takes (pointer, count, dtype, device, stream): device is CHORUS_DEVICE_CPU
 *   for host memory or a CUDA device ordinal; stream is the cudaStream_t the work is ordered on
 *   (NULL for host memory). Device memory: all_reduce, broadcast, reduce, all_gather,
 *   reduce_scatter, all_to_all(_v), send and recv are enqueued on `stream` with no host
 *   synchronization and their work handle is complete at once (later work on `stream` sees the
 *   result); the group's operations on one device run in issue order across streams, and CUDA
 *   send/recv ignore tags and match in issue order (a send larger than two 4 MiB slots waits for
 *   the peer's recv). gather and scatter on device memory, and every operation on device memory
 *   of a group the GPU kernels do not serve -- created with CHORUS_CUDA_PATH=host, or with more
 *   than 8 active ranks, or spanning several hosts -- take the host path instead: the call copies
 *   the buffers to the host on `stream`, runs the host collective (with fault tolerance) and
 *   copies the results back on `stream` before it returns, with the work already complete.
 * - No panic or exception crosses this boundary.
 * - Fault tolerance: a group survives the death of ranks (they are removed by a new membership view
 *   and reported by chorus_work_failed_ranks or chorus_last_op_failed_ranks); a replacement process
 *   rejoins with chorus_group_join*.
 *   Read from the environment when a group is created: CHORUS_FT (0 = off), CHORUS_FAILURE_POLICY
 *   (shrink = complete over the survivors, the default; abort = fail the collective on every
 *   survivor), CHORUS_HEARTBEAT_MS (100), CHORUS_HEARTBEAT_TIMEOUT_MS (2000) and
 *   CHORUS_FT_SAVE_LIMIT (bytes, default 1048576; K/M/G suffixes, 0 or inf): in-place reductions
 *   (all_reduce, reduce at the root) of at least that many bytes do not save their input, so when a
 *   rank dies during one that not every survivor finished, it fails with the same error on every
 *   survivor (CHORUS_ERR_PEER_FAILED) instead of being re-run; smaller ones cost a copy each.
 */
#ifndef CHORUS_H
#define CHORUS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
"#;

const TYPES: &str = r#"/* Opaque handles. */
typedef struct chorus_group chorus_group_t;
typedef struct chorus_work chorus_work_t;
/* A chorus-owned byte buffer that store callbacks fill with chorus_buf_write. */
typedef struct chorus_buf chorus_buf_t;

/*
 * A key/value store implemented by the caller (e.g. on top of torch's c10d.Store), used for
 * rendezvous. Every callback may be called from any thread, concurrently, until `release`
 * (may be NULL) is called once -- also when group creation fails. Callbacks return 0 on success
 * and a negative value on failure, after writing a message into `err` (optional).
 *   set:         store `value` (`len` bytes) under `key`.
 *   get:         0 and the value written into `value` if `key` exists, 1 if it does not.
 *   wait:        0 once every key exists, 1 if `timeout_ms` passed first.
 *   add:         atomic add on a decimal integer value (absent = 0); `*result` = new value.
 *   compare_set: c10d semantics -- store `desired` if the current value equals `expected` (an
 *                absent key equals an empty `expected`); write the value after the operation
 *                into `result` (c10d writes `expected` back for an absent key).
 *   delete_key:  1 if the key existed, 0 if not.
 */
typedef struct chorus_store_callbacks {
    void *ctx;
    int32_t (*set)(void *ctx, const char *key, const uint8_t *value, size_t len, chorus_buf_t *err);
    int32_t (*get)(void *ctx, const char *key, chorus_buf_t *value, chorus_buf_t *err);
    int32_t (*wait)(void *ctx, const char *const *keys, size_t nkeys, int64_t timeout_ms, chorus_buf_t *err);
    int32_t (*add)(void *ctx, const char *key, int64_t delta, int64_t *result, chorus_buf_t *err);
    int32_t (*compare_set)(void *ctx, const char *key, const uint8_t *expected, size_t expected_len,
                           const uint8_t *desired, size_t desired_len, chorus_buf_t *result, chorus_buf_t *err);
    int32_t (*delete_key)(void *ctx, const char *key, chorus_buf_t *err);
    void (*release)(void *ctx);
} chorus_store_callbacks_t;
"#;

const POSTAMBLE: &str = r#"
#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CHORUS_H */
"#;

/// A collective's declaration: it returns a status and takes the group first and
/// `(device, stream, work)` last, around its own `args` (`work == NULL`: the blocking form).
macro_rules! collective {
    ($name:literal, [$($arg:literal),+ $(,)?], $doc:literal) => {
        Func { doc: $doc, ret: "int32_t", name: $name, args: &["chorus_group_t *group", $($arg,)+ "int32_t device", "void *stream", "chorus_work_t **work"] }
    };
}

/// Every exported function, in header order.
pub const FUNCS: &[Func] = &[
    Func { doc: "ABI version of the loaded library; compare with CHORUS_ABI_VERSION.", ret: "uint32_t", name: "chorus_abi_version", args: &[] },
    Func { doc: "The calling thread's last error message (\"\" if none); valid until the thread's next failing call.", ret: "const char *", name: "chorus_last_error", args: &[] },
    Func { doc: "Replaces the contents of `buf` (only inside a store callback that received it).", ret: "int32_t", name: "chorus_buf_write", args: &["chorus_buf_t *buf", "const uint8_t *data", "size_t len"] },
    Func { doc: "Creates a top-level group of `size` ranks over a caller-implemented store. Every rank calls it with the\n   same store contents; `name` (NULL = \"default\") keeps groups on one store apart; timeout_ms is the deadline\n   of every wait, unless CHORUS_TIMEOUT_MS is set and shorter (then it is); <= 0 uses CHORUS_TIMEOUT_MS or 300 s.\n   A timeout error names the one that applied.", ret: "int32_t", name: "chorus_group_create", args: &["const chorus_store_callbacks_t *store", "int32_t rank", "int32_t size", "const char *name", "int64_t timeout_ms", "chorus_group_t **out"] },
    Func { doc: "Creates a top-level group over a chorus TCP store at `addr` (\"host:port\"); with host_store != 0 this\n   rank first starts the store server on `addr` (an \"ip:port\").", ret: "int32_t", name: "chorus_group_create_tcp", args: &["const char *addr", "int32_t host_store", "int32_t rank", "int32_t size", "const char *name", "int64_t timeout_ms", "chorus_group_t **out"] },
    Func { doc: "Creates the default group from torchrun/SLURM/chorus-run environment variables.", ret: "int32_t", name: "chorus_group_create_env", args: &["const char *name", "int64_t timeout_ms", "chorus_group_t **out"] },
    Func { doc: "Starts a replacement for `rank` of a running top-level group (same store, `size` and `name` as at\n   creation; the old process is gone). Blocks until the survivors removed the old process and admitted\n   this one with a new view; they do so between collectives, so they must keep issuing them. Only the\n   links that involve this rank are created. (chorus_group_create_env does this when CHORUS_JOIN=1.)", ret: "int32_t", name: "chorus_group_join", args: &["const chorus_store_callbacks_t *store", "int32_t rank", "int32_t size", "const char *name", "int64_t timeout_ms", "chorus_group_t **out"] },
    Func { doc: "Like chorus_group_join over a chorus TCP store at `addr` (\"host:port\"), hosted outside the workers.", ret: "int32_t", name: "chorus_group_join_tcp", args: &["const char *addr", "int32_t rank", "int32_t size", "const char *name", "int64_t timeout_ms", "chorus_group_t **out"] },
    Func { doc: "A subgroup of `ranks` (ranks of `group`); every rank of `group` calls it in the same order. Non-members\n   get *out = NULL.", ret: "int32_t", name: "chorus_group_new_subgroup", args: &["chorus_group_t *group", "const int32_t *ranks", "size_t nranks", "chorus_group_t **out"] },
    Func { doc: "This rank's index in the group (-1 for NULL).", ret: "int32_t", name: "chorus_group_rank", args: &["const chorus_group_t *group"] },
    Func { doc: "The group's number of ranks (-1 for NULL).", ret: "int32_t", name: "chorus_group_size", args: &["const chorus_group_t *group"] },
    Func { doc: "Fault tolerance. Rank arrays are written into `out` (`cap` entries, may be NULL with cap 0) with `*n`\n   set to the full count; CHORUS_ERR_INVALID_ARGUMENT (with `*n` set) when `cap` is too small.\n   The active ranks of the group's current membership view, ascending.", ret: "int32_t", name: "chorus_group_active_ranks", args: &["const chorus_group_t *group", "int32_t *out", "size_t cap", "size_t *n"] },
    Func { doc: "Where this rank's membership replica listens (`host:port`, no NUL; `*n` 0 without replicas), for a\n   replacement's CHORUS_JOIN_VIA; bytes as ranks are for chorus_group_active_ranks.", ret: "int32_t", name: "chorus_group_replica_address", args: &["const chorus_group_t *group", "char *out", "size_t cap", "size_t *n"] },
    Func { doc: "The epoch of the group's current membership view (raised by every change).", ret: "int32_t", name: "chorus_group_epoch", args: &["const chorus_group_t *group", "uint64_t *out"] },
    Func { doc: "Collectives this rank has issued in the group; a replacement starts at the survivors' count, so an\n   application can resume its loop from it.", ret: "int32_t", name: "chorus_group_ops_completed", args: &["const chorus_group_t *group", "uint64_t *out"] },
    Func { doc: "Marks where the application is in its loop: the collectives this rank issues from now on belong to\n   `value` (a training step, say); a replacement reads the survivors' place with chorus_group_resume_point.", ret: "int32_t", name: "chorus_group_mark", args: &["const chorus_group_t *group", "uint64_t value"] },
    Func { doc: "For a replacement: the survivors' last collective before this rank's first was the `*done`-th they\n   issued after marking `*marker`; `*done` is 0 for a rank that did not join or when nothing was marked.", ret: "int32_t", name: "chorus_group_resume_point", args: &["const chorus_group_t *group", "uint64_t *marker", "uint64_t *done"] },
    Func { doc: "Whether the group's GPU communicator on CUDA device `device` still works (as ncclCommGetAsyncError):\n   CHORUS_OK (also when the device has none), CHORUS_ERR_TIMEOUT when a kernel waited past its deadline,\n   CHORUS_ERR_PEER_FAILED when the group aborted it because a peer died (message in chorus_last_error).\n   GPU collectives return before they run: call this after synchronizing. Reads host memory only.", ret: "int32_t", name: "chorus_group_device_status", args: &["const chorus_group_t *group", "int32_t device"] },
    Func { doc: "Removes `ranks` from the view; every rank adopts the change at its next collective.", ret: "int32_t", name: "chorus_group_deactivate_ranks", args: &["chorus_group_t *group", "const int32_t *ranks", "size_t nranks"] },
    Func { doc: "Puts `ranks` (alive and linked) back into the view, adopted at the next collective.", ret: "int32_t", name: "chorus_group_activate_ranks", args: &["chorus_group_t *group", "const int32_t *ranks", "size_t nranks"] },
    Func { doc: "Destroys the group and frees the handle; peers inside an operation with this rank get an error.", ret: "int32_t", name: "chorus_group_destroy", args: &["chorus_group_t *group"] },
    collective!("chorus_all_reduce", ["void *buf", "uint64_t count", "int32_t dtype", "int32_t op"], "In-place all-reduce of `count` elements."),
    collective!("chorus_broadcast", ["void *buf", "uint64_t count", "int32_t dtype", "int32_t root"], "In-place broadcast of `count` elements from `root`."),
    collective!("chorus_reduce", ["void *buf", "uint64_t count", "int32_t dtype", "int32_t op", "int32_t root"], "In-place reduce to `root`; other ranks' `buf` is left unchanged."),
    collective!("chorus_all_gather", ["const void *sendbuf", "void *recvbuf", "uint64_t sendcount", "int32_t dtype"], "All-gather: `sendcount` elements of every rank land in `recvbuf` (size * sendcount, rank order).\n   `sendbuf` may alias a block of `recvbuf` (it is copied first)."),
    collective!("chorus_reduce_scatter", ["const void *sendbuf", "void *recvbuf", "uint64_t recvcount", "int32_t dtype", "int32_t op"], "Reduce-scatter: `sendbuf` holds size * recvcount elements; rank r receives the reduction of block r.\n   The buffers may overlap (the input is copied first)."),
    collective!("chorus_all_to_all", ["const void *sendbuf", "void *recvbuf", "uint64_t count", "int32_t dtype"], "All-to-all with equal blocks of `count` elements: block p of `sendbuf` goes to rank p, block p of\n   `recvbuf` comes from rank p."),
    collective!("chorus_all_to_all_v", ["const void *sendbuf", "const uint64_t *send_counts", "void *recvbuf", "const uint64_t *recv_counts", "int32_t dtype"], "All-to-all with per-rank counts (one entry per rank, read during the call): send_counts[p] consecutive\n   elements of `sendbuf` go to rank p; recv_counts[p] elements from rank p land consecutively in `recvbuf`."),
    collective!("chorus_gather", ["const void *sendbuf", "void *recvbuf", "uint64_t count", "int32_t dtype", "int32_t root"], "Gather of `count` elements per rank into `root`'s `recvbuf` (size * count); `recvbuf` is ignored\n   (may be NULL) elsewhere."),
    collective!("chorus_scatter", ["const void *sendbuf", "void *recvbuf", "uint64_t count", "int32_t dtype", "int32_t root"], "Scatter of `root`'s `sendbuf` (size * count): rank r receives block r; `sendbuf` is ignored (may be\n   NULL) elsewhere."),
    Func { doc: "Barrier: completes once every rank entered it (work == NULL: returns then).", ret: "int32_t", name: "chorus_barrier", args: &["chorus_group_t *group", "chorus_work_t **work"] },
    collective!("chorus_send", ["const void *buf", "uint64_t count", "int32_t dtype", "int32_t peer", "uint64_t tag"], "Sends `count` elements to `peer`; messages of one pair and tag arrive in order."),
    collective!("chorus_recv", ["void *buf", "uint64_t count", "int32_t dtype", "int32_t peer", "uint64_t tag"], "Receives exactly `count` elements from `peer` with `tag`."),
    Func { doc: "Waits up to `timeout_ms` (negative: no limit); returns the operation's status (repeatable).\n   CHORUS_ERR_TIMEOUT with the operation still running when the wait ran out. A wait that finds the operation\n   not started yet runs it, and the group's operations issued before it, on the calling thread (the fast\n   path) when it may last as long as they may (timeout_ms < 0, or at least the group's timeout); a shorter\n   wait leaves them to the group's worker thread.", ret: "int32_t", name: "chorus_work_wait", args: &["chorus_work_t *work", "int64_t timeout_ms"] },
    Func { doc: "1 if the operation finished (successfully or not), 0 if not, negative for NULL.", ret: "int32_t", name: "chorus_work_is_completed", args: &["const chorus_work_t *work"] },
    Func { doc: "Ranks that failed during the completed operation (every survivor reports the same ones at the same\n   collective); arrays as for chorus_group_active_ranks. CHORUS_ERR_INVALID_ARGUMENT before completion.", ret: "int32_t", name: "chorus_work_failed_ranks", args: &["const chorus_work_t *work", "int32_t *out", "size_t cap", "size_t *n"] },
    Func { doc: "The ranks whose data the completed operation's result contains.", ret: "int32_t", name: "chorus_work_contributors", args: &["const chorus_work_t *work", "int32_t *out", "size_t cap", "size_t *n"] },
    Func { doc: "The membership epoch the completed operation ran under.", ret: "int32_t", name: "chorus_work_epoch", args: &["const chorus_work_t *work", "uint64_t *out"] },
    Func { doc: "Frees a work handle (a running operation's memory must still stay valid until it completes).", ret: "void", name: "chorus_work_free", args: &["chorus_work_t *work"] },
    Func { doc: "Reports of the calling thread's last blocking collective (work == NULL), as chorus_work_* report them for\n   a handle; arrays as for chorus_group_active_ranks. Every blocking call replaces the report, a failing one\n   too (a failure under the abort policy still names the failed ranks and the epoch); a call refused before\n   it ran (bad arguments) leaves none, and these return CHORUS_ERR_INVALID_ARGUMENT.\n   The ranks that failed during it (removed from the group).", ret: "int32_t", name: "chorus_last_op_failed_ranks", args: &["int32_t *out", "size_t cap", "size_t *n"] },
    Func { doc: "The ranks whose data the calling thread's last blocking collective's result contains.", ret: "int32_t", name: "chorus_last_op_contributors", args: &["int32_t *out", "size_t cap", "size_t *n"] },
    Func { doc: "The membership epoch the calling thread's last blocking collective ran under.", ret: "int32_t", name: "chorus_last_op_epoch", args: &["uint64_t *out"] },
];

fn c_ident(s: &str) -> String {
    s.to_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

fn render_enum(out: &mut String, doc: &str, typedef: &str, values: &[(String, i64, String)]) {
    out.push_str(&format!("/* {doc} */\ntypedef enum {typedef} {{\n"));
    for (name, v, comment) in values {
        if comment.is_empty() {
            out.push_str(&format!("    {name} = {v},\n"));
        } else {
            out.push_str(&format!("    {name} = {v}, /* {comment} */\n"));
        }
    }
    out.push_str(&format!("}} {typedef}_t;\n\n"));
}

/// The dtype codes (`chorus_dtype_t`): `DType` discriminants.
pub fn dtype_values() -> Vec<(String, i64, String)> {
    DType::all().iter().map(|d| (format!("CHORUS_DTYPE_{}", c_ident(d.name())), *d as i64, String::new())).collect()
}

/// The reduce op codes (`chorus_reduce_op_t`): `ReduceOp` discriminants.
pub fn reduce_op_values() -> Vec<(String, i64, String)> {
    ReduceOp::all().iter().map(|o| (format!("CHORUS_OP_{}", c_ident(o.name())), *o as i64, String::new())).collect()
}

/// The full text of `include/chorus.h`.
pub fn render() -> String {
    let mut out = String::from(PREAMBLE);
    out.push_str(&format!("\n#define CHORUS_ABI_VERSION {CHORUS_ABI_VERSION}\n"));
    out.push_str(&format!("/* `device` argument for host memory; values >= 0 are CUDA device ordinals. */\n#define CHORUS_DEVICE_CPU ({CHORUS_DEVICE_CPU})\n\n"));
    let status: Vec<(String, i64, String)> = STATUS_CODES.iter().map(|(n, v, c)| (n.to_string(), *v as i64, c.to_string())).collect();
    render_enum(&mut out, "Status codes returned by chorus functions.", "chorus_status", &status);
    render_enum(&mut out, "Element types (torch names).", "chorus_dtype", &dtype_values());
    render_enum(&mut out, "Reduction operations.", "chorus_reduce_op", &reduce_op_values());
    out.push_str(TYPES);
    for f in FUNCS {
        out.push_str(&format!("\n/* {} */\n", f.doc));
        let args = if f.args.is_empty() { "void".to_string() } else { f.args.join(", ") };
        let sep = if f.ret.ends_with('*') { "" } else { " " };
        let line = format!("{}{sep}{}({args});\n", f.ret, f.name);
        if line.len() <= 110 {
            out.push_str(&line);
        } else {
            out.push_str(&format!("{}{sep}{}(\n    {});\n", f.ret, f.name, f.args.join(",\n    ")));
        }
    }
    out.push_str(POSTAMBLE);
    out
}
