/*
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

#define CHORUS_ABI_VERSION 2
/* `device` argument for host memory; values >= 0 are CUDA device ordinals. */
#define CHORUS_DEVICE_CPU (-1)

/* Status codes returned by chorus functions. */
typedef enum chorus_status {
    CHORUS_OK = 0, /* success */
    CHORUS_ERR_INVALID_ARGUMENT = 1, /* bad pointer, size, rank, root, dtype or list length */
    CHORUS_ERR_UNSUPPORTED = 2, /* unsupported op/dtype pair, or no CUDA available for device memory */
    CHORUS_ERR_MISMATCH = 3, /* ranks disagree on the arguments of a collective */
    CHORUS_ERR_TIMEOUT = 4, /* an operation (or chorus_work_wait) ran past its deadline */
    CHORUS_ERR_PEER_FAILED = 5, /* a peer failed or the group was aborted */
    CHORUS_ERR_STORE = 6, /* rendezvous through the store failed */
    CHORUS_ERR_TRANSPORT = 7, /* connecting or moving data (socket, shared memory) failed */
    CHORUS_ERR_DESTROYED = 8, /* the group was destroyed */
    CHORUS_ERR_INCOMPLETE = 9, /* the operation was abandoned before it completed */
    CHORUS_ERR_INTERNAL = 10, /* a bug inside chorus (a caught panic); see the message */
} chorus_status_t;

/* Element types (torch names). */
typedef enum chorus_dtype {
    CHORUS_DTYPE_FLOAT32 = 0,
    CHORUS_DTYPE_FLOAT64 = 1,
    CHORUS_DTYPE_FLOAT16 = 2,
    CHORUS_DTYPE_BFLOAT16 = 3,
    CHORUS_DTYPE_INT8 = 4,
    CHORUS_DTYPE_UINT8 = 5,
    CHORUS_DTYPE_INT16 = 6,
    CHORUS_DTYPE_INT32 = 7,
    CHORUS_DTYPE_INT64 = 8,
    CHORUS_DTYPE_BOOL = 9,
    CHORUS_DTYPE_UINT16 = 10,
    CHORUS_DTYPE_UINT32 = 11,
    CHORUS_DTYPE_UINT64 = 12,
    CHORUS_DTYPE_FLOAT8_E4M3FN = 13,
    CHORUS_DTYPE_FLOAT8_E5M2 = 14,
} chorus_dtype_t;

/* Reduction operations. */
typedef enum chorus_reduce_op {
    CHORUS_OP_SUM = 0,
    CHORUS_OP_PROD = 1,
    CHORUS_OP_MIN = 2,
    CHORUS_OP_MAX = 3,
    CHORUS_OP_AVG = 4,
    CHORUS_OP_BAND = 5,
    CHORUS_OP_BOR = 6,
    CHORUS_OP_BXOR = 7,
} chorus_reduce_op_t;

/* Opaque handles. */
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

/* ABI version of the loaded library; compare with CHORUS_ABI_VERSION. */
uint32_t chorus_abi_version(void);

/* The calling thread's last error message ("" if none); valid until the thread's next failing call. */
const char *chorus_last_error(void);

/* Replaces the contents of `buf` (only inside a store callback that received it). */
int32_t chorus_buf_write(chorus_buf_t *buf, const uint8_t *data, size_t len);

/* Creates a top-level group of `size` ranks over a caller-implemented store. Every rank calls it with the
   same store contents; `name` (NULL = "default") keeps groups on one store apart; timeout_ms is the deadline
   of every wait, unless CHORUS_TIMEOUT_MS is set and shorter (then it is); <= 0 uses CHORUS_TIMEOUT_MS or 300 s.
   A timeout error names the one that applied. */
int32_t chorus_group_create(
    const chorus_store_callbacks_t *store,
    int32_t rank,
    int32_t size,
    const char *name,
    int64_t timeout_ms,
    chorus_group_t **out);

/* Creates a top-level group over a chorus TCP store at `addr` ("host:port"); with host_store != 0 this
   rank first starts the store server on `addr` (an "ip:port"). */
int32_t chorus_group_create_tcp(
    const char *addr,
    int32_t host_store,
    int32_t rank,
    int32_t size,
    const char *name,
    int64_t timeout_ms,
    chorus_group_t **out);

/* Creates the default group from torchrun/SLURM/chorus-run environment variables. */
int32_t chorus_group_create_env(const char *name, int64_t timeout_ms, chorus_group_t **out);

/* Starts a replacement for `rank` of a running top-level group (same store, `size` and `name` as at
   creation; the old process is gone). Blocks until the survivors removed the old process and admitted
   this one with a new view; they do so between collectives, so they must keep issuing them. Only the
   links that involve this rank are created. (chorus_group_create_env does this when CHORUS_JOIN=1.) */
