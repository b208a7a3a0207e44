"""Fault tolerance of the chorus backend, on torch ProcessGroups and Works.

Ranks are ranks of the group passed (of the default group when ``group`` is None).
"""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from .backend import ChorusWork, Options, ProcessGroupChorus


def _chorus_group(group) -> ProcessGroupChorus:
    if group is None:
        if not dist.is_initialized():
            raise RuntimeError("chorus: the default process group is not initialized (call dist.init_process_group('chorus', ...))")
        group = dist.distributed_c10d._get_default_group()
    if isinstance(group, ProcessGroupChorus):
        return group
    try:
        b = group._get_backend(torch.device("cpu"))
    except Exception:
        b = None
    if isinstance(b, ProcessGroupChorus):
        return b
    raise TypeError(f"chorus: {group!r} is not a process group of the chorus backend")


def _chorus_work(work) -> ChorusWork:
    if isinstance(work, ChorusWork):
        return work
    if work is None:
        raise TypeError("chorus: pass the Work of an operation (use async_op=True to get one)")
    raise TypeError(f"chorus: {type(work).__name__} is not a Work of the chorus backend")


def get_active_ranks(group=None) -> list[int]:
    """Active ranks of ``group``'s current membership view (ascending)."""
    return _chorus_group(group).active_ranks()


def get_current_epoch(group=None) -> int:
    """Epoch of ``group``'s current membership view; every view change raises it."""
    return _chorus_group(group).current_epoch()


def check_device(device=None, group=None) -> None:
    """Raises once ``group``'s GPU communicator on ``device`` (default: the current CUDA device) failed:
    a kernel waited past its deadline, or the group aborted it because a peer died (its kernels then stop
    waiting at once). GPU collectives are stream-ordered and return before they run: synchronize first."""
    _chorus_group(group).check_device(torch.device("cuda", torch.cuda.current_device()) if device is None else device)


def get_ops_completed(group=None) -> int:
    """Collectives this rank issued in ``group``. A replacement rank starts at the survivors' count,
    so a training loop can resume from it."""
    return _chorus_group(group).ops_completed()


def get_failed_ranks(work) -> list[int]:
    """Ranks that failed during the operation of ``work`` (waits for it). Every survivor reports the
    same ranks at the same collective, once."""
    return _chorus_work(work).failed_ranks()


def get_contributors(work) -> list[int]:
    """Ranks whose data the result of ``work`` contains (waits for it)."""
    return _chorus_work(work).contributors()


def get_work_epoch(work) -> int:
    """Membership epoch the operation of ``work`` ran under (waits for it)."""
    return _chorus_work(work).epoch()


def deactivate_ranks(ranks, group=None) -> None:
    """Removes ``ranks`` from ``group``'s view; every rank adopts the change at its next collective."""
    _chorus_group(group).deactivate_ranks(ranks)


def activate_ranks(ranks, group=None) -> None:
    """Puts ``ranks`` (alive and linked) back into ``group``'s view at the next collective."""
    _chorus_group(group).activate_ranks(ranks)


def join_group(store, rank: int, world_size: int, timeout: timedelta | None = None, options: Options | None = None):
    """Initializes the default process group as a replacement for ``rank`` of a running chorus job:
    ``dist.init_process_group("chorus", store=store, ...)`` with ``Options(join=True)``. ``store``
    must be the store the job was started with (hosted outside the workers). Returns once the
    survivors admitted this process (they do so between collectives, so they must keep running them).
    """
    opts = Options(**{k: v for k, v in vars(options).items()}) if options is not None else Options()
    opts.join = True
    kw = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group("chorus", store=store, rank=rank, world_size=world_size, pg_options=opts, **kw)
    return dist.distributed_c10d._get_default_group()
