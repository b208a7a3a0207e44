"""The torch.distributed backend "chorus": a Python ``ProcessGroup`` over the chorus C ABI."""
from __future__ import annotations

import ctypes
import os
import queue
import atexit
import threading
import weakref
from datetime import timedelta
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from . import _lib, _native
from ._lib import DEVICE_CPU, ChorusError, check, lib
from ._store import callbacks_for

_DTYPES: dict[torch.dtype, int] = {}
for _name, _code in [
    ("float32", 0), ("float64", 1), ("float16", 2), ("bfloat16", 3), ("int8", 4), ("uint8", 5),
    ("int16", 6), ("int32", 7), ("int64", 8), ("bool", 9), ("uint16", 10), ("uint32", 11),
    ("uint64", 12), ("float8_e4m3fn", 13), ("float8_e5m2", 14),
]:
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _code

_R = dist.ReduceOp
_OPS = [(_R.SUM, 0), (_R.PRODUCT, 1), (_R.MIN, 2), (_R.MAX, 3), (_R.AVG, 4), (_R.BAND, 5), (_R.BOR, 6), (_R.BXOR, 7)]


def _dtype_code(t: torch.Tensor, op: str) -> int:
    try:
        return _DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"chorus {op}: unsupported tensor dtype {t.dtype}; supported: {', '.join(str(d) for d in _DTYPES)}") from None


def _op_code(op, name: str) -> int:
    for r, code in _OPS:
        if op == r:
            return code
    if op == _R.PREMUL_SUM:
        raise ValueError(f"chorus {name}: ReduceOp.PREMUL_SUM is not supported; scale the tensor and use ReduceOp.SUM")
    raise ValueError(f"chorus {name}: unsupported reduce op {op}")


def _device(t: torch.Tensor) -> tuple[int, int | None]:
    if t.device.type == "cpu":
        return DEVICE_CPU, None
    if t.device.type == "cuda":
        idx = t.device.index if t.device.index is not None else torch.cuda.current_device()
        return idx, torch.cuda.current_stream(idx).cuda_stream
    raise ValueError(f"chorus: tensors on {t.device} are not supported (cpu and cuda only)")


class _Contig:
    """A contiguous stand-in for a tensor, copied back after the operation if it was an output."""

    __slots__ = ("orig", "buf")

    def __init__(self, t: torch.Tensor):
        self.orig = t
        self.buf = t if t.is_contiguous() else t.contiguous()

    def copy_back(self):
        if self.buf is not self.orig:
            self.orig.copy_(self.buf)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


class ChorusWork(dist.Work):
    """Completion handle of one torch-level call (one or more chorus work handles)."""

    def __init__(self, pg: "ProcessGroupChorus", handles: list, result: list, keep: list, after: Callable[[], None] | None = None):
        super().__init__()
        self._pg = pg
        self._handles = handles
        self._result = result
        self._keep = keep  # tensors (and temporaries) the library writes until completion
        self._after = after
        self._lock = threading.Lock()
        self._done = False
        self._error: BaseException | None = None
        self._future = None
        # Fault-tolerance report of the finished chorus operations: (failed, contributors, epoch).
        self._infos: list[tuple[list[int], list[int], int]] = []

    def _finish(self, timeout_ms: int) -> None:
        with self._lock:
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            try:
                for i, h in enumerate(self._handles):
                    if h is None:
                        continue
                    rc = lib.chorus_work_wait(h, timeout_ms)
                    if rc == _lib.ERR_TIMEOUT and lib.chorus_work_is_completed(h) == 0:
                        raise _lib.error(rc)  # still running: the caller may wait again
                    err = _lib.error(rc) if rc else None
                    # A failed operation reports too (who failed: a point-to-point peer that died).
                    self._infos.append(_op_info(h))
                    lib.chorus_work_free(h)
                    self._handles[i] = None
                    if err is not None:
                        raise err
                if self._after is not None:
                    self._after()
                self._done = True
            except _lib.ChorusTimeout:
                if any(h is not None for h in self._handles):
                    raise
                self._done, self._error = True, _lib.ChorusTimeout(_lib.ERR_TIMEOUT, _lib.last_error())
                raise
            except BaseException as e:
                # Free whatever is left once it completed; keep the error for later waits.
                for i, h in enumerate(self._handles):
                    if h is not None and lib.chorus_work_is_completed(h) == 1:
                        lib.chorus_work_free(h)
                        self._handles[i] = None
                if all(h is None for h in self._handles):
                    self._done, self._error = True, e
                raise
            finally:
                if self._done:
                    self._keep = None

    def wait(self, timeout: timedelta | None = None) -> bool:
        ms = -1
        if timeout is not None:
            ms = int(timeout.total_seconds() * 1000)
            if ms <= 0:
                ms = -1  # c10d's kNoTimeout is 0
        self._finish(ms)
        return True

    def is_completed(self) -> bool:
        if self._done:
            return True
        if all(h is None or lib.chorus_work_is_completed(h) == 1 for h in self._handles):
            try:
                self._finish(-1)
            except BaseException:
                pass
            return True
        return False

    def is_success(self) -> bool:
        return self._done and self._error is None

    def exception(self):
        return self._error

    def result(self) -> list:
        self.wait()
        return self._result

    # ------------------------------------------------------------ fault tolerance
    def _all_infos(self) -> list:
        infos = list(self._infos)
        for w in getattr(self, "_subworks", ()):  # a merged work (see _merge)
            infos.extend(w._all_infos())
        return infos

    def _settle(self) -> None:
        """Waits for the operation; a failed one still reports who failed, so its error is not raised here."""
        try:
            self.wait()
        except ChorusError:
            pass

    def failed_ranks(self) -> list[int]:
        """Ranks that failed during this operation (waits for it first; also when it failed); [] if none did."""
        self._settle()
        return sorted({r for f, _, _ in self._all_infos() for r in f})

    def contributors(self) -> list[int]:
        """The ranks whose data the result contains (waits for the operation first)."""
        self._settle()
        infos = self._all_infos()
        return list(infos[-1][1]) if infos else []

    def epoch(self) -> int:
        """The membership epoch the operation ran under (waits for it first)."""
        self._settle()
        return max((e for _, _, e in self._all_infos()), default=0)

    def source_rank(self) -> int:
        raise RuntimeError("chorus: recv from any source is not supported, so a work has no source rank")

    def get_future(self) -> torch.futures.Future:
        if self._future is None:
            self._future = torch.futures.Future()
            if self._done:
                self._complete_future()
            else:
                self._pg._completer().put(self)
        return self._future

    def _complete_future(self):
        if self._error is not None:
            self._future.set_exception(self._error)
        else:
            self._future.set_result(self._result)


