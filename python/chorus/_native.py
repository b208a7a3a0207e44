"""The native torch backend: a C++ ``c10d::Backend`` (``csrc/chorus_torch.cpp``) built for the torch it meets.

torch's C++ ABI changes between releases and builds, so the adapter cannot ship prebuilt: the first
``import chorus`` compiles it with ``torch.utils.cpp_extension`` (g++ and ninja; no CUDA toolkit) into a
cache keyed by the torch build, the Python tag and the sources, under a file lock so that ranks starting
together build once. Later imports load the cached module directly (about a millisecond).

Where it cannot be built (no compiler, or a torch whose headers it does not compile against) chorus warns
once and uses the Python backend (``backend.py``) instead. ``CHORUS_TORCH_BACKEND`` chooses:
``auto`` (default: native, else the fallback), ``native`` (fail if it cannot be built), ``python``.

Cache location: ``CHORUS_TORCH_EXT_DIR``, else ``$XDG_CACHE_HOME/chorus/torch_ext`` (``~/.cache``). A
failed build is remembered there, so later imports fall back at once. Prebuild it (e.g. in a container
image), or retry a failed build, with ``python -c "import chorus; chorus.build_native()"``.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path

import torch

MODULE = "chorus_torch"
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "csrc" / "chorus_torch.cpp"

_module = None
_error: str | None = None
_tried = False


def _header_dir() -> Path:
    """Where chorus.h is: shipped in the package, or ffi/include of a source checkout."""
    shipped = HERE / "csrc" / "chorus.h"
    if shipped.exists():
        return shipped.parent
    return (HERE.parent.parent / "ffi" / "include").resolve()


def _torch_include() -> Path:
    from torch.utils import cpp_extension

    return Path(cpp_extension.include_paths()[0])


def _features() -> dict[str, int]:
    """CHORUS_HAS_* macros: what this torch's c10d headers offer (read from the headers themselves)."""
    inc = _torch_include() / "torch" / "csrc" / "distributed" / "c10d"
    types = (inc / "Types.hpp").read_text(errors="replace")
    backend = (inc / "Backend.hpp").read_text(errors="replace")
    return {
        "CHORUS_HAS_ASYNC_OP": int(re.search(r"\bbool\s+asyncOp\b", types) is not None),
        "CHORUS_HAS_GATHER_SINGLE": int(re.search(r"virtual\s+c10::intrusive_ptr<Work>\s+gather_into_tensor\s*\(", backend) is not None),
    }


def _abi_flag() -> int:
    return int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))


def _key() -> str:
    h = hashlib.sha256()
    for part in (torch.__version__, getattr(torch.version, "git_version", ""), str(_abi_flag()), sys.implementation.cache_tag,
                 sysconfig.get_platform(), os.environ.get("CXX", "")):
        h.update(part.encode() + b"\0")
    h.update(SOURCE.read_bytes())
    h.update((_header_dir() / "chorus.h").read_bytes())
    return f"torch{torch.__version__.split('+')[0]}-{sys.implementation.cache_tag}-{h.hexdigest()[:16]}"


def cache_dir() -> Path:
    """The folder of this torch build's adapter."""
    env = os.environ.get("CHORUS_TORCH_EXT_DIR")
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chorus" / "torch_ext"
    return root / _key()


