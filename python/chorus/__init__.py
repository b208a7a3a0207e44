"""chorus: a fault-tolerant collective-communication library, as a torch.distributed backend.

    import chorus                      # registers the "chorus" backend
    import torch.distributed as dist
    dist.init_process_group("chorus")  # under torchrun, or with store=/rank=/world_size=
"""
from ._lib import ChorusError, ChorusInvalidArgument, ChorusTimeout, ChorusUnsupported, library_path
from .backend import ChorusWork, ProcessGroupChorus, register

__all__ = ["ChorusError", "ChorusInvalidArgument", "ChorusTimeout", "ChorusUnsupported", "ChorusWork", "ProcessGroupChorus", "library_path"]

register()
