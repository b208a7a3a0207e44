"""chorus: a fault-tolerant collective-communication library, as a torch.distributed backend.

    import chorus                      # registers the "chorus" backend
    import torch.distributed as dist
    dist.init_process_group("chorus")  # under torchrun, or with store=/rank=/world_size=

Fault tolerance (see README.md): get_active_ranks, get_current_epoch, get_failed_ranks,
deactivate_ranks, activate_ranks, join_group, check_device (GPU kernel path), and chorus.Options for pg_options.

The backend is native C++ (a c10d::Backend built for the installed torch at first import and cached);
``chorus.backend_path()`` says "native" or "python" (the fallback where it cannot be built) and
``chorus.fallback_reason()`` why.
"""
from . import _native
from ._lib import ChorusError, ChorusInvalidArgument, ChorusTimeout, ChorusUnsupported, library_path
from ._native import backend_path, build_native, fallback_reason
from .backend import ChorusWork, Options, ProcessGroupChorus, register
from .ft import (
    activate_ranks,
    check_device,
    deactivate_ranks,
    get_active_ranks,
    get_contributors,
    get_current_epoch,
    get_failed_ranks,
    get_ops_completed,
    get_replica_address,
    get_resume_point,
    get_work_epoch,
    join_group,
    mark,
)

__all__ = [
    "ChorusError", "ChorusInvalidArgument", "ChorusTimeout", "ChorusUnsupported", "ChorusWork", "Options",
    "ProcessGroupChorus", "library_path", "get_active_ranks", "get_current_epoch", "get_failed_ranks",
    "get_contributors", "get_work_epoch", "get_ops_completed", "mark", "get_resume_point", "get_replica_address", "deactivate_ranks", "activate_ranks", "join_group",
    "check_device", "backend_path", "build_native", "fallback_reason",
]

register()
# The native backend is built (once per torch build, cached) or loaded now, so that a missing compiler
# warns at import and ranks starting together share one build.
_native.load()