int32_t chorus_group_join(
    const chorus_store_callbacks_t *store,
    int32_t rank,
    int32_t size,
    const char *name,
    int64_t timeout_ms,
    chorus_group_t **out);

/* Like chorus_group_join over a chorus TCP store at `addr` ("host:port"), hosted outside the workers. */
int32_t chorus_group_join_tcp(
    const char *addr,
    int32_t rank,
    int32_t size,
    const char *name,
    int64_t timeout_ms,
    chorus_group_t **out);

/* A subgroup of `ranks` (ranks of `group`); every rank of `group` calls it in the same order. Non-members
   get *out = NULL. */
int32_t chorus_group_new_subgroup(
    chorus_group_t *group,
    const int32_t *ranks,
    size_t nranks,
    chorus_group_t **out);

/* This rank's index in the group (-1 for NULL). */
int32_t chorus_group_rank(const chorus_group_t *group);

/* The group's number of ranks (-1 for NULL). */
int32_t chorus_group_size(const chorus_group_t *group);

/* Fault tolerance. Rank arrays are written into `out` (`cap` entries, may be NULL with cap 0) with `*n`
   set to the full count; CHORUS_ERR_INVALID_ARGUMENT (with `*n` set) when `cap` is too small.
   The active ranks of the group's current membership view, ascending. */
int32_t chorus_group_active_ranks(const chorus_group_t *group, int32_t *out, size_t cap, size_t *n);

/* Where this rank's membership replica listens (`host:port`, no NUL; `*n` 0 without replicas), for a
   replacement's CHORUS_JOIN_VIA; bytes as ranks are for chorus_group_active_ranks. */
int32_t chorus_group_replica_address(const chorus_group_t *group, char *out, size_t cap, size_t *n);

/* The epoch of the group's current membership view (raised by every change). */
int32_t chorus_group_epoch(const chorus_group_t *group, uint64_t *out);

/* Collectives this rank has issued in the group; a replacement starts at the survivors' count, so an
   application can resume its loop from it. */
int32_t chorus_group_ops_completed(const chorus_group_t *group, uint64_t *out);

/* Marks where the application is in its loop: the collectives this rank issues from now on belong to
   `value` (a training step, say); a replacement reads the survivors' place with chorus_group_resume_point. */
int32_t chorus_group_mark(const chorus_group_t *group, uint64_t value);

/* For a replacement: the survivors' last collective before this rank's first was the `*done`-th they
   issued after marking `*marker`; `*done` is 0 for a rank that did not join or when nothing was marked. */
int32_t chorus_group_resume_point(const chorus_group_t *group, uint64_t *marker, uint64_t *done);

/* Whether the group's GPU communicator on CUDA device `device` still works (as ncclCommGetAsyncError):
   CHORUS_OK (also when the device has none), CHORUS_ERR_TIMEOUT when a kernel waited past its deadline,
   CHORUS_ERR_PEER_FAILED when the group aborted it because a peer died (message in chorus_last_error).
   GPU collectives return before they run: call this after synchronizing. Reads host memory only. */
int32_t chorus_group_device_status(const chorus_group_t *group, int32_t device);

/* Removes `ranks` from the view; every rank adopts the change at its next collective. */
int32_t chorus_group_deactivate_ranks(chorus_group_t *group, const int32_t *ranks, size_t nranks);

/* Puts `ranks` (alive and linked) back into the view, adopted at the next collective. */
int32_t chorus_group_activate_ranks(chorus_group_t *group, const int32_t *ranks, size_t nranks);

/* Destroys the group and frees the handle; peers inside an operation with this rank get an error. */
int32_t chorus_group_destroy(chorus_group_t *group);