def _completer_loop(q: "queue.Queue[ChorusWork]"):
    while True:
        w = q.get()
        if w is None:
            return
        try:
            w.wait()
        except BaseException:
            pass
        try:
            w._complete_future()
        except BaseException:
            pass


# Groups still alive when the interpreter exits are torn down first (from an atexit handler, which
# runs before finalization): the library's background threads call back into the Python store and
# must be stopped while Python and torch's store objects still exist.
_LIVE_GROUPS: "weakref.WeakSet" = weakref.WeakSet()  # ProcessGroupChorus and native backends


def _destroy_live_groups() -> None:
    for pg in list(_LIVE_GROUPS):
        try:
            pg.destroy() if hasattr(pg, "destroy") else pg.abort()
        except BaseException:
            pass


atexit.register(_destroy_live_groups)


# The store of the group destroyed last in this process, kept until the next group is created: under
# init_method="env://" rank 0's store hosts the job's store server, and ranks that re-initialise
# sooner may already have connected to it when destroy_process_group drops it (issue 25; see
# HeldStore in csrc/chorus_torch.cpp).
_held_store = None


class ProcessGroupChorus(dist.ProcessGroup):
    """A torch ProcessGroup whose collectives run in the chorus library."""

    def __init__(self, store, rank: int, size: int, timeout: timedelta | None = None, name: str = "torch",
                 options: "Options | None" = None, join: bool = False, top_level: bool = True):
        super().__init__(rank, size)
        self._rank, self._size = rank, size
        self._group_name = ""
        self._group_desc = ""
        self._pending: list[ChorusWork] = []
        self._queue = None
        self._queue_lock = threading.Lock()
        ms = int(timeout.total_seconds() * 1000) if timeout is not None else 0
        if options is not None and options.timeout is not None:
            ms = int(options.timeout.total_seconds() * 1000)
        cb = callbacks_for(store)
        out = ctypes.c_void_p()
        create = lib.chorus_group_join if join else lib.chorus_group_create
        with _env_for(options, top_level):
            check(create(ctypes.byref(cb), rank, size, name.encode(), ms, ctypes.byref(out)))
        self._g = out
        self._joined = join
        self._store = store
        global _held_store
        _held_store = None  # the new group met its peers: an earlier incarnation's store is done
        _LIVE_GROUPS.add(self)

    # ---------------------------------------------------------------- identity
    def getBackendName(self) -> str:
        return "chorus"

    def _get_backend_name(self) -> str:
        return "chorus"

    def getGroupName(self) -> str:
        return self._group_name

    def setGroupName(self, name: str) -> None:
        self._group_name = name

    def getGroupDesc(self) -> str:
        return self._group_desc

    def setGroupDesc(self, desc: str) -> None:
        self._group_desc = desc

    def _get_backend(self, device=None):
        return self

    @property
    def supports_splitting(self) -> bool:
        # torch asks when a default group bound to a device (init_process_group(device_id=...))
        # makes a new group; chorus groups are created fresh, not split from a parent communicator.
        return False

    @property
    def supports_coalescing(self) -> bool:
        return False

    def __repr__(self):
        return f"ProcessGroupChorus(rank={self._rank}, size={self._size})"

    # ---------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        g, self._g = getattr(self, "_g", None), None
        if g:
            for w in self._pending:
                try:
                    w.wait(timedelta(seconds=30))
                except BaseException:
                    pass
            self._pending.clear()
            lib.chorus_group_destroy(g)
            self._hold_store()
        with self._queue_lock:
            if self._queue is not None:
                self._queue.put(None)
                self._queue = None

    def abort(self) -> None:
        g, self._g = getattr(self, "_g", None), None
        if g:
            lib.chorus_group_destroy(g)
            self._hold_store()

    def _hold_store(self) -> None:
        global _held_store
        _held_store, self._store = getattr(self, "_store", None), None

    def _completer(self) -> "queue.Queue":
        with self._queue_lock:
            if self._queue is None:
                self._queue = queue.Queue()
                threading.Thread(target=_completer_loop, args=(self._queue,), name="chorus-futures", daemon=True).start()
            return self._queue

    # ---------------------------------------------------------------- fault tolerance
    def active_ranks(self) -> list[int]:
        """Active ranks (of this group) in the current membership view."""
        return _lib.rank_array(lib.chorus_group_active_ranks, self._group())

    def current_epoch(self) -> int:
        """Epoch of the current membership view (raised by every change)."""
        return _lib.u64(lib.chorus_group_epoch, self._group())

    def replica_address(self) -> str | None:
        """Where this rank's membership replica listens (``None`` without replicas)."""
        return _lib.replica_address(self._group())

    def check_device(self, device) -> None:
        """Raises (a ChorusError) once the GPU communicator on ``device`` failed: a kernel waited past its
        deadline, or it was aborted because a peer died. GPU collectives return before they run, so call
        this after synchronizing the stream to learn whether they completed."""
        check(lib.chorus_group_device_status(self._group(), int(torch.device(device).index or 0)))

    def ops_completed(self) -> int:
        """Collectives this rank issued in the group (a replacement starts at the survivors' count)."""
        return _lib.u64(lib.chorus_group_ops_completed, self._group())

    def mark(self, value: int) -> None:
        """The collectives this rank issues from now on belong to ``value`` (a training step, say)."""
        check(lib.chorus_group_mark(self._group(), int(value)))

    def resume_point(self) -> tuple[int, int] | None:
        """For a replacement: ``(marker, done)``, the survivors' last collective before its first was the
        ``done``-th after they marked ``marker``; ``None`` otherwise."""
        marker, done = ctypes.c_uint64(0), ctypes.c_uint64(0)
        check(lib.chorus_group_resume_point(self._group(), ctypes.byref(marker), ctypes.byref(done)))
        return (int(marker.value), int(done.value)) if done.value else None

    def _ranks_call(self, fn, ranks) -> None:
        rs = [int(r) for r in ranks]
        arr = (ctypes.c_int32 * max(len(rs), 1))(*rs)
        check(fn(self._group(), arr, len(rs)))

    def deactivate_ranks(self, ranks) -> None:
        """Removes ``ranks`` from the view; every rank adopts it at its next collective."""
        self._ranks_call(lib.chorus_group_deactivate_ranks, ranks)

    def activate_ranks(self, ranks) -> None:
        """Puts ``ranks`` (alive and linked) back into the view at the next collective."""
        self._ranks_call(lib.chorus_group_activate_ranks, ranks)

    # ---------------------------------------------------------------- plumbing
    def _group(self):
        if not self._g:
            raise _lib.ChorusError(_lib.ERR_DESTROYED, "the process group has been destroyed")
        return self._g

    def _launch(self, calls: list[Callable[[ctypes.c_void_p], int]], result, keep, after=None) -> ChorusWork:
        """Starts every call (each fills one work handle) and wraps them in one torch Work."""
        handles = []
        try:
            for call in calls:
                h = ctypes.c_void_p()
                rc = call(ctypes.byref(h))
                if rc:
                    raise _lib.error(rc)
                handles.append(h)
        except BaseException:
            for h in handles:  # already started: let them finish before the memory can go
                lib.chorus_work_wait(h, -1)
                lib.chorus_work_free(h)
            raise
        w = ChorusWork(self, handles, result, keep, after)
        if len(self._pending) >= 64:
            self._pending = [p for p in self._pending if not p._done and not p.is_completed()]
        self._pending.append(w)
        return w

    def _check_same(self, op: str, ref: torch.Tensor, tensors: Sequence[torch.Tensor], what: str, numel: int | None = None):
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"chorus {op}: {what}[{i}] is a {type(t).__name__}, not a tensor")
            if t.dtype != ref.dtype:
                raise ValueError(f"chorus {op}: {what}[{i}] has dtype {t.dtype} but the input has {ref.dtype}")
            if t.device != ref.device:
                raise ValueError(f"chorus {op}: {what}[{i}] is on {t.device} but the input is on {ref.device}")
            if numel is not None and t.numel() != numel:
                raise ValueError(f"chorus {op}: {what}[{i}] has {t.numel()} elements but must have {numel}")

    def _check_len(self, op: str, lst, n: int, what: str):
        if len(lst) != n:
            raise ValueError(f"chorus {op}: {what} must have {n} entries (one per rank of the group), got {len(lst)}")

    def _one(self, op: str, tensors, what="tensors") -> torch.Tensor:
        if len(tensors) != 1:
            raise ValueError(f"chorus {op}: expects exactly one tensor in {what}, got {len(tensors)}")
        return tensors[0]

    # ---------------------------------------------------------------- collectives
    def allreduce(self, tensors, opts=None):
        op = _op_code(opts.reduceOp if opts is not None else _R.SUM, "allreduce")
        g = self._group()
        calls, conts = [], []
        for t in tensors:
            c = _Contig(t)
            dev, stream = _device(t)
            dt = _dtype_code(t, "allreduce")
            b = c.buf
            calls.append(lambda h, b=b, dt=dt, dev=dev, stream=stream: lib.chorus_all_reduce(g, b.data_ptr(), b.numel(), dt, op, dev, stream, h))
            conts.append(c)
        return self._launch(calls, list(tensors), conts, _after_copy(conts))

    def allreduce_coalesced(self, tensors, opts=None):
        return self.allreduce(tensors, opts)

    def broadcast(self, tensors, opts=None):
        root = opts.rootRank if opts is not None else 0
        g = self._group()
        calls, conts = [], []
        for t in tensors:
            c = _Contig(t)
            dev, stream = _device(t)
            dt = _dtype_code(t, "broadcast")
            b = c.buf
            calls.append(lambda h, b=b, dt=dt, dev=dev, stream=stream: lib.chorus_broadcast(g, b.data_ptr(), b.numel(), dt, root, dev, stream, h))
            conts.append(c)
        return self._launch(calls, list(tensors), conts, _after_copy(conts))

    def reduce(self, tensors, opts=None):
        root = opts.rootRank if opts is not None else 0
        op = _op_code(opts.reduceOp if opts is not None else _R.SUM, "reduce")
        t = self._one("reduce", tensors)
        g = self._group()
        c = _Contig(t)
        dev, stream = _device(t)
        dt = _dtype_code(t, "reduce")
        b = c.buf
        return self._launch([lambda h: lib.chorus_reduce(g, b.data_ptr(), b.numel(), dt, op, root, dev, stream, h)], [t], [c], _after_copy([c]))

    def _all_gather_into(self, op: str, out: torch.Tensor, inp: torch.Tensor):
        """Returns (call, keep, after) gathering `inp` of every rank into the flat `out`."""
        if out.dtype != inp.dtype:
            raise ValueError(f"chorus {op}: output dtype {out.dtype} differs from input dtype {inp.dtype}")
        if out.numel() != inp.numel() * self._size:
            raise ValueError(f"chorus {op}: output has {out.numel()} elements but must have {self._size} x {inp.numel()} (group size x input)")
        g = self._group()
        co, ci = _Contig(out), _Contig(inp)
        dev, stream = _device(inp)
        dt = _dtype_code(inp, op)
        ob, ib = co.buf, ci.buf
        call = lambda h: lib.chorus_all_gather(g, ib.data_ptr(), ob.data_ptr(), ib.numel(), dt, dev, stream, h)
        return call, [co, ci], co.copy_back

    def all_gather_single(self, output, input, opts=None):
        call, keep, after = self._all_gather_into("all_gather_into_tensor", output, input)
        return self._launch([call], [output], keep, after)

    _allgather_base = all_gather_single

    def allgather(self, output_tensors, input_tensors, opts=None):
        inp = self._one("all_gather", input_tensors, "input_tensors")
        outs = self._one("all_gather", output_tensors, "output_tensors")
        self._check_len("all_gather", outs, self._size, "tensor_list")
        self._check_same("all_gather", inp, outs, "tensor_list", inp.numel())
        flat = torch.empty(inp.numel() * self._size, dtype=inp.dtype, device=inp.device)
        call, keep, after = self._all_gather_into("all_gather", flat, inp)

        def split():
            after()
            for r, o in enumerate(outs):
                o.copy_(flat[r * inp.numel():(r + 1) * inp.numel()].view(o.shape))

        return self._launch([call], [outs], keep + [flat], split)

    def allgather_coalesced(self, output_lists, input_list, opts=None):
        works = [self.allgather([o], [i], opts) for o, i in zip(output_lists, input_list)]
        return _merge(self, works, output_lists)

    def all_gather_single_coalesced(self, outputs, inputs, opts=None):
        self._check_len("all_gather_into_tensor_coalesced", outputs, len(inputs), "outputs")
        parts = [self._all_gather_into("all_gather_into_tensor_coalesced", o, i) for o, i in zip(outputs, inputs)]
        return self._launch([p[0] for p in parts], list(outputs), [k for p in parts for k in p[1]], _chain([p[2] for p in parts]))

    allgather_into_tensor_coalesced = all_gather_single_coalesced

    def _reduce_scatter_from(self, op_name: str, out: torch.Tensor, inp: torch.Tensor, op: int):
        if out.dtype != inp.dtype:
            raise ValueError(f"chorus {op_name}: output dtype {out.dtype} differs from input dtype {inp.dtype}")
        if inp.numel() != out.numel() * self._size:
            raise ValueError(f"chorus {op_name}: input has {inp.numel()} elements but must have {self._size} x {out.numel()} (group size x output)")
        g = self._group()
        co, ci = _Contig(out), _Contig(inp)
        dev, stream = _device(inp)
        dt = _dtype_code(inp, op_name)
        ob, ib = co.buf, ci.buf
        call = lambda h: lib.chorus_reduce_scatter(g, ib.data_ptr(), ob.data_ptr(), ob.numel(), dt, op, dev, stream, h)
        return call, [co, ci], co.copy_back

    def reduce_scatter_single(self, output, input, opts=None):
        op = _op_code(opts.reduceOp if opts is not None else _R.SUM, "reduce_scatter_tensor")
        call, keep, after = self._reduce_scatter_from("reduce_scatter_tensor", output, input, op)
        return self._launch([call], [output], keep, after)

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        op = _op_code(opts.reduceOp if opts is not None else _R.SUM, "reduce_scatter")
        out = self._one("reduce_scatter", output_tensors, "output_tensors")
        ins = self._one("reduce_scatter", input_tensors, "input_tensors")
        self._check_len("reduce_scatter", ins, self._size, "input_list")
        self._check_same("reduce_scatter", out, ins, "input_list", out.numel())
        flat = torch.cat([_flat(t) for t in ins]) if ins else torch.empty(0, dtype=out.dtype)
        call, keep, after = self._reduce_scatter_from("reduce_scatter", out, flat, op)
        return self._launch([call], [out], keep + [flat], after)

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
        op = _op_code(opts.reduceOp if opts is not None else _R.SUM, "reduce_scatter_tensor_coalesced")
        self._check_len("reduce_scatter_tensor_coalesced", outputs, len(inputs), "outputs")
        parts = [self._reduce_scatter_from("reduce_scatter_tensor_coalesced", o, i, op) for o, i in zip(outputs, inputs)]
        return self._launch([p[0] for p in parts], list(outputs), [k for p in parts for k in p[1]], _chain([p[2] for p in parts]))

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        name = "all_to_all_single"
        if output.dtype != input.dtype:
            raise ValueError(f"chorus {name}: output dtype {output.dtype} differs from input dtype {input.dtype}")
        n = self._size
        g = self._group()
        co, ci = _Contig(output), _Contig(input)
        dev, stream = _device(input)
        dt = _dtype_code(input, name)
        ob, ib = co.buf, ci.buf
        if not output_split_sizes and not input_split_sizes:
            if input.numel() != output.numel() or input.numel() % n:
                raise ValueError(f"chorus {name}: input ({input.numel()}) and output ({output.numel()}) must have equal element counts divisible by the group size {n}")
            count = input.numel() // n
            call = lambda h: lib.chorus_all_to_all(g, ib.data_ptr(), ob.data_ptr(), count, dt, dev, stream, h)
            return self._launch([call], [output], [co, ci], co.copy_back)
        sc = _split_counts(name, "input", input, input_split_sizes, n)
        rc = _split_counts(name, "output", output, output_split_sizes, n)
        sarr, rarr = (ctypes.c_uint64 * n)(*sc), (ctypes.c_uint64 * n)(*rc)
        call = lambda h: lib.chorus_all_to_all_v(g, ib.data_ptr(), sarr, ob.data_ptr(), rarr, dt, dev, stream, h)
        return self._launch([call], [output], [co, ci], co.copy_back)

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors, input_tensors, opts=None):
        name = "all_to_all"
        n = self._size
        self._check_len(name, output_tensors, n, "output_tensor_list")
        self._check_len(name, input_tensors, n, "input_tensor_list")
        ref = input_tensors[0]
        self._check_same(name, ref, input_tensors, "input_tensor_list")
        self._check_same(name, ref, output_tensors, "output_tensor_list")
        g = self._group()
        sin = torch.cat([_flat(t) for t in input_tensors])
        sout = torch.empty(sum(t.numel() for t in output_tensors), dtype=ref.dtype, device=ref.device)
        sc = [t.numel() for t in input_tensors]
        rc = [t.numel() for t in output_tensors]
        sarr, rarr = (ctypes.c_uint64 * n)(*sc), (ctypes.c_uint64 * n)(*rc)
        dev, stream = _device(ref)
        dt = _dtype_code(ref, name)
        call = lambda h: lib.chorus_all_to_all_v(g, sin.data_ptr(), sarr, sout.data_ptr(), rarr, dt, dev, stream, h)

        def split():
            off = 0
            for t in output_tensors:
                t.copy_(sout[off:off + t.numel()].view(t.shape))
                off += t.numel()

        return self._launch([call], list(output_tensors), [sin, sout], split)

    def gather(self, output_tensors, input_tensors, opts=None):
        name = "gather"
        root = opts.rootRank if opts is not None else 0
        inp = self._one(name, input_tensors, "input_tensors")
        g = self._group()
        ci = _Contig(inp)
        dev, stream = _device(inp)
        dt = _dtype_code(inp, name)
        ib = ci.buf
        if self._rank == root:
            outs = self._one(name, output_tensors, "output_tensors")
            self._check_len(name, outs, self._size, "gather_list")
            self._check_same(name, inp, outs, "gather_list", inp.numel())
            flat = torch.empty(inp.numel() * self._size, dtype=inp.dtype, device=inp.device)

            def split():
                for r, o in enumerate(outs):
                    o.copy_(flat[r * inp.numel():(r + 1) * inp.numel()].view(o.shape))

            call = lambda h: lib.chorus_gather(g, ib.data_ptr(), flat.data_ptr(), ib.numel(), dt, root, dev, stream, h)
            return self._launch([call], [outs], [ci, flat], split)
        if output_tensors and any(len(o) for o in output_tensors):
            raise ValueError(f"chorus {name}: gather_list must be empty on non-destination ranks")
        call = lambda h: lib.chorus_gather(g, ib.data_ptr(), None, ib.numel(), dt, root, dev, stream, h)
        return self._launch([call], [], [ci])

    def gather_single(self, output, input, opts=None):
        name = "gather_single"
        root = opts.rootRank if opts is not None else 0
        g = self._group()
        ci = _Contig(input)
        dev, stream = _device(input)
        dt = _dtype_code(input, name)
        ib = ci.buf
        if self._rank == root:
            if output.dtype != input.dtype or output.numel() != input.numel() * self._size:
                raise ValueError(f"chorus {name}: output must be a {input.dtype} tensor of {self._size} x {input.numel()} elements")
            co = _Contig(output)
            ob = co.buf
            call = lambda h: lib.chorus_gather(g, ib.data_ptr(), ob.data_ptr(), ib.numel(), dt, root, dev, stream, h)
            return self._launch([call], [output], [ci, co], co.copy_back)
        call = lambda h: lib.chorus_gather(g, ib.data_ptr(), None, ib.numel(), dt, root, dev, stream, h)
        return self._launch([call], [], [ci])

    def scatter(self, output_tensors, input_tensors, opts=None):
        name = "scatter"
        root = opts.rootRank if opts is not None else 0
        out = self._one(name, output_tensors, "output_tensors")
        g = self._group()
        co = _Contig(out)
        dev, stream = _device(out)
        dt = _dtype_code(out, name)
        ob = co.buf
        if self._rank == root:
            ins = self._one(name, input_tensors, "input_tensors")
            self._check_len(name, ins, self._size, "scatter_list")
            self._check_same(name, out, ins, "scatter_list", out.numel())
            flat = torch.cat([_flat(t) for t in ins])
            call = lambda h: lib.chorus_scatter(g, flat.data_ptr(), ob.data_ptr(), ob.numel(), dt, root, dev, stream, h)
            return self._launch([call], [out], [co, flat], co.copy_back)
        if input_tensors and any(len(i) for i in input_tensors):
            raise ValueError(f"chorus {name}: scatter_list must be empty on non-source ranks")
        call = lambda h: lib.chorus_scatter(g, None, ob.data_ptr(), ob.numel(), dt, root, dev, stream, h)
        return self._launch([call], [out], [co], co.copy_back)

    def barrier(self, opts=None):
        g = self._group()
        return self._launch([lambda h: lib.chorus_barrier(g, h)], [], [])

    # ---------------------------------------------------------------- point to point
    def _p2p(self, name: str, fn, tensors, peer: int, tag: int, is_recv: bool):
        t = self._one(name, tensors)
        g = self._group()
        c = _Contig(t)
        dev, stream = _device(t)
        dt = _dtype_code(t, name)
        b = c.buf
        call = lambda h: fn(g, b.data_ptr(), b.numel(), dt, peer, tag & 0xFFFFFFFFFFFFFFFF, dev, stream, h)
        return self._launch([call], [t], [c], c.copy_back if is_recv else None)

    def send(self, tensors, dstRank, tag=0):
        return self._p2p("send", lib.chorus_send, tensors, dstRank, tag, False)

    def recv(self, tensors, srcRank, tag=0):
        return self._p2p("recv", lib.chorus_recv, tensors, srcRank, tag, True)

    def recv_anysource(self, tensors, tag=0):
        raise NotImplementedError("chorus: recv from any source is not supported; pass src")