def _import_built(d: Path):
    path = d / f"{MODULE}.so"
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    spec = importlib.util.spec_from_file_location(MODULE, path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _build(d: Path):
    """Compiles the adapter into `d` and returns the module (imported once, from the build)."""
    from torch.utils import cpp_extension

    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise RuntimeError("no C++ compiler (install g++)")
    # ninja from PyPI lives next to the interpreter, which need not be on PATH (an unactivated venv).
    env_path = os.environ.get("PATH", "")
    bins = [os.path.dirname(sys.executable)]
    try:
        import ninja  # noqa: F401

        bins.append(ninja.BIN_DIR)
    except Exception:
        pass
    os.environ["PATH"] = os.pathsep.join(bins + [env_path])
    try:
        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is not available (pip install ninja)")
        flags = ["-O2", f"-D_GLIBCXX_USE_CXX11_ABI={_abi_flag()}"] + [f"-D{k}={v}" for k, v in _features().items()]
        tmp = d.with_name(d.name + ".build")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mod = cpp_extension.load(name=MODULE, sources=[str(SOURCE)], extra_include_paths=[str(_header_dir())], extra_cflags=flags,
                           build_directory=str(tmp), with_cuda=False, is_python_module=True, verbose=bool(os.environ.get("CHORUS_BUILD_VERBOSE")))
        # Publish the finished build in one step: a reader sees a whole module or none.
        shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
        return mod
    finally:
        os.environ["PATH"] = env_path


def _failed_marker(d: Path) -> Path:
    return d.parent / f"{d.name}.failed"


def _load_or_build(retry_failed: bool = False):
    """The cached module, else a build of it. A build that failed is remembered (`<key>.failed`), so later
    imports fall back at once instead of compiling again; `retry_failed` (build_native) retries."""
    d = cache_dir()
    if (d / f"{MODULE}.so").exists():
        return _import_built(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    failed = _failed_marker(d)
    with open(d.parent / f"{d.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # ranks starting together: one builds, the others wait and load
        if (d / f"{MODULE}.so").exists():
            return _import_built(d)
        if failed.exists() and not retry_failed:
            raise RuntimeError(f"an earlier build failed (remove {failed} or call chorus.build_native() to retry): "
                               + failed.read_text(errors="replace")[-2000:])
        if os.environ.get("CHORUS_QUIET_BUILD") != "1":
            print(f"chorus: building the native torch backend for torch {torch.__version__} (once per torch build; "
                  f"cached in {d})", file=sys.stderr, flush=True)
        try:
            mod = _build(d)
        except Exception as e:
            # Only a failure of the build itself is remembered (not, say, a missing compiler fixed later).
            if "no C++ compiler" not in str(e) and "ninja is not available" not in str(e):
                failed.write_text(f"{type(e).__name__}: {e}")
            raise
        failed.unlink(missing_ok=True)
        return mod


def load():
    """The native module, bound to the chorus library; None (after one warning) where it cannot be built."""
    global _module, _error, _tried
    if _tried:
        return _module
    _tried = True
    choice = os.environ.get("CHORUS_TORCH_BACKEND", "auto")
    if choice not in ("auto", "native", "python"):
        raise ValueError(f"chorus: CHORUS_TORCH_BACKEND must be auto, native or python, not {choice!r}")
    if choice == "python":
        _error = "CHORUS_TORCH_BACKEND=python"
        return None
    from ._lib import library_path

    try:
        mod = _load_or_build()
        mod.init(library_path())
        _module = mod
    except Exception as e:  # noqa: BLE001 -- any build or load failure means the fallback
        _error = f"{type(e).__name__}: {e}"
        if choice == "native":
            raise RuntimeError(f"chorus: the native torch backend is unavailable: {_error}") from e
        warnings.warn(f"chorus: the native torch backend could not be built or loaded ({_error.splitlines()[0][:500]}); "
                      "using the slower Python backend. Set CHORUS_TORCH_BACKEND=native to see the full error.", RuntimeWarning,
                      stacklevel=3)
    return _module


def backend_path() -> str:
    """Which torch backend ``"chorus"`` is: ``"native"`` (the C++ c10d::Backend) or ``"python"`` (the fallback)."""
    return "native" if load() is not None else "python"


def fallback_reason() -> str | None:
    """Why the Python fallback is in use (None on the native path)."""
    load()
    return _error


def build_native() -> str:
    """Builds the adapter for this torch now (retrying a build that failed before) and switches to it;
    returns its cache folder. Raises where it cannot be built. For container images and CI steps:
    ``python -c "import chorus; chorus.build_native()"``."""
    global _module, _error, _tried
    from ._lib import library_path

    if _module is None:  # a module already loaded stays (an extension module initializes once per process)
        mod = _load_or_build(retry_failed=True)
        mod.init(library_path())
        _module, _error, _tried = mod, None, True
    return str(cache_dir())