/* In-place all-reduce of `count` elements. */
int32_t chorus_all_reduce(
    chorus_group_t *group,
    void *buf,
    uint64_t count,
    int32_t dtype,
    int32_t op,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* In-place broadcast of `count` elements from `root`. */
int32_t chorus_broadcast(
    chorus_group_t *group,
    void *buf,
    uint64_t count,
    int32_t dtype,
    int32_t root,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* In-place reduce to `root`; other ranks' `buf` is left unchanged. */
int32_t chorus_reduce(
    chorus_group_t *group,
    void *buf,
    uint64_t count,
    int32_t dtype,
    int32_t op,
    int32_t root,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* All-gather: `sendcount` elements of every rank land in `recvbuf` (size * sendcount, rank order).
   `sendbuf` may alias a block of `recvbuf` (it is copied first). */
int32_t chorus_all_gather(
    chorus_group_t *group,
    const void *sendbuf,
    void *recvbuf,
    uint64_t sendcount,
    int32_t dtype,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* Reduce-scatter: `sendbuf` holds size * recvcount elements; rank r receives the reduction of block r.
   The buffers may overlap (the input is copied first). */
int32_t chorus_reduce_scatter(
    chorus_group_t *group,
    const void *sendbuf,
    void *recvbuf,
    uint64_t recvcount,
    int32_t dtype,
    int32_t op,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* All-to-all with equal blocks of `count` elements: block p of `sendbuf` goes to rank p, block p of
   `recvbuf` comes from rank p. */
int32_t chorus_all_to_all(
    chorus_group_t *group,
    const void *sendbuf,
    void *recvbuf,
    uint64_t count,
    int32_t dtype,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* All-to-all with per-rank counts (one entry per rank, read during the call): send_counts[p] consecutive
   elements of `sendbuf` go to rank p; recv_counts[p] elements from rank p land consecutively in `recvbuf`. */
int32_t chorus_all_to_all_v(
    chorus_group_t *group,
    const void *sendbuf,
    const uint64_t *send_counts,
    void *recvbuf,
    const uint64_t *recv_counts,
    int32_t dtype,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* Gather of `count` elements per rank into `root`'s `recvbuf` (size * count); `recvbuf` is ignored
   (may be NULL) elsewhere. */
int32_t chorus_gather(
    chorus_group_t *group,
    const void *sendbuf,
    void *recvbuf,
    uint64_t count,
    int32_t dtype,
    int32_t root,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* Scatter of `root`'s `sendbuf` (size * count): rank r receives block r; `sendbuf` is ignored (may be
   NULL) elsewhere. */
int32_t chorus_scatter(
    chorus_group_t *group,
    const void *sendbuf,
    void *recvbuf,
    uint64_t count,
    int32_t dtype,
    int32_t root,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* Barrier: completes once every rank entered it (work == NULL: returns then). */
int32_t chorus_barrier(chorus_group_t *group, chorus_work_t **work);

/* Sends `count` elements to `peer`; messages of one pair and tag arrive in order. */
int32_t chorus_send(
    chorus_group_t *group,
    const void *buf,
    uint64_t count,
    int32_t dtype,
    int32_t peer,
    uint64_t tag,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* Receives exactly `count` elements from `peer` with `tag`. */
int32_t chorus_recv(
    chorus_group_t *group,
    void *buf,
    uint64_t count,
    int32_t dtype,
    int32_t peer,
    uint64_t tag,
    int32_t device,
    void *stream,
    chorus_work_t **work);

/* Waits up to `timeout_ms` (negative: no limit); returns the operation's status (repeatable).
   CHORUS_ERR_TIMEOUT with the operation still running when the wait ran out. A wait that finds the operation
   not started yet runs it, and the group's operations issued before it, on the calling thread (the fast
   path) when it may last as long as they may (timeout_ms < 0, or at least the group's timeout); a shorter
   wait leaves them to the group's worker thread. */
int32_t chorus_work_wait(chorus_work_t *work, int64_t timeout_ms);

/* 1 if the operation finished (successfully or not), 0 if not, negative for NULL. */
int32_t chorus_work_is_completed(const chorus_work_t *work);

/* Ranks that failed during the completed operation (every survivor reports the same ones at the same
   collective); arrays as for chorus_group_active_ranks. CHORUS_ERR_INVALID_ARGUMENT before completion. */
int32_t chorus_work_failed_ranks(const chorus_work_t *work, int32_t *out, size_t cap, size_t *n);

/* The ranks whose data the completed operation's result contains. */
int32_t chorus_work_contributors(const chorus_work_t *work, int32_t *out, size_t cap, size_t *n);

/* The membership epoch the completed operation ran under. */
int32_t chorus_work_epoch(const chorus_work_t *work, uint64_t *out);

/* Frees a work handle (a running operation's memory must still stay valid until it completes). */
void chorus_work_free(chorus_work_t *work);

/* Reports of the calling thread's last blocking collective (work == NULL), as chorus_work_* report them for
   a handle; arrays as for chorus_group_active_ranks. Every blocking call replaces the report, a failing one
   too (a failure under the abort policy still names the failed ranks and the epoch); a call refused before
   it ran (bad arguments) leaves none, and these return CHORUS_ERR_INVALID_ARGUMENT.
   The ranks that failed during it (removed from the group). */
int32_t chorus_last_op_failed_ranks(int32_t *out, size_t cap, size_t *n);

/* The ranks whose data the calling thread's last blocking collective's result contains. */
int32_t chorus_last_op_contributors(int32_t *out, size_t cap, size_t *n);

/* The membership epoch the calling thread's last blocking collective ran under. */
int32_t chorus_last_op_epoch(uint64_t *out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CHORUS_H */