def _op_info(h) -> tuple[list[int], list[int], int]:
    """(failed ranks, contributors, epoch) of a completed chorus work handle."""
    try:
        return (_lib.rank_array(lib.chorus_work_failed_ranks, h), _lib.rank_array(lib.chorus_work_contributors, h),
                _lib.u64(lib.chorus_work_epoch, h))
    except _lib.ChorusError:
        return ([], [], 0)


def _after_copy(conts: list[_Contig]):
    if all(c.buf is c.orig for c in conts):
        return None

    def run():
        for c in conts:
            c.copy_back()

    return run


def _chain(fns):
    def run():
        for f in fns:
            if f is not None:
                f()

    return run


def _split_counts(op: str, what: str, t: torch.Tensor, splits, n: int) -> list[int]:
    rows = t.shape[0] if t.dim() > 0 else 1
    per_row = t.numel() // rows if rows else 0
    if not splits:
        if rows % n:
            raise ValueError(f"chorus {op}: {what} dim 0 ({rows}) is not divisible by the group size {n} and no split sizes were given")
        splits = [rows // n] * n
    if len(splits) != n:
        raise ValueError(f"chorus {op}: {what}_split_sizes must have {n} entries (one per rank), got {len(splits)}")
    if any(s < 0 for s in splits) or sum(splits) != rows:
        raise ValueError(f"chorus {op}: {what}_split_sizes {list(splits)} must be non-negative and sum to dim 0 of the {what} ({rows})")
    return [int(s) * per_row for s in splits]


def _merge(pg, works: list[ChorusWork], result) -> ChorusWork:
    """One Work over several already-started works."""

    def after():
        for w in works:
            w.wait()

    w = ChorusWork(pg, [], result, works, after)
    w._subworks = works
    return w


class Options:
    """Options of the chorus backend, passed as ``dist.init_process_group("chorus", pg_options=...)``.

    failure_policy:       "shrink" (default: a collective during which a rank dies completes over the
                          survivors) or "abort" (it fails with an error on every survivor).
    heartbeat_ms:         heartbeat interval (default 100 ms).
    heartbeat_timeout_ms: a rank whose heartbeat stalls this long is removed (default 2000 ms; a
                          crashed process on the same host is detected at once regardless).
    fault_tolerance:      False turns fault tolerance off (a failure is then an error).
    join:                 True: this process replaces a dead rank of the running default group
                          (same as the environment variable CHORUS_JOIN=1).
    timeout:              deadline of every wait inside an operation (a timedelta); it overrides
                          CHORUS_TIMEOUT_MS. Default: init_process_group's / new_group's timeout, or
                          CHORUS_TIMEOUT_MS when that is set and shorter.
    ft_save_limit:        in-place reductions of at least this many bytes do not save their input (default
                          1 MiB; 0: none is saved; None: CHORUS_FT_SAVE_LIMIT). A saved input costs one copy
                          of the buffer per collective; without it, a collective during which a rank died
                          fails with the same error on every survivor when not every survivor already
                          holds its result (it cannot be re-run), and the group goes on.
    initial_members:      the ranks present when the default group is created (a list of ints; None:
                          CHORUS_INITIAL_MEMBERS, else every rank). The others are empty slots: the
                          world size counts them, collectives skip them like failed ranks, and a process
                          started later for one joins it (``chorus.join_group``, or CHORUS_JOIN=1) between
                          two collectives of the members. Subgroups always start with all their ranks.
    cuda_path:            "kernels" (default: CUDA tensors use the NVLink kernels on the current stream;
                          a rank dying mid-collective makes them time out) or "host" (CUDA tensors are
                          copied to the host and back around the host collective, which keeps the
                          fault-tolerance contract).

    ``None`` leaves a setting to its environment variable (CHORUS_FAILURE_POLICY, CHORUS_HEARTBEAT_MS,
    CHORUS_HEARTBEAT_TIMEOUT_MS, CHORUS_FT, CHORUS_JOIN, CHORUS_CUDA_PATH, CHORUS_FT_SAVE_LIMIT) or default.
    """

    def __init__(self, failure_policy: str | None = None, heartbeat_ms: int | None = None,
                 heartbeat_timeout_ms: int | None = None, fault_tolerance: bool | None = None,
                 join: bool | None = None, timeout: timedelta | None = None, cuda_path: str | None = None,
                 ft_save_limit: int | None = None, initial_members: list[int] | None = None):
        if failure_policy is not None and failure_policy not in ("shrink", "abort"):
            raise ValueError(f"chorus: failure_policy must be 'shrink' or 'abort', not {failure_policy!r}")
        if cuda_path is not None and cuda_path not in ("kernels", "host"):
            raise ValueError(f"chorus: cuda_path must be 'kernels' or 'host', not {cuda_path!r}")
        for what, v in (("heartbeat_ms", heartbeat_ms), ("heartbeat_timeout_ms", heartbeat_timeout_ms)):
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"chorus: {what} must be a positive int (milliseconds), not {v!r}")
        self.failure_policy = failure_policy
        self.heartbeat_ms = heartbeat_ms
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.fault_tolerance = fault_tolerance
        self.join = join
        self.timeout = timeout
        if ft_save_limit is not None and (not isinstance(ft_save_limit, int) or ft_save_limit < 0):
            raise ValueError(f"chorus: ft_save_limit must be a non-negative int (bytes), not {ft_save_limit!r}")
        self.cuda_path = cuda_path
        self.ft_save_limit = ft_save_limit
        if initial_members is not None:
            initial_members = sorted({int(r) for r in initial_members})
            if not initial_members or initial_members[0] < 0:
                raise ValueError(f"chorus: initial_members must name ranks present at creation, not {initial_members!r}")
        self.initial_members = initial_members

    def _env(self) -> dict[str, str | None]:
        """The variables to set for the group's creation (None: unset them)."""
        env: dict[str, str | None] = {}
        if self.failure_policy is not None:
            env["CHORUS_FAILURE_POLICY"] = self.failure_policy
        if self.heartbeat_ms is not None:
            env["CHORUS_HEARTBEAT_MS"] = str(self.heartbeat_ms)
        if self.heartbeat_timeout_ms is not None:
            env["CHORUS_HEARTBEAT_TIMEOUT_MS"] = str(self.heartbeat_timeout_ms)
        if self.fault_tolerance is not None:
            env["CHORUS_FT"] = "1" if self.fault_tolerance else "0"
        if self.cuda_path is not None:
            env["CHORUS_CUDA_PATH"] = self.cuda_path
        if self.ft_save_limit is not None:
            env["CHORUS_FT_SAVE_LIMIT"] = str(self.ft_save_limit)
        if self.initial_members is not None:
            env["CHORUS_INITIAL_MEMBERS"] = ",".join(map(str, self.initial_members))
        if self.timeout is not None:
            # The library takes the smaller of the timeout passed and CHORUS_TIMEOUT_MS; an
            # explicit option overrides the variable instead.
            env["CHORUS_TIMEOUT_MS"] = None
        return env

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"chorus.Options({fields})"


