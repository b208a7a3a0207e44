"""chorus store callbacks implemented on top of a torch ``c10d.Store``.

The C library calls these from its own threads (ctypes takes the GIL for each call). Every
callback catches every exception and reports it as an error code plus message, so nothing
propagates into the library.
"""
from __future__ import annotations

import ctypes
import itertools
import threading
import time

from . import _lib

_registry: dict[int, "_Entry"] = {}
_registry_lock = threading.Lock()
_ids = itertools.count(1)


class _Entry:
    def __init__(self, store):
        self.store = store


def _put(buf, data: bytes) -> None:
    _lib.lib.chorus_buf_write(buf, data, len(data))


def _fail(err, e: BaseException) -> int:
    try:
        _put(err, f"{type(e).__name__}: {e}".encode("utf-8", "replace"))
    except Exception:
        pass
    return -1


def _store(ctx) -> object:
    return _registry[ctx].store


@_lib.SET_FN
def _set(ctx, key, value, length, err):
    try:
        _store(ctx).set(key.decode(), ctypes.string_at(value, length) if length else b"")
        return 0
    except BaseException as e:
        return _fail(err, e)


@_lib.GET_FN
def _get(ctx, key, out, err):
    try:
        store, k = _store(ctx), key.decode()
        # c10d's get blocks until the key exists; chorus wants "absent" instead.
        if not store.check([k]):
            return 1
        _put(out, store.get(k))
        return 0
    except BaseException as e:
        return _fail(err, e)


@_lib.WAIT_FN
def _wait(ctx, keys, nkeys, timeout_ms, err):
    # Polls with check() instead of c10d's wait: a TCPStore client holds its connection's lock for the
    # whole of a wait, which would stall every other user of the store in this process (the heartbeats
    # of the process's other chorus groups among them) for as long as a peer is late.
    try:
        ks = [keys[i].decode() for i in range(nkeys)]
        store = _store(ctx)
        deadline = time.monotonic() + max(int(timeout_ms), 0) / 1000
        pause = 0.0002
        while not store.check(ks):
            left = deadline - time.monotonic()
            if left <= 0:
                return 1
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.02)
        return 0
    except BaseException as e:
        return _fail(err, e)


@_lib.ADD_FN
def _add(ctx, key, delta, result, err):
    try:
        result[0] = int(_store(ctx).add(key.decode(), int(delta)))
        return 0
    except BaseException as e:
        return _fail(err, e)


@_lib.COMPARE_SET_FN
def _compare_set(ctx, key, expected, elen, desired, dlen, out, err):
    try:
        exp = ctypes.string_at(expected, elen) if elen else b""
        des = ctypes.string_at(desired, dlen) if dlen else b""
        _put(out, bytes(_store(ctx).compare_set(key.decode(), exp, des)))
        return 0
    except BaseException as e:
        return _fail(err, e)


@_lib.DELETE_FN
def _delete(ctx, key, err):
    try:
        return 1 if _store(ctx).delete_key(key.decode()) else 0
    except BaseException as e:
        return _fail(err, e)


@_lib.RELEASE_FN
def _release(ctx):
    try:
        with _registry_lock:
            _registry.pop(ctx, None)
    except BaseException:
        pass


def callbacks_for(store) -> _lib.StoreCallbacks:
    """A callbacks struct for ``store``; the library calls ``release`` when it is done with it."""
    ident = next(_ids)
    with _registry_lock:
        _registry[ident] = _Entry(store)
    return _lib.StoreCallbacks(ident, _set, _get, _wait, _add, _compare_set, _delete, _release)
