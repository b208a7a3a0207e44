"""ctypes bindings of the chorus C ABI (ffi/include/chorus.h).

The shared library is loaded by path relative to this file (``libchorus_ffi.so`` next to it, put
there by ``pip install ./python``); ``CHORUS_LIB`` overrides the path.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

ABI_VERSION = 2
DEVICE_CPU = -1

# chorus_status_t
OK = 0
ERR_INVALID_ARGUMENT = 1
ERR_UNSUPPORTED = 2
ERR_MISMATCH = 3
ERR_TIMEOUT = 4
ERR_PEER_FAILED = 5
ERR_STORE = 6
ERR_TRANSPORT = 7
ERR_DESTROYED = 8
ERR_INCOMPLETE = 9
ERR_INTERNAL = 10

_STATUS_NAMES = {
    ERR_INVALID_ARGUMENT: "CHORUS_ERR_INVALID_ARGUMENT",
    ERR_UNSUPPORTED: "CHORUS_ERR_UNSUPPORTED",
    ERR_MISMATCH: "CHORUS_ERR_MISMATCH",
    ERR_TIMEOUT: "CHORUS_ERR_TIMEOUT",
    ERR_PEER_FAILED: "CHORUS_ERR_PEER_FAILED",
    ERR_STORE: "CHORUS_ERR_STORE",
    ERR_TRANSPORT: "CHORUS_ERR_TRANSPORT",
    ERR_DESTROYED: "CHORUS_ERR_DESTROYED",
    ERR_INCOMPLETE: "CHORUS_ERR_INCOMPLETE",
    ERR_INTERNAL: "CHORUS_ERR_INTERNAL",
}


class ChorusError(RuntimeError):
    """An error reported by the chorus library; ``code`` is the chorus_status_t."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(f"chorus: {message} [{_STATUS_NAMES.get(code, code)}]")


class ChorusInvalidArgument(ChorusError, ValueError):
    pass


class ChorusUnsupported(ChorusError, NotImplementedError):
    pass


class ChorusTimeout(ChorusError, TimeoutError):
    pass


_ERROR_CLASSES = {ERR_INVALID_ARGUMENT: ChorusInvalidArgument, ERR_UNSUPPORTED: ChorusUnsupported, ERR_TIMEOUT: ChorusTimeout}


class chorus_buf(Structure):  # opaque
    pass


BUF_P = POINTER(chorus_buf)
SET_FN = CFUNCTYPE(c_int32, c_void_p, c_char_p, c_void_p, c_size_t, BUF_P)
GET_FN = CFUNCTYPE(c_int32, c_void_p, c_char_p, BUF_P, BUF_P)
WAIT_FN = CFUNCTYPE(c_int32, c_void_p, POINTER(c_char_p), c_size_t, c_int64, BUF_P)
ADD_FN = CFUNCTYPE(c_int32, c_void_p, c_char_p, c_int64, POINTER(c_int64), BUF_P)
COMPARE_SET_FN = CFUNCTYPE(c_int32, c_void_p, c_char_p, c_void_p, c_size_t, c_void_p, c_size_t, BUF_P, BUF_P)
DELETE_FN = CFUNCTYPE(c_int32, c_void_p, c_char_p, BUF_P)
RELEASE_FN = CFUNCTYPE(None, c_void_p)


class StoreCallbacks(Structure):
    _fields_ = [
        ("ctx", c_void_p),
        ("set", SET_FN),
        ("get", GET_FN),
        ("wait", WAIT_FN),
        ("add", ADD_FN),
        ("compare_set", COMPARE_SET_FN),
        ("delete_key", DELETE_FN),
        ("release", RELEASE_FN),
    ]


def library_path() -> str:
    env = os.environ.get("CHORUS_LIB")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "libchorus_ffi.so")
    # Running from a source checkout (python/chorus): use the workspace's release build.
    dev = os.path.join(here, os.pardir, os.pardir, "target", "release", "libchorus_ffi.so")
    if not os.path.exists(installed) and os.path.exists(dev):
        return os.path.normpath(dev)
    return installed


