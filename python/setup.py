"""Builds the chorus C ABI (`cargo build --release -p chorus-ffi`) and ships libchorus_ffi.so
inside the `chorus` package, which loads it by path relative to its `__file__`. The C header ships
beside the native torch backend's source (chorus/csrc), which is compiled for the user's torch at
first import (chorus/_native.py): torch is not importable here under pip's build isolation.

Environment:
  CHORUS_REPO      the chorus Cargo workspace (default: the parent of this directory)
  CHORUS_PREBUILT  a libchorus_ffi.so to ship instead of building (e.g. on a machine without cargo)
  CARGO            the cargo binary (default: cargo)
  CHORUS_NVRTC     libnvrtc.so.13 for the build to compile the GPU kernels ahead of time (default: the
                   `nvidia-cuda-nvrtc` wheel of the build environment, a build requirement); without
                   NVRTC the library compiles them at run time on first use instead
"""
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
LIB = "libchorus_ffi.so"


def _workspace() -> Path:
    env = os.environ.get("CHORUS_REPO")
    if env:
        return Path(env).resolve()
    for d in [HERE.parent, *HERE.parents]:
        cargo = d / "Cargo.toml"
        if cargo.exists() and "[workspace]" in cargo.read_text() and (d / "ffi").is_dir():
            return d
    raise RuntimeError("chorus: cannot find the Cargo workspace; set CHORUS_REPO to the chorus repository")


def _nvrtc_of_build_env():
    """libnvrtc.so.13 of the `nvidia-cuda-nvrtc` wheel installed in this (build) environment, if any."""
    import sys

    for p in sys.path:
        lib = Path(p) / "nvidia" / "cu13" / "lib" / "libnvrtc.so.13"
        if lib.is_file():
            return str(lib)
    return None


def _native_library() -> Path:
    pre = os.environ.get("CHORUS_PREBUILT")
    if pre:
        return Path(pre)
    ws = _workspace()
    cargo = os.environ.get("CARGO", "cargo")
    env = dict(os.environ)
    if not env.get("CHORUS_NVRTC"):
        nvrtc = _nvrtc_of_build_env()
        if nvrtc:
            env["CHORUS_NVRTC"] = nvrtc
    subprocess.check_call([cargo, "build", "--release", "-p", "chorus-ffi"], cwd=ws, env=env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ws / "target"))
    if not target.is_absolute():
        target = ws / target
    return target / "release" / LIB


class BuildPyWithCargo(build_py):
    def run(self):
        super().run()
        lib = _native_library()
        dest = Path(self.build_lib) / "chorus"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest / LIB)
        (dest / "csrc").mkdir(exist_ok=True)
        shutil.copy2(_workspace() / "ffi" / "include" / "chorus.h", dest / "csrc" / "chorus.h")


class BinaryDistribution(Distribution):
    """The wheel holds a native library, so it is platform-specific."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPyWithCargo}, distclass=BinaryDistribution)