_env_lock = threading.Lock()


class _env_for:
    """The library reads these settings from the environment when it creates a group: set them for
    the duration of the creation call only, then restore the caller's values."""

    def __init__(self, options: "Options | None", top_level: bool = True):
        self.env = options._env() if options is not None else {}
        if not top_level:
            # Empty slots are the default group's: a subgroup starts with all of its ranks.
            self.env["CHORUS_INITIAL_MEMBERS"] = None
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        if self.env:
            _env_lock.acquire()
            for k, v in self.env.items():
                self.saved[k] = os.environ.get(k)
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def __exit__(self, *exc):
        if self.env:
            for k, v in self.saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _env_lock.release()
        return False


def _create_backend(opts, backend_options=None):
    if backend_options is not None and not isinstance(backend_options, Options):
        raise TypeError(f"chorus: pg_options must be a chorus.Options, not {type(backend_options).__name__}")
    # Only the default (top-level) group can be rejoined: subgroups are created as usual.
    default_group = not list(getattr(opts, "global_ranks_in_group", []) or [])
    want_join = backend_options.join if backend_options is not None and backend_options.join is not None else os.environ.get("CHORUS_JOIN") == "1"
    join = bool(want_join and default_group)
    # The name is fixed ("torch"); torch hands every group a store under its own prefix
    # ("default_pg/0/cpu/" for the default group), so a replacement finds the same keys.
    native = _native.load()
    if native is None:
        return ProcessGroupChorus(opts.store, opts.group_rank, opts.group_size, opts.timeout, "torch",
                                  options=backend_options, join=join, top_level=default_group)
    timeout = backend_options.timeout if backend_options is not None and backend_options.timeout is not None else opts.timeout
    ms = int(timeout.total_seconds() * 1000) if timeout is not None else 0
    cuda_path = backend_options.cuda_path if backend_options is not None and backend_options.cuda_path is not None else os.environ.get("CHORUS_CUDA_PATH", "kernels")
    with _env_for(backend_options, default_group):
        b = native.ChorusBackend(opts.store, opts.group_rank, opts.group_size, ms, "torch", join, cuda_path == "host")
    _LIVE_GROUPS.add(b)
    return b


def register() -> None:
    if "chorus" in getattr(dist.Backend, "_plugins", {}) or "CHORUS" in getattr(dist.Backend, "_plugins", {}):
        return
    # torch 2.15+ wraps every collective of a backend it does not know to record itself in a Python-level
    # flight-recorder hook: about 2 us per call on the 2-core machine (most of the native backend's glue),
    # which Gloo and NCCL do not pay. chorus names the rank and operation it waits for itself
    # (CHORUS_LOG=debug) and fails stuck collectives at their deadline, so it opts out unless asked.
    self_recording = getattr(dist.distributed_c10d, "_FR_SELF_RECORDING_BACKENDS", None)
    if isinstance(self_recording, set) and os.environ.get("CHORUS_TORCH_FLIGHT_RECORDER") != "1":
        self_recording.add("chorus")
    dist.Backend.register_backend("chorus", _create_backend, extended_api=True, devices=["cpu", "cuda"])
