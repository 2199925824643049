"""Build script for mimicfast.

Pure-Python parts install with plain setuptools. The compiled extension ``mimicfast._C``
(pybind11; C++ CPU kernels, CUDA kernels when nvcc is found) is built by CMake + ninja; torch must be
importable at build time (``pip install --no-build-isolation``, after ``pip install pybind11 cmake ninja``).
When torch, pybind11, CMake or a compiler is missing, or the compilation fails, the build stops with a message
on stderr naming what is missing and how to go on; it never installs a package silently lacking ``_C``. With
``MIMICFAST_BUILD_EXT=0`` it installs the pure-Python package (the ops then run their reference backend) and
says so on stderr.

Environment:
    MIMICFAST_BUILD_EXT=0     skip the compiled extension altogether.
    MAX_JOBS                  parallel compile jobs (default: CMake's, i.e. all cores).
    MIMICFAST_BUILD_CUDA=1/0  force the CUDA kernels on / off (default: on when nvcc is found).
    MIMICFAST_CUDA_ARCH       CUDA architectures in CMake syntax (default "90", i.e. sm_90).
Triton kernels live in the top-level ``kernels/`` folder and install as ``mimicfast.kernels``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _tool(name: str, module: str) -> str | None:
    """Path of a build tool: on PATH, or shipped by its PyPI package (``cmake``, ``ninja``)."""
    found = shutil.which(name)
    if found:
        return found
    try:
        mod = __import__(module)
    except ImportError:
        return None
    bin_dir = getattr(mod, "CMAKE_BIN_DIR", None) or getattr(mod, "BIN_DIR", None)
    candidate = Path(bin_dir, name) if bin_dir else None
    return str(candidate) if candidate and candidate.exists() else None


def _nvcc() -> str | None:
    """nvcc on PATH, under $CUDA_HOME, or at /usr/local/cuda."""
    for candidate in (
        shutil.which("nvcc"),
        os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc") if os.environ.get("CUDA_HOME") else None,
        "/usr/local/cuda/bin/nvcc",
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _say(message: str) -> None:
    """Print a block on stderr that stands out in pip's output."""
    bar = "=" * 78
    print(f"\n{bar}\nmimicfast: {message}\n{bar}\n", file=sys.stderr, flush=True)


_HOW_TO_GO_ON = (
    "To build it: pip install torch first, then `pip install setuptools wheel pybind11 cmake ninja` and "
    "install mimicfast with `pip install --no-build-isolation .` (or `-e .`); a C++17 compiler must be on "
    "PATH. To install without it (the ops then use their pure-PyTorch reference backend): set "
    "MIMICFAST_BUILD_EXT=0. To build without the CUDA kernels: MIMICFAST_BUILD_CUDA=0."
)


class CMakeExtension(Extension):
    """An extension whose sources CMake compiles (see CMakeLists.txt)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configures and builds CMakeLists.txt with ninja; stops the installation, saying why, when it cannot."""

    def build_extensions(self) -> None:
        for ext in self.extensions:
            missing = _missing_prerequisites()
            if missing:
                _say(f"cannot build the compiled extension {ext.name}: missing {', '.join(missing)}.\n{_HOW_TO_GO_ON}")
                raise SystemExit(1)
            try:
                self._build(ext)
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                _say(f"building the compiled extension {ext.name} failed ({exc}); the compiler output is above.\n"
                     f"{_HOW_TO_GO_ON}")
                raise SystemExit(1) from None

    def _build(self, ext: Extension) -> None:
        import pybind11
        import torch.utils

        cmake = _tool("cmake", "cmake")
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # One CMake tree per interpreter, shared by every build of this checkout (editable install, wheel), so a
        # second build only relinks instead of compiling again.
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        ninja = _tool("ninja", "ninja")
        if ninja is not None:
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        cuda = os.environ.get("MIMICFAST_BUILD_CUDA", "auto")
        nvcc = _nvcc()
        if cuda == "1" and nvcc is None:
            raise RuntimeError("MIMICFAST_BUILD_CUDA=1 but nvcc was not found")
        if cuda != "0" and nvcc is not None:
            arch = os.environ.get("MIMICFAST_CUDA_ARCH", "90")
            args += ["-DMIMICFAST_BUILD_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DMIMICFAST_CUDA_ARCH={arch}"]
        else:
            args += ["-DMIMICFAST_BUILD_CUDA=OFF"]
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("MAX_JOBS")
        subprocess.run([cmake, "--build", str(build_dir), *(["--parallel", jobs] if jobs else [])], check=True)


def _missing_prerequisites() -> list[str]:
    """What the extension build needs and does not find, in words a user can act on."""
    missing = []
    for module, what in (("torch", "torch (importable by this build)"), ("pybind11", "pybind11 (pip package)")):
        try:
            __import__(module)
        except ImportError:
            missing.append(what)
    if _tool("cmake", "cmake") is None:
        missing.append("cmake (pip package or on PATH)")
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX") or "c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++, g++ or clang++ on PATH)")
    return missing


if os.environ.get("MIMICFAST_BUILD_EXT") == "0":
    _say("MIMICFAST_BUILD_EXT=0: installing without the compiled extension mimicfast._C "
         "(mimicfast.backends() reports it absent; the ops use their reference backend).")
    ext_modules = []
else:
    ext_modules = [CMakeExtension("mimicfast._C")]
packages = find_packages(include=["mimicfast", "mimicfast.*"]) + ["mimicfast.kernels"]

setup(
    packages=packages,
    package_dir={"mimicfast.kernels": "kernels"},
    include_package_data=True,
    package_data={"mimicfast": ["weights/*.safetensors", "weights/*.json", "data/*"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
)