def _load():
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"chorus: the native library {path} is missing; install the package with "
            "`pip install ./python` from the chorus repository (it builds ffi/ with cargo), "
            "or point CHORUS_LIB at a built libchorus_ffi.so"
        )
    lib = ctypes.CDLL(path)
    G, W = c_void_p, c_void_p
    WP = POINTER(c_void_p)
    sig = {
        "chorus_abi_version": (c_uint32, []),
        "chorus_last_error": (c_char_p, []),
        "chorus_buf_write": (c_int32, [BUF_P, c_void_p, c_size_t]),
        "chorus_group_create": (c_int32, [POINTER(StoreCallbacks), c_int32, c_int32, c_char_p, c_int64, WP]),
        "chorus_group_create_tcp": (c_int32, [c_char_p, c_int32, c_int32, c_int32, c_char_p, c_int64, WP]),
        "chorus_group_create_env": (c_int32, [c_char_p, c_int64, WP]),
        "chorus_group_join": (c_int32, [POINTER(StoreCallbacks), c_int32, c_int32, c_char_p, c_int64, WP]),
        "chorus_group_join_tcp": (c_int32, [c_char_p, c_int32, c_int32, c_char_p, c_int64, WP]),
        "chorus_group_active_ranks": (c_int32, [G, POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
        "chorus_group_replica_address": (c_int32, [G, c_char_p, c_size_t, POINTER(c_size_t)]),
        "chorus_group_epoch": (c_int32, [G, POINTER(c_uint64)]),
        "chorus_group_device_status": (c_int32, [G, c_int32]),
        "chorus_group_ops_completed": (c_int32, [G, POINTER(c_uint64)]),
        "chorus_group_mark": (c_int32, [G, c_uint64]),
        "chorus_group_resume_point": (c_int32, [G, POINTER(c_uint64), POINTER(c_uint64)]),
        "chorus_group_deactivate_ranks": (c_int32, [G, POINTER(c_int32), c_size_t]),
        "chorus_group_activate_ranks": (c_int32, [G, POINTER(c_int32), c_size_t]),
        "chorus_work_failed_ranks": (c_int32, [W, POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
        "chorus_work_contributors": (c_int32, [W, POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
        "chorus_work_epoch": (c_int32, [W, POINTER(c_uint64)]),
        "chorus_group_new_subgroup": (c_int32, [G, POINTER(c_int32), c_size_t, WP]),
        "chorus_group_rank": (c_int32, [G]),
        "chorus_group_size": (c_int32, [G]),
        "chorus_group_destroy": (c_int32, [G]),
        "chorus_all_reduce": (c_int32, [G, c_void_p, c_uint64, c_int32, c_int32, c_int32, c_void_p, WP]),
        "chorus_broadcast": (c_int32, [G, c_void_p, c_uint64, c_int32, c_int32, c_int32, c_void_p, WP]),
        "chorus_reduce": (c_int32, [G, c_void_p, c_uint64, c_int32, c_int32, c_int32, c_int32, c_void_p, WP]),
        "chorus_all_gather": (c_int32, [G, c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_void_p, WP]),
        "chorus_reduce_scatter": (c_int32, [G, c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_int32, c_void_p, WP]),
        "chorus_all_to_all": (c_int32, [G, c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_void_p, WP]),
        "chorus_all_to_all_v": (c_int32, [G, c_void_p, POINTER(c_uint64), c_void_p, POINTER(c_uint64), c_int32, c_int32, c_void_p, WP]),
        "chorus_gather": (c_int32, [G, c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_int32, c_void_p, WP]),
        "chorus_scatter": (c_int32, [G, c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_int32, c_void_p, WP]),
        "chorus_barrier": (c_int32, [G, WP]),
        "chorus_send": (c_int32, [G, c_void_p, c_uint64, c_int32, c_int32, c_uint64, c_int32, c_void_p, WP]),
        "chorus_recv": (c_int32, [G, c_void_p, c_uint64, c_int32, c_int32, c_uint64, c_int32, c_void_p, WP]),
        "chorus_work_wait": (c_int32, [W, c_int64]),
        "chorus_work_is_completed": (c_int32, [W]),
        "chorus_work_free": (None, [W]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    got = lib.chorus_abi_version()
    if got != ABI_VERSION:
        raise ImportError(f"chorus: {path} has ABI version {got} but this package expects {ABI_VERSION}; reinstall the package")
    return lib


lib = _load()


def last_error() -> str:
    msg = lib.chorus_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def error(code: int) -> ChorusError:
    return _ERROR_CLASSES.get(code, ChorusError)(code, last_error())


def check(code: int) -> None:
    if code != OK:
        raise error(code)


def replica_address(handle) -> str | None:
    """This rank's membership replica address (``None`` without replicas)."""
    cap = 128
    while True:
        buf = ctypes.create_string_buffer(cap)
        n = c_size_t(0)
        rc = lib.chorus_group_replica_address(handle, buf, cap, ctypes.byref(n))
        if rc == OK:
            return buf.raw[: n.value].decode() or None
        if rc == ERR_INVALID_ARGUMENT and n.value > cap:
            cap = n.value
            continue
        raise error(rc)


def rank_array(fn, handle) -> list[int]:
    """Calls a ``(handle, int32_t *out, size_t cap, size_t *n)`` entry point, growing the array."""
    cap = 64
    while True:
        arr = (c_int32 * cap)()
        n = c_size_t(0)
        rc = fn(handle, arr, cap, ctypes.byref(n))
        if rc == OK:
            return [int(arr[i]) for i in range(n.value)]
        if rc == ERR_INVALID_ARGUMENT and n.value > cap:
            cap = n.value
            continue
        raise error(rc)


def u64(fn, handle) -> int:
    v = c_uint64(0)
    check(fn(handle, ctypes.byref(v)))
    return int(v.value)
